"""Recording and replay, end to end with real processes (signaling, an SFU
worker, billing, media) and Chromium: a publisher streams 20 s from the
publish page; when it stops, the session's recording becomes a ready video
within 60 s (versions no taller than the source, metadata matching a probe of
the recorded file, a thumbnail, a CID); then a Chromium viewer plays it on the
video page through its signed playlist, and the seconds billed equal the
seconds of media its player received (±1)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser

from media.cid import cid_of_file
from media.probe import probe
from tests.processes import start_role, wait_healthy
from tests.test_e2e_browser import (
    ALICE,
    BOB,
    open_page,
    sign_in,
    start_publishing,
    wait_text,
)
from vilokanam.balances import credit
from vilokanam.config import Settings
from vilokanam.services.process import ManagedProcess

pytestmark = pytest.mark.browser

STREAM_SECONDS = 20
READY_WITHIN = 60.0
BUFFERED = """() => {
  const b = document.getElementById("video").buffered;
  let total = 0;
  for (let i = 0; i < b.length; i++) total += b.end(i) - b.start(i);
  return total;
}"""


@dataclasses.dataclass
class Stack:
    settings: Settings
    roles: list[ManagedProcess]

    def url(self, path: str) -> str:
        return f"{self.settings.base_url}{path}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url(path), data=data, headers=headers,
                                         method=method)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.load(resp))


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    settings = dataclasses.replace(settings, dev_mode=True, token_secret="vod-" + "x" * 40)
    roles = [start_role(settings, role, tmp_path)
             for role in ("sfu", "signaling", "billing", "media")]
    try:
        for role, port in zip(roles, (settings.sfu_port, settings.http_port,
                                      settings.billing_port, settings.media_port), strict=True):
            wait_healthy(role, port)
        yield Stack(settings, roles)
    finally:
        for role in roles:
            role.stop()


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)
    return value


async def test_a_recorded_session_becomes_a_video_played_and_billed_per_second(
        stack: Stack, browser: Browser, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    token = stack.call("POST", "/api/dev/token", {"account": ALICE})["token"]
    stream = stack.call("POST", "/api/streams", {"title": "recorded"}, token)
    publisher = await open_page(browser, stream["publish_url"])
    await start_publishing(publisher, stream["stream_key"])
    await wait_text(publisher, "#state", "live")
    live_at = time.monotonic()
    while time.monotonic() - live_at < STREAM_SECONDS:  # the length of the broadcast
        assert await publisher.inner_text("#state") == "live"
        await asyncio.sleep(0.5)
    await publisher.click("#stop")
    ended_at = time.monotonic()

    async def recording() -> str | None:
        found = stack.call("GET", f"/api/streams/{stream['id']}")["recording_video_id"]
        return str(found) if found else None

    video_id = await wait_for(recording, 15, "the ended session has no recording_video_id")

    async def ready() -> dict[str, Any] | None:
        video = stack.call("GET", f"/api/videos/{video_id}")
        assert video["status"] != "failed", video
        return video if video["status"] == "ready" else None

    video = await wait_for(ready, READY_WITHIN - (time.monotonic() - ended_at),
                           "the recording was not ready within 60 s")
    source = stack.settings.media_dir / "videos" / video_id / "source"
    truth = probe(source)
    assert truth.codec == "vp8" and truth.audio_codec == "opus" and truth.format == "webm"
    assert STREAM_SECONDS - 3 <= truth.duration <= STREAM_SECONDS + 3
    assert (video["width"], video["height"]) == (truth.width, truth.height)
    meta = video["metadata"]
    assert (meta["format"], meta["codec"], meta["audio_codec"], meta["aspect_ratio"]) == (
        truth.format, truth.codec, truth.audio_codec, truth.aspect_ratio)
    assert video["versions"] and all(v["height"] <= truth.height for v in video["versions"])
    assert video["ipfs_hash"] == cid_of_file(source)
    assert video["source_stream_id"] == stream["id"]
    assert video["creator_account"] == ALICE and video["title"] == "recorded"
    thumb = urllib.request.urlopen(video["thumbnail_url"], timeout=5)
    assert thumb.headers["Content-Type"] == "image/jpeg"

    bob = stack.call("POST", "/api/dev/token", {"account": BOB})["user_id"]
    await credit(db, redis, bob, Decimal(10), "adjustment", "vod e2e", 12)
    viewer = await open_page(browser, stack.url(f"/video/{video_id}"))
    await sign_in(viewer, BOB)  # the header's sign-in dialog, as on every page
    await viewer.wait_for_selector("#play:not([disabled])")
    await viewer.click("#play")
    await viewer.wait_for_function("() => document.getElementById('video').ended",
                                   timeout=(truth.duration + 30) * 1000)
    received = float(await viewer.evaluate(BUFFERED))
    assert received >= truth.duration - 2.5, received

    async def billed() -> int | None:
        seconds = await db.fetchval("SELECT view_duration FROM video_views WHERE viewer_id = "
                                    "$1::uuid", bob)
        shown = int(await viewer.inner_text("#seconds-watched"))
        return int(seconds) if seconds and seconds == shown and abs(
            seconds - received) <= 1 else None

    await wait_for(billed, 10, f"billed seconds do not match the {received:.1f} s received")
    seconds = await db.fetchval("SELECT view_duration FROM video_views WHERE viewer_id = "
                                "$1::uuid", bob)
    payment = await db.fetchval("SELECT amount FROM payments WHERE payment_type = 'video_view' "
                                "AND from_user_id = $1::uuid", bob)
    assert payment == Decimal("0.001") * seconds
    assert publisher.errors == [] and viewer.errors == []  # type: ignore[attr-defined]
