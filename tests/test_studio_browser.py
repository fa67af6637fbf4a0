"""The studio in Chromium, as a creator uses it: upload a video (a small MP4
made here with PyAV) and watch the upload's progress bar, then its processing
by a real media role process, until the page says it is ready; a file that is
not media fails with the reason shown; edit the video's title and price (the
server's error next to the field); the analytics charts (viewers over time,
earnings per stream session) and payouts linked to the explorer. Every state
axe-clean, and at 360 px no sideways scrolling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Browser, Page

from tests.api_client import BOB_42, create_stream, dev_settings, login, serve
from tests.media_samples import mp4
from tests.processes import start_role, wait_healthy
from tests.test_pages import chromium, ready, sign_in_dev, watch_for_errors
from tests.web_checks import assert_accessible, screenshot, serve_axe
from vilokanam.config import Settings

pytestmark = pytest.mark.browser

READY_WITHIN_MS = 90_000


async def narrow_fits(page: Page) -> bool:
    return bool(await page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"))


@pytest.fixture
async def studio_browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


async def test_a_creator_uploads_a_video_and_watches_it_become_ready(
        db: asyncpg.Connection, settings: Settings, tmp_path: Path,
        studio_browser: Browser) -> None:
    settings = dev_settings(settings)
    clip = mp4(tmp_path / "holiday clip.mp4", seconds=3)
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"this is not a video at all\n" * 200)
    media = start_role(settings, "media", tmp_path)
    try:
        wait_healthy(media, settings.media_port)
        async with serve(settings):
            base = f"http://127.0.0.1:{settings.http_port}"
            context = await studio_browser.new_context(viewport={"width": 360, "height": 800})
            page = await context.new_page()
            errors: list[str] = []
            watch_for_errors(page, errors)
            await serve_axe(page)
            await ready(page, f"{base}/studio")
            await sign_in_dev(page)
            await page.wait_for_selector("#no-my-videos:not([hidden])")

            # Nothing chosen: the error is next to the file field.
            await page.click("#upload-start")
            await page.wait_for_selector("#upload-file-error:not(:empty)")
            assert await page.get_attribute("#upload-file", "aria-invalid") == "true"

            # Upload the clip; the bar moves to 100 %, then processing to ready.
            seen: list[float] = []
            await page.expose_function("recordProgress", lambda value: seen.append(value))
            await page.evaluate("""() => new MutationObserver(() => window.recordProgress(
                document.getElementById('upload-progress').value)).observe(
                document.getElementById('upload-progress'), {attributes: true})""")
            await page.set_input_files("#upload-file", str(clip))
            await page.click("#upload-start")
            await page.wait_for_selector("#processing-text:has-text('Ready.')",
                                         timeout=READY_WITHIN_MS)
            assert await page.eval_on_selector("#upload-progress", "p => p.value") == 100
            assert seen and seen[-1] == 100
            assert await page.eval_on_selector("#processing-progress", "p => p.value") == 100
            size = clip.stat().st_size
            assert await page.inner_text("#upload-progress-text") == (
                f"Uploaded {size / 1048576:.1f} MB.")
            row = await db.fetchrow("SELECT id::text AS id, title, status, file_size "
                                    "FROM videos WHERE title = 'holiday clip'")
            assert row is not None and row["status"] == "ready" and row["file_size"] == size
            stored = settings.media_dir / "videos" / row["id"] / "source"
            assert stored.read_bytes() == clip.read_bytes()  # every byte, in order
            link = await page.get_attribute("#upload-link a", "href")
            assert link == f"/video/{row['id']}"
            listed = f"#my-videos tr[data-video-id='{row['id']}']"
            await page.wait_for_selector(f"{listed} [data-status='ready']")
            assert "Upload" in await page.inner_text(listed)
            await assert_accessible(page, "studio after an upload, 360 px")
            assert await narrow_fits(page)

            # A file that is not media: uploaded, then failed with the reason.
            await page.set_input_files("#upload-file", str(junk))
            await page.fill("#upload-title", "not <b>media</b>")
            await page.click("#upload-start")
            await page.wait_for_selector("#processing-text:has-text('Processing failed')",
                                         timeout=READY_WITHIN_MS)
            reason = await db.fetchval("SELECT failure_reason FROM videos WHERE title = $1",
                                       "not <b>media</b>")
            assert reason and reason in await page.inner_text("#processing-text")
            failed = page.locator("#my-videos tr", has_text="not <b>media</b>")
            await failed.locator("[data-status='failed']").wait_for()
            assert reason in await failed.inner_text()  # the title is text, never markup
            assert await page.locator("#my-videos b").count() == 0

            # Edit the ready video: a bad price is refused next to its field.
            await page.click(f"{listed} button.edit-video")
            await page.wait_for_selector("#video-edit-dialog[open]")
            await page.fill("#video-edit-title", "Holiday, edited")
            await page.fill("#video-edit-price", "-2")
            await page.click("#video-edit-save")
            await page.wait_for_selector("#video-edit-price-error:not(:empty)")
            assert "price_per_second must be" in await page.inner_text(
                "#video-edit-price-error")
            await assert_accessible(page, "video edit dialog with an error")
            await page.fill("#video-edit-price", "0.004")
            await page.click("#video-edit-save")
            await page.wait_for_function(
                "() => !document.getElementById('video-edit-dialog').open")
            await page.wait_for_selector(f"{listed}:has-text('Holiday, edited')")
            assert "0.004 ROC" in await page.inner_text(listed)
            edited = await db.fetchrow("SELECT title, price_per_second FROM videos "
                                       "WHERE id = $1::uuid", row["id"])
            assert edited["title"] == "Holiday, edited"
            assert edited["price_per_second"] == Decimal("0.004")
            await screenshot(page, "studio-uploads-360")
            assert errors == []
            await context.close()
    finally:
        media.stop()


async def test_the_studio_charts_viewers_and_earnings_per_session_and_links_payouts(
        db: asyncpg.Connection, settings: Settings, studio_browser: Browser) -> None:
    """What the workers and billing write (stream_analytics samples, sessions
    and their billed viewers, a completed settlement) is what the charts and
    tables show, exactly: amounts as the server's decimal strings."""
    settings = dev_settings(settings, substrate_url="ws://127.0.0.1:9944",
                            platform_fee=Decimal("0.1"))
    async with serve(settings) as client:
        alice = await login(client)
        bob = await login(client, BOB_42)
        stream = await create_stream(client, alice["token"], title="Night <b>chess</b>")
        sessions = []
        for hours_ago, paid, ticks in ((5, "1.5", 1500), (2, "0.25", 250)):
            session = await db.fetchval(
                "INSERT INTO stream_sessions (id, stream_id, start_time, end_time, viewer_peak, "
                "total_ticks) VALUES (gen_random_uuid(), $1::uuid, "
                "now() - make_interval(hours => $2), now() - make_interval(hours => $2 - 1), "
                "3, $3) RETURNING id::text", stream["id"], hours_ago, ticks)
            await db.execute(
                "INSERT INTO stream_viewers (id, stream_id, viewer_id, session_id, total_ticks, "
                "paid_amount) VALUES (gen_random_uuid(), $1::uuid, $2::uuid, $3::uuid, $4, $5)",
                stream["id"], bob["user_id"], session, ticks, Decimal(paid))
            sessions.append(session)
        for minutes_ago, viewers in ((300, 1), (299, 3), (120, 2)):
            await db.execute(
                "INSERT INTO stream_analytics (id, stream_id, timestamp, viewer_count) VALUES "
                "(gen_random_uuid(), $1::uuid, now() - make_interval(mins => $2), $3)",
                stream["id"], minutes_ago, viewers)
        settlement = await db.fetchval(
            """INSERT INTO settlements (status, signer, nonce, extrinsic_hash, extrinsic,
                   genesis_hash, signed_at, signed_at_hash, era_death, digest, remark,
                   total_planck, block_hash, block_number, finalized_at)
               VALUES ('completed', '0x01', 0, '0xabc123', '0x', '0x', 1, '0x', 65, 'd', 'r',
                       1575000000000, '0xb10c', 42, now()) RETURNING id""")
        await db.execute("INSERT INTO settlement_payouts VALUES ($1, $2::uuid, '0x02', "
                         "1575000000000, 7)", settlement, alice["user_id"])

        base = f"http://127.0.0.1:{settings.http_port}"
        errors: list[str] = []
        for scheme, width in (("dark", 360), ("light", 1280)):
            context = await studio_browser.new_context(color_scheme=scheme,
                                                       viewport={"width": width, "height": 900})
            page = await context.new_page()
            watch_for_errors(page, errors)
            await serve_axe(page)
            await ready(page, f"{base}/studio")
            await sign_in_dev(page)
            await page.wait_for_selector("#viewers-chart svg")
            await page.wait_for_selector("#sessions-chart svg")
            # Per minute, each stream's peak: 300 and 299 min ago are two minutes.
            points = await page.eval_on_selector_all(
                "#viewers-chart circle title", "ts => ts.map((t) => t.textContent)")
            assert len(points) == 3 and [p.rsplit(": ", 1)[1] for p in points] == [
                "1 viewer", "3 viewers", "2 viewers"]
            assert "peak 3" in await page.get_attribute("#viewers-chart svg", "aria-label")
            bars = await page.eval_on_selector_all(
                "#sessions-chart rect title", "ts => ts.map((t) => t.textContent)")
            assert len(bars) == 2  # oldest first; the creator's share after the 10 % fee
            assert bars[0].endswith("earned 1.35 ROC") and bars[1].endswith("earned 0.225 ROC")
            heights = await page.eval_on_selector_all(
                "#sessions-chart rect", "rs => rs.map((r) => Number(r.getAttribute('height')))")
            assert heights[0] > heights[1] * 5  # 1.35 against 0.225
            rows = await page.eval_on_selector_all(
                "#my-sessions tbody tr", "rs => rs.map((r) => r.innerText)")
            assert len(rows) == 2 and "Night <b>chess</b>" in rows[0]
            assert "250" in rows[0] and "0.25 ROC" in rows[0] and "0.225 ROC" in rows[0]
            assert "1500" in rows[1] and "1.5 ROC" in rows[1] and "1.35 ROC" in rows[1]
            href = await page.get_attribute("#payouts a.extrinsic-link", "href")
            assert href == ("https://polkadot.js.org/apps/?rpc=ws%3A%2F%2F127.0.0.1%3A9944"
                            "#/explorer/query/0xb10c")
            assert "0xabc123" in await page.inner_text("#payouts a.extrinsic-link")
            await assert_accessible(page, f"studio analytics {scheme} {width}px")
            assert await narrow_fits(page)
            if width == 360:
                await screenshot(page, "studio-analytics-360")
            await context.close()
        assert errors == []
