"""The signaling server's aiohttp application."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from routing.reaper import run_reaper
from signaling.api import add_api_routes
from signaling.auth import add_auth_routes
from signaling.billing_api import add_billing_routes
from signaling.community.routes import add_community
from signaling.creator_support import add_creator_support_routes
from signaling.errors import error_middleware
from signaling.events import events_ctx
from signaling.openapi import add_openapi_routes
from signaling.pages import add_page_routes
from signaling.playback import add_playback_routes
from signaling.sfu_client import sfu_client_ctx
from signaling.social_pages import add_social_page_routes
from signaling.state import SETTINGS
from signaling.stream_thumbnails import add_stream_thumbnail_routes
from signaling.studio_api import add_studio_routes
from signaling.videos import add_video_routes
from signaling.whip import add_whip_whep_routes
from signaling.ws import add_ws_routes
from vilokanam.backends import BACKENDS, attach_backends
from vilokanam.config import Settings
from vilokanam.health import add_health_routes
from vilokanam.tasks import TaskOwner


async def reaper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every signaling server reaps dead workers (routing/reaper.py); a lock in
    Redis lets one work at a time."""
    backends = app[BACKENDS]
    tasks = TaskOwner("reaper")
    tasks.spawn(run_reaper(backends.redis, backends.pg), "loop")
    try:
        yield
    finally:
        await tasks.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[error_middleware])
    app[SETTINGS] = settings
    attach_backends(app, settings)
    app.cleanup_ctx.append(sfu_client_ctx)
    app.cleanup_ctx.append(events_ctx)  # after the backends: it uses their Redis
    app.cleanup_ctx.append(reaper_ctx)  # ends the streams of workers that died
    add_community(app)  # after events_ctx (presence listens), before the websockets
    add_health_routes(app, role="signaling")
    add_api_routes(app)
    add_auth_routes(app)
    add_billing_routes(app)
    add_creator_support_routes(app)
    add_page_routes(app)
    add_social_page_routes(app)  # after add_page_routes: its templates
    add_ws_routes(app)
    add_whip_whep_routes(app)
    add_video_routes(app, settings)
    add_playback_routes(app)
    add_studio_routes(app)
    add_stream_thumbnail_routes(app)
    add_openapi_routes(app)
    return app
