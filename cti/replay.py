"""``cti replay``: a raw AMI capture in, one JSON line per call out.

Support staff feed it a customer's capture (the bytes an AMI client received)
to see what the call model makes of each call, without a PBX or a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from cti.ami.codec import Decoder
from cti.config import AgentConfig
from cti.model.events import CALL_FINISHED
from cti.model.ivr import ivr_part
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
        "segments": [seg.snapshot() for seg in call.segments],
        **({"merged_into": call.merged_into} if call.merged_into else {}),
        **({"ivr": ivr} if (ivr := ivr_part(call.vars)) is not None else {}),
    }


def replay_chunks(chunks: Iterable[bytes], *, agents: Sequence[AgentConfig] = ()) -> Iterator[dict[str, Any]]:
    """Yield a row per call in the order the calls ended, then the calls still up.

    Rows come at the end of the capture because app_queue may report an agent's
    talk time (``AgentComplete``) after the last leg hung up. A capture may start
    mid-stream (no greeting): the decoder is told so when the first bytes do not
    look like one.
    """
    model = CallModel(agents=agents)
    decoder: Decoder | None = None
    ended: list[Call] = []
    for chunk in chunks:
        if decoder is None:
            decoder = Decoder(expect_greeting=chunk.startswith(b"Asterisk Call Manager/"))
        for msg in decoder.feed(chunk):
            for event in model.apply(msg):
                if event.type == CALL_FINISHED and event.linkedid:
                    ended.append(model.ended[event.linkedid])
    for call in [*ended, *model.calls.values()]:
        yield call_row(call)
