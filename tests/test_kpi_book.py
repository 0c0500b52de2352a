"""The KPI book against a plain recount of the same visits, whatever their order and timing."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from cti.kpi.book import KpiBook, KpiRules, VisitEnd, dims_of
from cti.kpi.erlang import agents_needed, service_level, wait_probability

DAY = 1_764_633_600.0  # 2025-12-02 00:00 UTC
RULES = KpiRules(service_level_s=20, service_level_by_queue={"complaints": 10}, short_abandon_s=5, window_s=900)

visits = st.builds(
    VisitEnd,
    queue=st.sampled_from(["support", "sales", "complaints"]),
    at=st.floats(DAY + 3600, DAY + 7200).map(lambda t: round(t, 3)),
    outcome=st.sampled_from(["answered", "transferred", "abandoned", "unanswered"]),
    wait_s=st.floats(0, 60).map(lambda w: round(w, 3)),
    reason=st.sampled_from([None, "timeout", "leaveempty", "joinempty", "full", "cancelled"]),
    tier=st.sampled_from(["standard", "vip1", "vip3"]),
)


def recount(vs: list[VisitEnd], rules: KpiRules, basis: str, keep: object = lambda v: True) -> dict[str, object]:
    """The definitions of docs/kpis.md, written out once more, the slow way."""
    vs = [v for v in vs if keep(v)]  # type: ignore[operator]
    answered = [v for v in vs if v.outcome in ("answered", "transferred")]
    abandons = [v for v in vs if v.outcome == "abandoned"]
    short = [v for v in abandons if v.wait_s < rules.short_abandon_s]
    abandoned = [v for v in abandons if v.wait_s >= rules.short_abandon_s]
    left = [v for v in vs if v.outcome == "unanswered"]
    offered = len(answered) + len(abandoned) + len(left)

    def within(v: VisitEnd) -> bool:
        return v.wait_s <= rules.service_level_by_queue.get(v.queue, rules.service_level_s)

    good_answered = sum(map(within, answered))
    if basis == "answered":
        sl = good_answered / len(answered) if answered else None
    elif basis == "offered":
        sl = good_answered / offered if offered else None
    else:
        both = len(answered) + len(abandoned)
        sl = (good_answered + sum(map(within, abandoned))) / both if both else None
    return {
        "offered": offered, "answered": len(answered), "abandoned": len(abandoned), "short_abandons": len(short),
        "service_level": sl, "answer_rate": len(answered) / offered if offered else None,
        "abandon_rate": len(abandoned) / offered if offered else None,
        "asa_s": sum(v.wait_s for v in answered) / len(answered) if answered else None,
        "unanswered": {r: sum(1 for v in left if (v.reason if v.reason in ("timeout", "leaveempty", "joinempty", "full")
                                                   else "other") == r)
                       for r in {(v.reason if v.reason in ("timeout", "leaveempty", "joinempty", "full") else "other")
                                 for v in left}},
    }


def close(got: dict[str, object], want: dict[str, object]) -> None:
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] is not None and math.isclose(got[key], value, abs_tol=1e-3), (key, got[key], value)  # type: ignore[arg-type]
        else:
            assert got[key] == value, (key, got[key], value)


@settings(max_examples=150, deadline=None)
@given(vs=st.lists(visits, max_size=60), basis=st.sampled_from(["answered", "offered", "sl2"]))
def test_today_and_the_rolling_window_equal_a_recount(vs: list[VisitEnd], basis: str) -> None:
    rules = KpiRules(**{**{f: getattr(RULES, f) for f in RULES.__slots__}, "basis": basis})  # type: ignore[arg-type]
    book = KpiBook(rules)
    for v in vs:  # in the order given, which is not time order
        book.visit_ended(v)
    now = DAY + 7300
    board = book.figures(now)
    close(board["today"]["all"][""], recount(vs, rules, basis))
    for queue in {v.queue for v in vs}:
        close(board["today"]["queue"][queue], recount(vs, rules, basis, lambda v, q=queue: v.queue == q))
        close(board["rolling"]["queue"][queue],
              recount(vs, rules, basis, lambda v, q=queue: v.queue == q and v.at >= now - rules.window_s))
    for tier in {v.tier for v in vs}:
        close(board["rolling"]["tier"][tier],
              recount(vs, rules, basis, lambda v, t=tier: v.tier == t and v.at >= now - rules.window_s))


def test_a_call_that_leaves_one_queue_and_is_answered_in_another_counts_in_each() -> None:
    book = KpiBook(RULES)
    book.visit_ended(VisitEnd("sales", DAY + 100, "unanswered", 30.0, "timeout"))
    book.visit_ended(VisitEnd("support", DAY + 112, "answered", 12.0))
    board = book.figures(DAY + 120)["today"]
    assert board["queue"]["sales"]["unanswered"] == {"timeout": 1} and board["queue"]["sales"]["answered"] == 0
    assert board["queue"]["support"]["answered"] == 1 and board["queue"]["support"]["service_level"] == 1.0
    assert board["all"][""]["offered"] == 2 and board["all"][""]["answer_rate"] == 0.5


def test_the_window_forgets_and_a_new_day_starts_at_local_midnight() -> None:
    book = KpiBook(KpiRules(window_s=900, timezone="Asia/Shanghai"))  # midnight there is 16:00 UTC
    midnight = DAY + 16 * 3600
    book.visit_ended(VisitEnd("support", midnight - 60, "answered", 3.0))
    book.handled(dims_of("support", "standard"), midnight - 30, 120.0)
    before = book.figures(midnight - 1)
    assert before["rolling"]["all"][""]["answered"] == 1 and before["today"]["all"][""]["aht_s"] == 120.0
    after = book.figures(midnight + 600)
    assert after["rolling"]["all"][""]["answered"] == 1, "still inside the 15 minutes"
    assert after["today"]["all"][""]["offered"] == 0 and "queue" not in after["today"], "yesterday's are not today's"
    assert book.figures(midnight + 900)["rolling"]["all"][""]["answered"] == 0


def test_repeat_rate_is_over_arrivals() -> None:
    book = KpiBook(RULES)
    for i, repeat in enumerate([False, True, False, True]):
        book.arrived(DAY + i, repeat=repeat)
    assert book.figures(DAY + 10)["today"]["all"][""]["repeat_rate"] == 0.5


# --- Erlang C -------------------------------------------------------------------------------------


def erlang_c_factorials(n: int, a: float) -> float:
    """The textbook formula, term by term."""
    top = a ** n / math.factorial(n) * n / (n - a)
    return top / (sum(a ** k / math.factorial(k) for k in range(n)) + top)


@given(n=st.integers(1, 60), load=st.floats(0.1, 59.9))
def test_wait_probability_is_the_textbook_formula(n: int, load: float) -> None:
    if n <= load:
        assert wait_probability(n, load) == 1.0
    else:
        assert math.isclose(wait_probability(n, load), erlang_c_factorials(n, load), rel_tol=1e-9)


@given(rate=st.floats(0.001, 2), aht=st.floats(10, 600), threshold=st.floats(1, 60), target=st.floats(0.5, 0.95))
def test_agents_needed_is_the_fewest_that_reach_the_target(rate: float, aht: float, threshold: float,
                                                           target: float) -> None:
    n = agents_needed(rate, aht, threshold, target)
    assert n is not None and n > rate * aht
    assert service_level(n, rate, aht, threshold) >= target
    assert n == 1 or service_level(n - 1, rate, aht, threshold) < target


def test_ten_erlangs_at_80_in_20_seconds() -> None:
    """The usual worked example: 360 calls an hour of 100 s (10 Erlangs), 80% within 20 s."""
    assert agents_needed(360 / 3600, 100, 20, 0.8) == 13
    assert round(service_level(13, 0.1, 100, 20), 3) == 0.843  # 1 - C(13, 10) e^(-3 x 20 / 100), C = 0.2853
    assert round(service_level(12, 0.1, 100, 20), 3) == 0.699
