"""The KPI facts as Redis keeps them: read back as written, the same fact twice is one, bad ones are
named and skipped, and a book told them again has the figures it had."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from cti.kpi.book import KpiBook, KpiRules, VisitEnd, dims_of
from cti.kpi.facts import Arrived, Fact, Handled, RedisFacts, decode, encode, tell
from cti.kpi.wrapups import WrapUp

DAY = 1_764_633_600.0  # 2025-12-02 00:00 UTC
times = st.floats(DAY, DAY + 86_399).map(lambda t: round(t, 3))
dims = st.builds(dims_of, st.one_of(st.none(), st.sampled_from(["support", "sales"])),
                 st.sampled_from(["standard", "vip_gold"]), st.one_of(st.none(), st.just("billing")),
                 st.lists(st.sampled_from(["billing", "fr"]), unique=True).map(tuple))
facts = st.one_of(
    st.builds(VisitEnd, queue=st.one_of(st.none(), st.just("support")), at=times,
              outcome=st.sampled_from(["answered", "abandoned", "unanswered"]), wait_s=st.floats(0, 600),
              reason=st.one_of(st.none(), st.just("timeout")), tier=st.just("vip1"),
              entry=st.one_of(st.none(), st.just("billing")), skills=st.just(("billing",))),
    st.builds(Handled, dims, times, st.floats(0, 3600)),
    st.builds(WrapUp, dims, times, st.floats(0, 600)),
    st.builds(Arrived, times, st.booleans()),
)


@given(facts)
def test_a_fact_reads_back_as_written(fact: Fact) -> None:
    back = decode(encode(fact))
    if isinstance(fact, WrapUp):  # its call and agent are in its id, not its body
        assert isinstance(back, WrapUp) and (back.dims, back.at, back.wrap_s) == (fact.dims, fact.at, fact.wrap_s)
    else:
        assert back == fact


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"k": "v"}', b'{"k": "x", "at": 1}', b'{"k": "t", "at": 1, "d": 3}'])
def test_what_is_not_a_fact_is_named(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a KPI fact"):
        decode(raw)


async def test_each_fact_is_kept_once_under_its_day(redis_client: aioredis.Redis) -> None:
    store = RedisFacts(redis_client, key_prefix="t:", timezone="Asia/Shanghai")
    first = VisitEnd(queue="support", at=DAY - 3600, outcome="answered", wait_s=4.0)  # 07:00 local on the 2nd
    late = VisitEnd(queue="support", at=DAY + 16 * 3600 + 60, outcome="abandoned", wait_s=9.0)  # the 3rd, 00:01
    await store.save([("v:a:0", first), ("a:a", Arrived(DAY - 3590, repeat=False))])
    await store.save([("v:a:0", VisitEnd(queue="sales", at=DAY - 3600, outcome="abandoned", wait_s=1.0)),
                      ("v:b:0", late)])  # a second server tells the first fact again: the first telling stays
    await redis_client.hset("t:kpi:facts:2025-12-02", "v:bad:0", b"{not json")
    got, bad = await store.load(DAY - 7200, DAY + 17 * 3600)
    assert dict(got) == {"v:a:0": first, "a:a": Arrived(DAY - 3590, repeat=False), "v:b:0": late} and bad == 1
    assert 0 < await redis_client.ttl("t:kpi:facts:2025-12-03") <= 3 * 86400
    assert dict((await store.load(DAY + 16 * 3600 + 1, DAY + 17 * 3600))[0]) == {"v:b:0": late}, "that day only"


@given(st.lists(facts, max_size=30))
def test_a_book_told_the_facts_again_has_the_same_figures(told: list[Fact]) -> None:
    rules = KpiRules(window_s=86_400 * 2)
    once, again = KpiBook(rules), KpiBook(rules)
    told = sorted(told, key=lambda f: f.at)  # as a restart tells them (sums in the same order)
    for fact in told:
        tell(once, fact)
    for fact in told:
        tell(again, decode(encode(fact)))
    assert once.figures(DAY + 86_399) == again.figures(DAY + 86_399)
