"""Follows: follow / unfollow (idempotent; not yourself), the lists, and the
feed of followed creators' live streams and new videos. The go-live alert to
followers on `/ws` is presence.py's."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from aiohttp import web

from signaling.api import STREAM_SELECT, stream_json
from signaling.community.metrics import FOLLOWS
from signaling.community.profiles import PROFILE_SELECT, profile_json, user_row
from signaling.errors import bad_request
from signaling.paging import parse_limit, parse_offset
from signaling.state import SETTINGS
from signaling.users import require_user
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

FEED_VIDEOS = 20


async def _target(request: web.Request) -> tuple[str, asyncpg.Record]:
    claims = await require_user(request)
    target = await user_row(request)
    if target["id"] == claims.user_id:
        raise bad_request("cannot_follow_self", "you cannot follow yourself")
    return claims.user_id, target


async def _answer(pg: asyncpg.Pool, target_id: str, following: bool) -> web.Response:
    count = await pg.fetchval("SELECT count(*) FROM follows WHERE following_id = $1::uuid",
                              target_id)
    return web.json_response({"following": following, "follower_count": count})


async def follow(request: web.Request) -> web.Response:
    follower_id, target = await _target(request)
    pg = request.app[BACKENDS].pg
    status = await pg.execute(
        "INSERT INTO follows (follower_id, following_id) VALUES ($1::uuid, $2::uuid) "
        "ON CONFLICT (follower_id, following_id) DO NOTHING", follower_id, target["id"])
    if status == "INSERT 0 1":
        FOLLOWS.labels(change="follow").inc()
        log_event(log, "follow.created", follower_id=follower_id, following_id=target["id"])
    return await _answer(pg, target["id"], True)


async def unfollow(request: web.Request) -> web.Response:
    follower_id, target = await _target(request)
    pg = request.app[BACKENDS].pg
    status = await pg.execute(
        "DELETE FROM follows WHERE follower_id = $1::uuid AND following_id = $2::uuid",
        follower_id, target["id"])
    if status == "DELETE 1":
        FOLLOWS.labels(change="unfollow").inc()
        log_event(log, "follow.deleted", follower_id=follower_id, following_id=target["id"])
    return await _answer(pg, target["id"], False)


async def _profiles(request: web.Request, where: str, user_id: str) -> web.Response:
    limit, offset = parse_limit(request), parse_offset(request)
    rows = await request.app[BACKENDS].pg.fetch(
        f"""{PROFILE_SELECT} JOIN follows fl ON {where} = $1::uuid
        ORDER BY fl.created_at DESC, u.id LIMIT $2 OFFSET $3""", user_id, limit, offset)
    return web.json_response({"users": [profile_json(r) for r in rows],
                              "limit": limit, "offset": offset})


async def my_following(request: web.Request) -> web.Response:
    claims = await require_user(request)
    return await _profiles(request, "u.id = fl.following_id AND fl.follower_id", claims.user_id)


async def followers_of(request: web.Request) -> web.Response:
    target = await user_row(request)
    return await _profiles(request, "u.id = fl.follower_id AND fl.following_id", target["id"])


async def following_of(request: web.Request) -> web.Response:
    target = await user_row(request)
    return await _profiles(request, "u.id = fl.following_id AND fl.follower_id", target["id"])


def video_summary(row: asyncpg.Record) -> dict[str, Any]:
    published = row["published_at"]
    return {"id": row["id"], "title": row["title"], "creator_account": row["creator_account"],
            "thumbnail_url": row["thumbnail_url"], "duration": row["duration"],
            "view_count": row["view_count"], "like_count": row["like_count"],
            "published_at": published.isoformat() if published else None}


async def my_feed(request: web.Request) -> web.Response:
    """Followed creators' live streams (most watched first) and their newest
    ready videos."""
    claims = await require_user(request)
    pg, settings = request.app[BACKENDS].pg, request.app[SETTINGS]
    streams = await pg.fetch(
        f"""{STREAM_SELECT} JOIN follows f ON f.following_id = s.creator_id
        WHERE f.follower_id = $1::uuid AND s.status = 'live'
        ORDER BY COALESCE(s.viewer_count, 0) DESC, s.start_time DESC NULLS LAST, s.id""",
        claims.user_id)
    videos = await pg.fetch(
        """SELECT v.id::text AS id, v.title, u.account_id AS creator_account, v.thumbnail_url,
                  v.duration, COALESCE(v.view_count, 0) AS view_count,
                  COALESCE(v.like_count, 0) AS like_count,
                  v.published_at AT TIME ZONE current_setting('TimeZone') AS published_at
             FROM videos v JOIN users u ON u.id = v.creator_id
             JOIN follows f ON f.following_id = v.creator_id
            WHERE f.follower_id = $1::uuid AND v.status = 'ready'
            ORDER BY v.published_at DESC NULLS LAST, v.created_at DESC, v.id LIMIT $2""",
        claims.user_id, FEED_VIDEOS)
    return web.json_response({"live": [stream_json(r, settings) for r in streams],
                              "videos": [video_summary(r) for r in videos]})
