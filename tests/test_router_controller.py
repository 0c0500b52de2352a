"""The CTI routing mode controller against a real redis-server, driven by AMI events as Asterisk 22
sent them: the ``cti`` and ``ctiedge`` captures replayed event for event (with the call model
alongside, as the server runs it), and events built with the codec in the captures' field order for
the cases the captures do not have. The AMI actions go to a stub that records them and answers
with the replies the captures hold (``Variable Set``, ``Redirect successful``, ``No such channel``,
``Channel does not exist: …``). Time is a manual clock set from each event's ``Timestamp``."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from cti.ami.codec import Decoder, Message, encode_action
from cti.ami.errors import AmiActionError, AmiConnectionError
from cti.config import AgentConfig, RoutingModeConfig
from cti.model.reducer import CallModel
from cti.router import RouterStore
from cti.router.agent_state import AgentStateError, UnknownAgentError
from cti.router.controller import RoutingController
from routing.config import RoutingConfig, parse_routing_config
from routing.model import AgentStatus
from tests.cti_calls import Caller, ManualClock, ami, stamped
from tests.traces import trace_bytes

pytestmark = pytest.mark.network

_prefixes = itertools.count()

AGENTS = [
    AgentConfig(id="alice", name="Alice", interface="Local/1001@sim-agents/n", extension="1001"),
    AgentConfig(id="bob", name="Bob", interface="Local/1002@sim-agents/n", extension="1002"),
    AgentConfig(id="dora", name="Dora", interface="Local/1009@sim-agents/n", extension="1009"),
]
ROUTING: dict[str, Any] = {
    "skills": {"billing": "bills", "complaint_handling": "complaints"},
    "languages": ["en", "zh"],
    "tiers": {
        "normal": {"priority": 100, "service_level": {"percent": 80, "within_s": 20}},
        "vip": {"priority": 200, "customer_vip_tier": 1, "service_level": {"percent": 90, "within_s": 10}},
    },
    "entry_points": {
        "billing": {"tier": "normal", "requires": {"skills": {"billing": 3}},
                    "escalation": [{"after_s": 30, "min_level": 2}]},
        "complaints": {"tier": "normal", "requires": {"skills": {"complaint_handling": 1}}, "wrapup_s": 30},
    },
    "selection": "longest_idle",
    "reservation": {"offer_timeout_s": 15, "rona_not_ready_reason": "no_answer"},
    "agents": {
        "alice": {"skills": {"billing": 4, "complaint_handling": 2}, "languages": ["en", "zh"]},
        "bob": {"skills": {"billing": 2}, "languages": ["en"]},
        "dora": {"skills": {"billing": 3}, "languages": ["en", "zh"]},
    },
}
MODE = RoutingModeConfig(mode="cti", reservation_timeout_s=10, sweep_s=1)


def _messages(name: str) -> list[Message]:
    return Decoder().feed(trace_bytes(name))


def _replies(*names: str) -> dict[str, Message]:
    """The captures' responses by ActionID: what Asterisk 22 answered to each action."""
    return {m["ActionID"]: m for name in names for m in _messages(name) if m.response and "ActionID" in m}


REPLIES = _replies("cti", "ctiedge")
VARIABLE_SET = REPLIES["cap-5"]          # cti: Setvar CTI_AGENT
REDIRECTED = REPLIES["cap-6"]            # cti: Redirect to cti-connect
NO_SUCH_CHANNEL = REPLIES["cap-4"]       # ctiedge: Setvar on a channel that is gone
REDIRECT_NO_CHANNEL = REPLIES["cap-3"]   # ctiedge: Redirect of a channel that is gone





@dataclass
class FakeAmi:
    """AmiClient.action as far as the controller can tell: encodes first (CR/LF → UnsafeValueError),
    yields to the loop, then answers as Asterisk did in the captures."""

    gone: set[str] = field(default_factory=set)  # channels Asterisk no longer has
    down: bool = False
    sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def action(self, name: str, fields: Mapping[str, str]) -> Message:
        encode_action(name, f"cti-{len(self.sent)}", fields)
        await asyncio.sleep(0)
        if self.down:
            raise AmiConnectionError(f"AMI not connected; {name} not sent")
        self.sent.append((name, dict(fields)))
        if fields.get("Channel") in self.gone:
            raise AmiActionError(name, NO_SUCH_CHANNEL if name == "Setvar" else REDIRECT_NO_CHANNEL)
        return VARIABLE_SET if name == "Setvar" else REDIRECTED

    @property
    def redirects(self) -> list[dict[str, str]]:
        return [f for name, f in self.sent if name == "Redirect"]

    def offers(self) -> list[tuple[str, str]]:
        """(channel, agent) per Redirect, the agent from the Setvar CTI_AGENT sent just before it."""
        out, agent = [], ""
        for name, f in self.sent:
            if name == "Setvar" and f["Variable"] == "CTI_AGENT":
                agent = f["Value"]
            elif name == "Redirect":
                out.append((f["Channel"], agent))
        return out


@dataclass
class Server:
    """One CTI server: its call model, AMI stub, store connection and controller."""

    controller: RoutingController
    store: RouterStore
    ami: FakeAmi
    model: CallModel
    customers: dict[str, dict[str, Any]]  # directory records by linkedid
    variables: dict[str, dict[str, str]]  # CTI_* variables by linkedid, for callers the model never saw

    async def feed(self, msg: Message) -> None:
        self.model.apply(msg)
        self.controller.on_event(msg)
        await self.controller.drain()
        await self.controller.tick()

    async def status(self, agent_id: str) -> tuple[AgentStatus, str | None]:
        agent = await self.store.agent(agent_id)
        assert agent is not None
        return agent.status, agent.not_ready_reason


@pytest.fixture
def config() -> RoutingConfig:
    return parse_routing_config(ROUTING)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def make_server(redis_url: str, config: RoutingConfig,
                      clock: ManualClock) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Servers on one Redis and one key prefix: each call builds another (its own connection)."""
    prefix = f"test:ctl:{next(_prefixes)}:"
    clients: list[aioredis.Redis] = []

    async def build(*, agents: Mapping[str, tuple[AgentStatus, int]] | None = None, ami: FakeAmi | None = None,
                    mode: RoutingModeConfig = MODE, agent_configs: Iterable[AgentConfig] = AGENTS) -> Server:
        client = aioredis.from_url(redis_url, socket_timeout=5)
        clients.append(client)
        store = RouterStore(client, config, key_prefix=prefix)
        await store.apply_config()
        for agent_id, (status, idle) in (agents or {}).items():  # as left by servers before this one
            await store.put_agent(config.agent_state(agent_id, status=status, idle_since_ms=idle,
                                                     not_ready_reason="break" if status == "not_ready" else None))
        model = CallModel(agents=AGENTS)
        customers: dict[str, dict[str, Any]] = {}
        variables: dict[str, dict[str, str]] = {}

        def call_vars(linkedid: str) -> Mapping[str, str] | None:
            call = model.calls.get(linkedid)
            return variables.get(linkedid) or (None if call is None else call.vars)

        stub = ami or FakeAmi()
        ctl = RoutingController(store, stub, agent_configs, mode, call_vars=call_vars, customer_of=customers.get,
                                now_ms=clock)
        await ctl.start()
        return Server(ctl, store, stub, model, customers, variables)

    yield build
    keys = [k async for k in clients[0].scan_iter(match=f"{prefix}*")] if clients else []
    if keys:
        await clients[0].unlink(*keys)
    for c in clients:
        await c.aclose()


async def replay(servers: list[Server], clock: ManualClock, name: str, *, until: str | None = None,
                 at: Mapping[str, Callable[[], Awaitable[None]]] | None = None,
                 after: Callable[[Message], Awaitable[None]] | None = None) -> None:
    """Every event of a capture to every server, in order, with the clock at the event's Timestamp;
    ``at[action_id]`` runs where the capture has that action's reply, ``after`` after each event;
    ``until`` stops at a reply."""
    for msg in _messages(name):
        if msg.response is not None:
            if msg.action_id == until:
                return
            hook = (at or {}).get(msg.action_id or "")
            if hook is not None:
                await hook()
            continue
        if msg.event is None:
            continue
        ts = msg.timestamp()
        if ts is not None:
            clock.now = max(clock.now, int(ts * 1000))
        await asyncio.gather(*(s.feed(msg) for s in servers))
        if after is not None:
            await after(msg)


# ----- events the captures do not have, in their field order --------------------------------------------




async def feed(server: Server, *messages: Message) -> None:
    for msg in messages:
        await server.feed(msg)


# ----- the cti capture: hold, Redirect, no answer, hold again, answer, hang up ----------------------------

CTI_CHANNEL, CTI_CALL = "Local/s@cti-entry-00000040;2", "1795391605.129"
FIRST_HOLD_MS = 1795391609326


async def test_a_held_caller_is_offered_with_setvar_then_redirect(make_server: Callable[..., Awaitable[Server]],
                                                                 clock: ManualClock) -> None:
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("ready", 1), "bob": ("not_ready", 0)})
    await replay([server], clock, "cti", until="cap-4")  # up to the first CtiHold
    assert server.ami.sent == [
        ("Setvar", {"Channel": CTI_CHANNEL, "Variable": "CTI_AGENT", "Value": "dora"}),
        ("Setvar", {"Channel": CTI_CHANNEL, "Variable": "CTI_ENDPOINT", "Value": "Local/1009@sim-agents/n"}),
        ("Setvar", {"Channel": CTI_CHANNEL, "Variable": "CTI_RING_S", "Value": "15"}),
        ("Redirect", {"Channel": CTI_CHANNEL, "Context": "cti-connect", "Exten": "s", "Priority": "1"}),
    ]
    assert await server.store.reservations() == {CTI_CALL: "dora"}
    assert await server.status("dora") == ("reserved", None)
    assert server.controller.counters.offered == 1


async def test_the_cti_capture_from_hold_to_wrap_up_and_the_next_call(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    """Dora (1009) never answers: RONA keeps the caller's place and sets her not ready; Alice (1001)
    answers, hangs up first, wraps up for 10 s and then takes the next caller, who waited meanwhile."""
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("ready", 1), "bob": ("not_ready", 0)})
    seen: dict[str, Any] = {}

    async def after(msg: Message) -> None:
        if msg.get("UserEvent") == "CtiNoAnswer":
            seen["waiting"] = await server.store.waiting()
            seen["dora"] = await server.status("dora")

    with capture_logs() as logs:
        await replay([server], clock, "cti", after=after)
    assert [(w.id, w.enqueued_at_ms) for w in seen["waiting"]] == [(CTI_CALL, FIRST_HOLD_MS)], "its first place"
    assert seen["dora"] == ("not_ready", "no_answer")
    assert server.ami.offers() == [(CTI_CHANNEL, "dora"), (CTI_CHANNEL, "alice")]
    counters = server.controller.counters
    assert (counters.offered, counters.rona, counters.answered) == (2, 1, 1)
    assert await server.status("alice") == ("wrap_up", None)
    assert await server.store.waiting() == [] and await server.store.reservations() == {}
    events = [e["event"] for e in logs if e["event"].startswith("route.")]
    for name in ("route.waiting", "route.matched", "route.offered", "route.ringing", "route.rona", "route.answered",
                 "route.wrap_up"):
        assert name in events, name
    rona = next(e for e in logs if e["event"] == "route.rona")
    assert (rona["call"], rona["agent"], rona["status"]) == (CTI_CALL, "dora", "NOANSWER")
    wrap = next(e for e in logs if e["event"] == "route.wrap_up")
    assert wrap["reason"] == "agent hung up"

    ended = wrap["until_ms"]
    assert ended == 1795391637137 + 10_000, "10 s from the agent's hang-up"

    # The next caller waits while Alice wraps up (Dora is not ready, Bob is on a break) ...
    nxt = Caller(1)
    clock.advance(1)
    await feed(server, nxt.hold())
    assert server.ami.offers()[2:] == []
    clock.now = ended - 1
    await server.controller.tick()
    assert await server.status("alice") == ("wrap_up", None)
    # ... and gets her the moment it ends.
    clock.now = ended
    await server.controller.tick()
    assert server.ami.offers()[2:] == [(nxt.channel, "alice")]
    assert await server.status("alice") == ("reserved", None)
    assert (await server.store.agent("alice")).idle_since_ms == ended  # type: ignore[union-attr]


async def test_rona_requeues_in_place_and_the_caller_is_matched_again(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    first, second = Caller(1), Caller(2)
    await feed(server, first.hold())
    held_at = clock.now
    clock.advance(2)
    await feed(server, second.hold(), first.dial_begin("1009"))
    clock.advance(15)
    await feed(server, first.dial_end("1009", "NOANSWER"), first.no_answer("dora"))
    assert await server.status("dora") == ("not_ready", "no_answer")
    assert [(c.id, c.enqueued_at_ms) for c in await server.store.waiting()] == [
        (first.uid, held_at), (second.uid, held_at + 2000)], "the first caller keeps the first place"
    assert server.controller.counters.rona == 1
    await server.controller.set_ready("alice")
    assert server.ami.offers()[-1] == (first.channel, "alice"), "the requeued caller still goes first"
    await feed(server, first.hold())  # back on hold: a fresh CtiHold finds the call already offered
    assert len(server.ami.redirects) == 2
    # A late CtiNoAnswer of the first offer leaves the new one alone.
    await feed(server, first.no_answer("dora"))
    assert await server.store.reservations() == {first.uid: "alice"}
    assert server.controller.counters.rona == 1


async def test_busy_and_unavailable_count_as_no_answer(make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await feed(server, caller.hold(), caller.dial_end("1009", "CHANUNAVAIL"), caller.no_answer("dora", "CHANUNAVAIL"))
    assert await server.status("dora") == ("not_ready", "no_answer")
    assert [c.id for c in await server.store.waiting()] == [caller.uid]


# ----- the ctiedge capture: hang up on hold, fall back to Queue(), hang up while it rings -----------------

async def test_the_ctiedge_capture_abandons_and_fallback(make_server: Callable[..., Awaitable[Server]],
                                                        clock: ManualClock) -> None:
    """502 hangs up on hold, 503's hold runs out into Queue(support), 504 hangs up while Dora rings
    (DialEnd CANCEL): two abandons and a fallback, Dora ready again with no RONA."""
    server = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})

    async def dora_logs_in() -> None:  # where the capture's harness sent its Redirect
        await server.controller.set_ready("dora")

    with capture_logs() as logs:
        await replay([server], clock, "ctiedge", until="cap-25", at={"cap-24": dora_logs_in})
    assert server.ami.offers() == [("Local/s@cti-entry-00002958;2", "dora")]
    counters = server.controller.counters
    assert asdict(counters) | {"offered": 0} == asdict(type(counters)(abandoned_hold=1, abandoned_ringing=1,
                                                                      fallback=1))
    assert await server.status("dora") == ("ready", None)
    assert await server.status("bob") == ("not_ready", "break"), "app_queue's ring of 503 is not ours"
    assert await server.store.waiting() == [] and await server.store.reservations() == {}
    abandoned = [(e["call"], e["phase"]) for e in logs if e["event"] == "route.abandoned"]
    assert abandoned == [("1795449821.21169", "hold"), ("1795449821.21168", "ringing")]
    fallback = next(e for e in logs if e["event"] == "route.fallback")
    assert (fallback["call"], fallback["queue"]) == ("1795449821.21166", "support")


async def test_abandon_on_hold(make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await feed(server, caller.hold(), caller.hangup())
    assert server.controller.counters.abandoned_hold == 1
    assert await server.store.waiting() == []
    await server.controller.set_ready("dora")
    assert server.ami.sent == [], "nothing left to offer"


async def test_abandon_while_ringing_frees_the_agent_with_no_rona(make_server: Callable[..., Awaitable[Server]],
                                                                 clock: ManualClock) -> None:
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    ringing, next_caller = Caller(1), Caller(2)
    await feed(server, ringing.hold(), next_caller.hold(), ringing.dial_begin("1009"))
    dora = await server.store.agent("dora")
    clock.advance(5)
    await feed(server, ringing.dial_end("1009", "CANCEL"))
    counters = server.controller.counters
    assert (counters.abandoned_ringing, counters.rona) == (1, 0)
    assert server.ami.offers()[-1] == (next_caller.channel, "dora"), "free again, she takes the next caller"
    await feed(server, ringing.hangup())
    assert counters.abandoned_ringing == 1 and counters.abandoned_hold == 0, "counted once"
    assert (await server.store.agent("dora")).idle_since_ms == dora.idle_since_ms  # type: ignore[union-attr]


async def test_the_caller_hanging_up_first_starts_the_wrap_up(make_server: Callable[..., Awaitable[Server]],
                                                             clock: ManualClock) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "dora": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await feed(server, caller.hold(), *caller.answered("1001"))
    assert await server.status("alice") == ("on_call", None)
    assert server.controller.counters.answered == 1
    clock.advance(60)
    await feed(server, caller.hangup(), caller.agent_hangup("1001"))
    assert await server.status("alice") == ("wrap_up", None)
    clock.advance(10)
    await server.controller.tick()
    assert await server.status("alice") == ("ready", None)


async def test_an_entry_point_wrap_up_and_a_blind_transfer(make_server: Callable[..., Awaitable[Server]],
                                                          clock: ManualClock) -> None:
    """Complaints wrap up for 30 s (the entry point's own wrapup_s); a blind transfer of the caller
    ends the agent's part at once, and the caller's hang-up elsewhere changes nothing more."""
    server = await make_server(agents={"alice": ("ready", 0), "dora": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await feed(server, caller.hold("complaints"), *caller.answered("1001"))
    clock.advance(20)
    await feed(server, caller.blind_transfer("1001", "sales"))
    assert await server.status("alice") == ("wrap_up", None)
    await feed(server, caller.agent_hangup("1001"), caller.hangup())
    clock.advance(29)
    await server.controller.tick()
    assert await server.status("alice") == ("wrap_up", None)
    clock.advance(1)
    await server.controller.tick()
    assert await server.status("alice") == ("ready", None)


async def test_the_agent_leg_entering_the_bridge_answers(make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "dora": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    dest, dest_uid = caller.agent_leg("1001")
    enter = ami(("Event", "BridgeEnter"), ("Privilege", "call,all"), ("BridgeUniqueid", "b-1"), ("Channel", dest),
                ("Uniqueid", dest_uid), ("Linkedid", caller.linkedid))
    await feed(server, caller.hold(), caller.dial_begin("1001"), enter, caller.dial_end("1001", "ANSWER"))
    assert await server.status("alice") == ("on_call", None)
    assert server.controller.counters.answered == 1


# ----- the channel is gone, AMI is down, a value cannot be sent ------------------------------------------

@pytest.mark.parametrize("when", ["Setvar", "Redirect"])
async def test_a_gone_channel_frees_the_agent_for_the_next_caller(make_server: Callable[..., Awaitable[Server]],
                                                                 when: str) -> None:
    ami_stub = FakeAmi()
    server = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)},
                               ami=ami_stub)
    gone, waiting = Caller(1), Caller(2)
    await feed(server, gone.hold(), waiting.hold())
    ami_stub.gone.add(gone.channel)
    if when == "Redirect":  # the Setvars went through; the channel went before the Redirect
        original = ami_stub.action

        async def gone_at_redirect(name: str, fields: Mapping[str, str]) -> Message:
            if name == "Setvar":
                ami_stub.sent.append((name, dict(fields)))
                return VARIABLE_SET
            return await original(name, fields)

        ami_stub.action = gone_at_redirect  # type: ignore[method-assign]
    with capture_logs() as logs:
        await server.controller.set_ready("dora")
    redirected = [f["Channel"] for f in ami_stub.redirects]
    assert redirected == ([gone.channel] if when == "Redirect" else []) + [waiting.channel]
    assert server.controller.counters.gone == 1 and server.controller.counters.rona == 0
    assert await server.store.reservations() == {waiting.uid: "dora"}
    reason = next(e for e in logs if e["event"] == "route.gone")["reason"]
    assert reason == ("Setvar: No such channel" if when == "Setvar"
                      else "Redirect: Channel does not exist: Local/nosuch@cti-hold-00000000;2")


async def test_an_unsafe_value_is_refused_and_the_call_treated_as_gone(
        make_server: Callable[..., Awaitable[Server]]) -> None:
    bad = AgentConfig(id="dora", name="Dora", interface="Local/1009@sim-agents/n\r\nAction: Originate")
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)},
                               agent_configs=[AGENTS[0], AGENTS[1], bad])
    caller = Caller(1)
    await feed(server, caller.hold())
    assert [name for name, _ in server.ami.sent] == ["Setvar"], "nothing after the refused value"
    assert server.controller.counters.gone == 1
    assert await server.status("dora") == ("ready", None)


async def test_ami_down_requeues_and_the_sweep_offers_again(make_server: Callable[..., Awaitable[Server]],
                                                           clock: ManualClock) -> None:
    ami_stub = FakeAmi(down=True)
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)},
                               ami=ami_stub)
    caller = Caller(1)
    await feed(server, caller.hold())
    assert server.controller.counters.offer_failed == 1
    assert [c.id for c in await server.store.waiting()] == [caller.uid]
    assert await server.status("dora") == ("ready", None)
    ami_stub.down = False
    clock.advance(1)
    await server.controller.tick()
    assert ami_stub.offers() == [(caller.channel, "dora")]


# ----- fallback, escalation, stale reservations -----------------------------------------------------------

async def test_fallback_takes_the_call_out_of_the_router(make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    with capture_logs() as logs:
        await feed(server, caller.hold(), caller.fallback())
    assert server.controller.counters.fallback == 1
    assert await server.store.waiting() == []
    assert [e["queue"] for e in logs if e["event"] == "route.fallback"] == ["support"]
    await server.controller.set_ready("dora")
    assert server.ami.sent == []


async def test_the_sweep_lets_an_escalation_step_take_effect(make_server: Callable[..., Awaitable[Server]],
                                                            clock: ManualClock) -> None:
    """Billing asks for level 3; only Bob (level 2) is free. After 30 s the step caps it at 2."""
    server = await make_server(agents={"bob": ("ready", 0), "dora": ("not_ready", 0), "alice": ("not_ready", 0)})
    caller = Caller(1)
    await feed(server, caller.hold())
    assert server.ami.sent == []
    why = await server.controller.why_waiting(caller.uid)
    assert why is not None and ("bob", "level_too_low") in [(p.id, p.reason) for p in why.agents_passed]
    clock.advance(29)
    await server.controller.tick()  # a sweep, one second before the step
    assert server.ami.sent == []
    clock.advance(1)
    await server.controller.tick()
    assert server.ami.offers() == [(caller.channel, "bob")]
    [matched] = server.controller.explain(caller.uid)
    assert (matched.agent, matched.side, matched.trace.step, matched.trace.wait_ms) == ("bob", "call", 1, 30_000)


async def test_a_reservation_no_dial_followed_is_requeued(make_server: Callable[..., Awaitable[Server]],
                                                         clock: ManualClock) -> None:
    """A server reserved the call and died before its Redirect: after reservation_timeout_s another
    server's sweep gives the call back and offers it; a reservation whose dial began is left alone."""
    server = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    stale, ringing = Caller(1), Caller(2)
    await feed(server, stale.hold(), ringing.hold())
    dead = server.store  # the dead server's script ran; its Redirect never did
    await dead.set_agent_status("dora", "ready", now_ms=clock.now)
    await dead.set_agent_status("alice", "ready", now_ms=clock.now + 1)
    assert (await dead.match_for_call(stale.uid, clock.now)).agent_id == "dora"  # type: ignore[union-attr]
    assert (await dead.match_for_call(ringing.uid, clock.now)).agent_id == "alice"  # type: ignore[union-attr]
    await feed(server, ringing.dial_begin("1001"))
    clock.advance(9)
    await server.controller.tick()  # a sweep, one second early
    assert server.controller.counters.offer_expired == 0
    clock.advance(1)
    with capture_logs() as logs:
        await server.controller.tick()
    assert server.controller.counters.offer_expired == 1
    assert [e["call"] for e in logs if e["event"] == "route.offer_expired"] == [stale.uid]
    assert server.ami.offers() == [(stale.channel, "dora")], "offered again, by a live server"
    assert await server.store.reservations() == {stale.uid: "dora", ringing.uid: "alice"}


async def test_a_server_behind_its_events_does_not_take_its_own_offer_for_stale(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    """The offer's DialBegin left Asterisk in time but waits in this server's backlog: the sweep looks back
    as far as the events are late, so the call is not offered to a second agent (two phones ringing)."""
    server = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    first, other = Caller(1), Caller(2)
    await feed(server, stamped(first.hold(), clock.now))
    await server.controller.set_ready("dora")
    offered_at = clock.now
    clock.advance(12)  # reservation_timeout_s is 10: the server was busy elsewhere
    await feed(server, stamped(other.hold(), offered_at + 500))  # 11.5 s late
    await server.controller.tick()
    assert server.controller.counters.offer_expired == 0
    await feed(server, stamped(first.dial_begin("1009"), offered_at + 1000))
    clock.advance(1)
    await feed(server, stamped(other.fallback(), clock.now))  # caught up: the lag is gone
    await server.controller.tick()
    assert server.controller.counters.offer_expired == 0
    assert server.ami.offers() == [(first.channel, "dora")], "one phone rang"
    assert await server.store.reservations() == {first.uid: "dora"}


async def test_the_channel_comes_from_the_store_when_another_server_queued_the_call(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    first = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await feed(first, caller.hold())
    late = await make_server()  # started after the CtiHold: it never saw it
    await late.controller.set_ready("dora")
    assert late.ami.offers() == [(caller.channel, "dora")]
    await feed(late, caller.dial_begin("1009"))  # and it follows the call from there
    for _ in range(11):
        clock.advance(1)
        await late.controller.tick()
    assert late.controller.counters.offer_expired == 0
    await feed(late, caller.dial_end("1009", "ANSWER"))
    assert await late.status("dora") == ("on_call", None)


async def test_the_ivr_variables_and_the_account_manager_steer_the_match(
        make_server: Callable[..., Awaitable[Server]]) -> None:
    """The IVR chose billing in Chinese; Dora has waited longest, but the caller's account manager
    is Alice: she gets the call. The customer's VIP record raises the tier."""
    server = await make_server(agents={"dora": ("ready", 0), "alice": ("ready", 50), "bob": ("ready", 0)})
    vip = Caller(1)
    server.variables[vip.linkedid] = {"CTI_ENTRY": "billing", "CTI_LANGUAGE": "zh", "CTI_TIER": ""}
    server.customers[vip.linkedid] = {"id": "c-1", "account_manager": "alice", "vip_tier": 2}
    with capture_logs() as logs:
        await feed(server, vip.hold(entry=""))
    assert server.ami.offers() == [(vip.channel, "alice")]
    waiting = next(e for e in logs if e["event"] == "route.waiting")
    assert (waiting["entry_point"], waiting["tier"], waiting["language"], waiting["preferred"]) == (
        "billing", "vip", "zh", "alice")
    [matched] = server.controller.explain(vip.uid)
    assert matched.trace.preferred_agent == "alice"


async def test_a_redis_that_lost_the_routing_state_is_filled_again(
        make_server: Callable[..., Awaitable[Server]], redis_client: aioredis.Redis) -> None:
    """Redis restarted without persistence: the next script finds no config. The server puts the
    config back, its held callers in their places and the agents as at start-up, then routes on."""
    server = await make_server(agents={"dora": ("not_ready", 0), "alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    first, second = Caller(1), Caller(2)
    await feed(server, first.hold())
    await redis_client.flushdb()
    with capture_logs() as logs:
        await feed(server, second.hold())
    assert "route.recovered" in [e["event"] for e in logs]
    assert server.controller.counters.redis_errors == 1
    # everyone ready from the same moment: by id, the oldest caller first
    assert server.ami.offers() == [(first.channel, "alice"), (second.channel, "dora")]


# ----- several servers ------------------------------------------------------------------------------------

async def test_two_servers_on_the_same_events_redirect_once_per_match(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    agents: dict[str, tuple[AgentStatus, int]] = {"dora": ("ready", 0), "alice": ("ready", 1), "bob": ("not_ready", 0)}
    servers = [await make_server(agents=agents), await make_server()]
    await replay(servers, clock, "cti")
    offers = [o for s in servers for o in s.ami.offers()]
    assert sorted(offers) == sorted([(CTI_CHANNEL, "dora"), (CTI_CHANNEL, "alice")])
    assert all(len(s.ami.redirects) == len(s.ami.offers()) for s in servers)
    total = {k: sum(asdict(s.controller.counters)[k] for s in servers) for k in asdict(servers[0].controller.counters)}
    assert (total["offered"], total["rona"], total["answered"], total["redis_errors"]) == (2, 1, 1, 0)
    # The next caller waits for Alice's wrap-up; both servers' timers fire; one offers.
    nxt = Caller(1)
    await asyncio.gather(*(s.feed(nxt.hold()) for s in servers))
    clock.now = 1795391637137 + 10_000
    await asyncio.gather(*(s.controller.tick() for s in servers))
    assert sorted(o for s in servers for o in s.ami.offers()[-1:] if o[0] == nxt.channel) == [(nxt.channel, "alice")]
    assert sum(len(s.ami.redirects) for s in servers) == 3
    # And both see the caller hang up while it rings: one abandon, Alice ready once.
    await asyncio.gather(*(s.feed(nxt.dial_begin("1001")) for s in servers))
    await asyncio.gather(*(s.feed(nxt.hangup()) for s in servers))
    assert sum(s.controller.counters.abandoned_ringing for s in servers) == 1
    assert await servers[0].status("alice") == ("ready", None)


# ----- the agent state machine, by hand --------------------------------------------------------------------

async def test_illegal_agent_steps_are_refused(make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "dora": ("not_ready", 0), "bob": ("not_ready", 0)})
    ctl = server.controller
    caller = Caller(1)
    await feed(server, caller.hold())
    assert await server.status("alice") == ("reserved", None)
    with pytest.raises(AgentStateError, match="'alice' is reserved: cannot go ready"):
        await ctl.set_ready("alice")
    with pytest.raises(AgentStateError):
        await ctl.log_out("alice")
    await feed(server, *caller.answered("1001"))
    with pytest.raises(AgentStateError, match="is on_call: cannot go not_ready"):
        await ctl.set_not_ready("alice", "break")
    assert await server.status("alice") == ("on_call", None), "unchanged by the refusals"
    await feed(server, caller.hangup())
    await ctl.set_not_ready("alice", "lunch")  # a break straight after the call, wrap-up cut short
    assert await server.status("alice") == ("not_ready", "lunch")
    await ctl.set_ready("alice")
    await ctl.set_ready("alice")  # again: changes nothing
    await ctl.log_out("alice")
    assert await server.status("alice") == ("logged_out", None)
    with pytest.raises(ValueError, match="unknown not-ready reason 'nap'"):
        await ctl.set_not_ready("alice", "nap")
    with pytest.raises(UnknownAgentError, match="unknown agent 'zed'"):
        await ctl.set_ready("zed")


async def test_start_keeps_the_agents_another_server_has(make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"alice": ("not_ready", 5), "dora": ("ready", 7)})
    assert await server.status("alice") == ("not_ready", "break")
    assert (await server.store.agent("dora")).idle_since_ms == 7  # type: ignore[union-attr]
    assert await server.status("bob") == ("ready", None), "new to the store: ready"


# ----- the run loop ----------------------------------------------------------------------------------------

async def test_run_handles_events_in_order(make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "dora": ("not_ready", 0), "bob": ("not_ready", 0)})
    ctl = server.controller
    caller = Caller(1)
    ignored = ami(("Event", "Newexten"), ("Channel", caller.channel), ("Uniqueid", caller.uid))
    task = asyncio.create_task(ctl.run())
    try:
        for msg in [ignored, caller.hold(), *caller.answered("1001"), caller.hangup()]:
            ctl.on_event(msg)  # all at once, as the AMI reader would
        assert ctl.pending == 4, "Newexten is dropped on arrival"
        for _ in range(200):
            if ctl.pending == 0 and (await server.status("alice"))[0] == "wrap_up":
                break
            await asyncio.sleep(0.01)
        assert await server.status("alice") == ("wrap_up", None)
        assert ctl.counters.answered == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
