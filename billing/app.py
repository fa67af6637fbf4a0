"""The billing worker: flushes ticks to Postgres exactly once and keeps the
live balances; its HTTP port serves health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from billing.flush import Flusher, run_flusher
from vilokanam.backends import BACKENDS, attach_backends
from vilokanam.balances import rebuild_live_balances
from vilokanam.config import Settings
from vilokanam.health import add_health_routes
from vilokanam.tasks import TaskOwner


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    attach_backends(app, settings)

    async def flush_ctx(app: web.Application) -> AsyncIterator[None]:
        backends = app[BACKENDS]
        await rebuild_live_balances(backends.pg, backends.redis, settings.token_decimals)
        tasks = TaskOwner("billing")
        flusher = Flusher(backends.pg, backends.redis, settings.platform_fee)
        tasks.spawn(run_flusher(flusher, float(settings.flush_interval)), "flush")
        yield
        await tasks.close()  # unflushed ticks stay in Redis for the next start

    app.cleanup_ctx.append(flush_ctx)
    add_health_routes(app, role="billing")
    return app
