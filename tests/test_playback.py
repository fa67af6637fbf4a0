"""Playback billed per delivered second, through the live path's exactly-once
flush: signed playlists and segments (HMAC, expiring, per view), each media
second billed once whatever rendition or seek fetched it, the cut-off when the
balance runs out, range requests. Real Postgres and Redis, the real signaling
app on a real port, the real media processing code, the real billing flusher."""

from __future__ import annotations

import dataclasses
import threading
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import redis.asyncio as aioredis

from billing.flush import Flusher
from media.process import Attempt, Processor
from signaling.playback import seconds_of, sign
from tests.api_client import ALICE_42, BOB_42, Client, bearer, dev_settings, error_of, login, serve
from tests.media_samples import mp4
from tests.s3_stand_in import new_bucket
from vilokanam import jobs
from vilokanam.balances import balance_key, credit
from vilokanam.config import Settings
from vilokanam.storage import storage_for

PRICE = Decimal("0.001")
CHARLIE_42 = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"


async def ready_video(client: Client, settings: Settings, tmp_path: Path, token: str) -> str:
    """An uploaded clip (6 s, 426x360: renditions 240p and 360p), processed by
    the media role's own code in this process."""
    clip = mp4(tmp_path / "clip.mp4", seconds=6, width=426, height=360, fps=15)
    response = await client.post("/api/videos", data=clip.read_bytes(), params={"title": "c"},
                                 headers={**bearer(token), "Content-Type": "video/mp4"})
    assert response.status == 201, await response.text()
    video_id = (await response.json())["id"]
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        job = await jobs.claim(pool, "test-worker", 60)
        assert job is not None and job.video_id == video_id
        storage = storage_for(settings.media_dir, settings.s3)
        try:
            await Processor(pool, storage, "test-worker").run(job, Attempt(), threading.Event())
        finally:
            await storage.close()
    finally:
        await pool.close()
    return str(video_id)


def signed(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


async def funded_bob(client: Client, db: asyncpg.Connection, redis: aioredis.Redis,
                     funds: Decimal = Decimal(1)) -> dict[str, str]:
    """Bob signed in, with `funds` ROC on his live balance to watch with."""
    bob = await login(client, BOB_42)
    await credit(db, redis, bob["user_id"], funds, "adjustment", "test", 12)
    return bob


async def fetch(client: Client, url: str, status: int = 200, **headers: str) -> bytes:
    path, query = signed(url)
    response = await client.get(path, params=query, headers=headers)
    assert response.status == status, (url, await response.text())
    return await response.read()


async def test_each_delivered_second_is_billed_once(
        client: Client, settings: Settings, tmp_path: Path, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    alice = await login(client, ALICE_42)
    video_id = await ready_video(client, settings, tmp_path, alice["token"])
    bob = await funded_bob(client, db, redis)
    started = await client.post(f"/api/videos/{video_id}/views", headers=bearer(bob["token"]))
    assert started.status == 201, await started.text()
    view = await started.json()
    base = settings.base_url
    master = (await fetch(client, view["playlist_url"])).decode()
    variants = [line for line in master.splitlines() if line and not line.startswith("#")]
    assert [v.split("/")[0] for v in variants] == ["240p", "360p"]
    assert all(f"view={view['view_id']}" in v and "sig=" in v for v in variants)
    playlists = {v.split("/")[0]: (await fetch(client, f"{base}/vod/{video_id}/{v}")).decode()
                 for v in variants}
    segments = {name: [f"{base}/vod/{video_id}/{name}/{line}" for line in text.splitlines()
                       if line.startswith("seg_")] for name, text in playlists.items()}
    durations = {name: [float(line[8:].rstrip(",")) for line in text.splitlines()
                        if line.startswith("#EXTINF:")] for name, text in playlists.items()}
    # Aligned keyframes: the same segment boundaries in every rendition.
    assert durations["240p"] == durations["360p"] and len(durations["240p"]) == 3
    first = await fetch(client, segments["240p"][0])
    assert first[:1] == b"\x47"  # an MPEG-TS sync byte
    await fetch(client, segments["360p"][0])  # a rendition switch: the same seconds
    await fetch(client, segments["240p"][1])
    await fetch(client, segments["240p"][0])  # a seek back
    # Range requests: a part is 206, a range past the end 416 (and bills nothing new).
    await fetch(client, segments["240p"][1], 206, Range="bytes=0-99")
    await fetch(client, segments["240p"][1], 416, Range="bytes=999999999-")
    delivered = len(seconds_of(durations["240p"], 0)) + len(seconds_of(durations["240p"], 1))
    assert delivered == 4
    flusher = Flusher(await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2),
                      redis, settings.platform_fee)
    try:
        assert (await flusher.flush_once()).ticks == delivered
        await fetch(client, segments["360p"][1])  # after the flush, still once
        assert (await flusher.flush_once()).ticks == 0
    finally:
        await flusher.pg.close()
    row = await db.fetchrow(
        "SELECT vv.view_duration, vv.watch_completion, p.amount, p.status, p.from_user_id::text "
        "AS payer, p.to_user_id::text AS payee FROM video_views vv JOIN payments p ON "
        "p.reference_id = vv.id AND p.payment_type = 'video_view' WHERE vv.id = $1::uuid",
        view["view_id"])
    assert row["view_duration"] == delivered and row["amount"] == PRICE * delivered
    assert row["watch_completion"] == Decimal("66.67") and row["status"] == "pending"
    assert (row["payer"], row["payee"]) == (bob["user_id"], alice["user_id"])
    assert await db.fetchval("SELECT balance FROM viewer_balances WHERE user_id = $1::uuid",
                             bob["user_id"]) == 1 - PRICE * delivered
    assert await db.fetchval("SELECT total_earnings FROM creator_earnings WHERE creator_id = "
                             "$1::uuid", alice["user_id"]) == PRICE * delivered * Decimal("0.9")
    assert await db.fetchval("SELECT view_count FROM videos WHERE id = $1::uuid", video_id) == 1
    assert int(await redis.get(balance_key(bob["user_id"]))) == (1 - PRICE * delivered) * 10**12
    status = await (await client.get(f"/api/videos/{video_id}/views/{view['view_id']}",
                                     headers=bearer(bob["token"]))).json()
    assert (status["seconds"], status["cost"], status["billed_seconds"]) == (4, "0.004", 4)
    assert await error_of(await client.get(f"/api/videos/{video_id}/views/nope",
                                           headers=bearer(bob["token"])), 400) == "invalid_view_id"

    # Signatures: another view's, a tampered expiry, an expired one, none.
    other = await (await client.post(f"/api/videos/{video_id}/views",
                                     headers=bearer(bob["token"]))).json()
    path, mine = signed(segments["240p"][2])
    _, theirs = signed(other["playlist_url"])
    for query, code in (({**mine, "sig": theirs["sig"]}, "invalid_signature"),
                        ({**mine, "exp": str(int(mine["exp"]) + 1)}, "invalid_signature"),
                        ({}, "forbidden")):
        assert await error_of(await client.get(path, params=query), 403) == code
    past = 1_000_000
    expired = {"view": mine["view"], "exp": str(past),
               "sig": sign(dev_settings(settings), video_id, mine["view"], past)}
    assert await error_of(await client.get(path, params=expired), 403) == "playback_expired"
    assert await error_of(await client.get(f"/vod/{video_id}/240p/seg_00099.ts", params=mine),
                          404) == "not_found"
    assert await error_of(await client.get(f"/vod/{video_id}/..%2f..%2fsource", params=mine),
                          404) == "not_found"


async def test_start_needs_ten_seconds_and_a_ready_video(
        client: Client, settings: Settings, tmp_path: Path, db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    video_id = await ready_video(client, settings, tmp_path, alice["token"])
    poor = await login(client, CHARLIE_42)
    assert await error_of(await client.post(f"/api/videos/{video_id}/views",
                                            headers=bearer(poor["token"])),
                          402) == "insufficient_funds"
    await db.execute("UPDATE videos SET status = 'processing' WHERE id = $1::uuid", video_id)
    assert await error_of(await client.post(f"/api/videos/{video_id}/views",
                                            headers=bearer(poor["token"])),
                          409) == "video_not_ready"
    assert await error_of(await client.post(f"/api/videos/{video_id}/views"), 401) == \
        "unauthorized"
    assert await db.fetchval("SELECT count(*) FROM video_views") == 0


async def test_viewer_is_cut_off_when_the_balance_runs_out(
        client: Client, settings: Settings, tmp_path: Path, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    alice = await login(client, ALICE_42)
    video_id = await ready_video(client, settings, tmp_path, alice["token"])
    bob = await funded_bob(client, db, redis, PRICE * 10)
    view = await (await client.post(f"/api/videos/{video_id}/views",
                                    headers=bearer(bob["token"]))).json()
    base = settings.base_url
    text = (await fetch(client, f"{base}/vod/{video_id}/240p/index.m3u8?"
                                f"{urlsplit(view['playlist_url']).query}")).decode()
    segments = [f"{base}/vod/{video_id}/240p/{line}" for line in text.splitlines()
                if line.startswith("seg_")]
    await fetch(client, segments[0])
    # Meanwhile the viewer's money goes elsewhere (say, a live stream): 3 s left.
    await redis.set(balance_key(bob["user_id"]), 3 * 10**9)
    await fetch(client, segments[1])  # 2 s paid, 1 s left: not enough for the next second
    path, query = signed(segments[2])
    assert await error_of(await client.get(path, params=query), 403) == "insufficient_funds"
    path, query = signed(segments[0])  # even seconds already paid: the view is over
    assert await error_of(await client.get(path, params=query), 403) == "insufficient_funds"
    assert await db.fetchval("SELECT cut_off FROM video_views WHERE id = $1::uuid",
                             view["view_id"])
    assert int(await redis.get(balance_key(bob["user_id"]))) == 1 * 10**9


async def test_the_video_page_is_served_with_its_player(client: Client, settings: Settings,
                                                        tmp_path: Path) -> None:
    alice = await login(client, ALICE_42)
    video_id = await ready_video(client, settings, tmp_path, alice["token"])
    page = await client.get(f"/video/{video_id}")
    assert page.status == 200
    html = await page.text()
    assert "/static/hls.light.min.js" in html and "/static/js/main.js" in html
    assert '<body data-page="video">' in html  # main.js runs js/pages/video.js
    assert (await client.get("/static/js/pages/video.js")).status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = await client.get("/static/hls.light.min.js")
    assert script.status == 200 and b"Hls" in await script.read()
    assert (await client.get("/video/00000000-0000-0000-0000-000000000000")).status == 404


async def test_a_subscriber_watches_a_video_at_price_zero_and_is_still_ticked(
        client: Client, settings: Settings, tmp_path: Path, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    alice = await login(client, ALICE_42)
    video_id = await ready_video(client, settings, tmp_path, alice["token"])
    bob = await funded_bob(client, db, redis)
    offer = await client.put("/api/me/subscription-offer", json={"price": "0.5"},
                             headers=bearer(alice["token"]))
    assert offer.status in (200, 201), await offer.text()
    bought = await client.post(f"/api/users/{alice['account']}/subscription",
                               headers=bearer(bob["token"]))
    assert bought.status == 201, await bought.text()
    started = await client.post(f"/api/videos/{video_id}/views", headers=bearer(bob["token"]))
    assert started.status == 201, await started.text()
    view = await started.json()
    assert view["price_per_second"] == "0"
    master = (await fetch(client, view["playlist_url"])).decode()
    variant = next(line for line in master.splitlines() if line and not line.startswith("#"))
    playlist = (await fetch(client, f"{settings.base_url}/vod/{video_id}/{variant}")).decode()
    first = next(line for line in playlist.splitlines() if line.startswith("seg_"))
    durations = [float(line[8:].rstrip(",")) for line in playlist.splitlines()
                 if line.startswith("#EXTINF:")]
    await fetch(client, f"{settings.base_url}/vod/{video_id}/{variant.split('/')[0]}/{first}")
    delivered = len(seconds_of(durations, 0))
    flusher = Flusher(await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2),
                      redis, settings.platform_fee)
    try:
        assert (await flusher.flush_once()).ticks == delivered > 0  # counted, ...
    finally:
        await flusher.pg.close()
    row = await db.fetchrow(
        "SELECT vv.view_duration, vv.watch_completion, p.amount FROM video_views vv "
        "JOIN payments p ON p.reference_id = vv.id AND p.payment_type = 'video_view' "
        "WHERE vv.id = $1::uuid", view["view_id"])
    assert row["view_duration"] == delivered and row["watch_completion"] > 0  # analytics
    assert row["amount"] == 0  # ... at price 0
    # Only the subscription was paid: the balance moved by its price, no more.
    assert await db.fetchval("SELECT balance FROM viewer_balances WHERE user_id = $1::uuid",
                             bob["user_id"]) == Decimal("0.5")
    assert int(await redis.get(balance_key(bob["user_id"]))) == Decimal("0.5") * 10**12
    # A non-subscriber still pays the video's price.
    carol = await login(client, CHARLIE_42)
    await credit(db, redis, carol["user_id"], Decimal(1), "adjustment", "test", 12)
    other = await (await client.post(f"/api/videos/{video_id}/views",
                                     headers=bearer(carol["token"]))).json()
    assert Decimal(other["price_per_second"]) > 0
async def test_playback_from_an_s3_bucket(db: asyncpg.Connection, redis: aioredis.Redis,
                                          settings: Settings, tmp_path: Path,
                                          s3_endpoint: str) -> None:
    """The same upload, processing and signed playback with the video storage
    in an S3-compatible bucket (moto's server mode standing in for S3):
    signaling serves the objects with ranges and content types; the local
    directory is only a spool, left empty."""
    bucket = await new_bucket(s3_endpoint)
    s3_settings = dataclasses.replace(
        settings, s3_bucket=bucket.bucket, s3_endpoint=bucket.endpoint,
        s3_access_key=bucket.access_key, s3_secret_key=bucket.secret_key)
    async with serve(dev_settings(s3_settings)) as client:
        alice = await login(client, ALICE_42)
        video_id = await ready_video(client, s3_settings, tmp_path, alice["token"])
        storage = storage_for(s3_settings.media_dir, s3_settings.s3)
        try:
            assert await storage.size(f"videos/{video_id}/source") > 0
            assert await storage.size(f"videos/{video_id}/hls/240p/seg_00000.ts") > 0
        finally:
            await storage.close()
        spooled = [p for p in s3_settings.media_dir.rglob("*") if p.is_file()]
        assert spooled == []
        bob = await funded_bob(client, db, redis)
        view = await (await client.post(f"/api/videos/{video_id}/views",
                                        headers=bearer(bob["token"]))).json()
        master = (await fetch(client, view["playlist_url"])).decode()
        variant = next(line for line in master.splitlines() if line.startswith("240p/"))
        base = f"{settings.base_url}/vod/{video_id}"
        playlist = (await fetch(client, f"{base}/{variant}")).decode()
        first = f"{base}/240p/" + next(line for line in playlist.splitlines()
                                       if line.startswith("seg_"))
        whole = await fetch(client, first)
        assert whole[:1] == b"\x47"
        path, query = signed(first)
        part = await client.get(path, params=query, headers={"Range": "bytes=188-375"})
        assert part.status == 206 and await part.read() == whole[188:376]
        assert part.headers["Content-Type"] == "video/mp2t"
        assert part.headers["Content-Range"] == f"bytes 188-375/{len(whole)}"
        await fetch(client, first, 416, Range=f"bytes={len(whole)}-")
        thumb = await client.get(f"/api/videos/{video_id}/thumbnail.jpg")
        assert thumb.status == 200 and thumb.content_type == "image/jpeg"
        assert (await thumb.read())[:2] == b"\xff\xd8"
