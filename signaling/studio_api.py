"""What the studio page lists for the signed-in creator that the public API
does not: their own videos in every state (an upload still processing, a
failed one with its reason — `GET /api/videos` lists only ready ones), and
what each of their stream sessions earned.

A stream session's earnings are the `stream_viewers` rows billed in it
(sql/0007 `session_id`): `paid` is what its viewers paid, `earned` the
creator's share after the platform fee, computed as the flush computes it
(`trunc(cost * (1 - fee), 18)`)."""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from signaling.api import parse_paging
from signaling.state import SETTINGS
from signaling.timestamps import iso_or_none
from signaling.users import require_user
from signaling.videos import creator_videos
from vilokanam.backends import BACKENDS
from vilokanam.money import format_amount

# One row per stream session of the creator, newest first, with its viewers'
# billing summed (a session nobody watched earns 0).
_MY_SESSIONS = """
SELECT ss.id::text AS session_id, s.id::text AS stream_id, s.title,
       ss.start_time AT TIME ZONE current_setting('TimeZone') AS started,
       ss.end_time AT TIME ZONE current_setting('TimeZone') AS ended,
       COALESCE(ss.viewer_peak, 0) AS viewer_peak, COALESCE(ss.total_ticks, 0) AS total_ticks,
       count(DISTINCT sv.viewer_id) AS viewers,
       COALESCE(sum(sv.paid_amount), 0) AS paid
  FROM stream_sessions ss JOIN streams s ON s.id = ss.stream_id
  LEFT JOIN stream_viewers sv ON sv.session_id = ss.id
 WHERE s.creator_id = $1::uuid
 GROUP BY ss.id, s.id
 ORDER BY ss.start_time DESC NULLS LAST, ss.id LIMIT $2 OFFSET $3
"""


def creator_share(paid: Decimal, platform_fee: Decimal) -> Decimal:
    """The creator's part of `paid`, truncated to 18 places like billing/flush.py."""
    return (paid * (1 - platform_fee)).quantize(Decimal(1).scaleb(-18), rounding="ROUND_DOWN")


async def my_videos(request: web.Request) -> web.Response:
    claims = await require_user(request)
    limit, offset = parse_paging(request)
    videos = await creator_videos(request.app, claims.user_id, limit, offset)
    return web.json_response({"videos": videos,
                              "limit": limit, "offset": offset})


async def my_stream_sessions(request: web.Request) -> web.Response:
    claims = await require_user(request)
    limit, offset = parse_paging(request)
    rows = await request.app[BACKENDS].pg.fetch(_MY_SESSIONS, claims.user_id, limit, offset)
    fee = request.app[SETTINGS].platform_fee
    return web.json_response({"sessions": [{
        "session_id": r["session_id"], "stream_id": r["stream_id"], "title": r["title"],
        "start_time": iso_or_none(r["started"]), "end_time": iso_or_none(r["ended"]),
        "viewer_peak": r["viewer_peak"], "total_ticks": int(r["total_ticks"]),
        "viewers": r["viewers"], "paid": format_amount(Decimal(r["paid"])),
        "earned": format_amount(creator_share(Decimal(r["paid"]), fee)),
    } for r in rows], "limit": limit, "offset": offset})


def add_studio_routes(app: web.Application) -> None:
    app.router.add_get("/api/me/videos", my_videos)
    app.router.add_get("/api/me/stream-sessions", my_stream_sessions)
