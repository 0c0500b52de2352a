"""AMI events of a CTI-routed call as Asterisk 22 sends them (``extensions_cti.conf``), built in tests
of the routing controller, and the manual clock those tests drive it by."""

from __future__ import annotations

from dataclasses import dataclass

from cti.ami.codec import Decoder, Message


class ManualClock:
    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now = now_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def ami(*pairs: tuple[str, str]) -> Message:
    text = "\r\n".join(f"{k}: {v}" for k, v in pairs) + "\r\n\r\n"
    [msg] = Decoder(expect_greeting=False).feed(text.encode())
    return msg


def stamped(msg: Message, at_ms: int) -> Message:
    """The event as Asterisk stamps it (``timestampevents``): sent at ``at_ms``."""
    return Message(fields={**dict(msg.items()), "Timestamp": f"{at_ms / 1000:.6f}"})


@dataclass(frozen=True)
class Caller:
    """A caller's channels as extensions_cti.conf makes them: ``;1`` the phone, ``;2`` the held channel."""

    n: int
    number: str = "13800000401"

    @property
    def linkedid(self) -> str:
        return f"1800000000.{2 * self.n}"

    @property
    def uid(self) -> str:
        return f"1800000000.{2 * self.n + 1}"

    @property
    def channel(self) -> str:
        return f"Local/s@cti-entry-{self.n:08x};2"

    def _chan(self, context: str, exten: str = "s", priority: str = "4") -> list[tuple[str, str]]:
        return [("Channel", self.channel), ("ChannelState", "6"), ("ChannelStateDesc", "Up"),
                ("CallerIDNum", self.number), ("CallerIDName", "Caller"), ("ConnectedLineNum", self.number),
                ("ConnectedLineName", "Caller"), ("Language", "en"), ("AccountCode", ""), ("Context", context),
                ("Exten", exten), ("Priority", priority), ("Uniqueid", self.uid), ("Linkedid", self.linkedid)]

    def hold(self, entry: str = "billing") -> Message:
        return ami(("Event", "UserEvent"), ("Privilege", "user,all"), *self._chan("cti-hold"),
                   ("UserEvent", "CtiHold"), ("Uniqueid", self.uid), ("Entry", entry))

    def fallback(self) -> Message:
        return ami(("Event", "UserEvent"), ("Privilege", "user,all"), *self._chan("cti-hold", priority="6"),
                   ("UserEvent", "CtiFallback"), ("Uniqueid", self.uid), ("Queue", "support"))

    def no_answer(self, agent: str, status: str = "NOANSWER") -> Message:
        return ami(("Event", "UserEvent"), ("Privilege", "user,all"), *self._chan("cti-connect", priority="4"),
                   ("UserEvent", "CtiNoAnswer"), ("Uniqueid", self.uid), ("Agent", agent), ("Status", status))

    def agent_leg(self, ext: str) -> tuple[str, str]:
        return f"Local/{ext}@sim-agents-{self.n:08x};1", f"1800000001.{self.n}"

    def _dial(self, event: str, ext: str, *extra: tuple[str, str]) -> Message:
        dest, dest_uid = self.agent_leg(ext)
        return ami(("Event", event), ("Privilege", "call,all"), *self._chan("cti-connect", priority="2"),
                   ("DestChannel", dest), ("DestChannelState", "0"), ("DestChannelStateDesc", "Down"),
                   ("DestUniqueid", dest_uid), ("DestLinkedid", self.linkedid), *extra)

    def dial_begin(self, ext: str) -> Message:
        return self._dial("DialBegin", ext, ("DialString", f"{ext}@sim-agents/n"))

    def dial_end(self, ext: str, status: str) -> Message:
        return self._dial("DialEnd", ext, ("DialStatus", status))

    def hangup(self) -> Message:
        return ami(("Event", "Hangup"), ("Privilege", "call,all"), *self._chan("cti-connect"), ("Cause", "16"),
                   ("Cause-txt", "Normal Clearing"))

    def agent_hangup(self, ext: str) -> Message:
        dest, dest_uid = self.agent_leg(ext)
        return ami(("Event", "Hangup"), ("Privilege", "call,all"), ("Channel", dest), ("Uniqueid", dest_uid),
                   ("Linkedid", self.linkedid), ("Cause", "16"), ("Cause-txt", "Normal Clearing"))

    def blind_transfer(self, ext: str, to: str) -> Message:
        dest, dest_uid = self.agent_leg(ext)
        return ami(("Event", "BlindTransfer"), ("Privilege", "call,all"), ("Result", "Success"),
                   ("TransfererChannel", dest), ("TransfererUniqueid", dest_uid),
                   ("TransfereeChannel", self.channel), ("TransfereeUniqueid", self.uid),
                   ("IsExternal", "Yes"), ("Context", "xfer-queue"), ("Extension", to))

    def answered(self, ext: str) -> list[Message]:
        return [self.dial_begin(ext), self.dial_end(ext, "ANSWER")]
