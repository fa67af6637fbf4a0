"""The product, end to end, as people use it: Chromium publishes from the
publish page (fake camera and microphone), two Chromium viewers watch on the
watch page through one real SFU worker process, a wrong key is refused, and
when the publisher stops the viewers are told and Postgres shows it ended."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import CHROMIUM_ARGS, chromium_path, require
from tests.processes import start_role, wait_healthy
from tests.waiting import wait_until
from vilokanam.balances import credit
from vilokanam.config import Settings
from vilokanam.services.process import ManagedProcess

pytestmark = pytest.mark.browser

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"  # the watch page's 2nd dev account

INBOUND = """async () => {
  const stats = await window.vilokanam.pc.getStats();
  const seen = {video: 0, audio: 0};
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") seen.video = r.framesDecoded || 0;
    if (r.type === "inbound-rtp" && r.kind === "audio") seen.audio = r.packetsReceived || 0;
  });
  return seen;
}"""


@dataclass
class Platform:
    settings: Settings
    roles: list[ManagedProcess]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}{path}"

    def post(self, path: str, body: dict, token: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url(path), data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.load(resp))


@pytest.fixture
def platform(settings: Settings, tmp_path: Path) -> AsyncIterator[Platform]:
    settings = dataclasses.replace(settings, dev_mode=True, token_secret="e2e-" + "x" * 40)
    roles = [start_role(settings, "sfu", tmp_path), start_role(settings, "signaling", tmp_path)]
    try:
        wait_healthy(roles[0], settings.sfu_port)
        wait_healthy(roles[1], settings.http_port)
        yield Platform(settings, roles)
    finally:
        for role in roles:
            role.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    require(path is not None, "Debian's chromium")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def open_page(browser: Browser, url: str) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def wait_text(page: Page, selector: str, text: str, timeout: float = 20) -> None:
    await page.wait_for_function(
        "([sel, text]) => document.querySelector(sel).textContent.trim() === text",
        arg=[selector, text], timeout=timeout * 1000)


async def start_publishing(page: Page, key: str) -> None:
    await page.fill("#stream-key", key)
    await page.click("#start")


async def start_watching(page: Page) -> None:
    await page.wait_for_selector("#dev-token-form:not([hidden])")
    await page.select_option("#dev-account", index=1)
    await page.click("#dev-sign-in")
    await page.wait_for_selector("#watch:not([disabled])")
    await page.click("#watch")


async def inbound(page: Page) -> dict[str, int]:
    return dict(await page.evaluate(INBOUND))


async def test_chromium_publishes_and_two_chromium_viewers_watch(
        platform: Platform, browser: Browser, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    token = platform.post("/api/dev/token", {"account": ALICE})["token"]
    stream = platform.post("/api/streams", {"title": "e2e"}, token)
    bob = platform.post("/api/dev/token", {"account": BOB})["user_id"]
    await credit(db, redis, bob, Decimal(100), "adjustment", "e2e funds", 12)

    wrong = await open_page(browser, stream["publish_url"])
    await start_publishing(wrong, "sk_not-the-key")
    await wrong.wait_for_selector("#error[data-code='unauthorized']", timeout=15000)

    publisher = await open_page(browser, stream["publish_url"])
    await start_publishing(publisher, stream["stream_key"])
    await wait_text(publisher, "#state", "live")

    viewers = [await open_page(browser, stream["watch_url"]) for _ in range(2)]
    for viewer in viewers:
        await start_watching(viewer)
    for viewer in viewers:
        await wait_text(viewer, "#state", "watching")
    await wait_text(publisher, "#viewer-count", "2")

    first = [await inbound(v) for v in viewers]
    await asyncio.sleep(2.5)  # time passing IS the test: the frame rate over a 2.5 s window
    second = [await inbound(v) for v in viewers]
    for before, after in zip(first, second, strict=True):
        assert after["video"] > before["video"] + 20, (before, after)  # ~30 fps decoded
        assert after["audio"] > before["audio"] + 50, (before, after)  # 20 ms packets

    for viewer in viewers:  # the watch page shows what metering bills, every second
        seconds = int(await viewer.inner_text("#seconds-watched"))
        assert seconds >= 2
        cost = Decimal((await viewer.inner_text("#cost")).split()[0])
        assert Decimal("0.001") * (seconds - 1) <= cost <= Decimal("0.001") * (seconds + 1)

    row = await db.fetchrow("SELECT status, viewer_count FROM streams WHERE id = $1",
                            stream["id"])
    assert (row["status"], row["viewer_count"]) == ("live", 2)

    await publisher.click("#stop")
    for viewer in viewers:
        await wait_text(viewer, "#state", "ended")
        assert "ended" in (await viewer.inner_text("#error")).lower()
    async def ended() -> bool:
        status = await db.fetchval("SELECT status FROM streams WHERE id = $1", stream["id"])
        return bool(status == "ended")

    await wait_until(ended, "the stream row ending", timeout=5, interval=0.1)
    session = await db.fetchrow(
        "SELECT s.status, ss.end_time, ss.viewer_peak FROM streams s "
        "JOIN stream_sessions ss ON ss.stream_id = s.id WHERE s.id = $1", stream["id"])
    assert session["status"] == "ended" and session["end_time"] is not None
    assert session["viewer_peak"] == 2
    for page in (publisher, *viewers):
        assert page.errors == []  # type: ignore[attr-defined]
