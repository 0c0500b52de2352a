"""The routing admin page (``/admin``) in Debian's chromium, headless, against the server in CTI routing
mode: a tier's priority set to a bad value is refused with the error next to the field and nothing
changes; a good value is saved as a new version, dry-run, activated, and the next routing decision
scores the caller with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from cti.config import AuthConfig
from tests.e2e import eventually
from tests.test_browser_console import CHROMIUM, CHROMIUM_ARGS, WAIT_MS
from tests.test_e2e_cti_mode import cti_config, cti_running, place

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
