"""GET /api/streams/{id}/thumbnail.jpg: the latest keyframe of a live stream
as a JPEG, made by the SFU worker carrying it (sfu/thumbnails.py) every
VILOKANAM_THUMBNAIL_INTERVAL seconds and read here from the shared storage."""

from __future__ import annotations

import asyncio

from aiohttp import web

from signaling.api import stream_id_or_none
from signaling.errors import bad_request, not_found
from signaling.videos import STORAGE
from vilokanam.live_thumbnails import thumbnail_key

# The URL carries the capture time (?t=), so a short cache never shows an old
# picture for a new URL.
CACHE = "public, max-age=10"


async def stream_thumbnail(request: web.Request) -> web.StreamResponse:
    stream_id = stream_id_or_none(request.match_info["stream_id"])
    if stream_id is None:
        raise bad_request("invalid_stream_id", "a stream id is a UUID")
    path = request.app[STORAGE].path(thumbnail_key(stream_id))
    if not await asyncio.to_thread(path.is_file):
        raise not_found("thumbnail_not_found", "this stream has no thumbnail (yet)")
    return web.FileResponse(path, headers={"Content-Type": "image/jpeg",
                                           "Cache-Control": CACHE})


def add_stream_thumbnail_routes(app: web.Application) -> None:
    app.router.add_get("/api/streams/{stream_id}/thumbnail.jpg", stream_thumbnail)
