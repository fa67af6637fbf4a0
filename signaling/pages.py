"""The web app's pages, rendered on the server with Jinja2 (docs/architecture.md):

| path | page |
|---|---|
| `/` | home: live streams by viewer count, search (`?q=`), categories, newest videos |
| `/watch/{stream_id}` | live: player, chat, follow, tips, viewers, seconds, cost, receipts |
| `/video/{video_id}` | a ready video: a paid view (hls.js), seconds, cost, likes, comments |
| `/publish/{stream_id}` | one stream in the studio: go live, key, WHIP settings, stats |
| `/studio` | the creator's studio: create a stream, their streams, earnings and payouts |
| `/wallet` | balance, deposit to the escrow with a wallet extension, sessions, receipts |

The channel, category and moderation pages are signaling/social_pages.py's.

Templates autoescape: a title or an account is always text, never markup. A
page gets its configuration (ICE servers, dev mode, chain RPC, ids) as JSON in
`<script type="application/json" id="vk-config">`, so the browser never falls
back to a public STUN host and nothing secret is in a URL. Scripts are ES
modules under /static/js/ (no build step), plus the committed @polkadot/api
bundle in /static/vendor/ that only the wallet page imports, and hls.js
(/static/hls.light.min.js, copied from web/) that only the video page loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup

from signaling.api import search_streams, stream_id_or_none
from signaling.community.categories import all_categories
from signaling.state import SETTINGS
from signaling.videos import ready_videos
from vilokanam.accounts import canonical_account
from vilokanam.backends import BACKENDS
from vilokanam.config import Settings
from vilokanam.money import format_amount

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATE_DIR = PACKAGE_DIR / "templates"
HOME_LIMIT = 48
HOME_VIDEOS = 12
SEARCH_MAX = 100  # characters of ?q= used; a longer query is cut, not refused

# The header's navigation: (path, label). Pages that land later (categories,
# videos, moderation) add their entry here; the layout renders whatever is listed.
NAV = (("/", "Live now"), ("/studio", "Studio"), ("/wallet", "Wallet"))

DEV_ACCOUNTS = web.AppKey("dev_accounts", list)
SECURITY_HEADERS = web.AppKey("security_headers", dict)
STATIC_FILES = web.AppKey("static_files", dict)


def content_security_policy(settings: Settings) -> str:
    """Scripts and styles only from this origin (the config JSON is data, not
    script); media from the camera and the peer connection; fetch and the
    websocket to this origin, and to the chain's RPC for the wallet's deposit."""
    connect = ["'self'"]
    chain = settings.chain_public_url or settings.substrate_url
    if chain:
        parts = urlsplit(chain)
        if parts.scheme in ("ws", "wss", "http", "https") and parts.netloc:
            connect.append(f"{parts.scheme}://{parts.netloc}")
    return ("default-src 'self'; script-src 'self'; style-src 'self'; "
            f"connect-src {' '.join(connect)}; media-src 'self' blob: mediastream:; "
            "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'none'")


def security_headers(settings: Settings) -> dict[str, str]:
    return {"Content-Security-Policy": content_security_policy(settings),
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store"}


def _dev_accounts(settings: Settings) -> list[dict[str, str]]:
    """//Alice … //Ferdie in the stored prefix: the sign-in dialog's dev accounts."""
    if not settings.dev_mode:
        return []
    from vilokanam.services.chain import dev_accounts  # substrate import: dev mode only

    return [{"name": name.capitalize(),
             "account": canonical_account(address, settings.ss58_prefix)}
            for name, address in dev_accounts().items()]


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no `</script>` or `<!--` can end it."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def local_path(url: str) -> str:
    """An absolute URL of ours as a path + query: the page loads it from its
    own origin (CSP img-src 'self'), whatever host name the browser used."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _script_json_filter(value: Any) -> Markup:
    return Markup(script_json(value))  # escaped for a script element above


def page_config(request: web.Request, **extra: Any) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    return {"iceServers": settings.ice_servers, "devMode": settings.dev_mode,
            "devAccounts": request.app[DEV_ACCOUNTS], "tokenSymbol": settings.token_symbol,
            "tokenDecimals": settings.token_decimals,
            "priceDefault": str(settings.price_default), "protocolVersion": 1, **extra}


def render(request: web.Request, template: str, page: str, status: int = 200,
           config: dict[str, Any] | None = None, **context: Any) -> web.Response:
    response = aiohttp_jinja2.render_template(
        template, request, {"page": page, "nav": NAV, "path": request.path,
                            "config": page_config(request, **(config or {})), **context},
        status=status)
    response.headers.update(request.app[SECURITY_HEADERS])
    return response


def not_found_page(request: web.Request, what: str = "stream") -> web.Response:
    return render(request, "not_found.html", "not-found", status=404, what=what)


async def _stream_row(request: web.Request) -> dict[str, Any] | None:
    stream_id = stream_id_or_none(request.match_info["stream_id"])
    if stream_id is None:
        return None
    row = await request.app[BACKENDS].pg.fetchrow(
        """SELECT s.id::text AS id, s.title, s.status, u.account_id AS creator_account,
                  u.username AS creator_username, c.id::text AS category_id,
                  c.name AS category
             FROM streams s JOIN users u ON u.id = s.creator_id
             LEFT JOIN categories c ON c.id = s.category_id WHERE s.id = $1::uuid""",
        stream_id)
    return dict(row) if row else None


async def home_page(request: web.Request) -> web.Response:
    """Live streams (searched with ?q=), the categories, the newest videos;
    ?category=<id> narrows streams and videos to one category."""
    query = request.query.get("q", "").strip()[:SEARCH_MAX]
    categories = await all_categories(request.app[BACKENDS].pg)
    category = None
    if "category" in request.query:
        wanted = request.query["category"]
        category = next((c for c in categories if c["id"] == wanted), None)
        if category is None:
            return not_found_page(request, "category")
    category_id = category["id"] if category else None
    streams = await search_streams(request.app, status="live", query=query or None,
                                   limit=HOME_LIMIT, offset=0, category_id=category_id)
    videos = await ready_videos(request.app, None, category_id, HOME_VIDEOS, 0)
    return render(request, "home.html", "home", streams=streams, query=query,
                  categories=categories, category=category, videos=videos,
                  config={"query": query, "category": category_id})


async def watch_page(request: web.Request) -> web.Response:
    stream = await _stream_row(request)
    if stream is None:
        return not_found_page(request)
    return render(request, "watch.html", "watch", stream=stream,
                  config={"streamId": stream["id"], "creatorAccount": stream["creator_account"]})


async def publish_page(request: web.Request) -> web.Response:
    stream = await _stream_row(request)
    if stream is None:
        return not_found_page(request)
    settings = request.app[SETTINGS]
    return render(request, "publish.html", "publish", stream=stream,
                  whip_url=f"{settings.base_url}/whip/{stream['id']}",
                  config={"streamId": stream["id"], "creatorAccount": stream["creator_account"]})


async def studio_page(request: web.Request) -> web.Response:
    """Streams, uploads with their processing, videos, analytics, payouts
    (js/pages/studio.js); each payout links to VILOKANAM_EXPLORER_URL."""
    settings = request.app[SETTINGS]
    return render(request, "studio.html", "studio", config={
        "explorerUrl": settings.explorer_url,
        "chainRpc": settings.chain_public_url or settings.substrate_url})


async def wallet_page(request: web.Request) -> web.Response:
    return render(request, "wallet.html", "wallet")


async def video_page(request: web.Request) -> web.Response:
    """A ready video: a paid view played with hls.js (js/pages/video.js)."""
    video_id = stream_id_or_none(request.match_info["video_id"])
    row = None
    if video_id is not None:
        row = await request.app[BACKENDS].pg.fetchrow(
            "SELECT v.id::text AS id, v.title, v.price_per_second, "
            "COALESCE(v.view_count, 0) AS views, u.account_id AS creator_account, "
            "u.username AS creator_username, COALESCE(v.like_count, 0) AS likes "
            "FROM videos v JOIN users u ON u.id = v.creator_id "
            "WHERE v.id = $1::uuid AND v.status = 'ready'", video_id)
    if row is None:
        return not_found_page(request, "video")
    price = row["price_per_second"] or request.app[SETTINGS].price_default
    return render(request, "video.html", "video", video=dict(row),
                  price=format_amount(price),
                  config={"videoId": row["id"], "creatorAccount": row["creator_account"]})


def add_page_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        auto_reload=False)
    env.filters["script_json"] = _script_json_filter
    env.filters["local_path"] = local_path
    for name in env.list_templates():  # compiled now: no template file I/O in a handler
        env.get_template(name)
    app[DEV_ACCOUNTS] = _dev_accounts(settings)
    app[SECURITY_HEADERS] = security_headers(settings)
    app.router.add_get("/", home_page)
    app.router.add_get("/watch/{stream_id}", watch_page)
    app.router.add_get("/publish/{stream_id}", publish_page)
    app.router.add_get("/studio", studio_page)
    app.router.add_get("/wallet", wallet_page)
    app.router.add_get("/video/{video_id}", video_page)
    # Not add_static: its FileResponse answers a missing file with an empty
    # 404 of no type, past the error middleware (schemathesis found it). The
    # assets are listed once here, so a lookup needs no file I/O and no path
    # outside the folder can be named.
    app[STATIC_FILES] = {path.relative_to(STATIC_DIR).as_posix(): path
                         for path in STATIC_DIR.rglob("*") if path.is_file()}
    app.router.add_get("/static/{filename:.+}", static_file)


async def static_file(request: web.Request) -> web.FileResponse:
    path = request.app[STATIC_FILES].get(request.match_info["filename"])
    if path is None:
        raise web.HTTPNotFound()  # the error middleware's JSON 404
    return web.FileResponse(path)
