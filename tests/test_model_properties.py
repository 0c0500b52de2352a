"""Properties of the reducer: hostile or unknown input never changes what it makes of real calls."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cti.ami.codec import Decoder, Message
from cti.model.reducer import CallModel
from cti.replay import call_row
from tests.test_model_traces import AGENTS
from tests.traces import trace_bytes

EVENTS = ["AgentCalled", "AgentConnect", "AgentComplete", "Hangup", "QueueCallerJoin", "QueueCallerLeave",
          "QueueCallerAbandon", "QueueMemberStatus", "Newchannel", "NewCallerid", "VarSet", "MadeUpEvent",
          "BlindTransfer", "AttendedTransfer", "DialBegin", "DialEnd", "BridgeEnter", "Newexten", "QueueMemberPause"]
KEYS = ["Linkedid", "Uniqueid", "Queue", "Interface", "MemberName", "Position", "HoldTime", "Timestamp",
        "Status", "CallerIDNum", "Channel", "DestChannel", "DialStatus", "Application", "Context", "Exten",
        "Extension", "Variable", "Value", "Paused", "TransfererChannel", "DestType"]

junk_message = st.builds(
    lambda event, fields: Message({"Event": event, **fields}),
    st.sampled_from(EVENTS),
    st.dictionaries(st.sampled_from(KEYS), st.text(max_size=12) | st.sampled_from(["", "x", "-1", "1e999", "nan"]),
                    max_size=6),
)


def _messages(name: str) -> list[Message]:
    return Decoder().feed(trace_bytes(name))


def _rows(messages: list[Message]) -> list[dict]:
    model = CallModel(agents=AGENTS)
    for msg in messages:
        model.apply(msg)
    return sorted((call_row(c) for c in [*model.ended.values(), *model.calls.values()]
                   if not c.linkedid.startswith("junk")), key=lambda r: r["linkedid"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["basic", "abandon", "overflow", "blindxfer"]), st.data())
def test_junk_between_real_events_changes_nothing_real(name: str, data: st.DataObject) -> None:
    real = _messages(name)
    junk = data.draw(st.lists(junk_message, max_size=25))
    for msg in junk:
        # Junk must not name a real call: the property is about not crashing and not leaking.
        for key in ("Linkedid", "Uniqueid"):
            if key in msg.fields:
                msg.fields[key] = "junk" + msg.fields[key]
    # Hangups without a known leg and member events for unknown interfaces are legal noise.
    mixed = list(real)
    for msg in junk:
        mixed.insert(data.draw(st.integers(1, len(mixed))), msg)
    assert _rows(mixed) == _rows(real)


@settings(max_examples=25, deadline=None)
@given(st.lists(junk_message, max_size=60))
def test_junk_alone_never_raises(junk: list[Message]) -> None:
    model = CallModel(agents=AGENTS)
    for msg in junk:
        model.apply(msg, now=1.0)
    for call in model.calls.values():
        assert call.outcome in (None, "answered", "abandoned", "unanswered")


def test_malformed_known_event_is_counted_and_skipped() -> None:
    model = CallModel(agents=AGENTS)
    out = model.apply(Message({"Event": "AgentCalled", "Linkedid": "1.1", "Uniqueid": "1.1", "Channel": "X"}))
    assert "call.offered" not in [e.type for e in out]
    assert model.malformed == 1
    hangup = Message({"Event": "Hangup", "Uniqueid": "1.1", "Linkedid": "1.1"})
    assert model.apply(hangup, now=2.0)[-1].type == "call.finished"
