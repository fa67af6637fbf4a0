"""A live session's recording becoming a video: shared by the SFU worker
(the session ended on it) and the media role (the worker carrying it died, so
the recording was cut: the file is playable up to the crash, see
sfu/recorder.py)."""

from __future__ import annotations

import asyncpg

from vilokanam import jobs
from vilokanam.storage import Storage

ORPHAN_AFTER_S = 15  # an ended session's recording no worker finished


async def finish_recording(pg: asyncpg.Pool, video_id: str, session_id: str, size: int,
                           failure: str | None, max_attempts: int) -> None:
    """The ended session's recording becomes a video being processed, or a
    failed one when `failure` says why it holds no video (None when unknown, a
    worker died: the media role's probe decides)."""
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE videos SET file_size = $2, upload_offset = $2 WHERE id = $1::uuid",
            video_id, size)
        # streams before stream_sessions: the lock order every writer keeps
        # (vilokanam/stream_rows.py), so two of them never deadlock.
        await conn.execute(
            "UPDATE streams SET recording_url = '/api/videos/' || $1 "
            "WHERE id = (SELECT stream_id FROM stream_sessions WHERE id = $2::uuid)",
            video_id, session_id)
        await conn.execute(
            "UPDATE stream_sessions SET recording_id = $2::uuid WHERE id = $1::uuid",
            session_id, video_id)
        if size == 0 or failure is not None:
            await conn.execute(
                "UPDATE videos SET status = 'failed', failure_reason = $2 WHERE id = $1::uuid",
                video_id, failure or "the recording is empty: the worker wrote nothing")
        else:
            await jobs.enqueue(conn, video_id, max_attempts)


async def finish_orphans(pg: asyncpg.Pool, storage: Storage, max_attempts: int) -> int:
    """Recordings still `uploading` whose session ended more than
    ORPHAN_AFTER_S ago (their worker died, the reaper ended the session): each
    is finished from what is on disk. Returns how many."""
    rows = await pg.fetch(
        "SELECT v.id::text AS id, v.storage_key, v.source_session_id::text AS session_id "
        "FROM videos v JOIN stream_sessions ss ON ss.id = v.source_session_id "
        "WHERE v.status = 'uploading' AND ss.end_time IS NOT NULL "
        "AND ss.end_time < now() - make_interval(secs => $1) "
        "ORDER BY ss.end_time LIMIT 100", ORPHAN_AFTER_S)
    for row in rows:
        await storage.commit_spooled(row["storage_key"])  # S3: the spool is shared too
        size = await storage.size(row["storage_key"]) or 0
        await finish_recording(pg, row["id"], row["session_id"], size, None, max_attempts)
    return len(rows)
