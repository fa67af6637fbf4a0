"""The processing job queue (vilokanam/jobs.py) on a real Postgres: claims
never overlap (SKIP LOCKED), a lease that runs out gives the job to the next
claim, retries stop at the limit; and the real media role killed -9 mid-job:
the job is picked up again and no video_versions row is duplicated."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from media.transcode import ladder_for
from tests.api_client import ALICE_42, Client, dev_settings, login
from tests.media_samples import mp4
from tests.processes import start_role, wait_healthy
from tests.test_videos import settled, upload
from vilokanam import jobs
from vilokanam.config import Settings


async def _video(pool: asyncpg.Pool) -> str:
    creator = await pool.fetchval(
        "INSERT INTO users (account_id, is_creator) VALUES ($1, TRUE) "
        "ON CONFLICT (account_id) DO UPDATE SET is_creator = TRUE RETURNING id", ALICE_42)
    return str(await pool.fetchval(
        "INSERT INTO videos (creator_id, title, status, storage_key) "
        "VALUES ($1, 't', 'uploading', 'videos/x/source') RETURNING id::text", creator))


async def test_concurrent_claims_never_take_the_same_job(pool: asyncpg.Pool) -> None:
    for _ in range(5):
        await jobs.enqueue(pool, await _video(pool))
    claimed = await asyncio.gather(*(jobs.claim(pool, f"w{i}", 30) for i in range(8)))
    taken = [j.id for j in claimed if j is not None]
    assert len(taken) == len(set(taken)) == 5
    assert await pool.fetchval(
        "SELECT count(*) FROM processing_jobs WHERE status = 'running'") == 5


async def test_a_lapsed_lease_gives_the_job_to_the_next_claim(pool: asyncpg.Pool) -> None:
    await jobs.enqueue(pool, await _video(pool))
    first = await jobs.claim(pool, "dead-worker", 1)
    assert first is not None and first.attempts == 1
    assert await jobs.claim(pool, "other", 1) is None  # still leased
    deadline = time.monotonic() + 10
    while (second := await jobs.claim(pool, "other", 30)) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert second.id == first.id and second.attempts == 2
    with pytest.raises(jobs.LeaseLost):  # the first worker, back from the dead, owns nothing
        await jobs.renew(pool, first, "dead-worker", 30)
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(jobs.LeaseLost):
            await jobs.finish(conn, first, "dead-worker")
    async with pool.acquire() as conn, conn.transaction():
        await jobs.finish(conn, second, "other")
    assert await pool.fetchval("SELECT status FROM processing_jobs") == "done"


async def test_retries_stop_at_the_limit(pool: asyncpg.Pool) -> None:
    video_id = await _video(pool)
    await jobs.enqueue(pool, video_id, max_attempts=2)
    job = await jobs.claim(pool, "w", 30)
    assert job is not None
    assert not await jobs.fail(pool, job, "w", "flaky", retry=True, retry_in_s=0)
    assert await pool.fetchval("SELECT status FROM videos") == "processing"
    job = await jobs.claim(pool, "w", 30)
    assert job is not None and job.attempts == 2
    assert await jobs.fail(pool, job, "w", "flaky again", retry=True, retry_in_s=0)
    row = await pool.fetchrow("SELECT status, failure_reason FROM videos WHERE id = $1::uuid",
                              video_id)
    assert (row["status"], row["failure_reason"]) == ("failed", "flaky again")
    assert await jobs.claim(pool, "w", 30) is None


async def test_media_role_killed_mid_job_recovers_without_duplicates(
        client: Client, settings: Settings, tmp_path: Path, db: asyncpg.Connection) -> None:
    token = (await login(client))["token"]
    clip = mp4(tmp_path / "long.mp4", seconds=12, width=640, height=360, fps=15)
    video_id = (await upload(client, token, clip))["id"]
    media = start_role(dev_settings(settings), "media", tmp_path / "logs-1")
    wait_healthy(media, settings.media_port)
    # Wait until the worker is transcoding and its progress shows in the API.
    deadline = time.monotonic() + 60
    while True:
        video = await (await client.get(f"/api/videos/{video_id}")).json()
        processing = video.get("processing", {})
        if processing.get("stage") == "renditions" and float(processing["progress"]) > 0:
            break
        assert video["status"] == "processing" and time.monotonic() < deadline, video
        await asyncio.sleep(0.1)
    media.kill()  # SIGKILL: no release, no cleanup
    assert not media.running
    row = await db.fetchrow("SELECT status, attempts FROM processing_jobs")
    assert (row["status"], row["attempts"]) == ("running", 1)  # the fault landed mid-job
    again = start_role(dev_settings(settings), "media", tmp_path / "logs-2")
    try:
        wait_healthy(again, settings.media_port)
        video = await settled(client, video_id, timeout=120)
    finally:
        again.stop()
    assert video["status"] == "ready", video
    expected = [r.name for r in ladder_for(640, 360)]
    assert [v["resolution"] for v in video["versions"]] == expected
    assert await db.fetchval("SELECT count(*) FROM video_versions") == len(expected)
    row = await db.fetchrow("SELECT status, attempts FROM processing_jobs")
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert not list(settings.media_dir.joinpath("videos", video_id).glob("work-*"))
