"""Live chat = comments on a stream. Sent over `/ws` (`chat`) or REST
(`POST /api/streams/{id}/comments`), both through `send_chat`: signed in, not
suspended, within the flood limit (1/s, bursts of 5, per user across every
server), at most 500 characters, on a stream that has not ended. The message
is stored in `comments`, then published on the stream's channel, from which
every signaling server delivers it to its chatters (presence.py)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from signaling.community.chat_events import announce_message
from signaling.community.comments import (
    CHAT_MAX,
    comment_json,
    insert_comment,
    list_comments,
    page_json,
    stream_target,
)
from signaling.community.flood import CHAT_LIMIT, Flooding, TokenBucket
from signaling.community.metrics import CHAT_MESSAGES, CHAT_REFUSED
from signaling.community.params import body_uuid, parse_before, path_uuid, text_field
from signaling.errors import ApiError, not_found, parse_json_body
from signaling.paging import parse_limit
from signaling.users import require_user, suspended_error
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event
from vilokanam.users import standing_of

log = logging.getLogger(__name__)

HISTORY = 50  # messages a chatter gets on joining


async def send_chat(app: web.Application, user_id: str, stream_id: str, content: object,
                    parent_id: object, front: str) -> dict[str, Any]:
    """Store and fan out one chat message; its JSON. Raises ApiError."""
    backends = app[BACKENDS]
    try:
        if (await standing_of(backends.pg, user_id)).suspended:
            raise suspended_error()
        text = text_field(content, "content", CHAT_MAX)
        parent = None if parent_id is None else body_uuid(parent_id, "parent_id")
        target = await stream_target(backends.pg, stream_id)
        try:
            await TokenBucket(backends.redis, CHAT_LIMIT).take(user_id)
        except Flooding as flood:
            raise ApiError(429, "chat_rate_limited",
                           f"too many messages: at most {CHAT_LIMIT.rate_per_s:g}/s "
                           f"(bursts of {CHAT_LIMIT.burst}); retry in "
                           f"{flood.retry_after_s:.1f} s",
                           {"Retry-After": flood.retry_after_header}) from None
        row = await insert_comment(backends.pg, target, user_id, text, parent)
    except ApiError as refused:
        CHAT_REFUSED.labels(code=refused.code).inc()
        raise
    message = comment_json(row)
    await announce_message(backends.redis, stream_id, message)
    CHAT_MESSAGES.labels(front=front).inc()
    log_event(log, "chat.message", comment_id=message["id"], stream_id=stream_id,
              author_id=user_id, front=front, length=len(text))
    return message


async def chat_history(app: web.Application, stream_id: str) -> list[dict[str, Any]]:
    """The last HISTORY messages of a stream's chat, oldest first; 404 unknown."""
    pg = app[BACKENDS].pg
    if not await pg.fetchval("SELECT 1 FROM streams WHERE id = $1::uuid", stream_id):
        raise not_found("stream_not_found", f"no stream {stream_id}")
    rows = await list_comments(pg, "stream_id", stream_id, HISTORY, None)
    return [comment_json(r) for r in reversed(rows)]


async def post_stream_comment(request: web.Request) -> web.Response:
    claims = await require_user(request)
    stream_id = path_uuid(request, "stream_id", "stream")
    body = await parse_json_body(request)
    message = await send_chat(request.app, claims.user_id, stream_id, body.get("content"),
                              body.get("parent_id"), front="rest")
    return web.json_response(message, status=201)


async def list_stream_comments(request: web.Request) -> web.Response:
    """Newest first; `before` pages back through the chat."""
    stream_id = path_uuid(request, "stream_id", "stream")
    limit, before = parse_limit(request), parse_before(request)
    pg = request.app[BACKENDS].pg
    if not await pg.fetchval("SELECT 1 FROM streams WHERE id = $1::uuid", stream_id):
        raise not_found("stream_not_found", f"no stream {stream_id}")
    rows = await list_comments(pg, "stream_id", stream_id, limit, before)
    return web.json_response(page_json(rows, limit))
