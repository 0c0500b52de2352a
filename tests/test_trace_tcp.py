"""Every recorded Asterisk 22 capture, sent over a real TCP AMI connection to the real client.

The replay server sends the recorded event bytes exactly (in small chunks, so
messages and UTF-8 sequences are split across reads); the AMI client logs in,
decodes and delivers in order; the call model must make of it exactly what it
makes of the file read directly.
"""

from __future__ import annotations

import asyncio

import pytest

from cti.ami.client import AmiClient
from cti.ami.codec import Decoder, Message
from cti.config import AmiConfig
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.replay import call_row, replay_chunks
from cti.sim.replay import ReplayServer
from tests.test_model_traces import AGENTS
from tests.traces import NAMES, TRACES, trace_bytes


async def replay_over_tcp(name: str, chunk_size: int) -> tuple[CallModel, list[DomainEvent]]:
    recorded = [m for m in Decoder().feed(trace_bytes(name)) if m.event]
    last = recorded[-1].fields
    model, out = CallModel(agents=AGENTS), []
    done = asyncio.Event()

    async def on_event(msg: Message) -> None:
        out.extend(model.apply(msg))
        if msg.fields == last:
            done.set()

    async with ReplayServer(path=TRACES / name / "ami-raw.txt", chunk_size=chunk_size) as server:
        client = AmiClient(config=AmiConfig(host="127.0.0.1", port=server.port), on_event=on_event)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(client.run(), name="test.ami")
            await asyncio.wait_for(done.wait(), 20)
            await client.close()
    return model, out


def rows(model: CallModel) -> list[dict]:
    return sorted((call_row(c) for c in [*model.ended.values(), *model.calls.values()]),
                  key=lambda r: r["linkedid"])


@pytest.mark.parametrize("name", NAMES)
async def test_tcp_replay_matches_file_replay(name: str) -> None:
    model, _ = await replay_over_tcp(name, chunk_size=997)
    direct = sorted(replay_chunks([trace_bytes(name)], agents=AGENTS), key=lambda r: r["linkedid"])
    assert rows(model) == direct
    assert not model.calls, "every call in the captures ends"


async def test_burst_over_tcp_eight_answered_vip_first() -> None:
    model, out = await replay_over_tcp("burst", chunk_size=61)
    assert len(model.ended) == 8 and all(c.outcome == "answered" for c in model.ended.values())
    joined_vip = next(i for i, e in enumerate(out) if e.type == ev.CALL_QUEUED and e.data["caller"] == "8613900000001")
    already_offered = {e.linkedid for e in out[:joined_vip] if e.type == ev.CALL_OFFERED}
    answered = [e.data["caller"] for e in out if e.type == ev.CALL_ANSWERED and e.linkedid not in already_offered]
    assert answered[0] == "8613900000001"
    members = {m.name: m for m in model.members.values()}
    assert set(members) == {"Alice", "Bob", "Chen"} and all(m.agent_id for m in members.values())
    answered_by = [e.agent for e in out if e.type == ev.CALL_ANSWERED]
    per_agent = {a: answered_by.count(a) for a in ("alice", "bob", "chen")}
    assert sum(per_agent.values()) == 8 and min(per_agent.values()) >= 2


async def test_abandon_over_tcp_exactly_one_abandoned() -> None:
    model, out = await replay_over_tcp("abandon", chunk_size=5)
    outcomes = [c.outcome for c in model.ended.values()]
    assert outcomes.count("abandoned") == 1 and outcomes.count("answered") == 4
    assert model.queues["support"].abandoned == 1
    assert [e.data["caller"] for e in out if e.type == ev.CALL_LEFT_QUEUE] == ["13800000299"]
