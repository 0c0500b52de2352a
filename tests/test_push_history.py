"""Agent views and the per-agent event history behind snapshots and resume (real Redis)."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from cti.push.envelope import Envelope
from cti.push.history import AgentView, AgentViews, RedisHistory, fold


async def test_history_says_whether_it_still_reaches_back(redis_client: aioredis.Redis) -> None:
    history = RedisHistory(redis_client, key_prefix=f"h{uuid.uuid4().hex[:6]}:", maxlen=1000)
    assert await history.since("alice", 5) == ([], False), "nothing stored: the client must re-read"
    sent = [Envelope(type="call.updated", agent="alice", seq=s) for s in (7, 8, 9, 80, 81)]  # 80: a restart
    await history.append(sent)
    await history.append([Envelope(type="call.updated", agent="alice", seq=8)])  # not above the last: skipped
    frames, complete = await history.since("alice", 8)
    assert [seq for seq, _ in frames] == [9, 80, 81] and complete
    assert [Envelope.from_json(body) for _, body in frames] == sent[2:]
    assert (await history.since("alice", 81)) == ([], True), "up to date"
    assert not (await history.since("alice", 3))[1], "7 is the oldest kept: 4 to 6 may be lost"
    assert not (await history.since("alice", 8, limit=2))[1], "more than one read returns"
    views = AgentViews()
    views.restore("alice", await history.tail("alice", 2))
    assert views.view("alice").seq == 81


_TYPES = st.sampled_from(["call.offered", "call.answered", "call.updated", "call.ended", "call.offer_withdrawn",
                          "agent.state"])


@given(st.lists(st.tuples(_TYPES, st.sampled_from(["c1", "c2", "c3"])), max_size=30), st.data())
def test_fold_ignores_replays_and_duplicates(events: list[tuple[str, str]], data: st.DataObject) -> None:
    """Resume may send what a client already has: folding the stream with any earlier envelope
    repeated gives the view of the stream itself."""
    stream = [(kind, seq, {"linkedid": linkedid, "n": seq}) for seq, (kind, linkedid) in enumerate(events, 1)]
    once, twice = AgentView(), AgentView()
    for kind, seq, payload in stream:
        fold(once, kind, seq, payload)
    for i, (kind, seq, payload) in enumerate(stream):
        fold(twice, kind, seq, payload)
        if i and data.draw(st.booleans()):
            fold(twice, *stream[data.draw(st.integers(0, i))])
    assert once == twice
    shown = {linkedid for kind, linkedid in events}
    assert set(once.calls) <= shown
