"""The routing admin page (``/admin``) in Debian's chromium, headless, against the server in CTI routing
mode: a tier's priority set to a bad value is refused with the error next to the field and nothing
changes; a good value is saved as a new version, dry-run, activated, and the next routing decision
scores the caller with it. An IVR flow edited in the same page: a broken one refused with the node named,
a good one activated (the next caller runs it) and rolled back."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from cti.config import AuthConfig
from tests.e2e import eventually
from tests.test_browser_console import CHROMIUM, CHROMIUM_ARGS, WAIT_MS
from tests.test_e2e_cti_mode import FLOW, cti_config, cti_running, place

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


async def test_a_tier_priority_edited_in_the_page_is_refused_then_takes_effect(redis_url: str, mqtt_port: int,
                                                                               tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path)
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    async with cti_running(config) as (sim, server):
        assert server.tokens is not None and server.router is not None and server.routing_admin is not None
        token, _ = await server.tokens.issue("root", "admin")
        base = f"http://127.0.0.1:{server.http_port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 1200})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(f"{base}/admin#token={token}")
                priority = page.locator('input[data-path="tiers.normal.priority"]')
                await expect(priority).to_have_value("100", timeout=WAIT_MS)
                await expect(page.locator("#in-force")).to_have_text("version 1 in force")

                await priority.fill("-5")
                await page.click("#tiers-save")
                await expect(page.locator("#tiers-errors")).to_contain_text("tiers.normal.priority", timeout=WAIT_MS)
                await expect(priority).to_have_class("invalid")
                await page.screenshot(path=str(tmp_path / "admin-invalid.png"), full_page=True)
                assert server.routing_admin.in_force == 1 and server.router.config.tiers["normal"].priority == 100

                await priority.fill("500")
                await page.fill("#tiers-comment", "billing campaign")
                await page.click("#tiers-save")
                await expect(page.locator("#proposed-version")).to_have_text("2", timeout=WAIT_MS)
                await expect(page.locator("#tiers-errors li")).to_have_count(0)
                await page.click("#dry-run")
                await expect(page.locator("#status")).to_contain_text("0 call(s) waiting", timeout=WAIT_MS)
                await page.click("#activate")
                await expect(page.locator("#status")).to_contain_text("version 2 is in force", timeout=WAIT_MS)
                await expect(page.locator("#versions tr.active")).to_contain_text("billing campaign")
                await expect(page.locator("#audit")).to_contain_text("routing.activated")
                await page.screenshot(path=str(tmp_path / "admin-activated.png"), full_page=True)
                print(f"admin page screenshot: {tmp_path / 'admin-activated.png'}")
                assert not errors, f"the page threw: {errors}"
            finally:
                await browser.close()
        assert server.router.config.tiers["normal"].priority == 500

        linkedid = place(sim)  # the next caller: routed under version 2 (strict policy: score = priority)
        await eventually(lambda: bool(server.router.explain(linkedid)), timeout=20)  # type: ignore[union-attr]
        assert server.router.explain(linkedid)[0].trace.score == 500


async def test_an_ivr_flow_edited_in_the_page_is_refused_activated_and_rolled_back(redis_url: str, mqtt_port: int,
                                                                                   tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path)
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    async with cti_running(config) as (sim, server):
        assert server.tokens is not None
        token, _ = await server.tokens.issue("root", "admin")
        in_service = server.flows["onechoice"].version
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 1600})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(f"http://127.0.0.1:{server.http_port}/admin#token={token}")
                await expect(page.locator("#flow-in-force")).to_have_text("version 1 in force", timeout=WAIT_MS)
                await expect(page.locator("#flow-yaml")).to_have_value(FLOW)

                await page.fill("#flow-yaml", FLOW.replace("1: {next: billing}", "1: {next: nowhere}"))
                await page.click("#flow-save")
                await expect(page.locator("#flow-errors")).to_contain_text("nodes.menu", timeout=WAIT_MS)
                await expect(page.locator("#flow-yaml")).to_have_class("invalid")
                assert server.flows["onechoice"].version == in_service

                await page.fill("#flow-yaml", FLOW.replace("Press 1 for billing.", "Press 1 for bills."))
                await page.fill("#flow-comment", "wording")
                await page.click("#flow-save")
                await expect(page.locator("#status")).to_contain_text("saved as version 2", timeout=WAIT_MS)
                await expect(page.locator("#flow-errors li")).to_have_count(0)
                assert server.flows["onechoice"].version == in_service, "not in force until activated"
                wording = page.locator("#flow-versions tr", has_text="wording")
                await wording.get_by_role("button", name="Activate").click()
                await expect(page.locator("#status")).to_contain_text("version 2 is in force", timeout=WAIT_MS)
                await expect(page.locator("#flow-in-force")).to_have_text("version 2 in force")
                await expect(page.locator("#flow-versions tr.active")).to_contain_text("wording")
                assert server.flows["onechoice"].prompts["choose"].text == {"en": "Press 1 for bills."}

                caller = place(sim, talk=1.0, patience=600)  # the next caller runs version 2 to an agent
                await eventually(lambda: caller in server.model.ended, timeout=30)
                assert server.model.ended[caller].agent_id in ("alice", "bob")

                await page.click("#flow-rollback")
                await expect(page.locator("#status")).to_contain_text("version 1 is back in force", timeout=WAIT_MS)
                await expect(page.locator("#flow-yaml")).to_have_value(FLOW)
                await expect(page.locator("#audit")).to_contain_text("ivr.rolled_back")
                await page.screenshot(path=str(tmp_path / "admin-flow.png"), full_page=True)
                assert not errors, f"the page threw: {errors}"
            finally:
                await browser.close()
        assert server.flows["onechoice"].version == in_service
