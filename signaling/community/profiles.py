"""Public profiles (`GET /api/users/{account}`) and editing one's own
(`PATCH /api/me`). The email is private: never in a public profile, never in
a log line. Usernames are unique case-insensitively (migration 0010)."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from signaling.errors import ApiError, bad_request, not_found, parse_json_body
from signaling.state import SETTINGS
from signaling.users import canonical_or_400, get_or_create_user, require_user
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{2,49}")  # 3-50 characters
BIO_MAX = 1000
URL_MAX = 2000
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
EMAIL_MAX = 255

# Counts are computed from the follows rows, so they cannot drift from them.
PROFILE_SELECT = """
SELECT u.id::text AS id, u.account_id, u.username, u.bio, u.profile_image_url,
       COALESCE(u.is_creator, FALSE) AS is_creator, u.role,
       u.suspended_at IS NOT NULL AS suspended,
       u.created_at AT TIME ZONE current_setting('TimeZone') AS created_at,
       (SELECT count(*) FROM follows f WHERE f.following_id = u.id) AS follower_count,
       (SELECT count(*) FROM follows f WHERE f.follower_id = u.id) AS following_count,
       (SELECT s.id::text FROM streams s WHERE s.creator_id = u.id AND s.status = 'live'
         ORDER BY s.start_time DESC NULLS LAST LIMIT 1) AS live_stream_id
FROM users u
"""


def profile_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"account": row["account_id"], "username": row["username"], "bio": row["bio"],
            "profile_image_url": row["profile_image_url"], "is_creator": row["is_creator"],
            "follower_count": row["follower_count"],
            "following_count": row["following_count"], "role": row["role"],
            "suspended": row["suspended"], "live_stream_id": row["live_stream_id"],
            "created_at": row["created_at"].isoformat() if row["created_at"] else None}


async def user_row(request: web.Request, account_field: str = "account") -> asyncpg.Record:
    """The profile row of the account in the path (any SS58 prefix), or 404."""
    account = canonical_or_400(request.match_info[account_field], request.app[SETTINGS])
    row = await request.app[BACKENDS].pg.fetchrow(f"{PROFILE_SELECT} WHERE u.account_id = $1",
                                                  account)
    if row is None:
        raise not_found("user_not_found", f"no user {account}")
    return row


async def get_profile(request: web.Request) -> web.Response:
    return web.json_response(profile_json(await user_row(request)))


def _username(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not USERNAME.fullmatch(value):
        raise bad_request("invalid_username", "username must be 3 to 50 characters: letters, "
                                              "digits, '_', '.', '-' (not first)")
    return value


def _image_url(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > URL_MAX or "\x00" in value:
        raise bad_request("invalid_profile_image_url",
                          f"profile_image_url must be an http(s) URL of at most {URL_MAX} chars")
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[": an unclosed IPv6 host (was a 500, found by fuzzing)
        parts = None
    # Only http(s): a javascript: or data: URL in an <img> or link is an injection.
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_request("invalid_profile_image_url",
                          "profile_image_url must be an absolute http(s) URL")
    return value


def _email(value: object) -> str | None:
    if value is None or value == "":
        return None
    if (not isinstance(value, str) or len(value) > EMAIL_MAX or "\x00" in value
            or not EMAIL.fullmatch(value)):
        raise bad_request("invalid_email", "email must be an address like name@example.org")
    return value


def _bio(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > BIO_MAX or "\x00" in value:
        raise bad_request("invalid_bio", f"bio must be a string of at most {BIO_MAX} chars")
    return value or None


_EDITABLE = {"username": _username, "bio": _bio, "profile_image_url": _image_url,
             "email": _email}
# Which unique index a conflict came from -> the error the caller sees.
_TAKEN = {"idx_users_username_ci": ("username_taken", "that username is taken"),
          "users_username_key": ("username_taken", "that username is taken"),
          "idx_users_email_ci": ("email_taken", "that email is used by another account"),
          "users_email_key": ("email_taken", "that email is used by another account")}


async def update_me(request: web.Request) -> web.Response:
    """Set the fields given (null clears one); answers the caller's own
    profile, which alone includes the email."""
    claims = await require_user(request)
    body = await parse_json_body(request)
    changes = {name: parse(body[name]) for name, parse in _EDITABLE.items() if name in body}
    if not changes:
        raise bad_request("nothing_to_change",
                          f"give at least one of {', '.join(_EDITABLE)}")
    pg = request.app[BACKENDS].pg
    user = await get_or_create_user(pg, claims.account)
    assignments = ", ".join(f"{name} = ${n}" for n, name in enumerate(changes, start=2))
    try:
        await pg.execute(f"UPDATE users SET {assignments} WHERE id = $1::uuid",
                         user.id, *changes.values())
    except asyncpg.UniqueViolationError as exc:
        code, message = _TAKEN.get(exc.constraint_name or "",
                                   ("conflict", "a value is already used"))
        raise ApiError(409, code, message) from None
    # The changed field names only: never the email's value.
    log_event(log, "profile.updated", user_id=user.id, fields=sorted(changes))
    row = await pg.fetchrow(f"{PROFILE_SELECT} WHERE u.id = $1::uuid", user.id)
    email = await pg.fetchval("SELECT email FROM users WHERE id = $1::uuid", user.id)
    return web.json_response({**profile_json(row), "email": email})
