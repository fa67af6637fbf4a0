"""Uploaded profile images, served by us: `PUT /api/me/profile-image` (the
image as the body), `GET /api/users/{account}/profile-image`, `DELETE
/api/me/profile-image`. PNG, JPEG or WebP, at most 512 KiB and 4096 pixels a
side; the bytes must BE an image of the declared type: PyAV (FFmpeg, already
the media path's) decodes it in a thread, so a file that is not an image, an
HTML page called one, or a truncated one is refused. Served with `nosniff`
and a CSP that runs nothing, from a URL naming its digest."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging

from aiohttp import web

from signaling.community.profiles import PROFILE_SELECT, profile_json, user_row
from signaling.errors import ApiError, not_found
from signaling.state import SETTINGS
from signaling.users import get_or_create_user, require_user
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

MAX_BYTES = 512 * 1024
MAX_SIDE = 4096
# Content-Type -> the FFmpeg decoder its bytes must decode with.
_DECODERS = {"image/png": "png", "image/jpeg": "mjpeg", "image/webp": "webp"}


def decodes_as(content_type: str, data: bytes) -> bool:
    """Whether `data` is one whole image of `content_type` (CPU: run in a thread)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            frame = next(container.decode(stream))
            return (stream.codec_context.name == _DECODERS[content_type]
                    and 0 < frame.width <= MAX_SIDE and 0 < frame.height <= MAX_SIDE)
    except (av.FFmpegError, IndexError, StopIteration, ValueError, OSError):
        return False


async def _read_image(request: web.Request) -> tuple[str, bytes]:
    content_type = request.content_type
    if content_type not in _DECODERS:
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be one of {', '.join(_DECODERS)}")
    if (request.content_length or 0) > MAX_BYTES:
        raise ApiError(413, "payload_too_large", f"an image may be at most {MAX_BYTES} bytes")
    # Read past the app's 64 KiB JSON limit, but never more than MAX_BYTES + 1.
    data = bytearray()
    while len(data) <= MAX_BYTES:
        chunk = await request.content.read(MAX_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_BYTES:
        raise ApiError(413, "payload_too_large", f"an image may be at most {MAX_BYTES} bytes")
    if not await asyncio.to_thread(decodes_as, content_type, bytes(data)):
        raise ApiError(400, "not_an_image", f"the body is not a {content_type} image of at "
                                            f"most {MAX_SIDE} pixels a side")
    return content_type, bytes(data)


def image_url(base_url: str, account: str, digest: str) -> str:
    return f"{base_url}/api/users/{account}/profile-image?v={digest[:16]}"


async def put_profile_image(request: web.Request) -> web.Response:
    claims = await require_user(request)
    content_type, data = await _read_image(request)
    pg = request.app[BACKENDS].pg
    user = await get_or_create_user(pg, claims.account)
    digest = hashlib.sha256(data).hexdigest()
    url = image_url(request.app[SETTINGS].base_url, claims.account, digest)
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO profile_images (user_id, content_type, data, sha256) "
            "VALUES ($1::uuid, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET "
            "content_type = $2, data = $3, sha256 = $4, updated_at = now()",
            user.id, content_type, data, digest)
        await conn.execute("UPDATE users SET profile_image_url = $2 WHERE id = $1::uuid",
                           user.id, url)
        row = await conn.fetchrow(f"{PROFILE_SELECT} WHERE u.id = $1::uuid", user.id)
    log_event(log, "profile.image_uploaded", user_id=user.id, bytes=len(data),
              content_type=content_type)
    return web.json_response(profile_json(row))


async def delete_profile_image(request: web.Request) -> web.Response:
    claims = await require_user(request)
    pg = request.app[BACKENDS].pg
    user = await get_or_create_user(pg, claims.account)
    async with pg.acquire() as conn, conn.transaction():
        deleted = await conn.execute("DELETE FROM profile_images WHERE user_id = $1::uuid",
                                     user.id)
        if deleted == "DELETE 1":  # a URL set by hand stays
            await conn.execute("UPDATE users SET profile_image_url = NULL WHERE id = $1::uuid",
                               user.id)
        row = await conn.fetchrow(f"{PROFILE_SELECT} WHERE u.id = $1::uuid", user.id)
    return web.json_response(profile_json(row))


async def get_profile_image(request: web.Request) -> web.Response:
    user = await user_row(request)
    image = await request.app[BACKENDS].pg.fetchrow(
        "SELECT content_type, data, sha256 FROM profile_images WHERE user_id = $1::uuid",
        user["id"])
    if image is None:
        raise not_found("no_profile_image", "this user has uploaded no profile image")
    etag = f'"{image["sha256"]}"'
    headers = {"ETag": etag, "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'none'; sandbox",
               # The URL names the digest (?v=), so a version never changes.
               "Cache-Control": "public, max-age=31536000, immutable"}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=image["data"], content_type=image["content_type"],
                        headers=headers)
