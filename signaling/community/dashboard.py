"""The creator's numbers: the corrected `creator_dashboard` and
`video_analytics` views (migration 0006) as they are, plus earnings and
viewers over time from the workers' `stream_analytics` samples."""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from signaling.community.params import path_uuid
from signaling.errors import ApiError, bad_request, forbidden, not_found
from signaling.timestamps import iso_or_none
from signaling.users import require_user
from vilokanam.backends import BACKENDS
from vilokanam.money import format_amount

HOURS_DEFAULT, HOURS_MAX = 24, 24 * 90


def _hours(request: web.Request) -> int:
    raw = request.query.get("hours", str(HOURS_DEFAULT))
    if not raw.isdecimal() or not 1 <= int(raw) <= HOURS_MAX:
        raise bad_request("invalid_hours", f"hours must be 1 to {HOURS_MAX}")
    return int(raw)


# Per minute: each stream's peak in that minute, summed over the creator's
# streams (a worker samples every 10 s, so a plain sum would count each
# viewer six times).
_VIEWERS_OVER_TIME = """
WITH per_stream AS (
    SELECT date_trunc('minute', sa.timestamp) AS minute, sa.stream_id,
           max(sa.viewer_count) AS viewers
      FROM stream_analytics sa JOIN streams s ON s.id = sa.stream_id
     WHERE s.creator_id = $1::uuid
       AND sa.timestamp >= (now() AT TIME ZONE current_setting('TimeZone'))
                           - make_interval(hours => $2)
     GROUP BY 1, 2)
SELECT minute AT TIME ZONE current_setting('TimeZone') AS minute,
       sum(viewers)::bigint AS viewers, count(*) AS streams
  FROM per_stream GROUP BY minute ORDER BY minute
"""


async def my_dashboard(request: web.Request) -> web.Response:
    claims = await require_user(request)
    hours = _hours(request)
    pg = request.app[BACKENDS].pg
    row = await pg.fetchrow(
        """SELECT d.*, d.last_activity AT TIME ZONE current_setting('TimeZone') AS last_at,
                  COALESCE(ce.pending_payout, 0) AS pending_payout
             FROM creator_dashboard d LEFT JOIN creator_earnings ce
               ON ce.creator_id = d.creator_id
            WHERE d.creator_id = $1::uuid""", claims.user_id)
    if row is None:
        raise ApiError(403, "not_a_creator", "the dashboard is for creators: create a stream "
                                             "or upload a video first")
    followers = await pg.fetchval("SELECT count(*) FROM follows WHERE following_id = $1::uuid",
                                  claims.user_id)
    samples = await pg.fetch(_VIEWERS_OVER_TIME, claims.user_id, hours)
    return web.json_response({
        "creator_id": str(row["creator_id"]), "username": row["username"],
        "total_videos": row["total_videos"], "total_streams": row["total_streams"],
        "total_video_views": int(row["total_video_views"]),
        "total_stream_viewers": int(row["total_stream_viewers"]),
        "last_activity": iso_or_none(row["last_at"]),
        "total_earnings": format_amount(Decimal(row["total_earnings"])),
        "pending_payout": format_amount(Decimal(row["pending_payout"])),
        "follower_count": followers, "hours": hours,
        "viewers_over_time": [{"minute": iso_or_none(s["minute"]), "viewers": s["viewers"],
                               "streams": s["streams"]} for s in samples]})


async def video_analytics(request: web.Request) -> web.Response:
    claims = await require_user(request)
    video_id = path_uuid(request, "video_id", "video")
    pg = request.app[BACKENDS].pg
    video = await pg.fetchrow("SELECT creator_id::text AS creator_id, status FROM videos "
                              "WHERE id = $1::uuid", video_id)
    if video is None:
        raise not_found("video_not_found", f"no video {video_id}")
    if video["creator_id"] != claims.user_id:
        raise forbidden("analytics are for the video's creator only")
    row = await pg.fetchrow(
        "SELECT va.*, va.published_at AT TIME ZONE current_setting('TimeZone') AS published, "
        "va.created_at AT TIME ZONE current_setting('TimeZone') AS created "
        "FROM video_analytics va WHERE va.video_id = $1::uuid", video_id)
    if row is None:  # the view holds ready videos only
        raise ApiError(409, "video_not_ready", f"the video is {video['status']}, not ready")
    average = row["avg_watch_completion"]
    duration = row["avg_view_duration"]
    return web.json_response({
        "video_id": video_id, "title": row["title"], "duration": row["duration"],
        "view_count": row["view_count"], "like_count": row["like_count"],
        "comment_count": row["comment_count"], "unique_viewers": row["unique_viewers"],
        "total_views": row["total_views"],
        "avg_view_duration": None if duration is None else format_amount(Decimal(duration)),
        "avg_watch_completion": None if average is None else format_amount(Decimal(average)),
        "published_at": iso_or_none(row["published"]), "created_at": iso_or_none(row["created"])})
