"""Playback of a ready video, billed per second of media delivered.

`POST /api/videos/{id}/views` (a viewer whose live balance pays 10 s) makes a
`video_views` row priced at the video's price now (0 for a subscriber of its
creator: the seconds are still ticked and counted), and returns a master
playlist URL signed for that view: `?view=<id>&exp=<unix>&sig=<hmac>`, the
HMAC (SHA-256, a key derived from VILOKANAM_TOKEN_SECRET) of video, view and
expiry. Every rendition playlist and segment URL in it carries the same
signature, so a URL of another view, or an expired one, is 403.

Billing: a segment covers media seconds [start, start + duration) — the same
seconds in every rendition, because the media role aligns keyframes
(media/transcode.py). Delivering segment n bills each of its seconds not
billed before for this view, as ticks on the live path (vilokanam/metering.py):
one batch `vod:<view id>:<media second>` per second, written with SET NX and
applied to Postgres exactly once by the billing flush (billing/flush.py, which
grows the view's one `video_view` payment, the creator's earnings, the
viewer's balance, view_duration and watch_completion). Seeking back or
switching renditions re-fetches seconds already billed: a per-view Redis set
of billed seconds skips them, and were it lost, the batch id still dedupes in
Postgres (tick_batches). When the live balance cannot pay a segment's unbilled
seconds, the view is cut off: that segment and every later request get 403."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from signaling.community.params import path_uuid
from signaling.errors import ApiError, forbidden, not_found
from signaling.state import SETTINGS
from signaling.users import require_user, token_secret_or_503
from signaling.videos import STORAGE, fetch_video, parse_video_id
from vilokanam.backends import BACKENDS
from vilokanam.balances import MIN_START_SECONDS, live_balance, planck_floor
from vilokanam.config import Settings
from vilokanam.logs import log_event
from vilokanam.metering import VIDEO_VIEW_BATCH_PREFIX, Tick, TickBatch, TickWriter
from vilokanam.money import format_amount, to_planck
from vilokanam.storage import video_key
from vilokanam.subscriptions import is_subscribed

log = logging.getLogger("signaling.playback")

_RESOLUTION = re.compile(r"^[0-9]{2,4}p$")
_SEGMENT = re.compile(r"^seg_([0-9]{5})\.ts$")
SEGMENT_CACHE_MAX = 10_000
BILLED_TTL_S = 86400 * 2  # a view's billed-seconds set outlives its URLs
TICK_WRITER = web.AppKey("vod_tick_writer", TickWriter)


def _key(settings: Settings) -> bytes:
    secret = token_secret_or_503(settings).encode()
    return hmac.new(secret, b"vilokanam playback url v1", hashlib.sha256).digest()


def sign(settings: Settings, video_id: str, view_id: str, expires: int) -> str:
    message = f"{video_id}.{view_id}.{expires}".encode()
    return hmac.new(_key(settings), message, hashlib.sha256).hexdigest()


def signed_query(settings: Settings, video_id: str, view_id: str, expires: int) -> str:
    return f"view={view_id}&exp={expires}&sig={sign(settings, video_id, view_id, expires)}"


def billed_key(view_id: str) -> str:
    return f"vk:vod:billed:{view_id}"


def cut_key(view_id: str) -> str:
    return f"vk:vod:cut:{view_id}"


@dataclass(frozen=True)
class View:
    id: str
    video_id: str
    viewer_id: str
    price: Decimal
    expires: int
    query: str


def _verify(request: web.Request, video_id: str) -> tuple[str, int, str]:
    settings = request.app[SETTINGS]
    view_id, raw_exp, sig = (request.query.get(k, "") for k in ("view", "exp", "sig"))
    try:
        view_id = str(uuid.UUID(view_id))
    except ValueError:
        raise forbidden("this URL is not signed for a view (POST /api/videos/{id}/views)") \
            from None
    if not raw_exp.isdecimal() or len(raw_exp) > 12:
        raise forbidden("this URL is not signed for a view")
    expires = int(raw_exp)
    if not hmac.compare_digest(sign(settings, video_id, view_id, expires), sig):
        raise ApiError(403, "invalid_signature", "this URL is not signed for this view")
    if expires < time.time():
        raise ApiError(403, "playback_expired", "this view's URLs have expired; start a new view")
    return view_id, expires, signed_query(settings, video_id, view_id, expires)


async def _view(request: web.Request) -> View:
    video_id = parse_video_id(request)
    view_id, expires, query = _verify(request, video_id)
    backends = request.app[BACKENDS]
    if await backends.redis.exists(cut_key(view_id)):
        raise ApiError(403, "insufficient_funds", "the balance ran out: this view is cut off")
    row = await backends.pg.fetchrow(
        "SELECT vv.viewer_id::text AS viewer_id, vv.price_per_second, vv.cut_off "
        "FROM video_views vv WHERE vv.id = $1::uuid AND vv.video_id = $2::uuid",
        view_id, video_id)
    if row is None:
        raise ApiError(403, "invalid_signature", "no such view of this video")
    if row["cut_off"]:
        raise ApiError(403, "insufficient_funds", "the balance ran out: this view is cut off")
    return View(view_id, video_id, row["viewer_id"], Decimal(row["price_per_second"]), expires,
                query)


# -- starting a view -----------------------------------------------------------

async def start_view(request: web.Request) -> web.Response:
    claims = await require_user(request)
    settings = request.app[SETTINGS]
    backends = request.app[BACKENDS]
    video = await fetch_video(backends.pg, parse_video_id(request))
    if video["status"] != "ready":
        raise ApiError(409, "video_not_ready", f"the video is {video['status']}, not ready")
    price = Decimal(video["price_per_second"] or settings.price_default)
    if await is_subscribed(backends.pg, claims.user_id, video["creator_id"]):
        price = Decimal(0)  # a subscriber's seconds are still ticked, at 0
    needed = planck_floor(price * MIN_START_SECONDS, settings.token_decimals)
    balance = await live_balance(backends.pg, backends.redis, claims.user_id,
                                 settings.token_decimals)
    if balance < needed:
        raise ApiError(402, "insufficient_funds",
                       f"watching needs {MIN_START_SECONDS} s of the price in your balance")
    view_id = await backends.pg.fetchval(
        "INSERT INTO video_views (video_id, viewer_id, view_duration, watch_completion, "
        "price_per_second, ip_address, user_agent) VALUES ($1::uuid, $2::uuid, 0, 0, $3, "
        "$4::inet, $5) RETURNING id::text",
        video["id"], claims.user_id, price, _ip(request),
        request.headers.get("User-Agent", "")[:500])
    expires = int(time.time()) + settings.playback_ttl
    query = signed_query(settings, video["id"], view_id, expires)
    log_event(log, "video.view_started", video_id=video["id"], view_id=view_id,
              user_id=claims.user_id)
    return web.json_response({
        "view_id": view_id, "video_id": video["id"],
        "playlist_url": f"{settings.base_url}/vod/{video['id']}/master.m3u8?{query}",
        "expires_at": expires, "price_per_second": format_amount(price)}, status=201)


def _ip(request: web.Request) -> str | None:
    peer = request.remote
    try:
        return str(ipaddress.ip_address(peer)) if peer else None
    except ValueError:
        return None


async def view_status(request: web.Request) -> web.Response:
    """GET /api/videos/{id}/views/{view_id}: the viewer's seconds billed and
    their cost (the flushed part from Postgres, plus what Redis holds)."""
    claims = await require_user(request)
    video_id = parse_video_id(request)
    view_id = path_uuid(request, "view_id", "view")
    backends = request.app[BACKENDS]
    row = await backends.pg.fetchrow(
        "SELECT vv.view_duration, vv.watch_completion, vv.price_per_second, vv.cut_off, "
        "p.amount FROM video_views vv LEFT JOIN payments p ON p.reference_id = vv.id "
        "AND p.payment_type = 'video_view' "
        "WHERE vv.id = $1::uuid AND vv.video_id = $2::uuid AND vv.viewer_id = $3::uuid",
        view_id, video_id, claims.user_id)
    if row is None:
        raise not_found("view_not_found", "no such view of yours")
    delivered = await backends.redis.scard(billed_key(view_id))  # type: ignore[misc]
    price = Decimal(row["price_per_second"])
    return web.json_response({
        "view_id": view_id, "seconds": int(delivered),
        "cost": format_amount(price * int(delivered)),
        "billed_seconds": row["view_duration"] or 0,
        "billed_cost": format_amount(Decimal(row["amount"] or 0)),
        "watch_completion": format_amount(Decimal(row["watch_completion"] or 0)),
        "cut_off": bool(row["cut_off"]) or bool(await backends.redis.exists(cut_key(view_id))),
        "price_per_second": format_amount(price)})


# -- playlists -------------------------------------------------------------------

async def master_playlist(request: web.Request) -> web.Response:
    view = await _view(request)
    rows = await request.app[BACKENDS].pg.fetch(
        "SELECT resolution, bitrate, width, height FROM video_versions "
        "WHERE video_id = $1::uuid ORDER BY height", view.video_id)
    if not rows:
        raise ApiError(409, "video_not_ready", "the video has no renditions")
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in rows:
        bandwidth = max(1, int(r["bitrate"] or 0)) * 1000 * 11 // 10
        lines.append(f"#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},"
                     f"RESOLUTION={r['width']}x{r['height']}")
        lines.append(f"{r['resolution']}/index.m3u8?{view.query}")
    return _playlist("\n".join(lines) + "\n")


def _playlist(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/vnd.apple.mpegurl",
                        headers={"Cache-Control": "private, no-store"})


def _resolution(request: web.Request) -> str:
    resolution = request.match_info["resolution"]
    if not _RESOLUTION.match(resolution):
        raise not_found("not_found", "no such rendition")
    return resolution


async def _segments(request: web.Request, video_id: str, resolution: str) -> list[float]:
    """The rendition's segment durations, from its playlist (cached per app)."""
    cache = request.app[SEGMENT_CACHE]
    key = (video_id, resolution)
    if key not in cache:
        if len(cache) > SEGMENT_CACHE_MAX:
            cache.clear()
        try:
            text = await request.app[STORAGE].read_text(
                video_key(video_id, "hls", resolution, "index.m3u8"))
        except FileNotFoundError:
            raise not_found("not_found", "no such rendition") from None
        cache[key] = [float(line[8:].split(",")[0]) for line in text.splitlines()
                      if line.startswith("#EXTINF:")]
    return cache[key]


SEGMENT_CACHE = web.AppKey("vod_segment_cache", dict[tuple[str, str], list[float]])


async def media_playlist(request: web.Request) -> web.Response:
    view = await _view(request)
    resolution = _resolution(request)
    try:
        text = await request.app[STORAGE].read_text(
            video_key(view.video_id, "hls", resolution, "index.m3u8"))
    except FileNotFoundError:
        raise not_found("not_found", "no such rendition") from None
    lines = [f"{line}?{view.query}" if _SEGMENT.match(line) else line
             for line in text.splitlines()]
    return _playlist("\n".join(lines) + "\n")


# -- segments: delivered and billed ------------------------------------------------

def seconds_of(durations: list[float], index: int) -> range:
    """The whole media seconds segment `index` delivers: s with
    start <= s < end, where [start, end) is the segment's media time; so
    consecutive segments share no second and together cover them all."""
    start = sum(durations[:index])
    end = start + durations[index]
    return range(math.ceil(start - 1e-6), math.ceil(end - 1e-6))


async def segment(request: web.Request) -> web.StreamResponse:
    view = await _view(request)
    resolution = _resolution(request)
    match = _SEGMENT.match(request.match_info["segment"])
    if match is None:
        raise not_found("not_found", "no such segment")
    index = int(match.group(1))
    durations = await _segments(request, view.video_id, resolution)
    if index >= len(durations):
        raise not_found("not_found", "no such segment")
    key = video_key(view.video_id, "hls", resolution, match.group(0))
    await _bill(request, view, seconds_of(durations, index))
    try:
        return await request.app[STORAGE].serve(request, key, "video/mp2t",
                                                 {"Cache-Control": "private, no-store"})
    except FileNotFoundError:
        raise not_found("not_found", "no such segment") from None


async def _bill(request: web.Request, view: View, seconds: range) -> None:
    settings = request.app[SETTINGS]
    backends = request.app[BACKENDS]
    redis: aioredis.Redis = backends.redis
    wanted = list(seconds)
    if not wanted:
        return
    known = await redis.smismember(billed_key(view.id), wanted)  # type: ignore[misc]
    new = [s for s, seen in zip(wanted, known, strict=True) if not seen]
    if not new:
        return
    price = to_planck(view.price, settings.token_decimals)
    balance = await live_balance(backends.pg, redis, view.viewer_id, settings.token_decimals)
    if balance < price * len(new):
        await _cut_off(backends.pg, redis, view)
        raise ApiError(403, "insufficient_funds", "the balance cannot pay this segment")
    writer = request.app[TICK_WRITER]
    broke = False
    for second in new:
        batch = TickBatch(f"{VIDEO_VIEW_BATCH_PREFIX}{view.id}", second,
                          (Tick(view.id, view.viewer_id, price),))
        broke = bool(await writer.write(batch)) or broke
    await redis.sadd(billed_key(view.id), *new)  # type: ignore[misc]
    await redis.expire(billed_key(view.id), BILLED_TTL_S)
    if broke:  # paid for these seconds, not for the next: the next request is refused
        await _cut_off(backends.pg, redis, view)


async def _cut_off(pg: asyncpg.Pool, redis: aioredis.Redis, view: View) -> None:
    await redis.set(cut_key(view.id), "1", ex=BILLED_TTL_S)
    await pg.execute("UPDATE video_views SET cut_off = TRUE WHERE id = $1::uuid", view.id)
    log_event(log, "video.view_cut_off", view_id=view.id, video_id=view.video_id,
              user_id=view.viewer_id)


def add_playback_routes(app: web.Application) -> None:
    app[SEGMENT_CACHE] = {}

    async def writer_ctx(app: web.Application) -> AsyncIterator[None]:
        app[TICK_WRITER] = TickWriter(app[BACKENDS].redis)
        yield

    app.cleanup_ctx.append(writer_ctx)  # after the backends: it uses their Redis
    app.router.add_post("/api/videos/{video_id}/views", start_view)
    app.router.add_get("/api/videos/{video_id}/views/{view_id}", view_status)
    app.router.add_get("/vod/{video_id}/master.m3u8", master_playlist)
    app.router.add_get("/vod/{video_id}/{resolution}/index.m3u8", media_playlist)
    app.router.add_get("/vod/{video_id}/{resolution}/{segment}", segment)

