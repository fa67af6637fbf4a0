"""The signaling server's aiohttp application."""

from __future__ import annotations

from aiohttp import web

from signaling.state import SETTINGS
from vilokanam.backends import attach_backends
from vilokanam.config import Settings
from vilokanam.health import add_health_routes


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SETTINGS] = settings
    attach_backends(app, settings)
    add_health_routes(app, role="signaling")
    return app
