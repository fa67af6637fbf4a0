"""The billing worker's application: its HTTP port serves health and metrics."""

from __future__ import annotations

from aiohttp import web

from vilokanam.backends import attach_backends
from vilokanam.config import Settings
from vilokanam.health import add_health_routes


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    attach_backends(app, settings)
    add_health_routes(app, role="billing")
    return app
