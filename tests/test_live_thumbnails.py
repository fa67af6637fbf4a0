"""Live thumbnails, end to end with real role processes: an aiortc publisher
(320x240 VP8, encoded by the client as a browser would) streams over WHIP to a
real SFU worker; the worker decodes one keyframe per interval into a JPEG in
storage; signaling serves it, and Chromium's home page shows it. Plus the pure
parts: the size a frame is scaled to, and a keyframe decoded to a JPEG."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from sfu.thumbnails import keyframe_jpeg, thumbnail_size
from tests.media_clients import Publisher
from tests.processes import http_get, start_role, wait_healthy
from tests.test_e2e_browser import ALICE
from tests.test_pages import chromium, ready, watch_for_errors
from tests.web_checks import assert_accessible, screenshot, serve_axe
from vilokanam.config import Settings
from vilokanam.live_thumbnails import thumbnail_key
from vilokanam.services.process import ManagedProcess
from vilokanam.storage import storage_for

INTERVAL = Decimal(1)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Decodes the JPEG (PyAV): a file that is not a whole JPEG raises."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name in ("jpeg_pipe", "image2")
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def test_frames_are_scaled_to_640_wide_at_most_keeping_their_aspect() -> None:
    assert thumbnail_size(320, 240) == (320, 240)
    assert thumbnail_size(1280, 720) == (640, 360)
    assert thumbnail_size(1920, 1080) == (640, 360)
    assert thumbnail_size(641, 481) == (640, 480)
    assert thumbnail_size(333, 187) == (332, 186)  # even sides for 4:2:0


def _keyframe(codec: str, width: int, height: int) -> bytes:
    encoder = av.CodecContext.create(codec, "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    frame = av.VideoFrame(width, height, "yuv420p")
    frame.pts = 0
    return bytes([*encoder.encode(frame), *encoder.encode(None)][0])


@pytest.mark.parametrize(("codec", "mime"), [("libvpx", "video/VP8"), ("libx264", "video/H264")])
def test_a_keyframe_becomes_a_jpeg_of_its_size(codec: str, mime: str) -> None:
    jpeg, width, height = keyframe_jpeg(mime, _keyframe(codec, 1280, 720))
    assert (width, height) == (640, 360) == jpeg_size(jpeg)
    jpeg, width, height = keyframe_jpeg(mime, _keyframe(codec, 320, 240))
    assert (width, height) == (320, 240) == jpeg_size(jpeg)


def test_what_is_not_a_keyframe_is_refused() -> None:
    with pytest.raises((av.FFmpegError, ValueError)):
        keyframe_jpeg("video/vp8", b"\x00\x01not a frame")


@dataclasses.dataclass
class Roles:
    settings: Settings
    sfu: ManagedProcess
    signaling: ManagedProcess

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}{path}"

    def get_json(self, path: str) -> dict[str, Any]:
        import json

        with urllib.request.urlopen(self.url(path), timeout=5) as resp:
            return dict(json.load(resp))


@pytest.fixture
def roles(settings: Settings, tmp_path: Path) -> Iterator[Roles]:
    settings = dataclasses.replace(settings, dev_mode=True, token_secret="th-" + "x" * 40,
                                   thumbnail_interval=INTERVAL, record_streams=False)
    sfu = start_role(settings, "sfu", tmp_path)
    signaling = start_role(settings, "signaling", tmp_path)
    try:
        wait_healthy(sfu, settings.sfu_port)
        wait_healthy(signaling, settings.http_port)
        yield Roles(settings, sfu, signaling)
    finally:
        signaling.stop()
        sfu.stop()


def thumbnails_made(roles: Roles) -> float:
    _, body = http_get(f"http://127.0.0.1:{roles.settings.sfu_port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith('vilokanam_live_thumbnails_total{result="made"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)
    return value


async def test_a_publishing_stream_gets_a_thumbnail_the_home_page_shows(roles: Roles) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(roles.url("/api/dev/token"), json={"account": ALICE}) as resp:
            token = (await resp.json())["token"]
        async with http.post(roles.url("/api/streams"), json={"title": "Thumb <b>test</b>"},
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            stream = await resp.json()
        assert roles.get_json(f"/api/streams/{stream['id']}")["thumbnail_url"] is None
        status, _ = http_get(roles.url(f"/api/streams/{stream['id']}/thumbnail.jpg"))
        assert status == 404

        async def whip(offer: str) -> str:
            async with http.post(roles.url(f"/whip/{stream['id']}"), data=offer, headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {stream['stream_key']}"}) as resp:
                assert resp.status == 201, await resp.text()
                return await resp.text()

        publisher = Publisher()
        try:
            await publisher.start(whip)
            first = await wait_for(
                lambda: roles.get_json(f"/api/streams/{stream['id']}")["thumbnail_url"], 30,
                "no thumbnail within 30 s of publishing")
            assert first.startswith(roles.url(f"/api/streams/{stream['id']}/thumbnail.jpg?t="))
            with urllib.request.urlopen(first, timeout=5) as resp:
                assert resp.headers["Content-Type"] == "image/jpeg"
                picture = resp.read()
            assert jpeg_size(picture) == (320, 240)  # the publisher's size
            stored = storage_for(roles.settings.media_dir).path(thumbnail_key(stream["id"]))
            assert stored.read_bytes() == picture

            # Every interval a new keyframe: a new URL, a new picture (the video moves).
            counted_from, made_from = time.monotonic(), thumbnails_made(roles)

            def renewed_picture() -> bytes | None:
                url = roles.get_json(f"/api/streams/{stream['id']}")["thumbnail_url"]
                if url == first:
                    return None
                with urllib.request.urlopen(url, timeout=5) as resp:
                    data = resp.read()
                return data if data != picture else None

            renewed = await wait_for(renewed_picture, 20, "the thumbnail was not renewed")
            assert jpeg_size(renewed) == (320, 240)
            await asyncio.sleep(3)  # a window to count in, not a wait for a condition
            made = thumbnails_made(roles) - made_from
            elapsed = time.monotonic() - counted_from
            # One keyframe per interval for the one stream, no more.
            assert 1 <= made <= elapsed / float(INTERVAL) + 1, (made, elapsed)

            async with chromium() as browser:
                context = await browser.new_context(viewport={"width": 360, "height": 800})
                page = await context.new_page()
                errors: list[str] = []
                watch_for_errors(page, errors)
                await serve_axe(page)
                await ready(page, roles.url("/"))
                card = f".stream-card[data-stream-id='{stream['id']}']"
                await page.wait_for_function(
                    "(sel) => { const i = document.querySelector(sel + ' img.live-thumb');"
                    " return i && i.complete && i.naturalWidth === 320"
                    " && i.naturalHeight === 240; }", arg=card, timeout=15000)
                src = await page.get_attribute(f"{card} img.live-thumb", "src")
                assert src and src.startswith(f"/api/streams/{stream['id']}/thumbnail.jpg?t=")
                await assert_accessible(page, "home with a live thumbnail, 360 px")
                await screenshot(page, "home-live-thumbnail-360")
                assert errors == []
                await context.close()
        finally:
            await publisher.close()
    assert roles.sfu.running
