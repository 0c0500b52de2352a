"""``cti replay``: a raw AMI capture in, one JSON line per call out.

Support staff feed it a customer's capture (the bytes an AMI client received)
to see what the call model makes of each call, without a PBX or a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from cti.ami.codec import Decoder
from cti.config import AgentConfig
from cti.model.events import CALL_ENDED
from cti.model.reducer import CallModel
from cti.model.state import Call

__all__ = ["call_row", "replay_chunks"]


def call_row(call: Call) -> dict[str, Any]:
    """The support-facing summary of one call."""
    return {
        "linkedid": call.linkedid,
        "caller": call.caller_num,
        "caller_name": call.caller_name,
        "queue": call.queue,
        "agent": call.agent,
        "outcome": call.outcome if call.ended else None,
        "wait_s": call.wait_s,
        "talk_s": call.talk_s,
        "ended": call.ended,
    }


def replay_chunks(chunks: Iterable[bytes], *, agents: Sequence[AgentConfig] = ()) -> Iterator[dict[str, Any]]:
    """Yield a row per call as it ends, then the calls still up when the capture stops.

    A capture may start mid-stream (no greeting): the decoder is told so when the
    first bytes do not look like one.
    """
    model = CallModel(agents=agents)
    decoder: Decoder | None = None
    for chunk in chunks:
        if decoder is None:
            decoder = Decoder(expect_greeting=chunk.startswith(b"Asterisk Call Manager/"))
        for msg in decoder.feed(chunk):
            for event in model.apply(msg):
                if event.type == CALL_ENDED and event.linkedid:
                    yield call_row(model.ended[event.linkedid])
    for call in list(model.calls.values()):
        yield call_row(call)
