"""Comments: on a live stream (its chat, see chat.py) or on a video
(threaded). One `comments` table (the schema's), one JSON shape. Text is
stored as given and is only ever rendered as text by our pages.

A soft delete (`is_deleted`) keeps the thread's shape: a deleted comment is
still listed, with its content and author withheld. `videos.comment_count`
counts the video's comments that are not deleted; it changes in the same
transaction as the row that changes it, so it never drifts from the rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from signaling.community.chat_events import announce_deleted
from signaling.community.metrics import COMMENTS
from signaling.community.params import body_uuid, parse_before, path_uuid, text_field
from signaling.errors import ApiError, forbidden, not_found, parse_json_body
from signaling.paging import parse_limit
from signaling.users import require_user, require_user_standing
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

CHAT_MAX = 500  # a chat line
VIDEO_COMMENT_MAX = 5000
MAX_DEPTH = 4  # a reply to a reply ... four levels below a top-level comment
OPEN_STREAM = ("pending", "live")  # chat is open before and during a stream

_COLUMNS = """c.id::text AS id, c.content, c.parent_id::text AS parent_id, c.depth,
       c.stream_id::text AS stream_id, c.video_id::text AS video_id,
       COALESCE(c.like_count, 0) AS like_count, COALESCE(c.is_deleted, FALSE) AS is_deleted,
       c.created_at AT TIME ZONE current_setting('TimeZone') AS created_at,
       c.author_id::text AS author_id, u.account_id AS author_account,
       u.username AS author_username"""
_FROM = "FROM comments c JOIN users u ON u.id = c.author_id"
COMMENT_SELECT = f"SELECT {_COLUMNS} {_FROM}"
_REPLY_COUNT = "(SELECT count(*) FROM comments r WHERE r.parent_id = c.id) AS reply_count"


def comment_json(row: asyncpg.Record) -> dict[str, Any]:
    deleted = row["is_deleted"]
    body = {"id": row["id"], "content": None if deleted else row["content"],
            "author_account": None if deleted else row["author_account"],
            "author_username": None if deleted else row["author_username"],
            "created_at": row["created_at"].isoformat(), "parent_id": row["parent_id"],
            "depth": row["depth"], "like_count": row["like_count"], "is_deleted": deleted}
    if row["stream_id"] is not None:
        body["stream_id"] = row["stream_id"]
    else:
        body["video_id"] = row["video_id"]
    if "reply_count" in row:
        body["reply_count"] = row["reply_count"]
    return body


@dataclass(frozen=True)
class Target:
    """What a comment is on: a stream or a video, and its creator."""

    kind: str  # "stream" | "video"
    id: str
    creator_id: str

    @property
    def column(self) -> str:
        return f"{self.kind}_id"


async def stream_target(conn: asyncpg.Pool | asyncpg.Connection, stream_id: str) -> Target:
    """A stream whose chat is open: 404 unknown, 409 `chat_closed` once ended."""
    row = await conn.fetchrow("SELECT creator_id::text AS creator_id, status FROM streams "
                              "WHERE id = $1::uuid", stream_id)
    if row is None:
        raise not_found("stream_not_found", f"no stream {stream_id}")
    if row["status"] not in OPEN_STREAM:
        raise ApiError(409, "chat_closed", "the stream has ended: its chat is closed")
    return Target("stream", stream_id, row["creator_id"])


async def video_target(conn: asyncpg.Pool | asyncpg.Connection, video_id: str) -> Target:
    """A video open to comments: 404 unknown, 409 `video_unavailable` unless ready."""
    row = await conn.fetchrow("SELECT creator_id::text AS creator_id, status FROM videos "
                              "WHERE id = $1::uuid", video_id)
    if row is None:
        raise not_found("video_not_found", f"no video {video_id}")
    if row["status"] != "ready":
        raise ApiError(409, "video_unavailable", f"the video is {row['status']}, not ready")
    return Target("video", video_id, row["creator_id"])


async def _depth_below(conn: asyncpg.Connection, target: Target, parent_id: str) -> int:
    """The depth of a reply to `parent_id`, which must be a live comment on the same target."""
    parent = await conn.fetchrow(
        f"SELECT depth, COALESCE(is_deleted, FALSE) AS is_deleted FROM comments "
        f"WHERE id = $1::uuid AND {target.column} = $2::uuid", parent_id, target.id)
    if parent is None:
        raise not_found("parent_not_found", f"no comment {parent_id} on this {target.kind}")
    if parent["is_deleted"]:
        raise ApiError(409, "parent_deleted", "the comment replied to was deleted")
    if parent["depth"] >= MAX_DEPTH:
        raise ApiError(400, "thread_too_deep", f"replies nest at most {MAX_DEPTH} levels deep")
    return int(parent["depth"]) + 1


async def insert_comment(pg: asyncpg.Pool, target: Target, author_id: str, content: str,
                         parent_id: str | None) -> asyncpg.Record:
    async with pg.acquire() as conn, conn.transaction():
        depth = 0 if parent_id is None else await _depth_below(conn, target, parent_id)
        comment_id = await conn.fetchval(
            f"INSERT INTO comments ({target.column}, author_id, parent_id, content, depth) "
            f"VALUES ($1::uuid, $2::uuid, $3::uuid, $4, $5) RETURNING id::text",
            target.id, author_id, parent_id, content, depth)
        if target.kind == "video":
            await conn.execute("UPDATE videos SET comment_count = COALESCE(comment_count, 0) + 1"
                               " WHERE id = $1::uuid", target.id)
        row = await conn.fetchrow(f"{COMMENT_SELECT} WHERE c.id = $1::uuid", comment_id)
    assert row is not None
    return row


async def soft_delete(pg: asyncpg.Pool, comment_id: str) -> asyncpg.Record | None:
    """Mark a comment deleted (and uncount it from its video), once: None when
    it already was. The caller has checked who may."""
    async with pg.acquire() as conn, conn.transaction():
        changed = await conn.fetchrow(
            "UPDATE comments SET is_deleted = TRUE, updated_at = now() "
            "WHERE id = $1::uuid AND is_deleted IS NOT TRUE "
            "RETURNING video_id::text AS video_id", comment_id)
        if changed is None:
            return None
        if changed["video_id"] is not None:
            await conn.execute("UPDATE videos SET comment_count = GREATEST(comment_count - 1, 0)"
                               " WHERE id = $1::uuid", changed["video_id"])
        row: asyncpg.Record | None = await conn.fetchrow(
            f"{COMMENT_SELECT} WHERE c.id = $1::uuid", comment_id)
        return row


async def comment_owner_and_target(conn: asyncpg.Pool | asyncpg.Connection,
                                   comment_id: str) -> asyncpg.Record:
    """The comment's author and the creator of what it is on, or 404."""
    row = await conn.fetchrow(
        """SELECT c.author_id::text AS author_id, c.stream_id::text AS stream_id,
                  COALESCE(s.creator_id, v.creator_id)::text AS creator_id,
                  COALESCE(c.is_deleted, FALSE) AS is_deleted
             FROM comments c LEFT JOIN streams s ON s.id = c.stream_id
             LEFT JOIN videos v ON v.id = c.video_id WHERE c.id = $1::uuid""", comment_id)
    if row is None:
        raise not_found("comment_not_found", f"no comment {comment_id}")
    return row


async def list_comments(pg: asyncpg.Pool, column: str, target_id: str, limit: int,
                        before: str | None, parent_id: str | None = None,
                        threaded: bool = False) -> list[asyncpg.Record]:
    """Newest first, `before` a comment id (keyset paging). Threaded: the
    children of `parent_id` (top level when None), each with its reply count."""
    columns = f"{_COLUMNS}, {_REPLY_COUNT}" if threaded else _COLUMNS
    thread = ("AND c.parent_id IS NOT DISTINCT FROM $4::uuid" if threaded else
              "AND $4::uuid IS NULL")
    return list(await pg.fetch(
        f"""SELECT {columns} {_FROM}
        WHERE c.{column} = $1::uuid {thread}
          AND ($3::uuid IS NULL OR (c.created_at, c.id) <
               (SELECT b.created_at, b.id FROM comments b WHERE b.id = $3::uuid))
        ORDER BY c.created_at DESC, c.id DESC LIMIT $2""",
        target_id, limit, before, parent_id))


def page_json(rows: list[asyncpg.Record], limit: int) -> dict[str, Any]:
    return {"comments": [comment_json(r) for r in rows],
            "next_before": rows[-1]["id"] if len(rows) == limit else None}


# -- handlers: comments on videos, and deleting any comment -----------------------

async def post_video_comment(request: web.Request) -> web.Response:
    claims = await require_user(request)
    video_id = path_uuid(request, "video_id", "video")
    body = await parse_json_body(request)
    content = text_field(body.get("content"), "content", VIDEO_COMMENT_MAX)
    parent_id = None if body.get("parent_id") is None else body_uuid(body["parent_id"],
                                                                     "parent_id")
    pg = request.app[BACKENDS].pg
    target = await video_target(pg, video_id)
    row = await insert_comment(pg, target, claims.user_id, content, parent_id)
    COMMENTS.inc()
    log_event(log, "comment.created", comment_id=row["id"], video_id=video_id,
              author_id=claims.user_id, parent_id=parent_id)
    return web.json_response(comment_json(row), status=201)


async def list_video_comments(request: web.Request) -> web.Response:
    video_id = path_uuid(request, "video_id", "video")
    limit, before = parse_limit(request), parse_before(request)
    raw_parent = request.query.get("parent_id")
    parent_id = None if raw_parent is None else body_uuid(raw_parent, "parent_id")
    pg = request.app[BACKENDS].pg
    if not await pg.fetchval("SELECT 1 FROM videos WHERE id = $1::uuid", video_id):
        raise not_found("video_not_found", f"no video {video_id}")
    rows = await list_comments(pg, "video_id", video_id, limit, before, parent_id,
                               threaded=True)
    return web.json_response(page_json(rows, limit))


async def delete_comment(request: web.Request) -> web.Response:
    """The author, the creator of the stream or video, or a moderator."""
    claims, standing = await require_user_standing(request)
    comment_id = path_uuid(request, "comment_id", "comment")
    pg = request.app[BACKENDS].pg
    owner = await comment_owner_and_target(pg, comment_id)
    if claims.user_id not in (owner["author_id"], owner["creator_id"]) and \
            not standing.is_moderator:
        raise forbidden("only the author, the creator or a moderator may delete this comment")
    deleted = await soft_delete(pg, comment_id)
    if deleted is not None:
        log_event(log, "comment.deleted", comment_id=comment_id, by_user_id=claims.user_id,
                  stream_id=owner["stream_id"])
        if owner["stream_id"] is not None:
            await announce_deleted(request.app[BACKENDS].redis, owner["stream_id"], comment_id)
    row = await pg.fetchrow(f"{COMMENT_SELECT} WHERE c.id = $1::uuid", comment_id)
    return web.json_response(comment_json(row))
