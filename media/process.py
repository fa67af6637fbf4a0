"""One processing job: probe -> video_metadata, thumbnail, the HLS ladder,
CIDs, then everything published in ONE transaction (versions, metadata, the
video `ready`, the job `done`). Until that commit nothing of the attempt is
visible: a job that fails, or whose worker is killed, never leaves a half-made
set of video_versions, and a job run twice replaces its rows (one per
resolution, sql/0020) instead of adding to them.

The heavy steps run in threads (asyncio.to_thread); the event loop only
waits, and renews the job's lease with its progress."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg

from media import transcode
from media.cid import cid_of_file, cid_of_files
from media.probe import Probe, probe
from vilokanam import jobs
from vilokanam.logs import log_event
from vilokanam.storage import Storage, video_key

log = logging.getLogger("media.process")


@dataclass
class Attempt:
    """What the lease heartbeat reports while the job runs."""

    stage: str = "probe"
    progress: float = 0.0  # written by the transcoding thread, read by the loop


@dataclass
class Processor:
    pg: asyncpg.Pool
    storage: Storage
    worker_id: str
    ipfs_api: str | None = None

    async def run(self, job: jobs.Job, attempt: Attempt, cancel: threading.Event) -> None:
        video = await self.pg.fetchrow(
            "SELECT storage_key, tags FROM videos WHERE id = $1::uuid", job.video_id)
        if video is None or video["storage_key"] is None:
            raise FileNotFoundError(f"video {job.video_id} has no source")
        source = await self.storage.fetch(video["storage_key"])  # S3: into the spool
        try:
            await self._run(job, attempt, cancel, source, list(video["tags"] or []))
        finally:
            await self.storage.evict(video["storage_key"])

    async def _run(self, job: jobs.Job, attempt: Attempt, cancel: threading.Event,
                   source: Path, tags: list[str]) -> None:
        attempt.stage = "probe"
        info = await asyncio.to_thread(probe, source)
        log_event(log, "job.probed", job_id=job.id, video_id=job.video_id, codec=info.codec,
                  width=info.width, height=info.height, duration_s=round(info.duration, 2))
        work = self.storage.path(video_key(job.video_id, f"work-{job.attempts}"))
        await asyncio.to_thread(shutil.rmtree, work, True)
        attempt.stage = "thumbnail"
        await asyncio.to_thread(transcode.thumbnail, source, work / "thumb.jpg", info.duration)
        attempt.stage = "renditions"

        def report(fraction: float) -> None:
            attempt.progress = fraction

        renditions = await asyncio.to_thread(transcode.transcode, source, work / "hls", info,
                                             report, cancel)
        attempt.stage = "cid"
        source_cid = await asyncio.to_thread(cid_of_file, source)
        version_cids = [await asyncio.to_thread(cid_of_files, r.segments) for r in renditions]
        sizes = await asyncio.to_thread(lambda: [r.size for r in renditions])
        if self.ipfs_api:
            attempt.stage = "ipfs"
            await self._ipfs_add(source, source_cid)
        attempt.stage = "publish"
        # The files first, then the rows that point to them (one transaction).
        await self.storage.put_tree(video_key(job.video_id, "hls"), work / "hls")
        await self.storage.put_file(video_key(job.video_id, "thumb.jpg"), work / "thumb.jpg")
        await asyncio.to_thread(_remove_attempts, work)
        await self._publish_rows(job, info, renditions, sizes, source_cid, version_cids, tags)

    async def _publish_rows(self, job: jobs.Job, info: Probe,
                            renditions: list[transcode.Rendition], sizes: list[int],
                            source_cid: str,
                            version_cids: list[str], tags: list[str]) -> None:
        async with self.pg.acquire() as conn, conn.transaction():
            await jobs.finish(conn, job, self.worker_id)
            await conn.execute("DELETE FROM video_versions WHERE video_id = $1::uuid",
                               job.video_id)
            for rendition, size, cid in zip(renditions, sizes, version_cids, strict=True):
                kbps = int(size * 8 / max(info.duration, 0.001) / 1000)
                await conn.execute(
                    "INSERT INTO video_versions (video_id, resolution, bitrate, file_size, "
                    "storage_url, storage_key, ipfs_hash, width, height, segment_seconds) "
                    "VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    job.video_id, rendition.rung.name, kbps, size,
                    video_key(job.video_id, "hls", rendition.rung.name, "index.m3u8"),
                    video_key(job.video_id, "hls", rendition.rung.name), cid,
                    rendition.rung.width, rendition.rung.height,
                    Decimal(transcode.SEGMENT_SECONDS))
            await conn.execute(
                "INSERT INTO video_metadata (video_id, format, codec, audio_codec, frame_rate, "
                "aspect_ratio, tags, extra_data) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, "
                "jsonb_build_object('duration_exact', $8::float8)) "
                "ON CONFLICT (video_id) DO UPDATE SET format = EXCLUDED.format, "
                "codec = EXCLUDED.codec, audio_codec = EXCLUDED.audio_codec, "
                "frame_rate = EXCLUDED.frame_rate, aspect_ratio = EXCLUDED.aspect_ratio, "
                "tags = EXCLUDED.tags, extra_data = EXCLUDED.extra_data",
                job.video_id, info.format, info.codec, info.audio_codec,
                min(info.frame_rate, Decimal("999.99")), info.aspect_ratio, tags, info.duration)
            await conn.execute(
                "UPDATE videos SET status = 'ready', failure_reason = NULL, duration = $2, "
                "width = $3, height = $4, file_size = $5, ipfs_hash = $6, thumbnail_url = $7, "
                "published_at = COALESCE(published_at, now()) WHERE id = $1::uuid",
                job.video_id, max(1, round(info.duration)), info.width, info.height,
                info.file_size, source_cid, f"/api/videos/{job.video_id}/thumbnail.jpg")

    async def _ipfs_add(self, path: Path, expected: str) -> None:
        """Adds the original to the configured IPFS node (kubo's HTTP API)."""
        url = f"{self.ipfs_api}/api/v0/add?cid-version=1&pin=true"
        try:
            async with aiohttp.ClientSession() as session:
                with path.open("rb") as body:  # aiohttp streams it
                    form = aiohttp.FormData()
                    form.add_field("file", body, filename=path.name)
                    async with session.post(url, data=form) as resp:
                        answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log_event(log, "ipfs.add_failed", logging.WARNING, error=repr(exc))
            return
        if answer.get("Hash") != expected:
            log_event(log, "ipfs.cid_mismatch", logging.WARNING, ours=expected,
                      node=answer.get("Hash"))


def _remove_attempts(work: Path) -> None:
    """The attempt's work directory, once its files are published."""
    for attempt in work.parent.glob("work-*"):  # this one, and any a killed worker left
        shutil.rmtree(attempt, ignore_errors=True)
