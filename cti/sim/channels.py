"""Simulated channels and the AMI field blocks Asterisk builds from them.

Asterisk renders a channel as a fixed "snapshot" block (``Channel`` ...
``Linkedid``), optionally prefixed (``DestChannel`` ..., ``TransfereeChannel`` ...,
``LocalOneChannel`` ...); every call event is such blocks plus a few event
fields. Field order here follows the Asterisk 22 recordings in
``tests/fixtures/ami-traces`` exactly, because clients may rely on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["STATE_DESC", "Channel", "hangup_cause_text"]

#: ``ChannelState`` -> ``ChannelStateDesc`` (main/channel.c ast_state2str).
STATE_DESC = {
    0: "Down",
    1: "Rsrvd",
    2: "OffHook",
    3: "Dialing",
    4: "Ring",
    5: "Ringing",
    6: "Up",
    7: "Busy",
}

_CAUSE_TEXT = {0: "Unknown", 16: "Normal Clearing", 17: "User busy", 19: "No user responding", 26: "Answered elsewhere"}


def hangup_cause_text(cause: int) -> str:
    """``Cause-txt`` as Asterisk's ast_cause2str would print it (for the causes the simulator uses)."""
    return _CAUSE_TEXT.get(cause, "Unknown")


@dataclass(slots=True, kw_only=True, eq=False)
class Channel:
    """A live channel: just the state that shows in AMI snapshots and CoreShowChannel."""

    name: str
    uniqueid: str
    linkedid: str
    created: float
    state: int = 0
    caller_num: str = "<unknown>"
    caller_name: str = "<unknown>"
    connected_num: str = "<unknown>"
    connected_name: str = "<unknown>"
    context: str = "default"
    exten: str = "s"
    priority: int = 1
    application: str = ""
    application_data: str = ""
    bridge_id: str = ""
    #: the channel's dialplan variables as VarSet reported them (AMI Getvar, the CTI dialplan's ${CTI_*})
    variables: dict[str, str] = field(default_factory=dict)

    def snapshot(self, prefix: str = "") -> dict[str, str]:
        """The channel block of an event; ``prefix="Dest"`` for the called side."""
        return {
            f"{prefix}Channel": self.name,
            f"{prefix}ChannelState": str(self.state),
            f"{prefix}ChannelStateDesc": STATE_DESC.get(self.state, "Unknown"),
            f"{prefix}CallerIDNum": self.caller_num,
            f"{prefix}CallerIDName": self.caller_name,
            f"{prefix}ConnectedLineNum": self.connected_num,
            f"{prefix}ConnectedLineName": self.connected_name,
            f"{prefix}Language": "en",
            f"{prefix}AccountCode": "",
            f"{prefix}Context": self.context,
            f"{prefix}Exten": self.exten,
            f"{prefix}Priority": str(self.priority),
            f"{prefix}Uniqueid": self.uniqueid,
            f"{prefix}Linkedid": self.linkedid,
        }

    def set_caller(self, num: str, name: str) -> None:
        self.caller_num, self.caller_name = num, name

    def set_connected(self, num: str, name: str) -> None:
        self.connected_num, self.connected_name = num, name

    def duration(self, now: float) -> str:
        """``HH:MM:SS`` since creation, as CoreShowChannel prints it."""
        secs = max(0, int(now - self.created))
        return f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"
