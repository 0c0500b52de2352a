"""The sans-IO codec on real captures, on split reads and on hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cti.ami.codec import MAX_VALUE, Decoder, Message, ProtocolError, UnsafeValueError, encode_action
from tests.traces import NAMES, trace_bytes


def _fields(messages: list[Message]) -> list[tuple[dict[str, str], list[tuple[str, str]] | None]]:
    return [(m.fields, m.repeated) for m in messages]


@pytest.mark.parametrize("name", NAMES)
def test_trace_parses_whole(name: str) -> None:
    data = trace_bytes(name)
    messages = Decoder().feed(data)
    assert messages[0].is_greeting
    assert messages[0].fields["Greeting"] == "Asterisk Call Manager/11.0.0"
    assert all(m.event or m.response for m in messages[1:])


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_messages(data: st.DataObject) -> None:
    raw = trace_bytes("basic")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=40)))
    decoder = Decoder()
    got: list[Message] = []
    prev = 0
    for cut in [*cuts, len(raw)]:
        got += decoder.feed(raw[prev:cut])
        prev = cut
    assert _fields(got) == _fields(Decoder().feed(raw))
    assert decoder.pending == 0


def test_multibyte_character_split_between_reads_survives() -> None:
    raw = "Asterisk Call Manager/11.0.0\r\nEvent: NewCallerid\r\nCallerIDName: Jürgen 王\r\n\r\n".encode()
    cut = raw.index("ü".encode()) + 1  # in the middle of the two-byte ü
    decoder = Decoder()
    messages = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])
    assert messages[1].fields["CallerIDName"] == "Jürgen 王"


def test_repeated_keys_are_kept_in_order() -> None:
    raw = (b"Asterisk Call Manager/11.0.0\r\n"
           b"Event: UserEvent\r\nUniqueid: 1.1\r\nUserEvent: CtiHold\r\nUniqueid: 1.2\r\n\r\n")
    msg = Decoder().feed(raw)[1]
    assert msg["Uniqueid"] == "1.1"
    assert msg.getall("Uniqueid") == ["1.1", "1.2"]
    assert Decoder(expect_greeting=False).feed(msg.encode())[0].getall("Uniqueid") == ["1.1", "1.2"]


def test_follows_body_and_empty_values() -> None:
    raw = (b"Asterisk Call Manager/2.10.0\r\n"
           b"Response: Follows\r\nPrivilege: Command\r\nline one\r\n--END COMMAND--\r\n\r\n"
           b"Event: X\r\nAccountCode: \r\nEmpty:\r\n\r\n")
    follows, event = Decoder().feed(raw)[1:]
    assert follows.body == ["line one", "--END COMMAND--"]
    assert event["AccountCode"] == "" and event["Empty"] == ""


def test_bare_lf_capture_is_accepted() -> None:
    raw = trace_bytes("basic").replace(b"\r\n", b"\n")
    assert _fields(Decoder().feed(raw)) == _fields(Decoder().feed(trace_bytes("basic")))


def test_not_ami_and_oversized_input_raise() -> None:
    with pytest.raises(ProtocolError, match="not an AMI greeting"):
        Decoder().feed(b"HTTP/1.1 200 OK\r\n")
    decoder = Decoder(max_message_size=64, expect_greeting=False)
    with pytest.raises(ProtocolError, match="over 64 bytes"):
        decoder.feed(b"Event: X\r\nData: " + b"x" * 100)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_encode_never_lets_a_line_break_through(value: str) -> None:
    if any(c in value for c in "\r\n\0"):
        with pytest.raises(UnsafeValueError):
            encode_action("Setvar", "a-1", {"Value": value})
    else:
        wire = encode_action("Setvar", "a-1", {"Variable": "X", "Value": value})
        msg = Decoder(expect_greeting=False).feed(wire)
        assert len(msg) == 1
        assert msg[0].fields["Value"] == value


def test_caller_id_injection_is_refused() -> None:
    evil = "13800000001\r\n\r\nAction: Originate\r\nChannel: PJSIP/premium"
    with pytest.raises(UnsafeValueError, match="CallerID"):
        encode_action("Originate", "a-2", {"CallerID": evil})
    with pytest.raises(UnsafeValueError):
        encode_action("Originate", "a-3", {"Bad Key:": "x"})


def test_repeated_action_values() -> None:
    wire = encode_action("Originate", "a-4", {"Variable": ["A=1", "B=2"]})
    assert wire.count(b"Variable: ") == 2


def test_stray_blank_lines_between_messages_are_ignored() -> None:
    raw = b"Asterisk Call Manager/11.0.0\r\n\r\nEvent: A\r\n\r\n\r\n\r\nEvent: B\r\nX: 1\r\n\r\n\r\n"
    decoder = Decoder()
    assert [m.fields for m in decoder.feed(raw)[1:]] == [{"Event": "A"}, {"Event": "B", "X": "1"}]
    assert decoder.pending == 0


def _event_with_huge_name(size: int) -> bytes:
    return (b"Event: Newchannel\r\nChannel: PJSIP/trunk-00000001\r\nCallerIDNum: 13800000001\r\nCallerIDName: "
            + b"N" * size + b"\r\nUniqueid: 1.1\r\nLinkedid: 1.1\r\n\r\nEvent: Hangup\r\nUniqueid: 1.1\r\n\r\n")


@pytest.mark.parametrize("chunk", [1 << 30, 4096, 65536, 1000])
def test_a_megabyte_value_is_truncated_and_the_link_survives(chunk: int) -> None:
    data = b"Asterisk Call Manager/11.0.0\r\n" + _event_with_huge_name(1 << 20)
    decoder, out = Decoder(), []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i : i + chunk])
    _greeting, channel, hangup = out
    assert channel.fields["CallerIDName"] == "N" * MAX_VALUE and decoder.truncated == 1
    assert (channel.fields["Uniqueid"], channel.fields["Linkedid"]) == ("1.1", "1.1"), "later fields kept"
    assert hangup.fields == {"Event": "Hangup", "Uniqueid": "1.1"} and decoder.pending == 0


_KEYS = ["Event", "Response", "ActionID", "Variable", "Value", "Linkedid", "X"]
_LINE = st.one_of(
    st.tuples(st.sampled_from(_KEYS), st.text(alphabet="ab: CTI_x", max_size=8)).map(lambda kv: f"{kv[0]}: {kv[1]}"),
    st.sampled_from(_KEYS).map(lambda k: f"{k}:"),  # a key with an empty value and no space
    st.tuples(st.sampled_from(_KEYS), st.text(alphabet="ab:x", min_size=1, max_size=4)).map(
        lambda kv: f"{kv[0]}:{kv[1]}"),  # no space after the colon: not a field (a body line)
    st.just("--END COMMAND--"),  # a body line
)


@given(st.lists(_LINE, min_size=1, max_size=8), st.sampled_from(["\r\n", "\n"]))
def test_unparsed_message_answers_as_the_parsed_one(lines: list[str], eol: str) -> None:
    """``get``/``in``/``[]``/``event``/``action_id`` read from the text agree with the full parse, whatever
    the shape."""
    text = eol.join(lines)
    eager = Message._unparsed(text, eol)
    want = dict(eager.fields)
    for key in _KEYS:
        lazy = Message._unparsed(text, eol)
        assert lazy.get(key) == want.get(key), (key, text)
        assert (key in Message._unparsed(text, eol)) == (key in want), (key, text)
        lazy = Message._unparsed(text, eol)
        if key in want:
            assert lazy[key] == want[key]
        else:
            with pytest.raises(KeyError):
                lazy[key]
    lazy = Message._unparsed(text, eol)
    assert (lazy.event, lazy.response, lazy.action_id) == (want.get("Event"), want.get("Response"),
                                                           want.get("ActionID"))
    assert lazy == eager and lazy.repeated == eager.repeated and lazy.body == eager.body
