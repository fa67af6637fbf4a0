"""The browser harness: Debian's Chromium driven by Playwright for Python
against a real signaling process. Media tests build on this."""

import json
from pathlib import Path

from playwright.async_api import async_playwright

from tests.conftest import CHROMIUM_ARGS, chromium_path, require
from tests.processes import start_role, wait_healthy
from vilokanam.config import Settings


async def test_chromium_reaches_signaling_and_has_webrtc(settings: Settings,
                                                         tmp_path: Path) -> None:
    path = chromium_path()
    require(path is not None, "Debian's chromium")
    proc = start_role(settings, "signaling", tmp_path)
    try:
        wait_healthy(proc, settings.http_port)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                response = await page.goto(f"http://127.0.0.1:{settings.http_port}/healthz")
                assert response is not None and response.status == 200
                assert json.loads(await page.inner_text("body"))["role"] == "signaling"
                has_webrtc = await page.evaluate("typeof RTCPeerConnection === 'function'")
                assert has_webrtc is True
            finally:
                await browser.close()
    finally:
        proc.stop()
