"""The agent console (``/agents/{agent}``) in a real browser: Debian's chromium, headless, driven by
Playwright, against the simulator and the server with tokens, real Redis and mosquitto (observe mode).

A call rings the agent and the screen pop shows it (caller-controlled text stays text); the agent
hangs up from the page and Asterisk gets the ``Hangup`` of their own channel; "Not ready" and "Ready"
change the state the page shows, the agent's WebSocket carries each ``agent.state``, and the retained
MQTT topic ``cti/v1/agents/{agent}/state`` holds the last one.

The simulator runs on a :class:`ManualClock`: its phone answers only when the test moves the clock,
and the call lasts until the page hangs up, however slow the machine. Every wait is Playwright's
``expect`` or a bounded poll (15 s); nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from playwright.async_api import BrowserContext, WebSocketRoute, async_playwright, expect

from cti.app import CtiServer
from cti.config import AuthConfig
from cti.sim.server import AmiServer
from tests.e2e import Inbox, ManualClock, eventually, make_config, own_topics, running, ws_listener

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_S = 15.0
WAIT_MS = WAIT_S * 1000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")

CALLER = "8613900000001"  # Li Na of Orient Bank in config/customers.yaml: VIP tier 3
#: The caller ID name is the caller's to choose: the page must show it as text, never run it.
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">'


async def _token(server: CtiServer, subject: str, role: str = "agent") -> str:
    assert server.tokens is not None
    token, _ = await server.tokens.issue(subject, role)  # type: ignore[arg-type]
    return token


def _catch_up(clock: ManualClock, seconds: float = 0.0) -> None:
    """Move the simulator's clock ``seconds`` on, and at least to the wall clock: the server compares
    the PBX's timestamps (an offer's expiry, say) with its own time."""
    clock.now = max(clock.now + seconds, time.time())


def _state_of(payload: dict[str, Any]) -> tuple[str, str | None]:
    """The agent's state and not-ready reason in an ``agent.state`` payload: its ``state`` and ``reason``
    when the server sends them, else derived from observe mode's app_queue ``paused`` (as the page does)."""
    if "state" in payload:
        return payload["state"], payload.get("reason")
    if payload.get("paused"):
        return "not_ready", payload.get("paused_reason")
    return ("ready" if payload.get("status") == "not_in_use" else payload.get("status", "?")), None


async def _retained_state(port: int, topic: str, *, at_least_seq: int) -> dict[str, Any]:
    """PENDING SERVER SIDE (the retained state topic, being built by the lead engineer).

    A fresh MQTT subscriber to ``topic`` (``cti/v1/agents/{agent}/state``), connecting after the change,
    must at once receive a message flagged retained whose payload is the agent's latest ``agent.state``
    envelope (JSON: ``type`` ``agent.state``, ``agent``, ``seq``, ``payload``), with ``seq`` at least
    ``at_least_seq`` (the one the agent's WebSocket carried for the change). Until then it retries
    with a new subscriber each time; it fails after 15 s saying what (if anything) was retained."""
    last: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                async with aiomqtt.Client("127.0.0.1", port, identifier=f"test-retained-{uuid.uuid4().hex[:8]}") as c:
                    await c.subscribe(topic, qos=1)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(3):
                            async for message in c.messages:
                                assert message.retain, "the first message a new subscriber gets is the retained one"
                                last = json.loads(message.payload)  # type: ignore[arg-type]
                                break
                if last is not None and last.get("seq", 0) >= at_least_seq:
                    return last
                await asyncio.sleep(0.2)
    except TimeoutError:
        pass
    raise AssertionError(f"no retained agent.state with seq >= {at_least_seq} on {topic} within {WAIT_S:.0f} s "
                         f"(retained there: {last!r}); is the server's retained state topic in?")


async def test_agent_console_pops_hangs_up_and_changes_state(redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = own_topics(make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=1))
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    clock = ManualClock()
    async with running(config, clock=clock) as (sim, server), aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{server.http_port}"
        alice, bob = await _token(server, "alice"), await _token(server, "bob")
        async with session.post(f"{base}/api/agents/bob/commands", headers={"Authorization": f"Bearer {bob}"},
                                json={"command": "not_ready", "reason": "meeting"}) as r:
            assert r.status == 200, await r.text()  # so the call rings alice
        inbox, opened = Inbox(), asyncio.Event()
        listener = asyncio.create_task(ws_listener(f"{base}/ws/agents/alice?token={alice}", inbox, opened))
        try:
            await asyncio.wait_for(opened.wait(), WAIT_S)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                    args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 1000})
                try:
                    await _drive_console(browser, base=base, token=alice, sim=sim, clock=clock, inbox=inbox,
                                         tmp_path=tmp_path)
                    supervisor = await _token(server, "sue", "supervisor")
                    await _overview(browser, base=base, supervisor=supervisor, agent=alice, tmp_path=tmp_path)
                    await _wallboard(browser, base=base, supervisor=supervisor, agent=alice, tmp_path=tmp_path)
                finally:
                    await browser.close()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

        # Last: the state is retained on MQTT too, for a client that subscribes only now.
        ready = max((e for e in inbox.items if e["type"] == "agent.state"), key=lambda e: e["seq"])
        retained = await _retained_state(mqtt_port, f"{config.mqtt.topic_prefix}/agents/alice/state",
                                         at_least_seq=ready["seq"])
        assert (retained["type"], retained["agent"]) == ("agent.state", "alice"), retained
        assert _state_of(retained["payload"])[0] == "ready", retained


async def _drive_console(browser: BrowserContext, *, base: str, token: str, sim: AmiServer, clock: ManualClock,
                         inbox: Inbox, tmp_path: Path) -> None:
    browser.set_default_timeout(WAIT_MS)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(f"{base}/agents/alice#token={token}")
    await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
    assert "token" not in page.url, "the token is taken out of the address bar"
    await expect(page.locator("#today-status")).not_to_be_empty(timeout=WAIT_MS)

    # 1. A call rings alice: the screen pop shows the caller, the customer record, the queue.
    _catch_up(clock)
    linkedid = sim.sim.place_call(CALLER, HOSTILE_NAME)
    pop = page.locator("#current")
    await expect(pop.locator(".number")).to_have_text(CALLER, timeout=WAIT_MS)
    await expect(pop.locator(".type")).to_have_text("Ringing", timeout=WAIT_MS)
    await expect(pop.locator(".who")).to_have_text("Li Na")
    await expect(pop.locator(".vip")).to_have_text("VIP 3")
    await expect(pop.locator(".company")).to_have_text("Orient Bank (enterprise)")
    await expect(pop.locator(".manager")).to_have_text("chen")
    await expect(pop.locator(".queue")).to_contain_text("support")
    await expect(pop.locator(".caller-name")).to_have_text(HOSTILE_NAME)  # shown as text ...
    assert await pop.locator("img").count() == 0  # ... never parsed as markup
    assert await page.evaluate("window.__pwned") is None
    assert await pop.get_attribute("data-linkedid") == linkedid
    shot = tmp_path / "screen-pop.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screen pop screenshot: {shot}")

    # 2. Alice's phone answers; she hangs up from the page: Asterisk gets the Hangup of her own channel.
    _catch_up(clock, 1.5)
    await inbox.wait_for(lambda e: e["type"] == "call.answered" and e["payload"]["linkedid"] == linkedid, WAIT_S)
    await expect(pop.locator(".type")).to_have_text("On call", timeout=WAIT_MS)
    await page.get_by_role("button", name="Hang up", exact=True).click()
    await eventually(lambda: any(a.get("action", "").lower() == "hangup"
                                 and a.get("channel", "").startswith("PJSIP/1001-") for a in sim.actions), WAIT_S)
    ended = await inbox.wait_for(lambda e: e["type"] == "call.ended" and e["payload"]["linkedid"] == linkedid,
                                 WAIT_S)
    await expect(pop.locator(".type")).to_have_text("Ended", timeout=WAIT_MS)
    await expect(page.locator("#log")).to_contain_text("command.result hangup ok", timeout=WAIT_MS)
    # Today's calls were asked for again after call.ended: the call, or a server without the history yet.
    await expect(page.locator("#today")).to_contain_text(re.compile(f"history unavailable|{CALLER}"),
                                                         timeout=WAIT_MS)
    await expect(page.locator("#disposition-for")).to_contain_text(CALLER)
    await page.locator("#disposition").select_option("follow_up")
    await page.get_by_role("button", name="Save disposition", exact=True).click()
    done = await inbox.wait_for(lambda e: e["type"] == "command.result" and e["payload"]["command"] == "disposition",
                                WAIT_S)
    assert done["payload"]["ok"] and done["payload"]["code"] == "follow_up", done
    await expect(page.locator("#today")).to_contain_text(re.compile("history unavailable|follow up"), timeout=WAIT_MS)

    # 3. Not ready (for lunch), then ready: the page, the WebSocket and Asterisk agree.
    # the server lists its not-ready reasons (/api/client-config), so the console offers a choice
    await page.locator("#reason").select_option("lunch")
    await page.get_by_role("button", name="Not ready", exact=True).click()
    await expect(page.locator("#state")).to_have_text("Not ready", timeout=WAIT_MS)
    await expect(page.locator("#state-reason")).to_contain_text("lunch")
    await expect(page.locator("#state-timer")).to_have_text(re.compile(r"^\d+:\d\d$"))
    paused = await inbox.wait_for(lambda e: e["type"] == "agent.state" and e["seq"] > ended["seq"]
                                  and _state_of(e["payload"]) == ("not_ready", "lunch"), WAIT_S)
    assert any(a.get("action", "").lower() == "queuepause" and a.get("paused") == "true"
               and a.get("reason") == "lunch" for a in sim.actions)

    await page.get_by_role("button", name="Ready", exact=True).click()
    await expect(page.locator("#state")).to_have_text("Ready", timeout=WAIT_MS)
    await inbox.wait_for(lambda e: e["type"] == "agent.state" and e["seq"] > paused["seq"]
                         and _state_of(e["payload"])[0] == "ready", WAIT_S)
    await page.screenshot(path=str(tmp_path / "console-after.png"), full_page=True)
    assert not errors, f"the page threw: {errors}"


async def _overview(browser: BrowserContext, *, base: str, supervisor: str, agent: str, tmp_path: Path) -> None:
    """The overview page: a supervisor's token shows every agent's state; an agent's only their own."""
    page = await browser.new_page()
    await page.goto(f"{base}/#token={supervisor}")
    rows = page.locator("#agent-states tr")
    await expect(rows).to_have_count(2, timeout=WAIT_MS)  # alice and bob, the configured agents
    await expect(rows.filter(has_text="Alice")).to_contain_text("ready", timeout=WAIT_MS)
    await expect(rows.filter(has_text="Bob")).to_contain_text("not ready", timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    await page.evaluate("() => localStorage.clear() || sessionStorage.clear()")
    await page.goto("about:blank")
    await page.goto(f"{base}/#token={agent}")
    await expect(page.locator("#agent-states tr")).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("#agent-states tr")).to_contain_text("Alice")
    await page.close()


async def _wallboard(browser: BrowserContext, *, base: str, supervisor: str, agent: str, tmp_path: Path) -> None:
    """The wallboard, after the console's call: answered and handled, pushed over its WebSocket; the
    agents' states by name; an agent's token gets the sign-in form and no board."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{base}/wallboard#token={supervisor}")
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator("#t-answer-today")).to_contain_text("100% of 1", timeout=WAIT_MS)
    await expect(page.locator("#queues tr").filter(has_text="support")).to_contain_text("1", timeout=WAIT_MS)
    await expect(page.locator("#agents tr")).to_have_count(2, timeout=WAIT_MS)
    await expect(page.locator("#agents tr").filter(has_text="Bob")).to_contain_text("not ready", timeout=WAIT_MS)
    await expect(page.locator("#chart polyline")).to_have_count(1, timeout=WAIT_MS)
    shot = tmp_path / "wallboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"wallboard screenshot: {shot}")
    assert not errors, f"the wallboard threw: {errors}"
    await page.evaluate("() => sessionStorage.clear()")
    await page.goto("about:blank")
    await page.goto(f"{base}/wallboard#token={agent}")
    await expect(page.locator("#signin")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#agents tr")).to_have_count(0)
    await page.close()


async def test_console_takes_down_expired_offers_and_shows_wrap_up(redis_url: str, mqtt_port: int,
                                                                   tmp_path: Path) -> None:
    """What the page does with fields no simulated call makes it show: envelopes are put into the page's
    own WebSocket (Playwright's WebSocket routing, the server's frames pass through unchanged)."""
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    async with running(config) as (_sim, server), async_playwright() as pw:
        token = await _token(server, "alice")
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            browser.set_default_timeout(WAIT_MS)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            sockets: list[WebSocketRoute] = []

            def through(ws: WebSocketRoute) -> None:
                ws.connect_to_server()
                sockets.append(ws)

            await page.route_web_socket(re.compile(r"/ws/agents/alice"), through)
            await page.goto(f"http://127.0.0.1:{server.http_port}/agents/alice#token={token}")
            await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
            # Every id the screen-pop card ever shows, to prove a pop never appeared.
            await page.evaluate("""() => { window.__popped = [];
                new MutationObserver(() => { const id = document.querySelector('#current').dataset.linkedid;
                  if (id) window.__popped.push(id); })
                .observe(document.querySelector('#current'), {attributes: true, childList: true}); }""")
            seq = await page.evaluate("cti.lastSeq")

            def push(kind: str, payload: dict[str, Any]) -> None:
                nonlocal seq
                seq += 1
                ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
                sockets[-1].send(json.dumps({"v": 1, "id": uuid.uuid4().hex, "seq": seq, "ts": ts, "type": kind,
                                             "agent": "alice", "payload": payload}))

            now = time.time()
            offer = {"caller": CALLER, "caller_name": "Li Na", "queue": "support", "offered_queue": "support",
                     "wait_so_far_s": 12.0, "customer": None, "ivr": {"path": ["welcome", "menu"],
                                                                      "inputs": [{"node": "menu", "value": "2"}]}}
            push("call.offered", {**offer, "linkedid": "stale.1", "expires_at": now - 5})  # expired on arrival
            push("call.offered", {**offer, "linkedid": "fresh.2", "expires_at": now + 3, "crm_links": [
                {"name": "Orient CRM", "url": "https://crm.example.com/customers/c-1002"},
                {"name": "not a link", "url": "javascript:alert(1)"}]})
            pop = page.locator("#current")
            await expect(pop).to_have_attribute("data-linkedid", "fresh.2", timeout=WAIT_MS)
            await expect(pop.locator(".ivr")).to_contain_text("welcome › menu")
            await expect(pop.locator(".keys")).to_have_text("menu: 2")
            await expect(pop.locator(".wait")).to_have_text("12 s")
            link = pop.get_by_role("link", name="Orient CRM")
            await expect(link).to_have_attribute("href", "https://crm.example.com/customers/c-1002")
            await expect(link).to_have_attribute("target", "_blank")
            await expect(link).to_have_attribute("rel", "noopener")
            assert await pop.locator(".crm-links a").count() == 1, "a javascript: URL is never a link"
            # No call.offer_withdrawn comes: the pop goes when its expires_at passes.
            await expect(pop).to_have_class(re.compile(r"\bempty\b"), timeout=WAIT_MS)
            assert await page.evaluate("window.__popped.includes('stale.1')") is False
            await expect(page.locator("#log")).to_contain_text("expired, not shown")

            # Wrap-up (CTI mode's agent.state): a countdown, "end wrap-up", "+30 s", log in / out.
            push("agent.state", {"agent_id": "alice", "mode": "cti", "state": "wrap_up", "reason": None,
                                 "since": now, "wrap_up_ends_at": time.time() + 600})
            await expect(page.locator("#state")).to_have_text("Wrap-up", timeout=WAIT_MS)
            await expect(page.locator("#wrapup")).to_be_visible()
            await expect(page.locator("#wrapup-left")).to_have_text(re.compile(r"^(9|10):\d\d$"))
            await expect(page.get_by_role("button", name="End wrap-up", exact=True)).to_be_visible()
            await expect(page.get_by_role("button", name="Log out", exact=True)).to_be_enabled()
            await page.get_by_role("button", name="+30 s", exact=True).click()
            # This server runs in observe mode: it refuses, and the page says so.
            await expect(page.locator("#result")).to_contain_text(re.compile(r"^Extend wrap-up: (?!done)"),
                                                                  timeout=WAIT_MS)
            assert not errors, f"the page threw: {errors}"
        finally:
            await browser.close()
