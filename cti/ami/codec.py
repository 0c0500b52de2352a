"""Sans-IO AMI codec: bytes in, messages out; actions in, bytes out.

No sockets and no asyncio here, so the same code parses a live connection, a
replayed capture and a benchmark, and is tested by feeding it a byte at a time.

Why not panoramisk's parser: it decodes each TCP chunk on its own with
``errors="ignore"`` (a multibyte character split across reads vanishes) and
writes header values raw (a CR/LF in a caller ID injects a second action).
Here a message is decoded only once it is complete, and :func:`encode_action`
refuses any key or value that could break out of its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

__all__ = [
    "GREETING_PREFIX",
    "Decoder",
    "Message",
    "ProtocolError",
    "UnsafeValueError",
    "encode_action",
]

GREETING_PREFIX = "Asterisk Call Manager/"
_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+\Z")

#: A value sent to Asterisk; a sequence repeats the key (``Variable: a=1``, ``Variable: b=2``).
ActionValue = str | int | float | Sequence[str]


class ProtocolError(Exception):
    """The byte stream cannot be AMI (no greeting, a message over the size limit)."""


class UnsafeValueError(ValueError):
    """An action key or value would break the AMI framing (CR, LF or NUL in it)."""

    def __init__(self, key: str, value: str) -> None:
        super().__init__(f"AMI field {key!r} holds a CR, LF or NUL character: {value[:40]!r}")
        self.key = key


class Message:
    """One AMI message: an event, a response, or the greeting line.

    ``fields`` keeps the first value of every key, which is what nearly every
    consumer wants; ``repeated`` keeps the later values of keys that occur more
    than once (``Variable``, ``ChanVariable``, a ``UserEvent``'s own keys).
    Lines with no ``key: value`` shape (a ``Response: Follows`` body) go to ``body``.

    A decoded message is parsed only when a consumer first reads its fields: three in four
    events of a real call (VarSet, Newexten, DeviceStateChange ...) are dropped after a look
    at their name, which :attr:`event` and :meth:`get` take from the text itself.
    """

    __slots__ = ("_body", "_eol", "_event", "_fields", "_repeated", "_text")

    def __init__(self, fields: dict[str, str], repeated: list[tuple[str, str]] | None = None,
                 body: list[str] | None = None) -> None:
        self._fields: dict[str, str] | None = fields
        self._repeated = repeated
        self._body = body
        self._text = ""
        self._eol = "\r\n"
        self._event: str | None = fields.get("Event")

    @classmethod
    def _unparsed(cls, text: str, eol: str) -> Message:
        msg = cls.__new__(cls)
        msg._fields, msg._repeated, msg._body, msg._text, msg._eol = None, None, None, text, eol
        msg._event = msg._first("Event")  # every consumer asks for it, most ask for nothing else
        return msg

    def _parse(self) -> dict[str, str]:
        fields, self._repeated, self._body = _split(self._text, self._eol)
        self._fields, self._text = fields, ""
        return fields

    @property
    def fields(self) -> dict[str, str]:
        fields = self._fields
        return fields if fields is not None else self._parse()

    @property
    def repeated(self) -> list[tuple[str, str]] | None:
        if self._fields is None:
            self._parse()
        return self._repeated

    @repeated.setter
    def repeated(self, value: list[tuple[str, str]] | None) -> None:
        if self._fields is None:
            self._parse()
        self._repeated = value

    @property
    def body(self) -> list[str] | None:
        if self._fields is None:
            self._parse()
        return self._body

    def _first(self, key: str) -> str | None:
        """The first value of ``key``, found in the unparsed text in one scan: the first line that starts
        with ``key:`` is the key's first line, and when it reads ``key: value`` that is the value. Any
        other shape there (an empty ``Key:``, ``Key:value``) is left to the parse to decide."""
        text, eol = self._text, self._eol
        if text.startswith(key + ":"):
            start = len(key) + 1
        else:
            needle = eol + key + ":"
            at = text.find(needle)
            if at < 0:
                return None
            start = at + len(needle)
        if not text.startswith(" ", start):
            return self.fields.get(key)
        end = text.find(eol, start)
        return text[start + 1:] if end < 0 else text[start + 1:end]

    @property
    def event(self) -> str | None:
        return self._event

    @property
    def response(self) -> str | None:
        return self.get("Response")

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    @property
    def is_greeting(self) -> bool:
        return "Greeting" in self.fields

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...
    @overload
    def get(self, key: str, default: str | None) -> str | None: ...

    def get(self, key: str, default: str | None = None) -> str | None:
        """Like ``fields.get``; an unparsed message answers from its text, so a handler that reads a
        handful of fields never splits the other twenty."""
        fields = self._fields
        if fields is None:
            value = self._first(key)
            return default if value is None else value
        return fields.get(key, default)

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        if self._fields is None and isinstance(key, str):
            return self._first(key) is not None
        return key in self.fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.fields, self.repeated, self.body) == (other.fields, other.repeated, other.body)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return f"Message(fields={self.fields!r}, repeated={self.repeated!r}, body={self.body!r})"

    def getall(self, key: str) -> list[str]:
        """Every value of ``key`` in arrival order."""
        fields = self.fields
        values = [fields[key]] if key in fields else []
        if self._repeated:
            values.extend(v for k, v in self._repeated if k == key)
        return values

    def timestamp(self) -> float | None:
        """The event's ``Timestamp`` (sent when the manager has ``timestampevents``)."""
        ts = self.get("Timestamp")
        if ts is None:
            return None
        try:
            return float(ts)
        except ValueError:
            return None

    def items(self) -> Iterator[tuple[str, str]]:
        yield from self.fields.items()
        if self._repeated:
            yield from self._repeated

    def encode(self) -> bytes:
        """Serialise back to wire bytes (the simulator and tests use this)."""
        lines = [f"{k}: {v}" for k, v in self.items()]
        if self.body:
            lines.extend(self.body)
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


#: Longest header value kept; longer ones are cut here, so a 1 MB caller name costs neither
#: the link nor the call's pop.
MAX_VALUE = 8192
_KEY_ROOM = 256


@dataclass(slots=True)
class Decoder:
    """Incremental AMI parser. ``feed()`` bytes as they arrive; get whole messages back.

    The greeting is a single line; every later message ends with an empty line.
    Captures saved with bare LF line endings are accepted too (detected on the
    greeting line), so support staff can replay files that went through an editor.
    """

    max_message_size: int = 1 << 20
    max_value: int = MAX_VALUE
    expect_greeting: bool = True
    truncated: int = 0  # values cut to ``max_value``
    _buffer: bytearray = field(default_factory=bytearray)
    _skipping: bool = False  # inside an over-long line: drop bytes up to its end
    _eol: str = "\r\n"
    _sep: bytes = b"\r\n\r\n"
    _text_sep: str = "\r\n\r\n"

    def feed(self, data: bytes) -> list[Message]:
        if self._skipping:
            data = self._skip(data)
        buf = self._buffer
        buf += data
        out: list[Message] = []
        if self.expect_greeting:
            nl = buf.find(b"\n")
            if nl < 0:
                self._check_size()
                return out
            line = bytes(buf[:nl])
            if line.endswith(b"\r"):
                line = line[:-1]
            else:
                self._eol, self._sep, self._text_sep = "\n", b"\n\n", "\n\n"
            del buf[: nl + 1]
            self.expect_greeting = False
            text = line.decode("utf-8", "replace")
            if not text.startswith(GREETING_PREFIX):
                raise ProtocolError(f"not an AMI greeting: {text[:80]!r}")
            out.append(Message({"Greeting": text}))
        sep = self._sep
        end = buf.rfind(sep)
        if end >= 0:
            # Every message that is complete, decoded at once: cutting at a separator never
            # splits a UTF-8 sequence, and one decode + split beats one per message.
            text = buf[:end].decode("utf-8", "replace")
            del buf[: end + len(sep)]
            eol = self._eol
            for block in text.split(self._text_sep):
                body = block.lstrip("\r\n") if block[:1] in ("\r", "\n") else block  # stray blank lines
                if body:
                    if len(body) > self.max_value:  # one len per message: only then look at values
                        msg = Message(*_split(body, eol))
                        self._truncate(msg)
                    else:
                        msg = Message._unparsed(body, eol)
                    out.append(msg)
        # Blank lines between messages (some proxies add them) are not messages.
        while buf[:2] == b"\r\n" or buf[:1] == b"\n":
            del buf[: 2 if buf[:1] == b"\r" else 1]
        if len(buf) > self.max_value:
            self._cut_long_line()
        self._check_size()
        return out

    def _cut_long_line(self) -> None:
        """The unfinished line is over ``max_value``: keep its head, drop the rest as it comes.
        The fields after it (Uniqueid, Linkedid come late in channel events) are kept."""
        buf = self._buffer
        start = buf.rfind(b"\n") + 1
        keep = self.max_value + _KEY_ROOM  # the key too: the value is cut to max_value when parsed
        if len(buf) - start > keep:
            del buf[start + keep:]
            self._skipping = True

    def _skip(self, data: bytes) -> bytes:
        nl = data.find(b"\n")
        if nl < 0:
            return b""
        self._skipping = False
        return self._eol.encode() + data[nl + 1:]

    def _truncate(self, msg: Message) -> None:
        limit = self.max_value
        for key, value in msg.fields.items():
            if len(value) > limit:
                msg.fields[key] = value[:limit]
                self.truncated += 1
        if msg.repeated:
            msg.repeated = [(k, v[:limit]) for k, v in msg.repeated]

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the end of a message."""
        return len(self._buffer)

    def _check_size(self) -> None:
        if len(self._buffer) > self.max_message_size:
            size = len(self._buffer)
            self._buffer.clear()
            raise ProtocolError(f"AMI message over {self.max_message_size} bytes without an end ({size} held)")


_Parts = tuple[dict[str, str], list[tuple[str, str]] | None, list[str] | None]


def _split(text: str, eol: str) -> _Parts:
    """A message's text as (fields, repeated, body)."""
    lines = text.split(eol)
    try:
        fields = dict([line.split(": ", 1) for line in lines])
    except ValueError:
        pass
    else:
        if len(fields) == len(lines):
            return fields, None, None
    return _split_slow(lines)


def _split_slow(lines: list[str]) -> _Parts:
    """Repeated keys, ``Key:`` with no space, or body lines (``Response: Follows``)."""
    fields: dict[str, str] = {}
    repeated: list[tuple[str, str]] | None = None
    body: list[str] | None = None
    for line in lines:
        key, sep, value = line.partition(": ")
        if not sep:
            if line.endswith(":") and " " not in line:  # "Key:" with an empty value
                key, value = line[:-1], ""
            else:
                if body is None:
                    body = []
                body.append(line)
                continue
        if key in fields:
            if repeated is None:
                repeated = []
            repeated.append((key, value))
        else:
            fields[key] = value
    return fields, repeated, body


def _check(key: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise UnsafeValueError(key, value)
    return value


def encode_action(action: str, action_id: str, fields: Mapping[str, ActionValue] | None = None) -> bytes:
    """Wire bytes for one action; raises :class:`UnsafeValueError` before anything is written."""
    parts = [f"Action: {_check('Action', action)}", f"ActionID: {_check('ActionID', action_id)}"]
    for key, value in (fields or {}).items():
        if not _KEY_RE.match(key):
            raise UnsafeValueError(key, key)
        values: Iterable[str] = (
            [str(value)] if isinstance(value, str | int | float) else [str(v) for v in value]
        )
        parts.extend(f"{key}: {_check(key, v)}" for v in values)
    return ("\r\n".join(parts) + "\r\n\r\n").encode()
