"""The browser pages: /publish/{stream_id} and /watch/{stream_id}, plus their
script under /static/. Plain HTML and one JS file, no build step.

A page gets its configuration (ICE servers, stream id, dev mode) as JSON in a
`<script type="application/json" id="vk-config">` element rendered here, so the
browser never falls back to a public STUN host and nothing secret is in a URL."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from aiohttp import web

from signaling.api import stream_id_or_none
from signaling.state import SETTINGS
from vilokanam.accounts import canonical_account
from vilokanam.backends import BACKENDS
from vilokanam.config import Settings
from vilokanam.money import format_amount

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Scripts only from this origin (the config JSON is data, not script); media
# from the camera and the peer connection; the websocket to this origin.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; media-src 'self' blob: mediastream:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_NOT_FOUND_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Not found · Vilokanam</title></head>
<body><h1>Not found</h1><p>There is no stream at this address.</p></body></html>
"""


@dataclass(frozen=True)
class PageTemplates:
    publish: Template
    watch: Template
    video: Template
    dev_accounts: list[dict[str, str]]  # empty unless dev mode


PAGE_TEMPLATES = web.AppKey("page_templates", PageTemplates)


def _load_templates(settings: Settings) -> PageTemplates:
    """Read once when the app is built, not per request (no file I/O in handlers)."""
    return PageTemplates(
        publish=Template((STATIC_DIR / "publish.html").read_text()),
        watch=Template((STATIC_DIR / "watch.html").read_text()),
        video=Template((STATIC_DIR / "video.html").read_text()),
        dev_accounts=_dev_accounts(settings) if settings.dev_mode else [])


def _dev_accounts(settings: Settings) -> list[dict[str, str]]:
    """//Alice … //Ferdie in the stored prefix: the watch page's dev sign-in."""
    from vilokanam.services.chain import dev_accounts  # substrate import: dev mode only

    return [{"name": name.capitalize(), "account": canonical_account(address,
                                                                       settings.ss58_prefix)}
            for name, address in dev_accounts().items()]


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no `</script>` or `<!--` can end it."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def _page_config(request: web.Request, stream_id: str) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    return {"streamId": stream_id, "iceServers": settings.ice_servers,
            "devMode": settings.dev_mode, "devAccounts": request.app[PAGE_TEMPLATES].dev_accounts,
            "tokenSymbol": settings.token_symbol, "tokenDecimals": settings.token_decimals,
            "protocolVersion": 1}


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html",
                        headers=_SECURITY_HEADERS)


async def _render(request: web.Request, template: Template) -> web.Response:
    stream_id = stream_id_or_none(request.match_info["stream_id"])
    title = None
    if stream_id is not None:
        title = await request.app[BACKENDS].pg.fetchval(
            "SELECT title FROM streams WHERE id = $1::uuid", stream_id)
    if stream_id is None or title is None:
        return _html(_NOT_FOUND_HTML, status=404)
    return _html(template.substitute(title=html.escape(title), stream_id=stream_id,
                                     config=script_json(_page_config(request, stream_id))))


async def publish_page(request: web.Request) -> web.Response:
    return await _render(request, request.app[PAGE_TEMPLATES].publish)


async def watch_page(request: web.Request) -> web.Response:
    return await _render(request, request.app[PAGE_TEMPLATES].watch)


async def video_page(request: web.Request) -> web.Response:
    """The video page: a paid view played with hls.js (signaling/static/video.js)."""
    video_id = stream_id_or_none(request.match_info["video_id"])
    row = None
    if video_id is not None:
        row = await request.app[BACKENDS].pg.fetchrow(
            "SELECT v.title, v.price_per_second, COALESCE(v.view_count, 0) AS views, "
            "u.account_id FROM videos v JOIN users u ON u.id = v.creator_id "
            "WHERE v.id = $1::uuid AND v.status = 'ready'", video_id)
    if row is None:
        return _html(_NOT_FOUND_HTML.replace("no stream", "no video"), status=404)
    settings = request.app[SETTINGS]
    config = {"videoId": video_id, "devMode": settings.dev_mode,
              "devAccounts": request.app[PAGE_TEMPLATES].dev_accounts,
              "tokenSymbol": settings.token_symbol}
    return _html(request.app[PAGE_TEMPLATES].video.substitute(
        title=html.escape(row["title"]), creator=html.escape(row["account_id"]),
        price=format_amount(row["price_per_second"] or settings.price_default),
        symbol=html.escape(settings.token_symbol), views=row["views"],
        config=script_json(config)))


def add_page_routes(app: web.Application) -> None:
    app[PAGE_TEMPLATES] = _load_templates(app[SETTINGS])
    app.router.add_get("/publish/{stream_id}", publish_page)
    app.router.add_get("/watch/{stream_id}", watch_page)
    app.router.add_get("/video/{video_id}", video_page)
    app.router.add_static("/static/", STATIC_DIR)
