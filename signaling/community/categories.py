"""Categories: a seeded set (migration 0010) that moderators extend. A stream
has one (`streams.category_id`), a video several (`video_categories`, set by
its creator); the API takes a category by id or by name (case-insensitive)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from aiohttp import web

from signaling.community.metrics import MODERATION_ACTIONS
from signaling.community.params import as_uuid, optional_text, path_uuid, text_field
from signaling.errors import ApiError, bad_request, forbidden, not_found, parse_json_body
from signaling.users import require_moderator, require_user
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

NAME_MAX, DESCRIPTION_MAX = 100, 1000


def category_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "description": row["description"]}


async def resolve_category(conn: asyncpg.Pool | asyncpg.Connection, value: object) -> str:
    """The id of the category named by `value` (its id or its name), or 400
    `unknown_category`."""
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_MAX \
            or "\x00" in value:
        raise bad_request("invalid_category", "category must be a category id or name")
    category_id = await conn.fetchval(
        "SELECT id::text FROM categories WHERE id = $1::uuid", value) if as_uuid(value) else None
    if category_id is None:
        category_id = await conn.fetchval(
            "SELECT id::text FROM categories WHERE lower(name) = lower($1)", value.strip())
    if category_id is None:
        raise bad_request("unknown_category", f"no category {value!r} (GET /api/categories)")
    return str(category_id)


async def all_categories(pg: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every category by name: GET /api/categories and the home page."""
    rows = await pg.fetch(
        "SELECT id::text AS id, name, description FROM categories ORDER BY lower(name)")
    return [category_json(r) for r in rows]


async def list_categories(request: web.Request) -> web.Response:
    return web.json_response({"categories": await all_categories(request.app[BACKENDS].pg)})


async def create_category(request: web.Request) -> web.Response:
    claims = await require_moderator(request)
    body = await parse_json_body(request)
    name = text_field(body.get("name"), "name", NAME_MAX)
    description = optional_text(body.get("description"), "description", DESCRIPTION_MAX)
    try:
        row = await request.app[BACKENDS].pg.fetchrow(
            "INSERT INTO categories (name, description) VALUES ($1, $2) "
            "RETURNING id::text AS id, name, description", name, description)
    except asyncpg.UniqueViolationError:
        raise ApiError(409, "category_exists", f"a category {name!r} exists") from None
    MODERATION_ACTIONS.labels(action="add_category").inc()
    log_event(log, "category.created", category_id=row["id"], moderator_id=claims.user_id)
    return web.json_response(category_json(row), status=201)


VIDEO_CATEGORIES_MAX = 5


async def set_video_categories(conn: asyncpg.Connection, video_id: str,
                               values: object) -> list[asyncpg.Record]:
    """Replace a video's categories (ids or names, at most VIDEO_CATEGORIES_MAX)
    in the caller's transaction; returns them by name. For the upload route too."""
    if not isinstance(values, list) or len(values) > VIDEO_CATEGORIES_MAX:
        raise bad_request("invalid_categories", f"categories must be a list of at most "
                                                f"{VIDEO_CATEGORIES_MAX} ids or names")
    ids = sorted({await resolve_category(conn, value) for value in values})
    await conn.execute("DELETE FROM video_categories WHERE video_id = $1::uuid", video_id)
    await conn.executemany("INSERT INTO video_categories (video_id, category_id) "
                           "VALUES ($1::uuid, $2::uuid)", [(video_id, i) for i in ids])
    return list(await conn.fetch(
        "SELECT c.id::text AS id, c.name, c.description FROM video_categories vc "
        "JOIN categories c ON c.id = vc.category_id WHERE vc.video_id = $1::uuid "
        "ORDER BY lower(c.name)", video_id))


async def put_video_categories(request: web.Request) -> web.Response:
    """The video's creator sets its categories: `{"categories": [id or name, ...]}`."""
    claims = await require_user(request)
    video_id = path_uuid(request, "video_id", "video")
    body = await parse_json_body(request)
    async with request.app[BACKENDS].pg.acquire() as conn, conn.transaction():
        creator = await conn.fetchval("SELECT creator_id::text FROM videos WHERE id = $1::uuid "
                                      "FOR UPDATE", video_id)
        if creator is None:
            raise not_found("video_not_found", f"no video {video_id}")
        if creator != claims.user_id:
            raise forbidden("only the video's creator may set its categories")
        rows = await set_video_categories(conn, video_id, body.get("categories"))
    return web.json_response({"categories": [category_json(r) for r in rows]})
