"""The SFU worker's application: its private control port serves the control
API, health and metrics; the StreamManager it owns carries the media."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from routing.channels import EventBus
from routing.registry import WorkerRegistration, new_worker_id
from sfu.aiortc_hooks import restrict_host_candidates
from sfu.control import MANAGER, add_control_routes
from sfu.lifecycle import Lifecycle
from sfu.metering import TickEmitter
from sfu.recorder import Recordings
from sfu.streams import StreamManager
from vilokanam.backends import BACKENDS, attach_backends
from vilokanam.config import Settings
from vilokanam.health import add_health_routes
from vilokanam.storage import storage_for


def create_app(settings: Settings) -> web.Application:
    if settings.ice_host_addresses:
        restrict_host_candidates(settings.ice_host_addresses)
    app = web.Application(client_max_size=256 * 1024)  # SDP offers with many candidates
    attach_backends(app, settings)

    async def manager_ctx(app: web.Application) -> AsyncIterator[None]:
        backends = app[BACKENDS]
        worker_id = new_worker_id()
        manager = StreamManager(
            ice_servers=settings.ice_servers, capacity=settings.sfu_capacity,
            sfu_url=settings.sfu_control_url, lifecycle=Lifecycle(backends.pg),
            events=EventBus(backends.redis, worker_id),
            emitter=TickEmitter.for_redis(worker_id, backends.redis),
            token_decimals=settings.token_decimals,
            recordings=Recordings(backends.pg, storage_for(settings.media_dir),
                                  enabled=settings.record_streams,
                                  max_attempts=settings.media_max_attempts))
        manager.start()
        app[MANAGER] = manager
        registration = WorkerRegistration(
            backends.redis, worker_id=worker_id, control_url=settings.sfu_control_url,
            capacity=settings.sfu_capacity, load_fn=lambda: manager.load,
            streams_fn=lambda: len(manager.streams))
        await registration.start()
        yield
        await registration.stop()  # out of placement first, then end what we carry
        await manager.close()

    app.cleanup_ctx.append(manager_ctx)
    add_health_routes(app, role="sfu")
    add_control_routes(app)
    return app
