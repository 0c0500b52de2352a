"""Screen-pop links into the call centre's CRM: one URL per configured CRM for the caller's record.

Pure: the config (:class:`CrmLinkConfig`, the ``crm:`` list of ``config/cti.yaml``) and
:func:`crm_links`, which a call's payload builder calls once per call. A template names the parts
of the call it needs in braces:

``{customer_id}``
    the directory record's ``id`` (the customer the pop shows);
``{number}``
    the caller number as Asterisk sent it;
``{number_e164}``
    the same number with a leading ``+`` when it looks international: it already starts with ``+``,
    or with ``00`` (replaced by ``+``), or is 12 to 15 digits long (a country code and a national
    number; a national number is rarely longer than 11). Spaces, ``-``, ``.``, ``(`` and ``)`` are
    left out first. Anything else (a national number, ``anonymous``) is the number as received;
``{linkedid}``, ``{queue}``
    the call's Linkedid and first queue (empty when none).

``record_url`` (it must use ``{customer_id}``) is the link when the call has a customer record with an
id; else ``search_url`` (it must use ``{number}`` or ``{number_e164}``) when the caller number is
known; else that CRM has no link for the call. Every substituted value is percent-encoded
(``urllib.parse.quote`` with ``safe=""``: everything but letters, digits and ``-._~``), so a caller ID
such as ``x&y=1\\r\\n`` can neither add a query parameter, nor leave the path segment it is in, nor
put a CR or LF into a header. Templates are checked and split into parts once, when the config is
loaded: an unknown placeholder, a format spec, a placeholder in the scheme or host, or a URL that is
not absolute ``http(s)`` fails validation naming the field.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final
from urllib.parse import quote, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["PLACEHOLDERS", "CrmLinkConfig", "CrmLinks", "Template", "crm_links", "e164"]

PLACEHOLDERS: Final = ("customer_id", "number", "number_e164", "linkedid", "queue")
_KNOWN: Final = frozenset(PLACEHOLDERS)
_SEPARATORS: Final = str.maketrans("", "", " -.()")


class Template:
    """A URL template split once into (literal text, placeholder or None) parts."""

    __slots__ = ("names", "parts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = _parse(text)
        self.names = frozenset(name for _, name in self.parts if name is not None)

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def of(text: str) -> Template:
        """The template for ``text``, split once (validation splits every configured one first)."""
        return Template(text)

    def render(self, quoted: Mapping[str, str]) -> str:
        """The URL, with each placeholder replaced by its value from ``quoted`` (already percent-encoded)."""
        return "".join(literal + quoted[name] if name is not None else literal for literal, name in self.parts)


def _parse(text: str) -> tuple[tuple[str, str | None], ...]:
    bad = next((c for c in text if ord(c) <= 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise ValueError(f"must not contain spaces or control characters (found {bad!r})")
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone "{" or "}"
        raise ValueError(f"not a template: {exc} (write a literal brace as {{{{ or }}}})") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append((literal, None))
            continue
        if name not in _KNOWN:
            raise ValueError(f"unknown placeholder {{{name}}} (known: "
                             + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS) + ")")
        if spec or conversion:
            raise ValueError(f"{{{name}}} takes no format spec or conversion")
        parts.append((literal, name))
    first = parts[0][0] if parts else ""
    sample = urlsplit("".join(literal + ("x" if name else "") for literal, name in parts))
    if sample.scheme not in ("http", "https") or not sample.hostname:
        raise ValueError(f"{text!r} is not an absolute http(s) URL")
    try:
        _ = sample.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if any(name for _, name in parts):
        authority = first.partition("://")[2]
        if not any(c in authority for c in "/?#"):
            raise ValueError("placeholders belong in the path, query or fragment, not in the scheme or host")
    return tuple(parts)


class CrmLinkConfig(BaseModel):
    """One CRM the pop links to: ``name`` (shown on the link) and at least one of the two templates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    record_url: str | None = Field(None, description="the customer's record: must use {customer_id}")
    search_url: str | None = Field(None, description="a search by number: must use {number} or {number_e164}")

    @field_validator("record_url")
    @classmethod
    def _record_template(cls, v: str | None) -> str | None:
        if v is not None and "customer_id" not in Template.of(v).names:
            raise ValueError("a record URL must use {customer_id}")
        return v

    @field_validator("search_url")
    @classmethod
    def _search_template(cls, v: str | None) -> str | None:
        if v is not None and not Template.of(v).names & {"number", "number_e164"}:
            raise ValueError("a search URL must use {number} or {number_e164}")
        return v

    @model_validator(mode="after")
    def _one_of_them(self) -> CrmLinkConfig:
        if self.record_url is None and self.search_url is None:
            raise ValueError("record_url or search_url is required (or both)")
        return self

    @property
    def record(self) -> Template | None:
        return None if self.record_url is None else Template.of(self.record_url)

    @property
    def search(self) -> Template | None:
        return None if self.search_url is None else Template.of(self.search_url)


def _unique_names(links: list[CrmLinkConfig]) -> list[CrmLinkConfig]:
    seen: set[str] = set()
    for link in links:
        if link.name in seen:
            raise ValueError(f"two CRM links are named {link.name!r}")
        seen.add(link.name)
    return links


#: The ``crm:`` section: a list of links with distinct names.
CrmLinks = Annotated[list[CrmLinkConfig], AfterValidator(_unique_names)]


def e164(number: str) -> str:
    """``+`` and the digits when ``number`` looks international (module docstring), else ``number``."""
    compact = number.strip().translate(_SEPARATORS)
    if compact.startswith("+"):
        digits, international = compact[1:], True
    elif compact.startswith("00"):
        digits, international = compact[2:], True
    else:
        digits, international = compact, 12 <= len(compact) <= 15
    if international and 0 < len(digits) <= 15 and digits.isascii() and digits.isdigit():
        return "+" + digits
    return number


class _Quoted(dict[str, str]):
    """The call's values, each percent-encoded the first time a template uses it."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__()
        self._values = values

    def __missing__(self, name: str) -> str:
        raw = self._values[name] if name != "number_e164" else e164(self._values["number"])
        value = self[name] = quote(raw, safe="", errors="replace")
        return value


def crm_links(links: Sequence[CrmLinkConfig], *, caller: str | None, customer: Mapping[str, Any] | None,
              linkedid: str, queue: str | None) -> list[dict[str, str]]:
    """``[{"name", "url"}]``, one per CRM that has a link for this call, in config order.

    ``caller`` is the payload's ``caller``, ``customer`` its ``customer`` record (or None), ``queue`` the
    call's first queue."""
    if not links:
        return []
    raw_id = customer.get("id") if customer is not None else None
    customer_id = str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else ""
    has_record = customer_id != ""
    number = caller or ""
    quoted = _Quoted({"customer_id": customer_id, "number": number, "linkedid": linkedid, "queue": queue or ""})
    of = Template.of
    out: list[dict[str, str]] = []
    for link in links:
        if has_record and link.record_url is not None:
            out.append({"name": link.name, "url": of(link.record_url).render(quoted)})
        elif number and link.search_url is not None:
            out.append({"name": link.name, "url": of(link.search_url).render(quoted)})
    return out
