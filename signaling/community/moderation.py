"""The moderation queue and its actions. A moderator (users.role, granted by
`vilokanam admin moderator ACCOUNT`) lists reports and acts on one:

- `dismiss`: nothing was wrong;
- `remove`: soft-delete the comment, archive the video, end the live stream
  through its worker (as the creator's own end does);
- `suspend`: the owner of the target (the comment's author, the video's or
  stream's creator, the user) can no longer log in, publish, chat or watch,
  at once: their live streams end, and every signaling server closes their
  websockets (presence.py); tokens they hold are refused from the next
  request on (signaling/users.py reads the standing every time).

The report is claimed first (`status = 'pending'` in the UPDATE), so two
moderators cannot both act on it; other open reports of the same target are
closed with it. Every action is a log event with its ids."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from aiohttp import web

from signaling.api import STREAM_SELECT, end_stream_now, fetch_stream
from signaling.community.chat_events import announce_deleted
from signaling.community.comments import soft_delete
from signaling.community.metrics import MODERATION_ACTIONS
from signaling.community.params import path_uuid
from signaling.community.presence import announce_suspended
from signaling.community.reports import REPORT_COLUMNS, report_json
from signaling.errors import ApiError, bad_request, not_found, parse_json_body
from signaling.paging import parse_limit, parse_offset
from signaling.users import require_moderator
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event
from vilokanam.users import MODERATOR, suspend

log = logging.getLogger(__name__)

ACTIONS = ("dismiss", "remove", "suspend")
STATUSES = ("pending", "reviewed", "action_taken", "dismissed")
_OWNER_SQL = {
    "comment": "SELECT author_id::text FROM comments WHERE id = $1::uuid",
    "video": "SELECT creator_id::text FROM videos WHERE id = $1::uuid",
    "stream": "SELECT creator_id::text FROM streams WHERE id = $1::uuid",
    "user": "SELECT id::text FROM users WHERE id = $1::uuid",
}


def queue_json(row: asyncpg.Record) -> dict[str, Any]:
    reviewed = row["reviewed_at"]
    return {**report_json(row), "action": row["action"],
            "reporter_account": row["reporter_account"],
            "reviewed_by_account": row["reviewed_by_account"],
            "reviewed_at": reviewed.isoformat() if reviewed else None,
            # What the moderator judges: the text as given (pages render it as text).
            "target": {"owner_account": row["owner_account"], "text": row["target_text"],
                       "state": row["target_state"]}}


# The reported thing, whatever its type: its owner, its text (a comment's
# content, a video's or stream's title, a user's name) and its state now.
_QUEUE_SELECT = f"""
SELECT {REPORT_COLUMNS}, ru.account_id AS reporter_account, mu.account_id AS reviewed_by_account,
       ou.account_id AS owner_account,
       COALESCE(tc.content, tv.title, ts.title, ou.username) AS target_text,
       CASE r.target_type
            WHEN 'comment' THEN CASE WHEN tc.is_deleted THEN 'deleted' ELSE 'visible' END
            WHEN 'video' THEN tv.status WHEN 'stream' THEN ts.status
            ELSE CASE WHEN ou.suspended_at IS NOT NULL THEN 'suspended' ELSE 'active' END
       END AS target_state
FROM reports r JOIN users ru ON ru.id = r.reporter_id LEFT JOIN users mu ON mu.id = r.reviewed_by
LEFT JOIN comments tc ON r.target_type = 'comment' AND tc.id = r.target_id
LEFT JOIN videos tv ON r.target_type = 'video' AND tv.id = r.target_id
LEFT JOIN streams ts ON r.target_type = 'stream' AND ts.id = r.target_id
LEFT JOIN users ou ON ou.id = CASE r.target_type WHEN 'user' THEN r.target_id
                                 ELSE COALESCE(tc.author_id, tv.creator_id, ts.creator_id) END
"""


async def list_reports(request: web.Request) -> web.Response:
    await require_moderator(request)
    status = request.query.get("status", "pending")
    if status not in STATUSES:
        raise bad_request("invalid_status", f"status must be one of {', '.join(STATUSES)}")
    limit, offset = parse_limit(request), parse_offset(request)
    rows = await request.app[BACKENDS].pg.fetch(
        f"""{_QUEUE_SELECT} WHERE r.status = $1
        ORDER BY r.created_at, r.id LIMIT $2 OFFSET $3""", status, limit, offset)
    return web.json_response({"reports": [queue_json(r) for r in rows],
                              "limit": limit, "offset": offset})


async def _claim(pg: asyncpg.Pool, report_id: str, action: str,
                 moderator_id: str) -> asyncpg.Record:
    """Mark the report (and the other open reports of its target) reviewed."""
    status = "dismissed" if action == "dismiss" else "action_taken"
    async with pg.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE reports SET status = $2, action = $3, reviewed_by = $4::uuid, "
            "reviewed_at = now() WHERE id = $1::uuid AND status = 'pending' "
            "RETURNING target_type, target_id::text AS target_id",
            report_id, status, action, moderator_id)
        if row is None:
            exists = await conn.fetchval("SELECT 1 FROM reports WHERE id = $1::uuid", report_id)
            if not exists:
                raise not_found("report_not_found", f"no report {report_id}")
            raise ApiError(409, "already_reviewed", "this report was already reviewed")
        if action != "dismiss":
            await conn.execute(
                "UPDATE reports SET status = 'action_taken', action = $3, "
                "reviewed_by = $4::uuid, reviewed_at = now() WHERE target_type = $1 "
                "AND target_id = $2::uuid AND status = 'pending'",
                row["target_type"], row["target_id"], action, moderator_id)
    return row


async def _check_action(pg: asyncpg.Pool, report_id: str, action: str) -> str | None:
    """Refuse what cannot be done before the report is claimed: the owner to
    suspend, None for the other actions."""
    target = await pg.fetchrow("SELECT target_type, target_id::text AS target_id "
                               "FROM reports WHERE id = $1::uuid", report_id)
    if target is None:
        raise not_found("report_not_found", f"no report {report_id}")
    if action == "remove" and target["target_type"] == "user":
        raise bad_request("invalid_action", "a user cannot be removed: suspend them")
    if action != "suspend":
        return None
    owner = await pg.fetchval(_OWNER_SQL[target["target_type"]], target["target_id"])
    if owner is None:
        raise not_found("target_not_found", "the reported target no longer exists")
    role = await pg.fetchval("SELECT role FROM users WHERE id = $1::uuid", owner)
    if role == MODERATOR:
        raise ApiError(409, "cannot_suspend_moderator", "moderators cannot be suspended here")
    return str(owner)


async def _remove(app: web.Application, target_type: str, target_id: str) -> None:
    pg = app[BACKENDS].pg
    if target_type == "comment":
        deleted = await soft_delete(pg, target_id)
        if deleted is not None and deleted["stream_id"] is not None:
            await announce_deleted(app[BACKENDS].redis, deleted["stream_id"], target_id)
    elif target_type == "video":
        await pg.execute("UPDATE videos SET status = 'archived' WHERE id = $1::uuid", target_id)
    elif target_type == "stream":
        await end_stream_now(app, await fetch_stream(pg, target_id))


async def suspend_user(app: web.Application, user_id: str, moderator_id: str,
                       reason: str) -> None:
    """Suspend and make it hold at once (see the module doc)."""
    pg = app[BACKENDS].pg
    await suspend(pg, user_id, moderator_id, reason)
    # Tell the websockets first: a publisher's socket must not reconnect
    # while its stream is being ended.
    await announce_suspended(app[BACKENDS].redis, user_id)
    for row in await pg.fetch(f"{STREAM_SELECT} WHERE s.creator_id = $1::uuid "
                              f"AND s.status = 'live'", user_id):
        await end_stream_now(app, row)
        log_event(log, "moderation.stream_ended", stream_id=row["id"], user_id=user_id)


async def act_on_report(request: web.Request) -> web.Response:
    claims = await require_moderator(request)
    report_id = path_uuid(request, "report_id", "report")
    body = await parse_json_body(request)
    action = body.get("action")
    if action not in ACTIONS:
        raise bad_request("invalid_action", f"action must be one of {', '.join(ACTIONS)}")
    pg = request.app[BACKENDS].pg
    owner = await _check_action(pg, report_id, str(action))
    target = await _claim(pg, report_id, str(action), claims.user_id)
    if action == "remove":
        await _remove(request.app, target["target_type"], target["target_id"])
    elif action == "suspend" and owner is not None:
        await suspend_user(request.app, owner, claims.user_id, f"report {report_id}")
    MODERATION_ACTIONS.labels(action=str(action)).inc()
    log_event(log, "moderation.action", report_id=report_id, action=action,
              moderator_id=claims.user_id, target_type=target["target_type"],
              target_id=target["target_id"], suspended_user_id=owner)
    row = await pg.fetchrow(f"{_QUEUE_SELECT} WHERE r.id = $1::uuid", report_id)
    return web.json_response(queue_json(row))
