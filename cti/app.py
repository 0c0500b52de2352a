"""Wiring: build the adapters from the config, inject them, run them as one task group.

Nothing here decides anything about calls; it connects the AMI client, the
call model pipeline, Redis, the push transports and the web edge, and keeps
their lifetimes nested so a stop closes every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from cti.admin.flows import FlowAdmin
from cti.admin.routing import RoutingAdmin
from cti.admin.versions import AuditLog, ConfigVersions
from cti.agents import AgentRegistry
from cti.agi import AgiServer, AgiSettings, FlowRegistry, IvrResult, customer_directory
from cti.ami.client import AmiClient
from cti.ami.codec import Message
from cti.auth.store import TokenStore
from cti.auth.tokens import TokenError
from cti.auth.web import AUTH, cors_middleware, require_agent
from cti.commands import CommandError, CommandExecutor, parse_command
from cti.config import Config
from cti.directory.cache import CachedDirectory
from cti.directory.importer import DirectoryImportError, load_customers
from cti.directory.store import RedisDirectory
from cti.dispositions import RedisDispositions
from cti.heap import settle_heap
from cti.kpi.facts import RedisFacts
from cti.kpi.live import KpiService, RedisRepeats
from cti.metrics import AMI_CONNECTED, AMI_EVENTS, COMPONENT_UP, LIVE_CALLS, ROUTING_OUTCOMES
from cti.model.reducer import CallModel
from cti.model_store import ModelStore
from cti.pipeline import EventPipeline
from cti.push.calllog import CallLog, RedisCallStore
from cti.push.envelope import RedisSequencer
from cti.push.history import AgentViews, RedisHistory
from cti.push.mqtt import MqttSink
from cti.push.notifier import AgentNotifier, Sink
from cti.push.ws import WebSocketHub
from cti.router.controller import RoutingController
from cti.router.state_push import StatePusher
from cti.router.store import RouterStore
from cti.supervise import Supervisor, raise_if_cancelling
from cti.web import build_web_app
from cti.web.admin_api import admin_routes, flow_routes, record_forced
from cti.web.calls_api import calls_routes
from cti.web.commands_api import command_routes
from cti.web.routes import REGISTRIES, WebState
from cti.web.routing_api import routing_routes
from cti.web.session_api import session_routes
from cti.web.wallboard_api import kpi_routes
from ivr_flows import Flow, FlowError
from routing.config import RoutingConfigError, load_routing_config

__all__ = ["CtiServer", "StartupError", "run_demo", "run_server"]

log = structlog.get_logger(__name__)


#: How long a snapshot or a resume waits for the agent's events to be published and stored.
CAUGHT_UP_S = 2.0


class StartupError(Exception):
    """Something the server needs before it can take calls is missing; the message says what."""


class _Later:
    """The AMI client's actions, for the router, which is made first: the client's on_event feeds it."""

    def __init__(self, client: Callable[[], AmiClient]) -> None:
        self._client = client

    def action(self, name: str, fields: Mapping[str, str]) -> Awaitable[Message]:
        return self._client().action(name, fields)


class CtiServer:
    """The whole server as one async context manager (tests start it the same way)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.agents = AgentRegistry(config.agents)
        self.model = CallModel(agents=self.agents)
        self.http_port: int | None = None
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self.ami: AmiClient
        self.pipeline: EventPipeline
        self.hub: WebSocketHub
        self.mqtt: MqttSink | None = None
        self.notifier: AgentNotifier
        self.supervisor: Supervisor
        self.redis_ok = False
        self.redis_error: str | None = None
        self._redis: aioredis.Redis
        self.directory: RedisDirectory
        self.customer_cache: CachedDirectory
        self.customers = 0  # in the directory, as last counted
        self.agi: AgiServer | None = None
        self.flows: Mapping[str, Flow] = {}
        self.ivr_ended: Counter[str] = Counter()  # IVR sessions by how they ended
        self.router: RoutingController | None = None  # CTI routing mode only
        self.routing_admin: RoutingAdmin | None = None  # CTI routing mode only
        self.flow_admin: FlowAdmin | None = None  # with agi.enabled
        self.tokens: TokenStore | None = None  # None: auth.enabled is false
        self.commands: CommandExecutor
        self.views = AgentViews()
        self.history: RedisHistory

    async def __aenter__(self) -> CtiServer:
        try:
            await self._start()
        except BaseException:
            # Stopped while starting (a SIGTERM once the web port answers): the tasks already started must
            # be cancelled here too, or closing their TaskGroup waits for them for ever.
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.agi is not None:  # callers still in a flow finish while the AMI path is still up
            await self.agi.close()
        for task in self._tasks:
            task.cancel()
        await self._stack.aclose()

    async def _start(self) -> None:
        cfg = self.config
        redis = self._redis = aioredis.from_url(cfg.redis.url, socket_timeout=5, socket_connect_timeout=5)
        self._stack.push_async_callback(redis.aclose)
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            raise StartupError(f"Redis at {cfg.redis.url} is not reachable: {exc}") from exc
        self.redis_ok = True
        directory = self.directory = RedisDirectory(redis, key_prefix=cfg.redis.key_prefix)
        self.customer_cache = CachedDirectory(directory)
        if cfg.directory.source is not None:
            try:
                await self._import_directory()
            except DirectoryImportError as exc:
                raise StartupError(f"customer directory not loaded: {exc}") from exc
        self.customers = await directory.count()

        self.tokens = TokenStore(redis, key_prefix=cfg.redis.key_prefix) if cfg.auth.enabled else None
        if self.tokens is None:
            log.warning("auth.disabled", effect="anyone who reaches the web port reads every agent's events and "
                        "every caller's record")
        self.history = RedisHistory(redis, key_prefix=cfg.redis.key_prefix)
        self.calllog = CallLog(RedisCallStore(redis, key_prefix=cfg.redis.key_prefix), timezone=cfg.history.timezone)
        self.hub = WebSocketHub(agents=self.agents, allowed_origins=cfg.http.allowed_origins,
                                authorize=require_agent, missed=self._missed, commands=self._ws_command)
        await self._restore_views()
        self.kpis = KpiService(config=cfg.kpi, timezone=cfg.history.timezone, model=self.model, agents=self.agents,
                               view=self.views.view,
                               customer_of=lambda linkedid: self.pipeline.customer_of(linkedid),  # noqa: PLW0108 - made below
                               repeats=RedisRepeats(redis, key_prefix=cfg.redis.key_prefix,
                                                    window_s=3600 * cfg.kpi.repeat_window_h),
                               place=self._kpi_place if cfg.routing.mode == "cti" else None,
                               facts=RedisFacts(redis, key_prefix=cfg.redis.key_prefix, timezone=cfg.history.timezone))
        await self.kpis.restore()  # the day so far, before the AMI link brings more
        sinks: list[Sink] = [self.views, self.hub]  # the views first: a snapshot is never behind a push
        if cfg.mqtt.enabled:
            self.mqtt = MqttSink(config=cfg.mqtt, commands=self._mqtt_command)
            sinks.append(self.mqtt)
        sinks.append(self.calllog)  # agents' calls of the day
        sinks.append(self.kpis)  # the wallboard's agents
        self.notifier = AgentNotifier(sequencer=RedisSequencer(redis, key_prefix=cfg.redis.key_prefix), sinks=sinks,
                                      history=self.history)
        self.store = ModelStore(redis, self.model, key_prefix=cfg.redis.key_prefix)
        self.model.restore(await self.store.load())  # a restart resumes the calls it had
        self.pipeline = EventPipeline(model=self.model, notifier=self.notifier, directory=self.customer_cache,
                                      subscribers=[self.store, self.kpis], agent_states=cfg.routing.mode != "cti",
                                      crm=cfg.crm)
        on_event: Callable[[Message], None] = self.pipeline.on_event
        self.audit = AuditLog(redis, key_prefix=cfg.redis.key_prefix)
        if cfg.routing.mode == "cti":
            on_event = self._route_calls(redis)
            assert self.router is not None
            self.routing_admin = RoutingAdmin(store=self.router.store, audit=self.audit,
                                              versions=ConfigVersions(redis, key_prefix=cfg.redis.key_prefix),
                                              now_ms=lambda: int(time.time() * 1000), source=str(cfg.routing.file))
            await self.routing_admin.restore()  # before routing starts: an admin's activated version wins
        if cfg.agi.enabled:
            self.flow_admin = FlowAdmin(redis=redis, key_prefix=cfg.redis.key_prefix, directory=cfg.agi.flows,
                                        audit=self.audit, reload=self._reload_flows)
            await self.flow_admin.restore()  # before the flows are read: the versions in force are the files
        self.ami = AmiClient(config=cfg.ami, on_event=on_event, on_connect=self.pipeline.on_connect)
        self.commands = CommandExecutor(agents=self.agents, model=self.model, actions=_Later(lambda: self.ami),
                                        config=cfg.commands, states=self.router,
                                        dispositions=RedisDispositions(redis, key_prefix=cfg.redis.key_prefix),
                                        hold_context=cfg.routing.hold_context)

        forced = functools.partial(record_forced, self.audit)  # supervisors' acts on agents, in the audit log
        extra = [*self.hub.routes(),
                 *(routing_routes(self.router, forced) if self.router is not None else ()),
                 *session_routes(agents=self.agents, mqtt=cfg.mqtt, tokens=self.tokens, snapshot=self.snapshot,
                                 choices=self._command_choices, view=self.views.view),
                 *command_routes(self.run_command, forced),
                 *calls_routes(agents=self.agents, history=self.calllog),
                 *kpi_routes(self.kpis), *admin_routes(self.routing_admin, self.audit),
                 *flow_routes(self.flow_admin)]
        app = build_web_app(WebState(model=self.model, agents=self.agents, health=self.health,
                                     customer_of=self.pipeline.customer_of), extra_routes=extra,
                            middlewares=[cors_middleware(cfg.http.allowed_origins)])
        if self.tokens is not None:
            app[AUTH] = self.tokens
        app.on_shutdown.append(lambda _app: self.hub.close_all())
        app.on_shutdown.append(lambda _app: self.kpis.close_boards())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.kpis)
        app[REGISTRIES] = [registry]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on http {cfg.http.host}:{cfg.http.port}: {exc.strerror or exc}") from exc
        self.http_port = int(runner.addresses[0][1])

        group = await self._stack.enter_async_context(asyncio.TaskGroup())
        self.supervisor = sup = Supervisor(group)
        self._tasks.append(sup.start("cti.notifier", self.notifier.run))
        self._tasks.append(sup.start("cti.lookups", self.pipeline.run))
        self._tasks.append(sup.start("cti.model_store", self.store.run))
        self._tasks.append(sup.start("cti.calllog", self.calllog.run))
        self._tasks.append(sup.start("cti.ami", self.ami.run))
        if self.mqtt is not None:
            self._tasks.append(sup.start("cti.mqtt", self.mqtt.run))
        if self.router is not None:
            self._tasks.append(sup.start("cti.router", self.router.run))
            if self.routing_admin is not None:
                self._tasks.append(sup.start("cti.routing_follow", self.routing_admin.follow))
            states = StatePusher(self.router.store, self.agents, self.notifier.submit,
                                 consumer=f"{socket.gethostname()}:{os.getpid()}")
            self._tasks.append(sup.start("cti.agent_states", states.run))
        if self.flow_admin is not None:
            self._tasks.append(sup.start("cti.flow_follow", self.flow_admin.follow))
        self._tasks.append(sup.start("cti.gauges", self._gauges))
        statuses = self.router.store if self.router is not None else None  # wrap-ups, for handle time
        self._tasks.append(sup.start("cti.kpis", lambda: self.kpis.run(statuses)))
        self._tasks.append(sup.start("cti.redis_watch", self._watch_redis))
        if cfg.ami.resync_interval > 0:
            interval = cfg.ami.resync_interval
            self._tasks.append(sup.start("cti.resync", lambda: self._periodic_resync(interval)))
        if cfg.agi.enabled:
            await self._start_agi()
        log.info("server.started", http=f"http://{cfg.http.host}:{self.http_port}/",
                 ami=f"{cfg.ami.host}:{cfg.ami.port}", agents=len(cfg.agents))
        # What start-up built (modules, config models, the directory) lives as long as the server: out
        # of the collector's sight, so a full collection scans only the live calls, not tens of ms of
        # start-up objects in the middle of a screen pop.
        gc.collect()
        gc.freeze()

    def _kpi_place(self, linkedid: str, entry: str | None) -> tuple[str, str, tuple[str, ...]]:
        assert self.router is not None  # made before the AMI link brings a hold
        return self.router.kpi_place(linkedid, entry)

    async def _restore_views(self) -> None:
        """A restarted server starts from each agent's stored events, so the first snapshot and resume
        after a restart agree with what the clients were shown."""
        for agent in self.agents:
            try:
                self.views.restore(agent.id, await self.history.tail(agent.id))
            except (RedisError, OSError, ValueError, KeyError) as exc:
                log.warning("push.view_not_restored", agent=agent.id, error=repr(exc))

    async def _caught_up(self, agent: str) -> None:
        try:
            async with asyncio.timeout(CAUGHT_UP_S):
                await self.notifier.caught_up(agent)
        except TimeoutError:
            raise web.HTTPServiceUnavailable(
                text='{"error_id":"push-behind","message":"events are not being published (Redis away?)",'
                     '"details":{}}', content_type="application/json") from None

    async def _missed(self, agent: str, since: int) -> tuple[list[tuple[int, bytes]], bool]:
        await self._caught_up(agent)
        return await self.history.since(agent, since)

    async def snapshot(self, agent: str) -> dict[str, Any]:
        """What the agent's client should show, as of the ``seq`` it names (every event published and
        stored up to it, none after)."""
        await self._caught_up(agent)
        return self.views.view(agent).snapshot(agent)

    async def run_command(self, agent: str, data: Any) -> tuple[int, dict[str, Any]]:
        """One agent command from any transport: done or refused, and the agent told either way."""
        command_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        try:
            result = await self.commands.execute(agent, parse_command(data))
        except CommandError as exc:
            log.info("command.refused", agent=agent, error_id=exc.error_id, why=str(exc))
            body = {"ok": False, "id": command_id, **exc.body()}
            if exc.error_id != "no-such-agent":
                self.notifier.submit(agent, "command.result", body)
            return exc.status, body
        body = {"ok": True, **result}
        self.notifier.submit(agent, "command.result", body)
        return 200, body

    def _command_choices(self) -> dict[str, Any]:
        cfg = self.config.commands
        router = self.router
        return {"mode": self.config.routing.mode, "dispositions": list(cfg.dispositions),
                "not_ready_reasons": list(router.config.not_ready_reasons) if router is not None
                else list(cfg.not_ready_reasons)}

    async def _mqtt_command(self, agent: str, payload: bytes) -> None:
        """A command from the agent's MQTT topic. The server cannot see which login published it, so with
        auth on it carries the token too (``cti mqtt-acl``'s ACL also stops other logins at the broker)."""
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if self.tokens is not None:
            token = data.pop("token", None) if isinstance(data, dict) else None
            try:
                who = await self.tokens.resolve(token) if isinstance(token, str) else None
            except (TokenError, RedisError, OSError) as exc:
                log.warning("mqtt.command_refused", agent=agent, why=str(exc) or type(exc).__name__)
                return
            if who is None or not who.may_see(agent):
                log.warning("mqtt.command_refused", agent=agent,
                            why="no token in the command" if who is None else f"{who.subject}'s token")
                return
        await self.run_command(agent, data)

    async def _ws_command(self, agent: str, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        await self.run_command(agent, data)

    def _route_calls(self, redis: aioredis.Redis) -> Callable[[Message], None]:
        """CTI routing mode: the controller sees every event right after the call model, so a CtiHold
        finds the CTI_* variables the IVR set already on the call."""
        cfg = self.config
        try:
            routing = load_routing_config(cfg.routing.file)
        except RoutingConfigError as exc:
            raise StartupError(f"routing.mode is cti but the routing config cannot be used: {exc}") from exc
        unknown = sorted(a.id for a in cfg.agents if a.id not in routing.agents)
        if unknown:
            log.warning("route.agents_without_profile", agents=unknown, file=str(cfg.routing.file),
                        effect="they get no routed calls until routing.yaml lists their skills")
        model = self.model

        def call_vars(linkedid: str) -> dict[str, str] | None:
            call = model.calls.get(linkedid)
            return call.vars if call is not None else None

        store = RouterStore(redis, routing, key_prefix=cfg.redis.key_prefix)
        router = self.router = RoutingController(store, _Later(lambda: self.ami), cfg.agents, cfg.routing,
                                                 call_vars=call_vars, customer_of=self.pipeline.customer_of)
        # After each login's resync: the router checks its store against the channels that are up
        # (calls that ended while the link was down, callers on hold it lost) and asks for device states.
        self.pipeline.after_resync.append(router.on_connect)
        pipeline_event, router_event = self.pipeline.on_event, router.on_event

        def on_event(msg: Message) -> None:
            pipeline_event(msg)
            router_event(msg)

        log.info("route.mode", mode="cti", routing=str(cfg.routing.file), entry_points=sorted(routing.entry_points),
                 agents=len(routing.agents))
        return on_event

    async def _start_agi(self) -> None:
        cfg = self.config.agi
        registry = FlowRegistry(cfg.flows)  # new calls take an edited flow file; calls in a flow keep theirs
        try:
            registry.load()
        except FlowError as exc:
            raise StartupError(f"IVR flows not loaded: {exc}") from exc
        self.flows = registry
        clock_kw: dict[str, Any] = {}
        if cfg.clock_start is not None:
            offset = cfg.clock_start - datetime.now(UTC)
            clock_kw["clock"] = lambda: datetime.now(UTC) + offset
            log.info("agi.clock", starts_at=cfg.clock_start.isoformat(), why="agi.clock_start: flows see this time")
        server = AgiServer(flows=registry.current, directory=customer_directory(self.directory),
                           on_end=self._ivr_ended,
                           settings=AgiSettings(**cfg.model_dump(exclude={"enabled", "flows", "clock_start"})),
                           **clock_kw)
        try:
            self.agi = await self._stack.enter_async_context(server)
        except OSError as exc:
            raise StartupError(f"cannot listen for FastAGI on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from exc
        log.info("agi.listening", host=cfg.host, port=self.agi.port, flows=sorted(self.flows))

    def _reload_flows(self) -> None:
        """An admin activated a flow version: in service now, not at the next second's look at the files."""
        if isinstance(self.flows, FlowRegistry):
            self.flows.refresh()

    def _ivr_ended(self, result: IvrResult) -> None:
        """Until CTI routing mode takes the caller from here, the result is logged and counted; the
        path and inputs reach the call (and its pops) as the CTI_* variables the flow set."""
        self.ivr_ended[result.kind] += 1
        log.info("ivr.ended", flow=result.flow, version=result.version, channel=result.channel, end=result.kind,
                 entry_point=result.entry_point, path=list(result.path))

    async def _gauges(self) -> None:
        """Copy the client's plain counters to Prometheus once a second, off the per-event path."""
        counted = 0
        routed: dict[str, int] = {}
        while True:
            AMI_CONNECTED.set(1 if self.ami.connected else 0)
            LIVE_CALLS.set(len(self.model.calls))
            AMI_EVENTS.inc(self.ami.stats.events - counted)
            counted = self.ami.stats.events
            for name, ok in self._components().items():
                COMPONENT_UP.labels(name).set(1 if ok else 0)
            if self.router is not None:
                for outcome, n in dataclasses.asdict(self.router.counters).items():
                    counted_outcomes = routed.get(outcome, 0)
                    if n > counted_outcomes:
                        ROUTING_OUTCOMES.labels(outcome).inc(n - counted_outcomes)
                    routed[outcome] = n
            await asyncio.sleep(1)

    async def _import_directory(self) -> int:
        source = self.config.directory.source
        assert source is not None
        customers = load_customers(source)
        count = await self.directory.replace_all(customers)
        self.customer_cache.clear()
        log.info("directory.imported", source=str(source), customers=count)
        return count

    async def _watch_redis(self, interval: float = 1.0) -> None:
        """Redis answers within a second (the directory's count and version: one round trip that also
        proves the link), or /healthz says it does not. A Redis that came back without the directory
        (it did not persist) gets it again from ``directory.source``, or the server says loudly that
        every pop now lacks its customer record."""
        while True:
            try:
                async with asyncio.timeout(interval):
                    count, version = await self.directory.status()
                self.customer_cache.observe_version(version)
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelling()
                if self.redis_ok:
                    log.error("redis.down", error=repr(exc))
                self.redis_ok, self.redis_error = False, repr(exc)
            else:
                if not self.redis_ok:
                    log.info("redis.up", customers=count)
                self.redis_ok, self.redis_error = True, None
                if count == 0 and self.customers:
                    await self._directory_lost()
                else:
                    self.customers = count
            raise_if_cancelling()
            await asyncio.sleep(interval)

    async def _directory_lost(self) -> None:
        if self.config.directory.source is None:
            log.error("directory.empty", had=self.customers,
                      effect="pops carry no customer record until `cti directory import` is run again")
            self.customers = 0
            return
        log.warning("directory.lost", had=self.customers, action="importing again", source=str(
            self.config.directory.source))
        try:
            self.customers = await self._import_directory()
        except DirectoryImportError as exc:
            log.error("directory.reimport_failed", error=str(exc))
            self.customers = 0
            return
        self.pipeline.look_up_missing()  # calls whose lookup found the directory empty meanwhile

    async def _periodic_resync(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.ami.request_resync()

    def _components(self) -> dict[str, bool]:
        parts = {"ami": bool(self.ami.connected) and self.pipeline.synced, "redis": self.redis_ok}
        if self.mqtt is not None:
            parts["mqtt"] = self.mqtt.connected
        for name, task in self.supervisor.tasks.items():
            parts[name] = task.state == "running"
        return parts

    def health(self) -> dict[str, Any]:
        """Every part the push path needs, each with its state; ``ok`` only when all are up."""
        connected = bool(self.ami.connected)
        return {
            "ok": all(self._components().values()),
            "ami_connected": connected,
            "model_synced": self.pipeline.synced,
            "redis": {"ok": self.redis_ok, "error": self.redis_error},
            "directory": {"customers": self.customers, "cached_numbers": len(self.customer_cache)},
            "mqtt": None if self.mqtt is None else {"connected": self.mqtt.connected, "pending": self.mqtt.pending},
            "notifier": {"backlog": self.notifier.backlog},
            "websocket": {"connections": self.hub.connections(), "slow_closed": self.hub.slow_closed},
            "tasks": self.supervisor.snapshot(),
            "agi": None if self.agi is None else {
                "sessions": self.agi.active_sessions, "connections": self.agi.open_connections,
                "ended": dict(self.ivr_ended), "flows": sorted(self.flows), **self._flow_counts()},
            "routing": {"mode": "observe"} if self.router is None else {
                "mode": "cti", "pending_events": self.router.pending, **dataclasses.asdict(self.router.counters)},
            "kpi": {"facts_unsaved": self.kpis.unsaved, "facts_saved": self.kpis.saved,
                    "facts_restored": self.kpis.restored},
            "live_calls": len(self.model.calls),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def _flow_counts(self) -> dict[str, int]:
        flows = self.flows
        if not isinstance(flows, FlowRegistry):
            return {}
        return {"flow_reloads": flows.reloads, "flow_rejections": flows.rejected}

    async def serve_forever(self) -> None:
        # A stop (SIGTERM) that came during start-up may have been swallowed by a library (redis-py,
        # Python 3.11's wait_for): the task still says it is cancelling, so stop now. The demo-stop test
        # hung this way, its SIGTERM lost while the demo issued its tokens.
        raise_if_cancelling()
        await asyncio.Event().wait()


async def run_server(config: Config, *, demo: bool = False) -> None:
    """The server; with ``sim.enabled`` the simulator stands in for Asterisk on ``sim.port``. ``demo``
    issues a token for each agent and an admin and prints sign-in links (the demo's Redis is private
    and thrown away on exit, so are the tokens)."""
    async with contextlib.AsyncExitStack() as stack:
        if config.sim.enabled:
            from cti.sim.runner import simulator_for

            sim = await stack.enter_async_context(simulator_for(config))
            config = config.model_copy(update={"ami": config.ami.model_copy(update={
                "host": sim.host, "port": sim.port})})
        server = await stack.enter_async_context(CtiServer(config))
        settle_heap()
        url = f"http://{config.http.host}:{server.http_port}/"
        links = {a.id: "" for a in config.agents}
        overview = ""
        if demo and server.tokens is not None:
            overview = "#token=" + (await server.tokens.issue("demo-admin", "admin", label="cti demo"))[0]
            for agent in config.agents:
                links[agent.id] = "#token=" + (await server.tokens.issue(agent.id, "agent", label="cti demo"))[0]
        admin = f"  routing admin: {url}admin{overview}\n" if server.routing_admin is not None else ""
        print(f"\n  CTI server: {url}{overview}\n  wallboard: {url}wallboard{overview}\n{admin}  agent consoles:\n"
              + "".join(f"    {url}agents/{agent_id}{link}\n" for agent_id, link in links.items())
              + f"  MQTT: mosquitto_sub -h {config.mqtt.host} -p {config.mqtt.port} "
              f"-t '{config.mqtt.topic_prefix}/#' -v\n", flush=True)
        await server.serve_forever()


async def run_demo(config: Config) -> None:
    """Simulator + a private Redis and MQTT broker on free loopback ports + the server."""
    from cti.devservices import DEMO_MQTT_PORT, dev_services

    with dev_services(mqtt_port=DEMO_MQTT_PORT) as services:
        log.info("demo.services", redis=services.redis_url, mqtt_port=services.mqtt_port)
        await run_server(config.model_copy(update={
            "redis": config.redis.model_copy(update={"url": services.redis_url}),
            "mqtt": config.mqtt.model_copy(update={"host": "127.0.0.1", "port": services.mqtt_port}),
            "sim": config.sim.model_copy(update={"enabled": True}),
        }), demo=True)
