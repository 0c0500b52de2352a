"""CRM screen-pop links: any caller ID reaches the URL only percent-encoded and parses back to itself;
a template that cannot be used fails at load, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cti.config import Config, ConfigError, load_config
from cti.crm import CrmLinkConfig, crm_links, e164

ROOT = Path(__file__).resolve().parents[1]

SEARCH = CrmLinkConfig(name="crm", search_url="https://crm.example.com/search?q={number}&src=cti#top")
BY_PATH = CrmLinkConfig(name="path", search_url="https://crm.example.com/r/{number}/view?e={number_e164}")
RECORD = CrmLinkConfig(name="record", record_url="https://crm.example.com/contacts/{customer_id}?call={linkedid}"
                       "&queue={queue}", search_url="https://crm.example.com/find?n={number}")

#: Any text a caller ID could carry: CR/LF, &, #, /, %, +, spaces, unicode (not lone surrogates, which
#: no decoded AMI line holds: the codec decodes with errors="replace").
_CALLER = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40) | st.sampled_from(
    ["x&y=1\r\n", "a#b", "../../admin", "%41", "+86 139", "1 2", "李娜", "\x00", "?q=1"])
_URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%:/?#&=")


def _links(caller: str | None, customer: dict[str, Any] | None = None, *links: CrmLinkConfig,
           queue: str | None = "support") -> dict[str, str]:
    return {link["name"]: link["url"] for link in crm_links(links, caller=caller, customer=customer,
                                                          linkedid="1709370890.12", queue=queue)}


@given(_CALLER)
def test_a_caller_id_is_one_query_value_and_parses_back_to_itself(caller: str) -> None:
    url = _links(caller, None, SEARCH)["crm"]
    assert set(url) <= _URL_CHARS, "only unreserved characters and percent-escapes: no CR, LF, space"
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("https", "crm.example.com", "/search", "top")
    assert parse_qs(parts.query, keep_blank_values=True, strict_parsing=True) == {"q": [caller], "src": ["cti"]}


@given(_CALLER)
def test_a_caller_id_stays_in_its_path_segment(caller: str) -> None:
    parts = urlsplit(_links(caller, None, BY_PATH)["path"])
    segments = parts.path.split("/")
    assert len(segments) == 4 and segments[:2] == ["", "r"] and segments[3] == "view"
    assert unquote(segments[2], errors="strict") == caller
    assert parse_qs(parts.query, strict_parsing=True) == {"e": [e164(caller)]}


@given(st.text(min_size=1, max_size=20), st.text(max_size=10))
def test_a_record_link_carries_the_customer_id_and_any_text_is_safe(customer_id: str, caller: str) -> None:
    """Lone surrogates too: never an exception, never a raw character outside the URL alphabet."""
    url = _links(caller, {"id": customer_id, "name": "x"}, RECORD)["record"]
    assert set(url) <= _URL_CHARS
    parts = urlsplit(url)
    assert parts.path.count("/") == 2 and parts.path.startswith("/contacts/")
    assert set(parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)) == {"call", "queue"}


def test_record_when_the_caller_is_known_else_search_by_number_else_nothing() -> None:
    zendesk = CrmLinkConfig(name="Zendesk", search_url="https://acme.zendesk.com/agent/search/1?q={number}")
    links = (RECORD, zendesk)
    assert _links("8613900000001", {"id": "c-1002"}, *links) == {
        "record": "https://crm.example.com/contacts/c-1002?call=1709370890.12&queue=support",
        "Zendesk": "https://acme.zendesk.com/agent/search/1?q=8613900000001"}
    assert _links("8613900000001", None, *links, queue=None) == {
        "record": "https://crm.example.com/find?n=8613900000001",
        "Zendesk": "https://acme.zendesk.com/agent/search/1?q=8613900000001"}
    assert _links(None, None, *links) == {} and _links("", {"id": ""}, *links) == {}
    assert [link["name"] for link in crm_links(links, caller="1", customer=None, linkedid="x", queue=None)] == [
        "record", "Zendesk"], "in config order"
    assert crm_links([], caller="1", customer={"id": "c"}, linkedid="x", queue="q") == []


@pytest.mark.parametrize(("number", "want"), [
    ("+86 139-0000-0001", "+8613900000001"), ("008613900000001", "+8613900000001"),
    ("8613900000001", "+8613900000001"), ("13800000001", "13800000001"), ("1001", "1001"),
    ("anonymous", "anonymous"), ("+", "+"), ("+12345678901234567", "+12345678901234567"), ("(020) 7946 0018",
                                                                                          "(020) 7946 0018"),
])
def test_e164_adds_a_plus_only_when_the_number_looks_international(number: str, want: str) -> None:
    assert e164(number) == want


def _load(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "cti.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    return str(err.value)


@pytest.mark.parametrize(("link", "where", "why"), [
    ({"name": "a", "record_url": "https://x.example/{nope}"}, "crm.0.record_url", "unknown placeholder {nope}"),
    ({"name": "a", "record_url": "https://x.example/{number}"}, "crm.0.record_url", "must use {customer_id}"),
    ({"name": "a", "search_url": "https://x.example/?q={queue}"}, "crm.0.search_url", "{number} or {number_e164}"),
    ({"name": "a", "search_url": "https://{number}.example/"}, "crm.0.search_url", "not in the scheme or host"),
    ({"name": "a", "search_url": "https://x.example{number}"}, "crm.0.search_url", "not in the scheme or host"),
    ({"name": "a", "search_url": "/search?q={number}"}, "crm.0.search_url", "absolute http(s) URL"),
    ({"name": "a", "search_url": "javascript:alert({number})"}, "crm.0.search_url", "absolute http(s) URL"),
    ({"name": "a", "search_url": "https://x.example/?q={number:>9}"}, "crm.0.search_url", "no format spec"),
    ({"name": "a", "search_url": "https://x.example/?q={number"}, "crm.0.search_url", "not a template"),
    ({"name": "a", "search_url": "https://x.example/?q={number}\r\nX: 1"}, "crm.0.search_url", "control characters"),
    ({"name": "a", "search_url": "https://x.example:99999/?q={number}"}, "crm.0.search_url", "Port out of range"),
    ({"name": "a"}, "crm.0", "record_url or search_url is required"),
    ({"name": "a", "search_url": "https://x.example/?q={number}", "url": "x"}, "crm.0.url", "Extra inputs"),
])
def test_a_template_that_cannot_be_used_fails_at_load_naming_the_field(
        tmp_path: Path, link: dict[str, Any], where: str, why: str) -> None:
    message = _load(tmp_path, {"crm": [{"name": "ok", "search_url": "https://ok.example/?q={number}"}, link]})
    where = where.replace("crm.0", "crm.1")
    assert f"{where}: " in message and why in message, message


def test_names_are_distinct_and_the_timezone_is_a_real_one(tmp_path: Path) -> None:
    link = {"name": "a", "search_url": "https://x.example/?q={number}"}
    assert "two CRM links are named 'a'" in _load(tmp_path, {"crm": [link, link]})
    message = _load(tmp_path, {"history": {"timezone": "Mars/Olympus"}})
    assert "history.timezone: " in message and "unknown timezone 'Mars/Olympus'" in message
    with pytest.raises(ValidationError):
        CrmLinkConfig(name="", search_url="https://x.example/?q={number}")


def test_the_examples_in_the_config_file_validate() -> None:
    """config/cti.yaml's commented history, kpi and crm blocks, uncommented, are a valid config."""
    lines = (ROOT / "config" / "cti.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line == "# history:")
    block = [line[2:] for line in lines[start:] if line.startswith("# ") and (
        line.startswith("#  ") or line[2:].rstrip(":") in ("history", "crm", "kpi"))]
    config = Config.model_validate(yaml.safe_load("\n".join(block)))
    assert [link.name for link in config.crm] == ["Salesforce", "Zendesk", "Dynamics 365"]
    assert config.history.timezone == "Asia/Shanghai"
    assert config.kpi.service_level_by_queue == {"sales": 10} and config.kpi.service_level_basis == "answered"
    urls = _links("+86 139 0000 0001", None, *config.crm)
    assert urls["Salesforce"].endswith("searchTerm=%2B8613900000001")
    assert urls["Zendesk"].endswith("q=%2B86%20139%200000%200001")
