"""Reconciliation of CTI routing mode: the router's view of each agent against their phone's device state
(``cti/router/reconcile.py``), and the store against Asterisk's channels after a login or a restart
(``cti/router/resync.py``). The pure rules first, with hypothesis where a rule is a property; then the
controller against a real redis-server, driven by AMI events in the captures' field order, its clock
moved by hand, the AMI actions answered by a stub as Asterisk 22 answered them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from cti.ami.codec import Message, encode_action
from cti.ami.errors import AmiActionError
from cti.config import AgentConfig, RoutingModeConfig
from cti.router import RouterStore
from cti.router.agent_state import STATUSES, TRANSITIONS
from cti.router.controller import RoutingController
from cti.router.reconcile import (
    BUSY_MARK,
    UNAVAILABLE_MARK,
    Device,
    Reconciler,
    Rules,
    decide,
    device_class,
)
from cti.router.resync import (
    BackOnHold,
    Enqueue,
    FellBack,
    Follow,
    Gone,
    TalkOver,
    channels_of,
    plan,
    uniqueid_ms,
)
from cti.router.store import AgentCall, HeldCall
from routing.config import RoutingConfig, parse_routing_config
from routing.model import AgentStatus, WaitingCall
from tests import cti_calls
from tests.cti_calls import ManualClock, ami, stamped

AGENTS = [
    AgentConfig(id="alice", name="Alice", interface="Local/1001@sim-agents/n", extension="1001"),
    AgentConfig(id="bob", name="Bob", interface="Local/1002@sim-agents/n", extension="1002"),
]
ROUTING: dict[str, Any] = {
    "skills": {"billing": "bills"},
    "languages": ["en"],
    "tiers": {"normal": {"priority": 100, "service_level": {"percent": 80, "within_s": 20}}},
    "entry_points": {"billing": {"tier": "normal", "requires": {"skills": {"billing": 1}}}},
    "not_ready_reasons": ["break", "no_answer"],
    "selection": "longest_idle",
    "reservation": {"offer_timeout_s": 15, "rona_not_ready_reason": "no_answer"},
    "wrapup_s": 5,
    "agents": {"alice": {"skills": {"billing": 3}, "languages": ["en"]},
               "bob": {"skills": {"billing": 3}, "languages": ["en"]}},
}
MODE = RoutingModeConfig(mode="cti", reservation_timeout_s=10, sweep_s=1)
RULES = Rules.of(MODE, parse_routing_config(ROUTING))  # grace 20 s, a dial in flight for 25 s, wrap-up 5 s
START_MS = 1_800_000_100_000  # after every Uniqueid below (1800000000.n): they were created before the lists

# ----- the device rules (pure) ----------------------------------------------------------------------------


def test_device_states_as_asterisk_names_them() -> None:
    assert [device_class(s) for s in ("NOT_INUSE", "INUSE", "BUSY", "RINGING", "RINGINUSE", "ONHOLD")] == [
        "idle", "busy", "busy", "busy", "busy", "busy"]
    assert device_class("UNAVAILABLE") == "unavailable"
    assert device_class("INVALID") == device_class("UNKNOWN") == device_class("") == "unknown"


def test_the_rules_have_the_documented_thresholds() -> None:
    assert (RULES.grace_ms, RULES.dial_ms, RULES.wrapup_ms, RULES.unavailable_reason) == (
        20_000, 25_000, 5_000, "no_answer")


def test_a_server_behind_its_events_waits_that_much_longer() -> None:
    late = RULES.behind(7_000)
    assert (late.grace_ms, late.dial_ms, late.busy_grace_ms, late.wrapup_ms) == (
        27_000, 32_000, RULES.busy_grace_ms + 7_000, 5_000)
    assert RULES.behind(0) is RULES and RULES.behind(-5) is RULES
    assert decide("reserved", "1.1", 5_000, idle(0), now_ms=30_000, rules=late) is None
    assert decide("reserved", "1.1", 5_000, idle(0), now_ms=32_001, rules=late) is not None


def idle(since_ms: int = 0, *, live: bool = True, raw: str = "NOT_INUSE") -> Device:
    return Device(device_class(raw), raw, since_ms, live)


def busy(since_ms: int = 0, *, live: bool = True, raw: str = "INUSE") -> Device:
    return Device("busy", raw, since_ms, live)


def test_an_agent_on_call_with_an_idle_phone_is_wrapped_up_after_the_grace() -> None:
    assert decide("on_call", "1.1", 0, idle(1_000), now_ms=21_000, rules=RULES) is None  # 20 s: not yet
    fix = decide("on_call", "1.1", 0, idle(1_000), now_ms=21_001, rules=RULES)
    assert fix is not None and (fix.kind, fix.before, fix.after, fix.expect_call, fix.call) == (
        "stuck_on_call", "on_call", "wrap_up", "1.1", "1.1")
    assert fix.wrap_until_ms == 21_001, "the wrap-up it would have had is over already"
    late = decide("on_call", "1.1", 30_000, idle(1_000), now_ms=50_001, rules=RULES)
    assert late is not None and late.wrap_until_ms == 50_001
    # not while the phone is busy, a dial to it is in flight, or its changes do not reach us
    assert decide("on_call", "1.1", 0, busy(), now_ms=10**6, rules=RULES) is None
    assert decide("on_call", "1.1", 0, idle(), now_ms=10**6, rules=RULES, dialing=True) is None
    assert decide("on_call", "1.1", 0, idle(live=False), now_ms=10**6, rules=RULES) is None
    assert decide("on_call", "1.1", 0, Device("unknown", "INVALID", 0, True), now_ms=10**6, rules=RULES) is None
    # an unregistered phone has no call on it either
    gone = decide("on_call", "1.1", 0, idle(raw="UNAVAILABLE"), now_ms=10**6, rules=RULES)
    assert gone is not None and gone.kind == "stuck_on_call"


def test_a_reserved_agent_with_an_idle_phone_gets_the_call_requeued() -> None:
    fix = decide("reserved", "1.1", 5_000, idle(0), now_ms=25_001, rules=RULES)
    assert fix is not None and (fix.kind, fix.after, fix.expect_call) == ("stuck_reserved", "ready", "1.1")
    assert decide("reserved", "1.1", 5_000, idle(0), now_ms=25_000, rules=RULES) is None, "counted from the offer"
    assert decide("reserved", None, 0, idle(), now_ms=10**6, rules=RULES) is None, "no call to requeue"


def test_a_ready_agent_with_a_busy_phone_is_taken_off_and_back() -> None:
    fix = decide("ready", None, 0, busy(10_000), now_ms=10_000, rules=RULES, changed=True)
    assert fix is not None and (fix.kind, fix.after, fix.call) == ("busy_outside", "on_call", BUSY_MARK)
    # without a fresh change, only once the phone has been busy a while (a freed agent's phone lags)
    assert decide("ready", None, 10_500, busy(10_000), now_ms=12_000, rules=RULES) is None
    assert decide("ready", None, 10_500, busy(10_000), now_ms=12_500, rules=RULES) is not None
    over = decide("on_call", BUSY_MARK, 0, idle(10**5), now_ms=10**5, rules=RULES)
    assert over is not None and (over.kind, over.after, over.expect_call, over.wrap_until_ms) == (
        "busy_outside_over", "wrap_up", BUSY_MARK, 10**5 + 5_000)
    assert decide("on_call", BUSY_MARK, 0, busy(), now_ms=10**6, rules=RULES) is None
    assert decide("ready", None, 0, idle(), now_ms=10**6, rules=RULES, changed=True) is None


def test_an_unavailable_phone_sets_the_agent_not_ready_until_it_is_back() -> None:
    down = Device("unavailable", "UNAVAILABLE", 0, True)
    fix = decide("ready", None, 0, down, now_ms=0, rules=RULES, changed=True)
    assert fix is not None and (fix.kind, fix.after, fix.reason, fix.call) == (
        "phone_unavailable", "not_ready", "no_answer", UNAVAILABLE_MARK)
    back = decide("not_ready", UNAVAILABLE_MARK, 0, idle(5), now_ms=5, rules=RULES, changed=True)
    assert back is not None and (back.kind, back.after, back.expect_call) == ("phone_available", "ready",
                                                                              UNAVAILABLE_MARK)
    assert decide("not_ready", None, 0, idle(5), now_ms=10**6, rules=RULES, changed=True) is None, \
        "a person's not ready is theirs"


STATES = st.sampled_from(["NOT_INUSE", "INUSE", "BUSY", "RINGING", "ONHOLD", "UNAVAILABLE", "INVALID", "UNKNOWN"])
DEVICES = st.builds(lambda raw, since, live: Device(device_class(raw), raw, since, live), STATES,
                    st.integers(0, 10**6), st.booleans())


@given(status=st.sampled_from(STATUSES), call=st.sampled_from([None, "1800000000.3", BUSY_MARK, UNAVAILABLE_MARK]),
       since=st.integers(0, 10**6), device=DEVICES, now=st.integers(0, 2 * 10**6), dialing=st.booleans(),
       changed=st.booleans())
def test_every_correction_is_a_legal_step_taken_only_on_evidence(
        *, status: AgentStatus, call: str | None, since: int, device: Device, now: int, dialing: bool,
        changed: bool) -> None:
    fix = decide(status, call, since, device, now_ms=now, rules=RULES, dialing=dialing, changed=changed)
    if fix is None:
        return
    assert fix.before == status and fix.after in TRANSITIONS[status]
    assert device.state != "unknown", "no reading, no change"
    assert status not in ("wrap_up", "logged_out")
    assert status != "not_ready" or call == UNAVAILABLE_MARK, "a person's not ready is never undone"
    if fix.kind in ("stuck_on_call", "stuck_reserved"):
        assert device.live and not dialing and device.state != "busy" and fix.expect_call == call
        assert now - max(device.since_ms, since) > RULES.grace_ms
    if status == "on_call" and device.state == "busy":
        raise AssertionError("a busy phone never loses its call")
    if fix.wrap_until_ms is not None:
        assert fix.wrap_until_ms >= now


@given(device=DEVICES, since=st.integers(0, 10**6), now=st.integers(0, 2 * 10**6))
def test_a_ready_agent_whose_phone_just_went_busy_is_never_offered_a_call(device: Device, since: int,
                                                                          now: int) -> None:
    fix = decide("ready", None, since, device, now_ms=now, rules=RULES, changed=True)
    assert (fix is not None and fix.after != "ready") == (device.state in ("busy", "unavailable"))


def test_the_book_reports_changes_of_class_and_follows_dials() -> None:
    book = Reconciler(AGENTS)
    assert book.observe_state("Local/1003@sim-agents", "INUSE", 0, live=True) is None, "nobody's phone"
    assert book.observe_state("Queue:support", "RINGING", 0, live=True) is None
    assert book.observe_state("Local/1001@sim-agents", "NOT_INUSE", 0, live=False) == "alice"
    assert book.observe_state("LOCAL/1001@SIM-AGENTS", "NOT_INUSE", 5, live=True) is None, "the same class"
    assert book.device("alice") == Device("idle", "NOT_INUSE", 0, True), "live from its first event on"
    assert book.observe_state("Local/1001@sim-agents", "INUSE", 10, live=True) == "alice"
    assert book.observe_state("Local/1001@sim-agents", "INUSE", 11, live=True) is None, "Asterisk repeats INUSE"
    assert book.followed() == ["alice"] and book.devices["bob"] == "local/1002@sim-agents"
    book.observe_state("Local/1001@sim-agents", "NOT_INUSE", 20, live=True)
    assert book.check("alice", "on_call", "1.1", now_ms=20, rules=RULES) is None
    book.observe_dial("DialBegin", "Local/1001@sim-agents-0000002a;1", 30)
    assert book.check("alice", "on_call", "1.1", now_ms=30 + RULES.grace_ms + 1, rules=RULES) is None, "dialling"
    fix = book.check("alice", "on_call", "1.1", now_ms=30 + RULES.dial_ms, rules=RULES)
    assert fix is not None and fix.kind == "stuck_on_call", "a dial with no end is in flight only so long"
    book.observe_dial("DialEnd", "Local/1001@sim-agents-0000002a;1", 40)
    assert book.check("alice", "on_call", "2.2", now_ms=10**6, rules=RULES) is None, "a new call: counted afresh"
    assert book.check("bob", "ready", None, now_ms=0, rules=RULES) is None, "no reading of bob's phone"


# ----- the resync plan (pure) ---------------------------------------------------------------------------------

HOLD = "cti-hold"


def chan(uid: str, name: str, *, context: str = HOLD, app: str = "MusicOnHold", linkedid: str | None = None,
         duration: str = "00:00:30") -> Message:
    return ami(("Event", "CoreShowChannel"), ("Channel", name), ("ChannelState", "6"),
               ("ChannelStateDesc", "Up"), ("Context", context), ("Exten", "s"), ("Priority", "5"),
               ("Uniqueid", uid), ("Linkedid", linkedid or uid), ("Application", app), ("ApplicationData", ""),
               ("Duration", duration), ("BridgeId", ""))


def held(call_id: str, state: str = "waiting", agent: str | None = None, at_ms: int = 0) -> HeldCall:
    return HeldCall(WaitingCall(id=call_id, entry_point="billing", tier="normal", enqueued_at_ms=at_ms),
                    state, agent, f"Local/s@cti-entry-{call_id};2")  # type: ignore[arg-type]


DEVICE_KEYS = {"alice": "local/1001@sim-agents", "bob": "local/1002@sim-agents"}


def test_the_plan_settles_what_ended_unseen_and_follows_what_is_up() -> None:
    channels = channels_of([
        chan("9.1", "Local/s@cti-entry-1;2"),                                      # waiting, still on hold
        chan("9.2", "Local/s@cti-entry-2;2", context="cti-connect", app="Dial", linkedid="9.0"),
        chan("9.5", "Local/1001@sim-agents-7;1", context="sim-agents", app="AppDial", linkedid="9.0"),
        chan("9.6", "Local/1001@sim-agents-7;2", context="sim-agents", app="Wait", linkedid="9.0"),
        chan("9.3", "Local/s@cti-entry-3;2", app="Queue"),                         # fell back to Queue()
        chan("9.7", "Local/s@cti-entry-4;2"),                                      # on hold, unknown to the store
        chan("9.8", "Local/s@cti-entry-5;2", app="Set"),                           # about to say CtiHold
        chan("9.9", "Local/s@cti-entry-6;2", context="cti-connect", app="Dial", linkedid="9.10"),
    ])
    store = [held("9.1"), held("9.2", "ringing", "alice"), held("9.3"), held("8.1"), held("8.2", "offered", "bob")]
    agents = {"alice": AgentCall("reserved", "9.2", None), "bob": AgentCall("reserved", "8.2", None),
              "chen": AgentCall("on_call", "8.3", None), "dora": AgentCall("on_call", "9.9", None),
              "eve": AgentCall("on_call", BUSY_MARK, None)}
    found = plan(channels, store, agents, hold_context=HOLD, taken_at_ms=60_000, agent_devices=DEVICE_KEYS)
    assert found.steps == (
        Follow("9.1", "Local/s@cti-entry-1;2", "9.1", "waiting", None, None, store[0].call),
        Follow("9.2", "Local/s@cti-entry-2;2", "9.0", "ringing", "alice", "9.5", store[1].call),
        FellBack("9.3"),
        Gone("8.1", "waiting", None),
        Gone("8.2", "offered", "bob"),
        TalkOver("chen", "8.3"),
        Follow("9.9", "Local/s@cti-entry-6;2", "9.10", "talking", "dora", None, None),
        Enqueue("9.7", "Local/s@cti-entry-4;2", "9.7", 30_000),
    )
    assert found.missing == {"8.1", "8.2", "8.3"}
    again = plan(channels, store, agents, hold_context=HOLD, taken_at_ms=60_000, agent_devices=DEVICE_KEYS,
                 followed={"9.1", "9.2", "9.9"})
    assert not any(isinstance(s, Follow) for s in again.steps), "what this server follows already is left alone"


def test_a_ringing_offer_back_on_hold_lost_its_no_answer() -> None:
    found = plan(channels_of([chan("9.2", "Local/s@cti-entry-2;2")]), [held("9.2", "ringing", "alice"),
                                                                        held("9.1", "offered", "bob")],
                 {}, hold_context=HOLD, taken_at_ms=60_000, agent_devices=DEVICE_KEYS)
    assert found.steps == (BackOnHold("9.2", "alice"), Gone("9.1", "offered", "bob"))
    found = plan(channels_of([chan("9.1", "Local/s@cti-entry-1;2")]), [held("9.1", "offered", "bob")], {},
                 hold_context=HOLD, taken_at_ms=60_000, agent_devices=DEVICE_KEYS)
    assert isinstance(found.steps[0], Follow), "an offer whose Redirect may be on its way is the sweep's"


def test_the_plan_never_judges_a_call_newer_than_the_list() -> None:
    """Another server may queue (or answer) a call after the list was taken: not gone."""
    taken = 1_800_000_010_000
    found = plan({}, [held("1.1", at_ms=taken - 1_000), held("1.2", at_ms=taken - 3_000)],
                 {"alice": AgentCall("on_call", "1800000008.5", None),
                  "bob": AgentCall("on_call", "1800000003.5", None), "chen": AgentCall("on_call", "no-epoch", None)},
                 hold_context=HOLD, taken_at_ms=taken, agent_devices=DEVICE_KEYS)
    assert found.steps == (Gone("1.2", "waiting", None), TalkOver("bob", "1800000003.5"), TalkOver("chen", "no-epoch"))
    assert uniqueid_ms("1800000008.5") == 1_800_000_009_000 and uniqueid_ms("pbx1-1800000008.5") == 1_800_000_009_000
    assert uniqueid_ms("no-epoch") is None


def test_a_live_link_settles_only_what_two_lists_in_a_row_lack() -> None:
    first = plan({}, [held("1.1")], {"bob": AgentCall("on_call", "1.2", None)}, hold_context=HOLD,
                 taken_at_ms=60_000, agent_devices=DEVICE_KEYS, confirm=frozenset())
    assert first.steps == () and first.missing == {"1.1", "1.2"}
    second = plan({}, [held("1.1")], {"bob": AgentCall("on_call", "1.2", None)}, hold_context=HOLD,
                  taken_at_ms=61_000, agent_devices=DEVICE_KEYS, confirm=first.missing)
    assert second.steps == (Gone("1.1", "waiting", None), TalkOver("bob", "1.2"))


# ----- the controller against a real Redis ------------------------------------------------------------------

network = pytest.mark.network
_prefixes = itertools.count()


VARIABLE_SET = ami(("Response", "Success"), ("Message", "Variable Set"))
REDIRECTED = ami(("Response", "Success"), ("Message", "Redirect successful"))


@dataclass
class FakeAmi:
    """AmiClient.action as far as the controller can tell, answering as Asterisk 22 did."""

    sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def action(self, name: str, fields: Mapping[str, str]) -> Message:
        encode_action(name, f"cti-{len(self.sent)}", fields)
        await asyncio.sleep(0)
        self.sent.append((name, dict(fields)))
        return VARIABLE_SET if name == "Setvar" else REDIRECTED

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
class Logins:
    connects: int = 1


@dataclass
class ListClient:
    """The AMI client as ``on_connect`` sees it: DeviceStateList answered as res_manager_devicestate.c does."""

    devices: list[Message] = field(default_factory=list)
    stats: Logins = field(default_factory=Logins)
    refuse: bool = False

    async def action_list(self, name: str, fields: dict[str, str] | None = None, *,
                          timeout: float | None = None) -> tuple[Message, list[Message]]:
        assert name == "DeviceStateList"
        if self.refuse:  # an Asterisk without res_manager_devicestate
            raise AmiActionError(name, ami(("Response", "Error"), ("Message", "Invalid/unknown command")))
        return ami(("Response", "Success"), ("EventList", "start"),
                   ("Message", "Device State Changes will follow")), list(self.devices)


def device(ext: str, state: str, *, listed: bool = False) -> Message:
    """A DeviceStateChange as the captures have it (a DeviceStateList item has no Privilege)."""
    head = [] if listed else [("Privilege", "call,all")]
    return ami(("Event", "DeviceStateChange"), *head, ("Device", f"Local/{ext}@sim-agents"), ("State", state))


@dataclass(frozen=True)
class Caller(cti_calls.Caller):
    """A caller as the controller tests build them, and as CoreShowChannels lists them."""

    def on_hold(self, app: str = "MusicOnHold") -> Message:
        """Its CoreShowChannel item while it waits in cti-hold."""
        return chan(self.uid, self.channel, app=app, linkedid=self.linkedid)

    def talking(self, ext: str) -> list[Message]:
        """Its CoreShowChannel items while it talks to ``ext``: the held channel in Dial, the agent's pair."""
        dest, dest_uid = self.agent_leg(ext)
        return [chan(self.uid, self.channel, context="cti-connect", app="Dial", linkedid=self.linkedid),
                chan(dest_uid, dest, context="sim-agents", app="AppDial", linkedid=self.linkedid),
                chan(f"1800000002.{self.n}", dest.replace(";1", ";2"), context="sim-agents", app="Wait",
                     linkedid=self.linkedid)]


@dataclass
class Server:
    controller: RoutingController
    store: RouterStore
    ami: FakeAmi

    async def feed(self, *messages: Message) -> None:
        for msg in messages:
            self.controller.on_event(msg)
            await self.controller.drain()
            await self.controller.tick()

    async def resync(self, channels: Sequence[Message] = (), devices: Sequence[Message] = (), *,
                     login: int = 1) -> None:
        """What the pipeline does after a login: the router's hook, then the events after it."""
        await self.controller.on_connect(ListClient(list(devices), Logins(login)), list(channels))
        await self.controller.drain()

    async def status(self, agent_id: str) -> tuple[AgentStatus, str | None]:
        agent = await self.store.agent(agent_id)
        assert agent is not None
        return agent.status, agent.not_ready_reason


@pytest.fixture
def config() -> RoutingConfig:
    return parse_routing_config(ROUTING)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_MS)


@pytest.fixture
async def make_server(redis_url: str, config: RoutingConfig,
                      clock: ManualClock) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Servers on one Redis and one key prefix: a second one built is the first one restarted (its
    memory gone, the store kept) or another server beside it."""
    prefix = f"test:rec:{next(_prefixes)}:"
    clients: list[aioredis.Redis] = []

    async def build(*, agents: Mapping[str, tuple[AgentStatus, int]] | None = None,
                    variables: Mapping[str, Mapping[str, str]] | None = None) -> Server:
        client = aioredis.from_url(redis_url, socket_timeout=5)
        clients.append(client)
        store = RouterStore(client, config, key_prefix=prefix)
        await store.apply_config()
        for agent_id, (status, idle_ms) in (agents or {}).items():
            await store.put_agent(config.agent_state(agent_id, status=status, idle_since_ms=idle_ms,
                                                     not_ready_reason="break" if status == "not_ready" else None))
        stub = FakeAmi()
        ctl = RoutingController(store, stub, AGENTS, MODE, call_vars=dict(variables or {}).get,
                                customer_of=lambda _lid: None, now_ms=clock)
        await ctl.start()
        return Server(ctl, store, stub)

    yield build
    keys = [k async for k in clients[0].scan_iter(match=f"{prefix}*")] if clients else []
    if keys:
        await clients[0].unlink(*keys)
    for c in clients:
        await c.aclose()


@network
async def test_the_store_lists_its_calls_and_agents_for_a_resync(
        make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("ready", 1)})
    ringing, offered, waiting = Caller(1), Caller(2), Caller(3)
    await server.feed(ringing.hold(), ringing.dial_begin("1001"), offered.hold(), waiting.hold())
    calls = await server.store.held_calls()
    assert [(h.call.id, h.state, h.agent, h.channel) for h in calls] == [
        (waiting.uid, "waiting", None, waiting.channel), (ringing.uid, "ringing", "alice", ringing.channel),
        (offered.uid, "offered", "bob", offered.channel)]
    assert await server.store.agent_calls() == {"alice": AgentCall("reserved", ringing.uid, None),
                                                "bob": AgentCall("reserved", offered.uid, None)}
    assert await server.store.agent_calls(["bob", "nobody"]) == {"bob": AgentCall("reserved", offered.uid, None)}


@network
async def test_an_agent_stuck_on_call_after_a_lost_hangup_is_wrapped_up(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await server.feed(caller.hold(), caller.dial_begin("1001"), device("1001", "INUSE"),
                      caller.dial_end("1001", "ANSWER"))
    assert await server.status("alice") == ("on_call", None)
    # The caller hangs up: Asterisk's Hangup never reaches the router, the phone's NOT_INUSE does.
    await server.feed(device("1001", "NOT_INUSE"))
    clock.advance(20)
    await server.controller.tick()
    assert await server.status("alice") == ("on_call", None), "the grace first"
    with capture_logs() as logs:
        clock.advance(1)
        await server.controller.tick()
    assert await server.status("alice") == ("wrap_up", None)
    [fixed] = [e for e in logs if e["event"] == "route.reconciled"]
    assert (fixed["kind"], fixed["agent"], fixed["call"], fixed["before"], fixed["after"]) == (
        "stuck_on_call", "alice", caller.uid, "on_call", "wrap_up")
    assert fixed["log_level"] == "warning" and "phone NOT_INUSE for 21000 ms" in fixed["why"]
    clock.advance(0.1)
    await server.controller.tick()  # the wrap-up it would have had is over: ready, and offered a call
    assert await server.status("alice") == ("ready", None)
    assert server.controller.counters.stuck_on_call == 1
    await server.feed(caller.hangup())  # the lost Hangup turning up after all changes nothing
    assert await server.status("alice") == ("ready", None)


@network
async def test_a_reservation_whose_no_answer_was_lost_is_requeued(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await server.feed(caller.hold(), caller.dial_begin("1001"), device("1001", "INUSE"))
    clock.advance(15)  # no answer: the dial ends and the phone is idle, but CtiNoAnswer is lost
    await server.feed(caller.dial_end("1001", "NOANSWER"), device("1001", "NOT_INUSE"))
    clock.advance(20)
    await server.controller.tick()
    assert await server.status("alice") == ("reserved", None), "the grace first"
    clock.advance(1)
    await server.controller.tick()
    assert server.controller.counters.stuck_reserved == 1
    assert server.ami.offers() == [(caller.channel, "alice")] * 2, "back in its place and offered again"
    assert await server.store.reservations() == {caller.uid: "alice"}


@network
async def test_a_server_behind_its_events_waits_for_them_before_it_judges_a_phone(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    """Alice's phone rang and she answered, but those events wait in this server's backlog: by its own
    clock the offer is past both the dial's time and the grace, by the events' Timestamp it is not."""
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("ready", 1)})
    first, other = Caller(1), Caller(2)
    offered_at = clock.now
    await server.feed(stamped(device("1001", "NOT_INUSE"), offered_at), stamped(first.hold(), offered_at),
                      stamped(first.dial_begin("1001"), offered_at + 100))
    clock.advance(1)
    await server.controller.tick()  # on time so far: the reservation is seen
    clock.advance(29)  # the dial is 25 s in flight, the grace 20 s: the server was busy elsewhere
    await server.feed(stamped(other.hold(), offered_at + 500))  # 29.5 s late
    assert server.controller.counters.stuck_reserved == 0
    await server.feed(stamped(device("1001", "RINGING"), offered_at + 600),
                      stamped(device("1001", "INUSE"), offered_at + 4000),
                      *(stamped(m, offered_at + 4000) for m in first.answered("1001")))
    assert await server.status("alice") == ("on_call", None)
    assert server.ami.offers() == [(first.channel, "alice"), (other.channel, "bob")], "one phone rang for each"


@network
async def test_a_ready_agent_on_a_call_outside_routing_is_not_offered_one(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    """Alice (idle the longest) answers a call of the fallback Queue(): the routed caller goes to Bob;
    when her phone is idle again she wraps up and is ready for the next."""
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("ready", 1)})
    with capture_logs() as logs:
        await server.feed(device("1001", "INUSE"))
    assert await server.status("alice") == ("on_call", None)
    assert [(e["kind"], e["log_level"]) for e in logs if e["event"] == "route.reconciled"] == [("busy_outside", "info")]
    first, second = Caller(1), Caller(2)
    await server.feed(first.hold(), second.hold())
    assert server.ami.offers() == [(first.channel, "bob")]
    clock.advance(60)
    await server.feed(device("1001", "NOT_INUSE"))
    assert await server.status("alice") == ("wrap_up", None)
    clock.advance(5)
    await server.controller.tick()
    assert server.ami.offers()[-1] == (second.channel, "alice")
    assert (server.controller.counters.busy_outside, server.controller.counters.busy_outside_over) == (1, 1)


@network
async def test_a_phone_still_busy_from_a_withdrawn_offer_is_not_taken_for_another_call(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await server.feed(caller.hold(), caller.dial_begin("1001"), device("1001", "INUSE"))
    clock.advance(3)
    await server.feed(caller.dial_end("1001", "CANCEL"))  # the caller hung up while it rang: alice is free
    clock.advance(1.5)
    await server.controller.tick()
    await server.feed(device("1001", "NOT_INUSE"))  # her phone says so a moment later
    assert await server.status("alice") == ("ready", None)
    assert server.controller.counters.busy_outside == 0


@network
async def test_an_unregistered_phone_takes_the_agent_off_until_it_is_back(
        make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("ready", 1)})
    await server.feed(device("1002", "UNAVAILABLE"), device("1001", "UNAVAILABLE"))
    assert await server.status("bob") == ("not_ready", "no_answer")
    await server.controller.set_not_ready("alice", "break")  # her own choice: the phone's return keeps it
    await server.feed(device("1001", "NOT_INUSE"), device("1002", "NOT_INUSE"))
    assert await server.status("bob") == ("ready", None)
    assert await server.status("alice") == ("not_ready", "break")
    counters = server.controller.counters
    assert (counters.phone_unavailable, counters.phone_available) == (2, 1)


@network
async def test_a_restart_while_talking_frees_the_agent_whose_call_ended_meanwhile(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    before = await make_server(agents={"alice": ("ready", 0), "bob": ("not_ready", 0)})
    talking, ended = Caller(1), Caller(2)
    await before.feed(talking.hold(), talking.dial_begin("1001"), talking.dial_end("1001", "ANSWER"))
    await before.controller.set_ready("bob")
    await before.feed(ended.hold(), ended.dial_begin("1002"), ended.dial_end("1002", "ANSWER"))
    clock.advance(30)  # the server stops; Bob's caller hangs up meanwhile
    after = await make_server()
    with capture_logs() as logs:
        await after.resync(talking.talking("1001"), [device("1001", "INUSE", listed=True),
                                                     device("1002", "NOT_INUSE", listed=True)])
    assert await after.status("bob") == ("wrap_up", None)
    assert await after.status("alice") == ("on_call", None)
    assert [(e["kind"], e["agent"], e["call"]) for e in logs if e["event"] == "route.reconciled"] == [
        ("resync_ended", "bob", ended.uid)]
    # Alice's call is followed again: its Hangup, after the restart, ends it as usual.
    await after.feed(talking.agent_hangup("1001"))
    assert await after.status("alice") == ("wrap_up", None)
    counters = after.controller.counters
    assert (counters.resync_ended, counters.resync_followed, counters.stuck_on_call) == (1, 1, 0)


@network
async def test_a_restart_settles_the_held_and_offered_calls_that_went_and_routes_the_waiting(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    before = await make_server(agents={"alice": ("ready", 0), "bob": ("not_ready", 0)})
    offered, gone, waiting = Caller(1), Caller(2), Caller(3)
    await before.feed(offered.hold(), gone.hold(), waiting.hold())
    assert before.ami.offers() == [(offered.channel, "alice")]
    clock.advance(30)
    after = await make_server()
    await after.resync([waiting.on_hold()])
    counters = after.controller.counters
    assert (counters.resync_freed, counters.resync_abandoned, counters.resync_followed) == (1, 1, 1)
    assert after.ami.offers() == [(waiting.channel, "alice")], "alice, freed, takes the caller still waiting"
    await after.feed(waiting.dial_begin("1001"), waiting.dial_end("1001", "ANSWER"))
    assert await after.status("alice") == ("on_call", None)


@network
async def test_a_caller_on_hold_that_redis_lost_is_queued_again_and_routed(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock, redis_client: aioredis.Redis) -> None:
    before = await make_server(agents={"alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await before.feed(caller.hold())
    await redis_client.flushdb()  # Redis restarted without persistence, and so did the server
    clock.advance(30)
    after = await make_server(variables={caller.linkedid: {"CTI_ENTRY": "billing",
                                                           "CTI_HOLD_START": str(START_MS // 1000)}})
    with capture_logs() as logs:
        await after.resync([caller.on_hold()])
    [fixed] = [e for e in logs if e["event"] == "route.reconciled"]
    assert (fixed["kind"], fixed["call"], fixed["after"]) == ("resync_enqueued", caller.uid, "waiting")
    assert after.ami.offers() == [(caller.channel, "alice")], "the agents came back ready; the caller kept its place"
    explained = after.controller.explain(caller.uid)
    assert explained and explained[0].trace.wait_ms == 30_000


@network
async def test_a_ringing_offer_back_on_hold_and_a_fallback_found_at_a_resync(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("not_ready", 0)})
    ringing, fell = Caller(1), Caller(2)
    await server.feed(ringing.hold(), ringing.dial_begin("1001"), fell.hold())
    clock.advance(30)  # the link dropped: the no-answer and the hold limit happened unseen
    await server.resync([ringing.on_hold(), fell.on_hold(app="Queue")], login=2)
    counters = server.controller.counters
    assert (counters.resync_requeued, counters.fallback) == (1, 1)
    assert server.ami.offers() == [(ringing.channel, "alice")] * 2
    assert [c.id for c in await server.store.waiting()] == []


@network
async def test_a_live_link_acts_on_a_gone_call_at_the_second_list(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    server = await make_server(agents={"alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    caller = Caller(1)
    await server.feed(caller.hold())
    clock.advance(30)
    await server.resync([caller.on_hold()])
    await server.resync([])  # the same login: a channel may be missing from one list
    assert [c.id for c in await server.store.waiting()] == [caller.uid]
    await server.resync([])
    assert await server.store.waiting() == [] and server.controller.counters.resync_abandoned == 1


@network
async def test_the_login_list_of_device_states_counts_and_a_refusal_is_survived(
        make_server: Callable[..., Awaitable[Server]]) -> None:
    server = await make_server(agents={"alice": ("ready", 0), "bob": ("ready", 1)})
    await server.resync([], [device("1001", "INUSE", listed=True), device("1002", "NOT_INUSE", listed=True)])
    assert await server.status("alice") == ("on_call", None), "on a call outside routing when we logged in"
    assert await server.status("bob") == ("ready", None)
    with capture_logs() as logs:
        await server.controller.on_connect(ListClient(refuse=True), [])
    assert "route.device_states_unread" in [e["event"] for e in logs]
    await server.controller.drain()


@network
async def test_run_handles_a_resync_in_its_place_among_the_events(
        make_server: Callable[..., Awaitable[Server]], clock: ManualClock) -> None:
    server = await make_server(agents={"alice": ("not_ready", 0), "bob": ("not_ready", 0)})
    ctl = server.controller
    caller = Caller(1)
    clock.advance(30)
    task = asyncio.create_task(ctl.run())
    try:
        with capture_logs() as logs:
            ctl.on_event(caller.hold())  # received before the login's list, which has the caller on hold
            await ctl.on_connect(ListClient(), [caller.on_hold()])
            for _ in range(200):
                if "route.resynced" in [e["event"] for e in logs]:
                    break
                await asyncio.sleep(0.01)
        assert [e["event"] for e in logs if e["event"] in ("route.waiting", "route.resynced")] == [
            "route.waiting", "route.resynced"]
        assert [c.id for c in await server.store.waiting()] == [caller.uid]
        assert (ctl.counters.resync_enqueued, ctl.counters.resync_followed) == (0, 0), "queued once, followed"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
