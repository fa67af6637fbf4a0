"""Transport-wide congestion control with Chromium on both ends, through a
real SFU worker process: the worker's answers negotiate transport-cc, the
viewer's feedback is parsed (the worker's stream info counts what it says),
and Chromium's publisher, which estimates its bandwidth from the worker's
feedback, keeps a sane estimate and target bitrate."""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page

from tests.processes import Platform
from tests.test_e2e_browser import (
    ALICE,
    BOB,
    open_page,
    start_publishing,
    start_watching,
    wait_text,
)
from tests.waiting import wait_until
from vilokanam.balances import credit

pytestmark = pytest.mark.browser

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

PUBLISHER_BWE = """async () => {
  const stats = await window.vilokanam.pc.getStats();
  let available = 0, target = 0, sent = 0;
  stats.forEach((r) => {
    if (r.type === "candidate-pair" && r.nominated && r.availableOutgoingBitrate)
      available = r.availableOutgoingBitrate;
    if (r.type === "outbound-rtp" && r.kind === "video") {
      target = r.targetBitrate || 0;
      sent = r.bytesSent || 0;
    }
  });
  return {available, target, sent};
}"""


def negotiated(sdp: str) -> dict[str, bool]:
    """Per media section of an answer: transport-cc in both places."""
    sections = sdp.split("\nm=")[1:]
    return {section.split(" ", 1)[0]: ("a=extmap:" in section and URI in section
                                       and " transport-cc" in section)
            for section in sections}


def control(where: Platform, path: str) -> dict:
    url = f"http://127.0.0.1:{where.settings.sfu_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.load(resp))


async def remote_sdp(page: Page) -> str:
    return str(await page.evaluate("() => window.vilokanam.pc.remoteDescription.sdp"))


async def test_chromium_negotiates_transport_cc_and_its_feedback_is_used(
        platform: Platform, browser: Browser, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    token = platform.post("/api/dev/token", {"account": ALICE})["token"]
    stream = platform.post("/api/streams", {"title": "twcc"}, token)
    bob = platform.post("/api/dev/token", {"account": BOB})["user_id"]
    await credit(db, redis, bob, Decimal(100), "adjustment", "twcc funds", 12)

    publisher = await open_page(browser, stream["publish_url"])
    await start_publishing(publisher, stream["stream_key"])
    await wait_text(publisher, "#state", "live")
    assert negotiated(await remote_sdp(publisher)) == {"audio": True, "video": True}

    viewer = await open_page(browser, stream["watch_url"])
    await start_watching(viewer)
    await wait_text(viewer, "#state", "watching")
    assert negotiated(await remote_sdp(viewer)) == {"audio": True, "video": True}

    async def feedback_parsed() -> bool:
        info = control(platform, f"/control/streams/{stream['id']}")
        return any(v.get("feedbacks", 0) >= 10 and v["received"] >= 200
                   for v in info["congestion"].values())

    await wait_until(feedback_parsed, "the viewer's TWCC feedback parsed by the worker",
                     timeout=60, interval=0.5)
    congestion = control(platform, f"/control/streams/{stream['id']}")["congestion"]
    [state] = [v for v in congestion.values() if "feedbacks" in v]
    # loopback: (almost) nothing lost, nothing queued, no skip to a keyframe
    assert state["loss_fraction"] < 0.1 and state["skips"] == 0, state
    assert state["queuing_delay_ms"] < 500, state

    # Chromium's publisher estimates from our feedback: its estimate grows from
    # its 300 kbit/s start as with REMB (with feedback stamped after aiortc's
    # receive path it fell to 83 kbit/s and stayed there), and it keeps sending.
    async def estimate_grew() -> bool:
        bwe = await publisher.evaluate(PUBLISHER_BWE)
        return bool(bwe["available"] >= 350_000 and bwe["target"] >= 150_000)

    await wait_until(estimate_grew, "the publisher's bandwidth estimate to grow",
                     timeout=90, interval=0.5)
    first = await publisher.evaluate(PUBLISHER_BWE)
    started = time.monotonic()
    await wait_until(lambda: _after(started, 2.0), "two more seconds", timeout=60,
                     interval=0.2)
    second = await publisher.evaluate(PUBLISHER_BWE)
    assert second["available"] >= 100_000, (first, second)  # no collapse
    congestion = control(platform, f"/control/streams/{stream['id']}")["congestion"]
    [told] = [v for v in congestion.values() if "feedbacks_sent" in v]
    assert told["feedbacks_sent"] >= 20 and told["reported_received"] >= 500, told
    assert told["reported_lost"] <= told["reported_received"] // 20, told
    assert second["sent"] > first["sent"], (first, second)
    for page in (publisher, viewer):
        assert page.errors == []  # type: ignore[attr-defined]


async def _after(started: float, seconds: float) -> bool:
    return time.monotonic() - started >= seconds
