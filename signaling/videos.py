"""Videos: upload (one streamed body, or resumable with tus 1.0), the list and
the detail with versions and metadata, the thumbnail, the creator's edits.

An upload is written to storage as it arrives (never held in memory) and
refused with 413 before a byte past VILOKANAM_UPLOAD_MAX_BYTES is read. The
name and Content-Type prove nothing: the media role probes the content
(media/process.py) and a file that is not media, is truncated or has no video
ends `failed` with a reason the creator sees."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from signaling.api import parse_price, parse_title
from signaling.community.params import path_uuid
from signaling.errors import ApiError, bad_request, forbidden, not_found, parse_json_body
from signaling.paging import parse_paging
from signaling.state import SETTINGS
from signaling.timestamps import iso_or_none
from signaling.users import canonical_or_400, make_creator, require_user
from vilokanam import jobs
from vilokanam.backends import BACKENDS
from vilokanam.config import Settings
from vilokanam.logs import log_event
from vilokanam.money import format_amount
from vilokanam.storage import Storage, TooLarge, storage_for, video_key

log = logging.getLogger("signaling.videos")

STORAGE = web.AppKey("storage", Storage)
TUS_VERSION = "1.0.0"
TUS_CONTENT_TYPE = "application/offset+octet-stream"
CHUNK = 1 << 20
TAGS_MAX, TAG_LEN_MAX = 20, 50
UPLOAD_LOCK_S = 3600
UPLOAD_IDLE_S = 60.0

_VIDEO_SELECT = """
SELECT v.id::text AS id, v.title, v.status, v.failure_reason, u.account_id AS creator_account,
       v.creator_id::text AS creator_id, v.duration, v.width, v.height, v.file_size,
       COALESCE(v.view_count, 0) AS view_count, COALESCE(v.like_count, 0) AS like_count,
       COALESCE(v.comment_count, 0) AS comment_count, v.price_per_second, v.thumbnail_url,
       v.ipfs_hash, v.source_stream_id::text AS source_stream_id, v.tags,
       v.upload_length, v.upload_offset,
       v.published_at AT TIME ZONE current_setting('TimeZone') AS published_at,
       v.created_at AT TIME ZONE current_setting('TimeZone') AS created_at,
       m.format, m.codec, m.audio_codec, m.frame_rate, m.aspect_ratio, m.tags AS meta_tags,
       j.id::text AS job_id, j.status AS job_status, j.progress AS job_progress,
       j.stage AS job_stage, j.attempts AS job_attempts
  FROM videos v JOIN users u ON u.id = v.creator_id
  LEFT JOIN video_metadata m ON m.video_id = v.id
  LEFT JOIN processing_jobs j ON j.id::text = v.processing_job_id
"""


# -- parsing -----------------------------------------------------------------

def parse_video_id(request: web.Request) -> str:
    return path_uuid(request, "video_id", "video")


def parse_tags(raw: object) -> list[str]:
    """Tags from a comma-separated string or a JSON list of strings."""
    if raw is None:
        return []
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise bad_request("invalid_tags", "tags are a list of strings")
    tags = [t.strip() for t in items if t.strip()]
    if len(tags) > TAGS_MAX or any(len(t) > TAG_LEN_MAX or "\x00" in t for t in tags):
        raise bad_request("invalid_tags", f"at most {TAGS_MAX} tags of {TAG_LEN_MAX} characters")
    return tags


def _tus_metadata(header: str) -> dict[str, str]:
    """tus `Upload-Metadata`: comma-separated `key base64(value)` pairs."""
    meta: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            meta[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise bad_request("invalid_upload_metadata",
                              f"Upload-Metadata {key!r} is not base64 UTF-8") from None
    return meta


def _header_int(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not raw.isdecimal() or len(raw) > 19:
        raise bad_request("invalid_header", f"{name} must be a non-negative integer")
    return int(raw)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"a video upload is at most {limit} bytes")


# -- responses ---------------------------------------------------------------

def absolute(settings: Settings, path: str | None) -> str | None:
    if path is None:
        return None
    return path if "://" in path else f"{settings.base_url}{path}"


def video_json(row: asyncpg.Record, settings: Settings,
               versions: list[asyncpg.Record] | None = None) -> dict[str, Any]:
    price = row["price_per_second"]
    body: dict[str, Any] = {
        "id": row["id"], "title": row["title"], "status": row["status"],
        "failure_reason": row["failure_reason"], "creator_account": row["creator_account"],
        "duration": row["duration"], "width": row["width"], "height": row["height"],
        "file_size": row["file_size"], "view_count": row["view_count"],
        "like_count": row["like_count"], "comment_count": row["comment_count"],
        "price_per_second": None if price is None else format_amount(price),
        "thumbnail_url": absolute(settings, row["thumbnail_url"]),
        "ipfs_hash": row["ipfs_hash"], "source_stream_id": row["source_stream_id"],
        "tags": list(row["tags"] or []),
        "published_at": iso_or_none(row["published_at"]),
        "created_at": iso_or_none(row["created_at"]),
        "metadata": {
            "format": row["format"], "codec": row["codec"], "audio_codec": row["audio_codec"],
            "frame_rate": None if row["frame_rate"] is None else format_amount(row["frame_rate"]),
            "aspect_ratio": row["aspect_ratio"], "tags": list(row["meta_tags"] or row["tags"]
                                                              or [])},
    }
    if versions is not None:
        body["versions"] = [{
            "resolution": v["resolution"], "bitrate": v["bitrate"], "file_size": v["file_size"],
            "width": v["width"], "height": v["height"], "ipfs_hash": v["ipfs_hash"],
            # Segments play only through a view's signed playlist (POST .../views).
            "url": f"{settings.base_url}/vod/{row['id']}/{v['resolution']}/index.m3u8",
        } for v in versions]
    if row["job_id"] is not None:
        body["processing"] = {
            "job_id": row["job_id"], "status": row["job_status"],
            "progress": format_amount(row["job_progress"]), "stage": row["job_stage"],
            "attempts": row["job_attempts"]}
    if row["status"] == "uploading" and row["upload_length"] is not None:
        body["upload"] = {"length": row["upload_length"], "offset": row["upload_offset"]}
    return body


async def fetch_video(pg: asyncpg.Pool, video_id: str) -> asyncpg.Record:
    row = await pg.fetchrow(f"{_VIDEO_SELECT} WHERE v.id = $1::uuid", video_id)
    if row is None or row["status"] == "archived":
        raise not_found("video_not_found", f"no video {video_id}")
    return row


async def fetch_versions(pg: asyncpg.Pool, video_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pg.fetch(
        "SELECT resolution, bitrate, file_size, width, height, ipfs_hash FROM video_versions "
        "WHERE video_id = $1::uuid ORDER BY height, resolution", video_id)
    return rows


# -- upload ------------------------------------------------------------------

async def _new_video(request: web.Request, title: str, tags: list[str],
                     length: int | None) -> str:
    claims = await require_user(request)
    settings = request.app[SETTINGS]
    async with request.app[BACKENDS].pg.acquire() as conn, conn.transaction():
        creator = await make_creator(conn, claims.account)
        video_id = str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO videos (id, creator_id, title, status, price_per_second, storage_key, "
            "upload_length, tags) VALUES ($1::uuid, $2::uuid, $3, 'uploading', $4, $5, $6, $7)",
            video_id, creator.id, title, settings.price_default, video_key(video_id, "source"),
            length, tags)
    log_event(log, "video.upload_started", video_id=video_id, creator_id=creator.id,
              length=length)
    return video_id


async def _receive(request: web.Request, video_id: str, offset: int, limit: int) -> int:
    """Streams the body into the video's source at `offset`; returns the size
    now on disk. An interrupted body keeps what arrived (tus resumes from it)."""
    storage = request.app[STORAGE]
    key = video_key(video_id, "source")
    try:
        return await storage.write_stream(key, _body(request), limit, offset=offset)
    except (aiohttp.ClientPayloadError, ConnectionError, TimeoutError) as exc:
        size = await storage.size(key) or 0
        log_event(log, "video.upload_interrupted", logging.WARNING, video_id=video_id,
                  received=size, error=type(exc).__name__)
        return size


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body in chunks; a client silent for UPLOAD_IDLE_S is gone."""
    while True:
        async with asyncio.timeout(UPLOAD_IDLE_S):
            chunk = await request.content.read(CHUNK)
        if not chunk:
            return
        yield chunk


async def _complete(pg: asyncpg.Pool, settings: Settings, video_id: str, size: int) -> None:
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE videos SET file_size = $2, upload_offset = $2 "
                           "WHERE id = $1::uuid", video_id, size)
        await jobs.enqueue(conn, video_id, settings.media_max_attempts)
    log_event(log, "video.uploaded", video_id=video_id, bytes=size)


async def _fail(pg: asyncpg.Pool, video_id: str, reason: str) -> None:
    await pg.execute("UPDATE videos SET status = 'failed', failure_reason = $2 "
                     "WHERE id = $1::uuid", video_id, reason)
    log_event(log, "video.upload_failed", logging.WARNING, video_id=video_id, reason=reason)


async def upload_video(request: web.Request) -> web.Response:
    """POST /api/videos: the file as the body (`Content-Type: video/*`,
    `?title=`, `?tags=a,b`), or with `Tus-Resumable` a tus 1.0 creation."""
    settings = request.app[SETTINGS]
    limit = settings.upload_max_bytes
    if "Tus-Resumable" in request.headers:
        return await _tus_create(request)
    await require_user(request)
    if not request.content_type.startswith("video/"):
        raise ApiError(415, "unsupported_media_type",
                       "send the file as the body with Content-Type video/* "
                       "(or use the tus protocol: Tus-Resumable: 1.0.0)")
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)  # before reading a byte of it
    if length == 0:
        raise bad_request("empty_upload", "the body is empty")
    title = parse_title(request.query.get("title", "Untitled video"))
    tags = parse_tags(request.query.get("tags"))
    video_id = await _new_video(request, title, tags, length)
    pg = request.app[BACKENDS].pg
    try:
        size = await _receive(request, video_id, 0, limit)
    except TooLarge:
        await request.app[STORAGE].delete(video_key(video_id, "source"))
        await _fail(pg, video_id, f"the upload is larger than {limit} bytes")
        raise _too_large(limit) from None
    if size == 0 or (length is not None and size < length):
        await _fail(pg, video_id, f"the upload was interrupted after {size} of "
                                  f"{length if length is not None else '?'} bytes")
        raise bad_request("upload_incomplete", "the body ended before its Content-Length")
    await _complete(pg, settings, video_id, size)
    return web.json_response({"id": video_id, "status": "processing",
                              "url": f"{settings.base_url}/api/videos/{video_id}"}, status=201)


# -- tus 1.0 (core + creation) ------------------------------------------------

def _tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **extra}


def _check_tus_version(request: web.Request) -> None:
    """412 for another tus version (tus 1.0 core); a request without the
    header is not a tus request at all: 400, as the document says."""
    if "Tus-Resumable" not in request.headers:
        raise bad_request("tus_resumable_required", f"send Tus-Resumable: {TUS_VERSION}")
    if request.headers["Tus-Resumable"] != TUS_VERSION:
        raise ApiError(412, "tus_version_unsupported", f"this server speaks tus {TUS_VERSION}",
                       {"Tus-Version": TUS_VERSION})


async def tus_options(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.Response(status=204, headers=_tus_headers(
        **{"Tus-Version": TUS_VERSION, "Tus-Extension": "creation",
           "Tus-Max-Size": str(settings.upload_max_bytes)}))


async def _tus_create(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    _check_tus_version(request)
    await require_user(request)
    length = _header_int(request, "Upload-Length")
    if length is None or length < 1:
        raise bad_request("upload_length_required", "tus creation needs Upload-Length >= 1")
    if length > settings.upload_max_bytes:
        raise _too_large(settings.upload_max_bytes)
    meta = _tus_metadata(request.headers.get("Upload-Metadata", ""))
    title = parse_title(meta.get("title") or request.query.get("title", "Untitled video"))
    tags = parse_tags(meta.get("tags") or request.query.get("tags"))
    video_id = await _new_video(request, title, tags, length)
    await request.app[STORAGE].write_stream(video_key(video_id, "source"), _nothing(), length)
    upload_url = f"{settings.base_url}/api/videos/{video_id}/upload"
    return web.json_response({"id": video_id, "status": "uploading", "upload_url": upload_url},
                             status=201, headers=_tus_headers(Location=upload_url))


async def _nothing() -> Any:
    return
    yield  # an empty async iterator: creates the file


async def _owned_upload(request: web.Request) -> asyncpg.Record:
    claims = await require_user(request)
    row = await fetch_video(request.app[BACKENDS].pg, parse_video_id(request))
    if row["creator_id"] != claims.user_id:
        raise forbidden("this upload belongs to another creator")
    if row["upload_length"] is None:
        raise not_found("not_resumable", "this video was not created as a tus upload")
    return row


async def tus_head(request: web.Request) -> web.Response:
    _check_tus_version(request)
    row = await _owned_upload(request)
    return web.Response(status=200, headers=_tus_headers(
        **{"Upload-Offset": str(row["upload_offset"]),
           "Upload-Length": str(row["upload_length"])}))


async def tus_patch(request: web.Request) -> web.Response:
    _check_tus_version(request)
    row = await _owned_upload(request)
    if row["status"] != "uploading":
        raise ApiError(409, "upload_complete", f"this upload is {row['status']}")
    if request.content_type != TUS_CONTENT_TYPE:
        raise ApiError(415, "unsupported_media_type", f"PATCH needs {TUS_CONTENT_TYPE}")
    offset = _header_int(request, "Upload-Offset")
    if offset is None or offset != row["upload_offset"]:
        raise ApiError(409, "offset_mismatch",
                       f"Upload-Offset must be {row['upload_offset']} (HEAD tells it)")
    length = int(row["upload_length"])
    if (request.content_length or 0) > length - offset:
        raise _too_large(length)
    redis, pg = request.app[BACKENDS].redis, request.app[BACKENDS].pg
    lock = f"vk:upload:lock:{row['id']}"
    if not await redis.set(lock, "1", nx=True, ex=UPLOAD_LOCK_S):
        raise ApiError(409, "upload_busy", "another PATCH of this upload is in progress")
    try:
        try:
            size = await _receive(request, row["id"], offset, length)
        except TooLarge:
            raise _too_large(length) from None
        await pg.execute("UPDATE videos SET upload_offset = $2 WHERE id = $1::uuid",
                         row["id"], size)
        if size == length:
            await _complete(pg, request.app[SETTINGS], row["id"], size)
    finally:
        await redis.delete(lock)
    return web.Response(status=204, headers=_tus_headers(**{"Upload-Offset": str(size)}))


# -- reading -------------------------------------------------------------------

async def ready_videos(app: web.Application, account: str | None, category: str | None,
                       limit: int, offset: int) -> list[dict[str, Any]]:
    """Ready videos, newest first, of a creator (`account`) and/or a category
    (its id or name). Shared by GET /api/videos and the home page."""
    rows = await app[BACKENDS].pg.fetch(
        f"""{_VIDEO_SELECT}
        WHERE v.status = 'ready' AND ($1::text IS NULL OR u.account_id = $1)
          AND ($2::text IS NULL OR EXISTS (
              SELECT 1 FROM video_categories vc JOIN categories c ON c.id = vc.category_id
               WHERE vc.video_id = v.id AND (c.id::text = $2 OR lower(c.name) = lower($2))))
        ORDER BY v.published_at DESC NULLS LAST, v.id LIMIT $3 OFFSET $4""",
        account, category, limit, offset)
    return [video_json(r, app[SETTINGS]) for r in rows]


async def creator_videos(app: web.Application, creator_id: str, limit: int,
                         offset: int) -> list[dict[str, Any]]:
    """A creator's own videos in every state but archived (uploading,
    processing with the job's progress, failed with the reason), newest
    first: the studio's list (signaling/studio_api.py)."""
    rows = await app[BACKENDS].pg.fetch(
        f"""{_VIDEO_SELECT}
        WHERE v.creator_id = $1::uuid AND v.status <> 'archived'
        ORDER BY v.created_at DESC NULLS LAST, v.id LIMIT $2 OFFSET $3""",
        creator_id, limit, offset)
    return [video_json(r, app[SETTINGS]) for r in rows]


async def list_videos(request: web.Request) -> web.Response:
    limit, offset = parse_paging(request)
    creator = request.query.get("creator")
    account = canonical_or_400(creator, request.app[SETTINGS]) if creator is not None else None
    videos = await ready_videos(request.app, account, request.query.get("category"),
                                limit, offset)
    return web.json_response({"videos": videos, "limit": limit, "offset": offset})


async def get_video(request: web.Request) -> web.Response:
    pg = request.app[BACKENDS].pg
    row = await fetch_video(pg, parse_video_id(request))
    versions = await fetch_versions(pg, row["id"]) if row["status"] == "ready" else []
    return web.json_response(video_json(row, request.app[SETTINGS], versions))


async def update_video(request: web.Request) -> web.Response:
    """PATCH /api/videos/{id}: the creator changes the title, tags or price
    (a view already started keeps the price it began with)."""
    claims = await require_user(request)
    settings = request.app[SETTINGS]
    pg = request.app[BACKENDS].pg
    row = await fetch_video(pg, parse_video_id(request))
    if row["creator_id"] != claims.user_id:
        raise forbidden("this video belongs to another creator")
    body = await parse_json_body(request)
    title = parse_title(body["title"]) if "title" in body else None
    if "tags" in body and not isinstance(body["tags"], list):  # a query's "a,b" is not JSON's
        raise bad_request("invalid_tags", "tags are a JSON list of strings")
    tags = parse_tags(body["tags"]) if "tags" in body else None
    price = (parse_price(body["price_per_second"], settings.price_default,
                         settings.token_decimals) if "price_per_second" in body else None)
    await pg.execute(
        "UPDATE videos SET title = COALESCE($2, title), tags = COALESCE($3, tags), "
        "price_per_second = COALESCE($4, price_per_second) WHERE id = $1::uuid",
        row["id"], title, tags, price)
    if tags is not None:
        await pg.execute("UPDATE video_metadata SET tags = $2 WHERE video_id = $1::uuid",
                         row["id"], tags)
    return await get_video(request)


async def thumbnail(request: web.Request) -> web.StreamResponse:
    video_id = parse_video_id(request)
    try:
        return await request.app[STORAGE].serve(request, video_key(video_id, "thumb.jpg"),
                                                 "image/jpeg",
                                                 {"Cache-Control": "public, max-age=300"})
    except FileNotFoundError:
        raise not_found("thumbnail_not_found", "this video has no thumbnail (yet)") from None


def add_video_routes(app: web.Application, settings: Settings) -> None:
    app[STORAGE] = storage_for(settings.media_dir, settings.s3)

    async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[STORAGE].close()

    app.cleanup_ctx.append(storage_ctx)
    app.router.add_post("/api/videos", upload_video)
    app.router.add_route("OPTIONS", "/api/videos", tus_options)
    app.router.add_get("/api/videos", list_videos)
    app.router.add_get("/api/videos/{video_id}", get_video)
    app.router.add_patch("/api/videos/{video_id}", update_video)
    app.router.add_route("HEAD", "/api/videos/{video_id}/upload", tus_head)
    app.router.add_patch("/api/videos/{video_id}/upload", tus_patch)
    app.router.add_get("/api/videos/{video_id}/thumbnail.jpg", thumbnail)
