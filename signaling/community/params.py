"""Request parsing shared by the community routes: ids in paths, text fields
with length limits, and `before` (keyset) paging (`limit`/`offset`:
signaling/paging.py). Each refusal is a 400 with
its own code (signaling/errors.py)."""

from __future__ import annotations

import uuid

from aiohttp import web

from signaling.errors import bad_request


def as_uuid(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def path_uuid(request: web.Request, name: str, what: str) -> str:
    """A UUID path parameter, or 400 `invalid_<what>_id`."""
    value = as_uuid(request.match_info[name])
    if value is None:
        raise bad_request(f"invalid_{what}_id", f"a {what} id is a UUID")
    return value


def body_uuid(value: object, field: str) -> str:
    parsed = as_uuid(value)
    if parsed is None:
        raise bad_request(f"invalid_{field}", f"{field} must be a UUID")
    return parsed


def text_field(value: object, field: str, maximum: int, *, minimum: int = 1,
               strip: bool = True) -> str:
    """A string of `minimum`..`maximum` characters (after stripping
    surrounding whitespace). Stored as given otherwise: pages render it as
    text, never as HTML. NUL is refused (Postgres text cannot hold it)."""
    if not isinstance(value, str):
        raise bad_request(f"invalid_{field}", f"{field} must be a string")
    text = value.strip() if strip else value
    if not minimum <= len(text) <= maximum or "\x00" in text:
        raise bad_request(f"invalid_{field}",
                          f"{field} must be {minimum} to {maximum} characters")
    return text


def optional_text(value: object, field: str, maximum: int) -> str | None:
    """None (or absent) clears the field; an empty string clears it too."""
    if value is None:
        return None
    text = text_field(value, field, maximum, minimum=0)
    return text or None


def parse_before(request: web.Request) -> str | None:
    """`before`: the id of the oldest item already seen (keyset paging)."""
    raw = request.query.get("before")
    if raw is None:
        return None
    before = as_uuid(raw)
    if before is None:
        raise bad_request("invalid_paging", "before must be a comment id (a UUID)")
    return before
