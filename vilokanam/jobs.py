"""The processing job queue, in Postgres (`processing_jobs`, sql/0020).

Signaling (an upload completed) and the SFU worker (a recording finished)
enqueue; media workers claim. A claim is one statement: the oldest runnable
job, locked with FOR UPDATE SKIP LOCKED so several workers never take the same
one, marked `running` with a lease (`locked_until`) its worker renews while it
works. A worker killed -9 stops renewing; once the lease has run out the job is
runnable again and the next claim takes it (attempts + 1). A job claimed
`max_attempts` times and failing again is failed for good."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

_CLAIM = """
UPDATE processing_jobs j
   SET status = 'running', attempts = j.attempts + 1, worker_id = $1, progress = 0,
       stage = 'claimed', locked_until = now() + make_interval(secs => $2), updated_at = now()
 WHERE j.id = (
       SELECT id FROM processing_jobs
        WHERE ((status = 'queued' AND run_after <= now())
               OR (status = 'running' AND locked_until < now()))
        ORDER BY run_after, created_at
        FOR UPDATE SKIP LOCKED
        LIMIT 1)
RETURNING j.id::text AS id, j.video_id::text AS video_id, j.attempts, j.max_attempts
"""


@dataclass(frozen=True)
class Job:
    id: str
    video_id: str
    attempts: int
    max_attempts: int

    @property
    def last_attempt(self) -> bool:
        return self.attempts >= self.max_attempts


class LeaseLost(Exception):
    """The job is no longer ours (its lease ran out and another worker took it)."""


async def enqueue(conn: asyncpg.Connection | asyncpg.Pool, video_id: str,
                  max_attempts: int = 3) -> str:
    """A job for the video; call it in the transaction that makes the video
    `processing`, so a video is never processing without a job."""
    job_id = await conn.fetchval(
        "INSERT INTO processing_jobs (video_id, max_attempts) VALUES ($1::uuid, $2) "
        "RETURNING id::text", video_id, max_attempts)
    await conn.execute(
        "UPDATE videos SET status = 'processing', processing_job_id = $2, failure_reason = NULL "
        "WHERE id = $1::uuid", video_id, job_id)
    return str(job_id)


async def claim(pg: asyncpg.Pool, worker_id: str, lease_s: float) -> Job | None:
    row = await pg.fetchrow(_CLAIM, worker_id, lease_s)
    if row is None:
        return None
    return Job(row["id"], row["video_id"], row["attempts"], row["max_attempts"])


async def renew(pg: asyncpg.Pool | asyncpg.Connection, job: Job, worker_id: str,
                lease_s: float, progress: Decimal | None = None,
                stage: str | None = None) -> None:
    """Extends the lease (and records progress); LeaseLost if another worker
    has claimed the job meanwhile."""
    done = await pg.fetchval(
        "UPDATE processing_jobs SET locked_until = now() + make_interval(secs => $3), "
        "progress = COALESCE($4, progress), stage = COALESCE($5, stage), updated_at = now() "
        "WHERE id = $1::uuid AND worker_id = $2 AND status = 'running' AND attempts = $6 "
        "RETURNING 1", job.id, worker_id, lease_s, progress, stage, job.attempts)
    if done is None:
        raise LeaseLost(job.id)


async def finish(conn: asyncpg.Connection, job: Job, worker_id: str) -> None:
    """Marks the job done, inside the transaction that publishes its results;
    LeaseLost (and so a rollback) if the job is no longer ours."""
    done = await conn.fetchval(
        "UPDATE processing_jobs SET status = 'done', progress = 100, stage = 'done', "
        "locked_until = NULL, error = NULL, updated_at = now() "
        "WHERE id = $1::uuid AND worker_id = $2 AND status = 'running' AND attempts = $3 "
        "RETURNING 1", job.id, worker_id, job.attempts)
    if done is None:
        raise LeaseLost(job.id)


async def fail(pg: asyncpg.Pool, job: Job, worker_id: str, reason: str, *,
               retry: bool, retry_in_s: float = 2.0) -> bool:
    """A failed attempt: queued again (after `retry_in_s`) while attempts
    remain and the error is worth retrying, else failed for good with its video
    (`failure_reason` is what the creator sees). Returns whether it is final."""
    final = not retry or job.last_attempt
    async with pg.acquire() as conn, conn.transaction():
        mine = await conn.fetchval(
            "UPDATE processing_jobs SET status = $4, error = $5, locked_until = NULL, "
            "run_after = now() + make_interval(secs => $6), updated_at = now() "
            "WHERE id = $1::uuid AND worker_id = $2 AND status = 'running' AND attempts = $3 "
            "RETURNING 1", job.id, worker_id, job.attempts,
            "failed" if final else "queued", reason[:1000], retry_in_s)
        if mine is not None and final:
            await conn.execute(
                "UPDATE videos SET status = 'failed', failure_reason = $2 WHERE id = $1::uuid",
                job.video_id, reason[:1000])
    return final
