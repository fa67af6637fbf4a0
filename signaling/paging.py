"""`limit`/`offset` paging of every list route, one parser for all of them.

The OpenAPI document promises `limit` 1..200 and `offset` 0..2^63-1 (what a
Postgres OFFSET takes): a limit past 200 is refused, not quietly cut to 200,
and any offset up to the maximum is a valid page (empty past the end)."""

from __future__ import annotations

import re

from aiohttp import web

from signaling.errors import bad_request

PAGE_DEFAULT, PAGE_MAX = 50, 200
OFFSET_MAX = 2**63 - 1  # Postgres bigint, the type of OFFSET
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdecimal() takes "٣" too


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = int(raw) if _DIGITS.fullmatch(raw) else None
    if value is None or not low <= value <= high:
        raise bad_request("invalid_paging", f"{name} must be an integer from {low} to {high}")
    return value


def parse_limit(request: web.Request, default: int = PAGE_DEFAULT) -> int:
    return _query_int(request, "limit", default, 1, PAGE_MAX)


def parse_offset(request: web.Request) -> int:
    return _query_int(request, "offset", 0, 0, OFFSET_MAX)


def parse_paging(request: web.Request) -> tuple[int, int]:
    return parse_limit(request), parse_offset(request)
