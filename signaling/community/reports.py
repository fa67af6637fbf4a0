"""Reports: anyone signed in reports a video, comment, user or stream, with a
reason from a fixed list. One open report per reporter and target (migration
0010's partial unique index decides, so two concurrent clicks make one)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from aiohttp import web

from signaling.community.metrics import REPORTS
from signaling.community.params import as_uuid, optional_text
from signaling.errors import ApiError, bad_request, not_found, parse_json_body
from signaling.state import SETTINGS
from signaling.users import canonical_or_400, require_user
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

TARGET_TYPES = ("video", "comment", "user", "stream")
REASONS = ("spam", "harassment", "hate", "violence", "sexual_content", "illegal",
           "copyright", "impersonation", "misinformation", "other")
DESCRIPTION_MAX = 2000
_TABLE = {"video": "videos", "comment": "comments", "user": "users", "stream": "streams"}


async def resolve_target(request: web.Request, target_type: object,
                         target_id: object) -> tuple[str, str]:
    """(type, id) of an existing target; a user may be named by its account."""
    if target_type not in TARGET_TYPES:
        raise bad_request("invalid_target_type",
                          f"target_type must be one of {', '.join(TARGET_TYPES)}")
    pg = request.app[BACKENDS].pg
    uid = as_uuid(target_id)
    if uid is None and target_type == "user":
        account = canonical_or_400(target_id, request.app[SETTINGS])
        uid = await pg.fetchval("SELECT id::text FROM users WHERE account_id = $1", account)
        if uid is None:
            raise not_found("target_not_found", f"no user {account}")
    if uid is None:
        raise bad_request("invalid_target_id", "target_id must be a UUID (a user: or an account)")
    if not await pg.fetchval(f"SELECT 1 FROM {_TABLE[str(target_type)]} WHERE id = $1::uuid",
                             uid):
        raise not_found("target_not_found", f"no {target_type} {uid}")
    return str(target_type), uid


def report_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "status": row["status"], "target_type": row["target_type"],
            "target_id": row["target_id"], "reason": row["reason"],
            "description": row["description"],
            "created_at": row["created_at"].isoformat()}


REPORT_COLUMNS = """r.id::text AS id, r.status, r.target_type, r.target_id::text AS target_id,
       r.reason, r.description, r.action,
       r.created_at AT TIME ZONE current_setting('TimeZone') AS created_at,
       r.reviewed_at AT TIME ZONE current_setting('TimeZone') AS reviewed_at"""


async def create_report(request: web.Request) -> web.Response:
    claims = await require_user(request)
    body = await parse_json_body(request)
    reason = body.get("reason")
    if reason not in REASONS:
        raise bad_request("invalid_reason", f"reason must be one of {', '.join(REASONS)}")
    description = optional_text(body.get("description"), "description", DESCRIPTION_MAX)
    target_type, target_id = await resolve_target(request, body.get("target_type"),
                                                  body.get("target_id"))
    try:
        row = await request.app[BACKENDS].pg.fetchrow(
            f"""INSERT INTO reports AS r (reporter_id, target_type, target_id, reason, description)
            VALUES ($1::uuid, $2, $3::uuid, $4, $5) RETURNING {REPORT_COLUMNS}""",
            claims.user_id, target_type, target_id, reason, description)
    except asyncpg.UniqueViolationError:
        raise ApiError(409, "already_reported",
                       "you have an open report on this already; a moderator will review it"
                       ) from None
    REPORTS.labels(target_type=target_type).inc()
    log_event(log, "report.created", report_id=row["id"], reporter_id=claims.user_id,
              target_type=target_type, target_id=target_id, reason=reason)
    return web.json_response(report_json(row), status=201)
