"""BASELINE: documents defects of panoramisk 1.4 that our client fixes.

These tests pass because panoramisk is broken; if one fails after an upgrade,
the defect was fixed upstream and the note in docs/research can be updated.
The matching "after" tests are in tests/test_ami_client.py.
"""

from __future__ import annotations

from typing import Any

from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol

from cti.ami.codec import Decoder, Message, UnsafeValueError, encode_action

INJECTED = "Mallory\r\n\r\nAction: Hangup\r\nChannel: PJSIP/ceo-00000001"


async def test_baseline_panoramisk_serialises_crlf_as_a_second_action() -> None:
    # async: panoramisk's Action() creates an asyncio.Future and needs a running loop.
    action = Action({"Action": "Setvar", "Variable": "CALLERNAME", "Value": INJECTED})
    wire = str(action).encode()
    messages = Decoder(expect_greeting=False).feed(wire)
    assert [m.get("Action") for m in messages] == ["Setvar", "Hangup"]  # the defect: two actions
    assert messages[1]["Channel"] == "PJSIP/ceo-00000001"


def test_ours_refuses_the_same_value() -> None:
    try:
        encode_action("Setvar", "cti-1", {"Variable": "CALLERNAME", "Value": INJECTED})
    except UnsafeValueError as exc:
        assert exc.key == "Value"
    else:
        raise AssertionError("encode_action accepted a CR/LF value")


class _Collect:
    """Stands in for panoramisk's Manager: the protocol hands it every event."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def dispatch(self, message: Any) -> None:
        self.events.append(message)


def test_baseline_panoramisk_loses_a_multibyte_char_split_across_reads() -> None:
    protocol = AMIProtocol()
    protocol.connection_made(None)  # type: ignore[arg-type]  # no transport needed to receive
    protocol.encoding = "utf-8"  # even with utf-8 configured (the default is ascii)
    factory = _Collect()
    protocol.factory = factory
    wire = Message({"Event": "Newchannel", "CallerIDName": "Jürgen 王"}).encode()
    cut = wire.index("ü".encode()) + 1  # between the two bytes of ü
    protocol.data_received(b"Asterisk Call Manager/9.0.0\r\n")
    protocol.data_received(wire[:cut])
    protocol.data_received(wire[cut:])
    assert len(factory.events) == 1
    assert factory.events[0]["CallerIDName"] == "Jrgen 王"  # the defect: ü vanished


def test_ours_keeps_the_char_across_the_same_split() -> None:
    wire = Message({"Event": "Newchannel", "CallerIDName": "Jürgen 王"}).encode()
    cut = wire.index("ü".encode()) + 1
    decoder = Decoder(expect_greeting=False)
    got = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
    assert got[0]["CallerIDName"] == "Jürgen 王"
