"""The product, end to end, as people use it: Chromium publishes from the
publish page (fake camera and microphone), two Chromium viewers watch on the
watch page through one real SFU worker process, a wrong key is refused, and
when the publisher stops the viewers are told and Postgres shows it ended."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, BrowserContext, Page

from tests.processes import Platform
from tests.waiting import wait_until
from tests.web_checks import assert_accessible, screenshot, serve_axe
from vilokanam.balances import credit
from vilokanam.money import format_amount

pytestmark = pytest.mark.browser

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"  # the 2nd dev account

INBOUND = """async () => {
  const stats = await window.vilokanam.pc.getStats();
  const seen = {video: 0, audio: 0};
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") seen.video = r.framesDecoded || 0;
    if (r.type === "inbound-rtp" && r.kind === "audio") seen.audio = r.packetsReceived || 0;
  });
  return seen;
}"""


async def open_page(browser: Browser, url: str,
                    prepare: Callable[[BrowserContext], Awaitable[None]] | None = None) -> Page:
    """`url` in a context of its own (`prepare(context)` first: init scripts,
    exposed functions); the page's script errors are collected in page.errors."""
    context = await browser.new_context()
    if prepare is not None:
        await prepare(context)
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
    await page.wait_for_selector("body[data-ready='true']")
    await page.fill("#stream-key", key)
    await page.click("#start")


async def sign_in(page: Page, account: str) -> None:
    """The header's sign-in dialog, a dev account, as a person does it."""
    await page.wait_for_selector("body[data-ready='true']")
    await page.click("#sign-in-open")
    await page.select_option("#dev-account", value=account)
    await page.click("#dev-sign-in")
    await wait_text(page, "#account", account)


async def start_watching(page: Page) -> None:
    await sign_in(page, BOB)
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


async def test_a_newcomer_goes_live_and_a_viewer_finds_watches_and_pays(
        platform: Platform, browser: Browser, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    """No curl: Alice signs in on the studio, creates a stream, lands on its
    page with the key shown once and goes live from the browser; Bob finds it
    on the home page, signs in, watches and sees the seconds, cost and balance
    move. Every page passes axe-core, and the main ones are photographed for
    the README."""
    title = "Jazz & blues <live> tonight"  # a title is text: <live> is no element
    alice = await open_page(browser, platform.url("/studio"))
    await serve_axe(alice)
    await assert_accessible(alice, "studio, signed out")
    await sign_in(alice, ALICE)
    await alice.wait_for_selector("#studio:not([hidden])")

    # A refused form says why next to the field, in the server's words.
    await alice.fill("#create-title-input", "   ")
    await alice.click("#create-stream")
    await wait_text(alice, "#create-title-error", "title must be 1 to 255 characters")
    assert await alice.get_attribute("#create-title-input", "aria-invalid") == "true"
    await alice.fill("#create-title-input", title)
    await alice.fill("#create-price", "0.0000000000001")
    await alice.click("#create-stream")
    await alice.wait_for_selector("#create-price-error:not(:empty)")
    assert "whole planck" in await alice.inner_text("#create-price-error")
    assert await alice.inner_text("#create-title-error") == ""
    await alice.fill("#create-price", "0.002")
    await alice.click("#create-stream")

    # The stream's studio page: the key shown once, ready to go live.
    await alice.wait_for_url("**/publish/*")
    stream_id = alice.url.rsplit("/", 1)[1]
    await alice.wait_for_selector("#key-box:not([hidden])")
    key = await alice.input_value("#revealed-key")
    assert key.startswith("sk_") and await alice.input_value("#stream-key") == key
    assert key not in alice.url
    assert await alice.evaluate("Object.keys(sessionStorage).filter(k => k.includes('key'))") == []
    assert await alice.inner_text("#stream-title") == title  # text, not markup
    assert await alice.input_value("#whip-url") == platform.url(f"/whip/{stream_id}")
    await alice.click("#start")
    await wait_text(alice, "#state", "live")

    funds = platform.post("/api/dev/token", {"account": BOB})["user_id"]
    await credit(db, redis, funds, Decimal(100), "adjustment", "e2e funds", 12)
    bob = await open_page(browser, platform.url("/"))
    await serve_axe(bob)
    card = bob.locator(f".stream-card[data-stream-id='{stream_id}']")
    assert await card.locator(".stream-title").inner_text() == title
    await bob.fill("#search", "jazz")
    await bob.press("#search", "Enter")
    await bob.wait_for_url("**/?q=jazz")
    await assert_accessible(bob, "home with a live stream")
    await bob.set_viewport_size({"width": 360, "height": 740})
    await screenshot(bob, "home-360px")
    await bob.set_viewport_size({"width": 1280, "height": 800})
    await screenshot(bob, "home")
    await card.locator("a.stream-link").click()
    await bob.wait_for_url(f"**/watch/{stream_id}")
    await assert_accessible(bob, "watch, signed out")
    await start_watching(bob)
    await wait_text(bob, "#state", "watching")
    await wait_text(alice, "#viewer-count", "1")

    # The cost rises with the seconds billed, at the stream's price.
    await bob.wait_for_function(
        "() => Number(document.querySelector('#seconds-watched').textContent) >= 2",
        timeout=20000)
    first = int(await bob.inner_text("#seconds-watched"))
    await bob.wait_for_function(
        "(n) => Number(document.querySelector('#seconds-watched').textContent) >= n + 2",
        arg=first, timeout=20000)
    seconds = int(await bob.inner_text("#seconds-watched"))
    cost = Decimal((await bob.inner_text("#cost")).split()[0])
    assert Decimal("0.002") * (seconds - 1) <= cost <= Decimal("0.002") * (seconds + 1)
    assert await bob.inner_text("#price") == "0.002 ROC/s"
    await bob.wait_for_function(
        "() => document.querySelector('#balance').textContent.startsWith('99.9')", timeout=20000)
    assert await bob.evaluate("document.querySelector('live')") is None
    await assert_accessible(bob, "watch, watching")
    await screenshot(bob, "watch")

    # The creator's live stats.
    await wait_text(alice, "#stat-viewers", "1")
    await wait_text(alice, "#stat-status", "live")
    await assert_accessible(alice, "stream studio page, live")
    await screenshot(alice, "studio-stream")
    await bob.click("#leave")
    await wait_text(bob, "#state", "left")
    await alice.goto(platform.url("/studio"))  # leaving the page stops the stream
    await alice.wait_for_selector("#my-streams:not([hidden])")
    assert await alice.locator("#my-streams tbody tr").count() == 1
    await assert_accessible(alice, "studio")
    await screenshot(alice, "studio")

    # Bob's wallet: the session and its receipt.
    # Flushed by billing (every second): the seconds billed and their cost,
    # at least what the watch page showed earlier.
    row = bob.locator("#sessions tbody tr").first
    async with asyncio.timeout(15):
        while True:
            await bob.goto(platform.url("/wallet"))
            await bob.wait_for_selector("#sessions:not([hidden])")
            billed = int(await row.locator("td").nth(2).inner_text())
            if billed >= seconds:
                break
            await asyncio.sleep(0.5)
    assert await row.locator("td").nth(0).inner_text() == title
    cost_text = format_amount(Decimal("0.002") * billed)
    assert await row.locator("td").nth(3).inner_text() == f"{cost_text} ROC"
    await bob.click("#sessions tbody button")
    await bob.wait_for_selector("#receipt:not([hidden])")
    assert await bob.locator("#receipt-fields dd").nth(0).inner_text() != "—"
    await assert_accessible(bob, "wallet with a receipt")
    await screenshot(bob, "wallet")
    await bob.goto(platform.url("/watch/not-a-stream"))
    await assert_accessible(bob, "not found")
    await bob.goto(platform.url(f"/watch/{stream_id}"))
    await bob.wait_for_selector("body[data-ready='true']")
    await bob.click("#sign-out")
    await bob.click("#sign-in-open")
    await assert_accessible(bob, "the sign-in dialog")
    for page in (alice, bob):
        assert page.errors == []  # type: ignore[attr-defined]
