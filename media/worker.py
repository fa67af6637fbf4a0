"""The media worker's loop: claims jobs from the Postgres queue (several
workers share it: FOR UPDATE SKIP LOCKED, vilokanam/jobs.py), runs at most
VILOKANAM_MEDIA_CONCURRENCY at once, renews each job's lease with its progress
while it runs, and retries a failed attempt up to the job's limit. A file that
cannot become a video fails at once, with the reason the creator sees."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from media.probe import MediaRejected
from media.process import Attempt, Processor
from media.transcode import Cancelled
from vilokanam import jobs
from vilokanam.logs import log_event
from vilokanam.recordings import finish_orphans
from vilokanam.tasks import TaskOwner, run_forever

log = logging.getLogger("media.worker")

POLL_INTERVAL = 1.0
ORPHAN_SWEEP_S = 5.0
MAX_BACKOFF = 10.0

JOBS = Counter("vilokanam_media_jobs_total", "Processing job attempts by outcome.", ["outcome"])
JOBS_RUNNING = Gauge("vilokanam_media_jobs_running", "Processing jobs this worker runs now.")
JOB_SECONDS = Histogram("vilokanam_media_job_seconds", "Wall time of a successful job.",
                        buckets=(1, 2, 5, 10, 30, 60, 120, 300, 900, 3600))


@dataclass
class MediaWorker:
    pg: asyncpg.Pool
    processor: Processor
    worker_id: str
    concurrency: int
    lease_s: float
    max_attempts: int = 3
    tasks: TaskOwner = field(default_factory=lambda: TaskOwner("media"))
    _cancel: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.tasks.spawn(self._claim_loop(), "claim")
        self.tasks.spawn(run_forever("recordings.sweep", self._finish_orphans,
                                     every=ORPHAN_SWEEP_S, max_backoff=60.0,
                                     failure_event="recordings.sweep_failed"),
                         "orphan-recordings")

    async def _finish_orphans(self) -> None:
        found = await finish_orphans(self.pg, self.processor.storage, self.max_attempts)
        if found:
            log_event(log, "recordings.orphans_finished", count=found)

    async def close(self) -> None:
        self._cancel.set()  # transcoding threads stop at their next packet
        await self.tasks.close()

    async def _claim_loop(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)

        async def claim_one() -> bool:
            """Claim a job when a slot is free; True (claim again at once) when
            one was found."""
            await slots.acquire()
            try:
                job = await jobs.claim(self.pg, self.worker_id, self.lease_s)
            except BaseException:
                slots.release()
                raise
            if job is None:
                slots.release()
                return False
            task = self.tasks.spawn(self._run(job), f"job-{job.id}")
            if task is None:  # closing
                slots.release()
                return False
            task.add_done_callback(lambda _t: slots.release())
            return True

        await run_forever("jobs.claim", claim_one, every=POLL_INTERVAL, max_backoff=MAX_BACKOFF,
                          failure_event="jobs.claim_failed", at_once=True)

    async def _run(self, job: jobs.Job) -> None:
        attempt = Attempt()
        started = time.monotonic()
        log_event(log, "job.started", job_id=job.id, video_id=job.video_id,
                  attempt=job.attempts, worker_id=self.worker_id)
        JOBS_RUNNING.inc()
        heartbeat = self.tasks.spawn(self._heartbeat(job, attempt), f"lease-{job.id}")
        try:
            await self.processor.run(job, attempt, self._cancel)
        except MediaRejected as exc:
            await self._failed(job, str(exc), retry=False)
        except jobs.LeaseLost:
            JOBS.labels("lease_lost").inc()
            log_event(log, "job.lease_lost", logging.WARNING, job_id=job.id)
        except (Cancelled, asyncio.CancelledError):
            await self._release(job)
            raise
        except Exception as exc:  # any other failure is retried up to the limit
            await self._failed(job, f"processing failed: {type(exc).__name__}: {exc}",
                               retry=True)
        else:
            JOBS.labels("done").inc()
            JOB_SECONDS.observe(time.monotonic() - started)
            log_event(log, "job.done", job_id=job.id, video_id=job.video_id,
                      seconds=round(time.monotonic() - started, 2))
        finally:
            JOBS_RUNNING.dec()
            if heartbeat is not None:
                heartbeat.cancel()

    async def _failed(self, job: jobs.Job, reason: str, retry: bool) -> None:
        try:
            final = await jobs.fail(self.pg, job, self.worker_id, reason, retry=retry,
                                    retry_in_s=min(60.0, 2.0 ** job.attempts))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The lease runs out and the job is claimed again: nothing is lost.
            log_event(log, "job.fail_unrecorded", logging.WARNING, job_id=job.id,
                      error=repr(exc))
            return
        JOBS.labels("failed" if final else "retried").inc()
        log_event(log, "job.failed" if final else "job.retry", logging.WARNING, job_id=job.id,
                  video_id=job.video_id, attempt=job.attempts, reason=reason)

    async def _release(self, job: jobs.Job) -> None:
        """Shutdown mid-job: the job goes back to the queue at once (a later
        worker redoes the attempt; its lease would expire anyway)."""
        try:
            await asyncio.shield(self.pg.execute(
                "UPDATE processing_jobs SET status = 'queued', locked_until = NULL, "
                "attempts = attempts - 1, updated_at = now() "
                "WHERE id = $1::uuid AND worker_id = $2 AND status = 'running'",
                job.id, self.worker_id))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncio.CancelledError):
            pass
        JOBS.labels("released").inc()

    async def _heartbeat(self, job: jobs.Job, attempt: Attempt) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await jobs.renew(self.pg, job, self.worker_id, self.lease_s,
                                 progress=Decimal(f"{attempt.progress * 100:.2f}"),
                                 stage=attempt.stage)
            except jobs.LeaseLost:
                log_event(log, "job.lease_lost", logging.WARNING, job_id=job.id)
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log_event(log, "job.renew_failed", logging.WARNING, job_id=job.id,
                          error=repr(exc))
