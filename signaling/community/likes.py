"""Likes on videos and comments: one per user (the schema's UNIQUE), and a
`like_count` that never drifts from the rows. Each change is ONE statement:
the INSERT ... ON CONFLICT DO NOTHING (or DELETE) in a CTE, and the UPDATE of
the count by the number of rows that statement really changed. Two
concurrent likes of one user: the unique index makes the second wait and
insert nothing, so it adds 0. Liking twice answers 200 and changes nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from signaling.community.metrics import LIKES
from signaling.community.params import path_uuid
from signaling.errors import ApiError, not_found
from signaling.users import require_user
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Likeable:
    name: str  # video | comment
    table: str  # the counted table
    likes: str  # the likes table
    # Whether a target may be liked now (unliking is always allowed).
    open_sql: str


VIDEO = Likeable("video", "videos", "video_likes", "status = 'ready'")
COMMENT = Likeable("comment", "comments", "comment_likes", "is_deleted IS NOT TRUE")


async def _change(pg: asyncpg.Pool, kind: Likeable, target_id: str, user_id: str,
                  like: bool) -> asyncpg.Record | None:
    """`like_count` after the change and whether a row `changed`; None when
    the target does not exist."""
    column = f"{kind.name}_id"
    if like:
        change = (f"INSERT INTO {kind.likes} ({column}, user_id) VALUES ($1::uuid, $2::uuid) "
                  f"ON CONFLICT ({column}, user_id) DO NOTHING RETURNING 1")
        sign = "+"
    else:
        change = (f"DELETE FROM {kind.likes} WHERE {column} = $1::uuid AND user_id = $2::uuid "
                  f"RETURNING 1")
        sign = "-"
    return await pg.fetchrow(
        f"""WITH changed AS ({change})
        UPDATE {kind.table} SET like_count = COALESCE(like_count, 0) {sign}
                                             (SELECT count(*) FROM changed)
        WHERE id = $1::uuid
        RETURNING like_count, (SELECT count(*) FROM changed) > 0 AS changed""",
        target_id, user_id)


async def _like(request: web.Request, kind: Likeable, like: bool) -> web.Response:
    claims = await require_user(request)
    target_id = path_uuid(request, f"{kind.name}_id", kind.name)
    pg = request.app[BACKENDS].pg
    state = await pg.fetchrow(f"SELECT {kind.open_sql} AS open FROM {kind.table} "
                              f"WHERE id = $1::uuid", target_id)
    if state is None:
        raise not_found(f"{kind.name}_not_found", f"no {kind.name} {target_id}")
    if like and not state["open"]:
        # Before the INSERT: a like of a video that is not ready (or a deleted
        # comment) would reference a row nobody can see.
        raise ApiError(409, f"{kind.name}_unavailable", f"this {kind.name} cannot be liked")
    try:
        result = await _change(pg, kind, target_id, claims.user_id, like)
    except asyncpg.ForeignKeyViolationError:  # deleted in between
        raise not_found(f"{kind.name}_not_found", f"no {kind.name} {target_id}") from None
    if result is None:
        raise not_found(f"{kind.name}_not_found", f"no {kind.name} {target_id}")
    if result["changed"]:
        LIKES.labels(target=kind.name, change="like" if like else "unlike").inc()
        log_event(log, f"like.{'added' if like else 'removed'}", target=kind.name,
                  target_id=target_id, user_id=claims.user_id)
    return web.json_response({"liked": like, "like_count": result["like_count"]})


async def like_video(request: web.Request) -> web.Response:
    return await _like(request, VIDEO, True)


async def unlike_video(request: web.Request) -> web.Response:
    return await _like(request, VIDEO, False)


async def like_comment(request: web.Request) -> web.Response:
    return await _like(request, COMMENT, True)


async def unlike_comment(request: web.Request) -> web.Response:
    return await _like(request, COMMENT, False)


async def my_video_like(request: web.Request) -> web.Response:
    """`GET /api/videos/{id}/like` (Bearer): whether the caller likes it, so a
    page can show its Like button as it is after a reload."""
    claims = await require_user(request)
    video_id = path_uuid(request, "video_id", "video")
    row = await request.app[BACKENDS].pg.fetchrow(
        "SELECT COALESCE(v.like_count, 0) AS like_count, EXISTS (SELECT 1 FROM video_likes l "
        "WHERE l.video_id = v.id AND l.user_id = $2::uuid) AS liked "
        "FROM videos v WHERE v.id = $1::uuid", video_id, claims.user_id)
    if row is None:
        raise not_found("video_not_found", f"no video {video_id}")
    return web.json_response({"liked": row["liked"], "like_count": row["like_count"]})


# A page shows at most this many of a video's comments as liked by the caller.
MY_COMMENT_LIKES_MAX = 1000


async def my_comment_likes(request: web.Request) -> web.Response:
    """`GET /api/videos/{id}/comment-likes` (Bearer): which of the video's
    comments the caller likes (their ids, newest comment first, at most
    MY_COMMENT_LIKES_MAX), so the video page shows each comment's Like as it
    is after a reload. One indexed read (comment_likes' UNIQUE(comment_id, user_id))."""
    claims = await require_user(request)
    video_id = path_uuid(request, "video_id", "video")
    pg = request.app[BACKENDS].pg
    if not await pg.fetchval("SELECT EXISTS (SELECT 1 FROM videos WHERE id = $1::uuid)",
                             video_id):
        raise not_found("video_not_found", f"no video {video_id}")
    rows = await pg.fetch(
        "SELECT c.id::text AS id FROM comments c JOIN comment_likes l ON l.comment_id = c.id "
        "WHERE c.video_id = $1::uuid AND l.user_id = $2::uuid "
        "ORDER BY c.created_at DESC, c.id LIMIT $3", video_id, claims.user_id,
        MY_COMMENT_LIKES_MAX)
    return web.json_response({"comment_ids": [r["id"] for r in rows]})
