"""The media role (`vilokanam media`): processing jobs from the Postgres queue
(media/worker.py). Its HTTP port serves health and metrics."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from media.process import Processor
from media.worker import MediaWorker
from vilokanam.backends import BACKENDS, attach_backends
from vilokanam.config import Settings
from vilokanam.health import add_health_routes
from vilokanam.storage import storage_for

WORKER = web.AppKey("media_worker", MediaWorker)


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    attach_backends(app, settings)
    worker_id = f"media-{socket.gethostname()}-{os.getpid()}"

    async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
        pg = app[BACKENDS].pg
        storage = storage_for(settings.media_dir, settings.s3)
        processor = Processor(pg, storage, worker_id,
                              ipfs_api=settings.ipfs_api)
        worker = MediaWorker(pg, processor, worker_id, settings.media_concurrency,
                             float(settings.media_job_lease),
                             max_attempts=settings.media_max_attempts)
        app[WORKER] = worker
        worker.start()
        yield
        await worker.close()
        await storage.close()

    app.cleanup_ctx.append(worker_ctx)
    add_health_routes(app, role="media")
    return app
