"""The SFU worker's application: its private control port serves the control
API, health and metrics; the StreamManager it owns carries the media."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sfu.control import MANAGER, add_control_routes
from sfu.events import EventBus
from sfu.lifecycle import Lifecycle
from sfu.streams import StreamManager
from vilokanam.backends import BACKENDS, attach_backends
from vilokanam.config import Settings
from vilokanam.health import add_health_routes


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=256 * 1024)  # SDP offers with many candidates
    attach_backends(app, settings)

    async def manager_ctx(app: web.Application) -> AsyncIterator[None]:
        backends = app[BACKENDS]
        manager = StreamManager(
            ice_servers=settings.ice_servers, capacity=settings.sfu_capacity,
            sfu_url=settings.sfu_control_url, lifecycle=Lifecycle(backends.pg),
            events=EventBus(backends.redis))
        manager.start()
        app[MANAGER] = manager
        yield
        await manager.close()

    app.cleanup_ctx.append(manager_ctx)
    add_health_routes(app, role="sfu")
    add_control_routes(app)
    return app
