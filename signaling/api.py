"""The REST API under /api: dev tokens, streams, the current user.

Handlers stay thin: parse (errors.parse_json_body, the parse_* helpers below),
one query, one JSON shape per resource (`stream_json`). Every error is an
`ApiError` rendered by errors.error_middleware."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg
from aiohttp import web

from routing.channels import EventBus, StreamEvent
from routing.placement import stream_worker
from signaling.community.categories import resolve_category
from signaling.errors import bad_request, forbidden, not_found, parse_json_body
from signaling.paging import parse_paging
from signaling.sfu_client import SFU_CLIENT, SfuError
from signaling.state import SETTINGS
from signaling.stream_keys import hash_stream_key, new_stream_key
from signaling.timestamps import iso_or_none
from signaling.tokens import TokenClaims, issue_token
from signaling.users import (
    canonical_or_400,
    find_user,
    get_or_create_user,
    make_creator,
    require_user,
    require_user_standing,
    suspended_error,
    token_secret_or_503,
)
from vilokanam.accounts import canonical_account
from vilokanam.backends import BACKENDS
from vilokanam.balances import live_balance
from vilokanam.config import Settings
from vilokanam.money import decimal_from_json, format_amount, from_planck
from vilokanam.stream_rows import end_stream_rows
from vilokanam.users import standing_of

# streams.price_per_second is NUMERIC(38, 18): 20 integer digits, 18 decimals.
# Anything outside is refused rather than rounded or overflowed by Postgres.
PRICE_LIMIT = Decimal(10) ** 20
TITLE_MAX = 255
STREAM_STATUSES = ("pending", "live", "ended", "archived")  # the schema's comment
ENDED_STATUSES = ("ended", "archived")
QUERY_MAX = 100

# Lifecycle timestamps are TIMESTAMP (no zone) filled with NOW() by the
# database, i.e. wall time in the session's TimeZone: read them back in that
# zone so the API can give absolute ISO 8601 instants.
STREAM_SELECT = """
SELECT s.id::text AS id, s.creator_id::text AS creator_id, s.title, s.status,
       u.account_id AS creator_account,
       s.price_per_second, COALESCE(s.viewer_count, 0) AS viewer_count,
       s.require_signed_receipts,
       COALESCE(s.total_ticks, 0) AS total_ticks,
       s.start_time AT TIME ZONE current_setting('TimeZone') AS start_time,
       s.end_time AT TIME ZONE current_setting('TimeZone') AS end_time,
       s.category_id::text AS category_id, c.name AS category,
       s.record, s.thumbnail_url,
       (SELECT ss.recording_id::text FROM stream_sessions ss
         WHERE ss.stream_id = s.id AND ss.recording_id IS NOT NULL
         ORDER BY ss.start_time DESC LIMIT 1) AS recording_video_id
FROM streams s JOIN users u ON u.id = s.creator_id LEFT JOIN categories c ON c.id = s.category_id
"""


# -- money -----------------------------------------------------------------

def parse_price(value: object, default: Decimal, decimals: int) -> Decimal:
    """A price per second from JSON: a decimal string or a number (parsed as
    Decimal), > 0, below 10^20, in whole planck (at most `decimals` decimals:
    a price the chain cannot pay exactly is refused); else 400 invalid_price."""
    if value is None:
        return default
    amount = decimal_from_json(value)
    # adjusted() bounds the magnitude before format_amount, so "1e-999999999"
    # cannot make us print a billion zeros.
    if (amount is None or not amount.is_finite() or not 0 < amount < PRICE_LIMIT
            or amount.adjusted() < -decimals
            or len(format_amount(amount).partition(".")[2]) > decimals):
        raise bad_request("invalid_price", "price_per_second must be a number of tokens > 0, "
                          f"below 10^20, in whole planck (at most {decimals} decimals)")
    return amount


# -- request parsing ---------------------------------------------------------

def stream_id_or_none(raw: str) -> str | None:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def parse_stream_id(request: web.Request) -> str:
    stream_id = stream_id_or_none(request.match_info["stream_id"])
    if stream_id is None:
        raise bad_request("invalid_stream_id", "a stream id is a UUID")
    return stream_id


def parse_title(value: object) -> str:
    title = value.strip() if isinstance(value, str) else ""
    if not 1 <= len(title) <= TITLE_MAX or "\x00" in title:
        raise bad_request("invalid_title", f"title must be 1 to {TITLE_MAX} characters")
    return title


def parse_status(request: web.Request) -> str | None:
    status = request.query.get("status")
    if status is not None and status not in STREAM_STATUSES:
        raise bad_request("invalid_status", f"status must be one of {', '.join(STREAM_STATUSES)}")
    return status


# -- responses -----------------------------------------------------------------

def stream_urls(settings: Settings, stream_id: str) -> dict[str, str]:
    base = settings.base_url
    return {"watch_url": f"{base}/watch/{stream_id}", "whep_url": f"{base}/whep/{stream_id}",
            "publish_url": f"{base}/publish/{stream_id}", "whip_url": f"{base}/whip/{stream_id}"}


def stream_json(row: asyncpg.Record, settings: Settings) -> dict[str, Any]:
    """The public view of a stream: never its key or the key's hash."""
    urls = stream_urls(settings, row["id"])
    return {
        "id": row["id"], "title": row["title"], "status": row["status"],
        "creator_account": row["creator_account"],
        "price_per_second": format_amount(row["price_per_second"]),
        "require_signed_receipts": row["require_signed_receipts"],
        "viewer_count": row["viewer_count"], "total_ticks": row["total_ticks"],
        "start_time": iso_or_none(row["start_time"]), "end_time": iso_or_none(row["end_time"]),
        "watch_url": urls["watch_url"], "whep_url": urls["whep_url"],
        "category_id": row["category_id"], "category": row["category"],
        "record": row["record"],
        # The last ended session's recording, once it is a videos row (sfu/recorder.py).
        "recording_video_id": row["recording_video_id"],
        # The latest keyframe as a JPEG while live (sfu/thumbnails.py), with ?t= its time.
        "thumbnail_url": (f"{settings.base_url}{row['thumbnail_url']}"
                          if row["thumbnail_url"] else None),
    }


# -- handlers --------------------------------------------------------------------

async def dev_token(request: web.Request) -> web.Response:
    """A viewer token for any account, no signature: `vilokanam dev` only."""
    settings = request.app[SETTINGS]
    if not settings.dev_mode:
        raise not_found("not_found", "no such resource")
    secret = token_secret_or_503(settings)
    body = await parse_json_body(request)
    account = canonical_or_400(body.get("account"), settings)
    pg = request.app[BACKENDS].pg
    user = await get_or_create_user(pg, account)
    if (await standing_of(pg, user.id)).suspended:
        raise suspended_error()
    return web.json_response({"token": issue_token(secret, user.id, account),
                              "user_id": user.id, "account": account})


async def create_stream(request: web.Request) -> web.Response:
    claims = await require_user(request)
    settings = request.app[SETTINGS]
    body = await parse_json_body(request)
    title = parse_title(body.get("title"))
    price = parse_price(body.get("price_per_second"), settings.price_default,
                        settings.token_decimals)
    require_signed = body.get("require_signed_receipts", False)
    if not isinstance(require_signed, bool):
        raise bad_request("invalid_require_signed_receipts",
                          "require_signed_receipts must be true or false")
    record = body.get("record", True)
    if not isinstance(record, bool):
        raise bad_request("invalid_record", "record must be true or false")
    stream_key = new_stream_key()
    async with request.app[BACKENDS].pg.acquire() as conn, conn.transaction():
        category_id = None if body.get("category") is None else await resolve_category(
            conn, body["category"])
        creator = await make_creator(conn, claims.account)
        stream_id = await conn.fetchval(
            "INSERT INTO streams (creator_id, title, price_per_second, stream_key_hash, "
            "category_id, require_signed_receipts, record) "
            "VALUES ($1::uuid, $2, $3, $4, $5::uuid, $6, $7) RETURNING id::text",
            creator.id, title, price, hash_stream_key(stream_key), category_id, require_signed,
            record)
        row = await conn.fetchrow(f"{STREAM_SELECT} WHERE s.id = $1::uuid", stream_id)
    assert row is not None
    # The key is shown here, once; only its hash is stored (migration 0005).
    created = {**stream_json(row, settings), **stream_urls(settings, stream_id),
               "stream_key": stream_key}
    return web.json_response(created, status=201)


def parse_query(request: web.Request) -> str | None:
    raw = request.query.get("q")
    if raw is None or not raw.strip():
        return None
    query = raw.strip()
    if len(query) > QUERY_MAX or "\x00" in query:
        raise bad_request("invalid_query", f"q must be at most {QUERY_MAX} characters")
    return query


def _like_pattern(query: str) -> str:
    """`query` as a literal substring for ILIKE: its wildcards are escaped."""
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_streams(app: web.Application, status: str | None, query: str | None,
                         limit: int, offset: int, category_id: str | None = None,
                         creator_account: str | None = None) -> list[dict[str, Any]]:
    """Streams by viewer count, filtered by status, category and creator;
    `query` matches a substring of the title or of the creator's username
    (case-insensitive), or the creator's account in any SS58 prefix. Shared by
    GET /api/streams and the home page."""
    settings = app[SETTINGS]
    account = None
    if query is not None:
        try:
            account = canonical_account(query, settings.ss58_prefix)
        except ValueError:
            account = None
    rows = await app[BACKENDS].pg.fetch(
        f"""{STREAM_SELECT}
        WHERE ($1::text IS NULL OR s.status = $1)
          AND ($2::text IS NULL OR s.title ILIKE $2 OR u.username ILIKE $2
               OR u.account_id = $3)
          AND ($6::uuid IS NULL OR s.category_id = $6::uuid)
          AND ($7::text IS NULL OR u.account_id = $7)
        ORDER BY COALESCE(s.viewer_count, 0) DESC, s.start_time DESC NULLS LAST,
                 s.created_at DESC, s.id
        LIMIT $4 OFFSET $5""", status, None if query is None else _like_pattern(query),
        account, limit, offset, category_id, creator_account)
    return [stream_json(row, settings) for row in rows]


async def list_streams(request: web.Request) -> web.Response:
    """`status`, `category` (id or name), `creator` (an account) filter; `q` searches."""
    status = parse_status(request)
    query = parse_query(request)
    limit, offset = parse_paging(request)
    category = request.query.get("category")
    category_id = None if category is None else await resolve_category(
        request.app[BACKENDS].pg, category)
    creator = request.query.get("creator")
    creator_account = None if creator is None else canonical_or_400(creator,
                                                                   request.app[SETTINGS])
    streams = await search_streams(request.app, status, query, limit, offset,
                                   category_id=category_id, creator_account=creator_account)
    return web.json_response({"streams": streams, "limit": limit, "offset": offset})


async def get_stream(request: web.Request) -> web.Response:
    stream_id = parse_stream_id(request)
    row = await request.app[BACKENDS].pg.fetchrow(f"{STREAM_SELECT} WHERE s.id = $1::uuid",
                                                  stream_id)
    if row is None:
        raise not_found("stream_not_found", f"no stream {stream_id}")
    return web.json_response(stream_json(row, request.app[SETTINGS]))


async def me(request: web.Request) -> web.Response:
    """The balance is the live one: what the SFU charges every second (the
    Postgres balance minus ticks not flushed yet), in tokens. A moderator also
    gets the number of open reports (the navigation shows it); anyone else null."""
    claims, standing = await require_user_standing(request)
    backends, settings = request.app[BACKENDS], request.app[SETTINGS]
    user = await find_user(backends.pg, claims.account)
    planck = await live_balance(backends.pg, backends.redis, claims.user_id,
                                settings.token_decimals) if user else 0
    # One index-only count (idx_reports_status), for moderators only.
    open_reports = (await backends.pg.fetchval(
        "SELECT count(*) FROM reports WHERE status = 'pending'")
        if standing.is_moderator else None)
    return web.json_response({"account": claims.account,
                              "is_creator": user is not None and user.is_creator,
                              "is_moderator": standing.is_moderator,
                              "open_reports": open_reports,
                              "balance": format_amount(from_planck(planck,
                                                                   settings.token_decimals))})


async def my_sessions(request: web.Request) -> web.Response:
    """The viewer's viewing sessions, newest first: seconds billed and their cost."""
    claims = await require_user(request)
    limit, offset = parse_paging(request)
    rows = await request.app[BACKENDS].pg.fetch(
        """SELECT sv.id::text AS id, sv.stream_id::text AS stream_id, s.title,
                  sv.join_time AT TIME ZONE current_setting('TimeZone') AS join_time,
                  sv.is_active, sv.total_ticks, sv.paid_amount, sv.price_per_second,
                  p.status AS payment_status
             FROM stream_viewers sv JOIN streams s ON s.id = sv.stream_id
             LEFT JOIN payments p ON p.reference_id = sv.id AND p.payment_type = 'stream_view'
            WHERE sv.viewer_id = $1::uuid
            ORDER BY sv.join_time DESC, sv.id LIMIT $2 OFFSET $3""",
        claims.user_id, limit, offset)
    return web.json_response({"sessions": [{
        "id": r["id"], "stream_id": r["stream_id"], "title": r["title"],
        "join_time": iso_or_none(r["join_time"]), "active": bool(r["is_active"]),
        "seconds": r["total_ticks"], "cost": format_amount(r["paid_amount"]),
        "price_per_second": format_amount(r["price_per_second"] or Decimal(0)),
        "payment_status": r["payment_status"]} for r in rows],
        "limit": limit, "offset": offset})


async def my_earnings(request: web.Request) -> web.Response:
    """A creator's earnings: all, and what is still to be paid out on chain."""
    claims = await require_user(request)
    row = await request.app[BACKENDS].pg.fetchrow(
        """SELECT ce.total_earnings, ce.pending_payout,
                  ce.last_payout_at AT TIME ZONE current_setting('TimeZone') AS last_payout_at
             FROM creator_earnings ce WHERE ce.creator_id = $1::uuid""", claims.user_id)
    zero = Decimal(0)
    return web.json_response({
        "total_earnings": format_amount(row["total_earnings"] if row else zero),
        "pending_payout": format_amount(row["pending_payout"] if row else zero),
        "last_payout_at": iso_or_none(row["last_payout_at"]) if row else None})


# -- creator operations on their own streams ------------------------------------

async def fetch_stream(pg: asyncpg.Pool, stream_id: str) -> asyncpg.Record:
    row = await pg.fetchrow(f"{STREAM_SELECT} WHERE s.id = $1::uuid", stream_id)
    if row is None:
        raise not_found("stream_not_found", f"no stream {stream_id}")
    return row


async def owned_stream(request: web.Request) -> tuple[TokenClaims, asyncpg.Record]:
    """The caller (401 first: an anonymous caller learns nothing about the
    stream) and the stream, which must exist (404) and be theirs (403)."""
    claims = await require_user(request)
    row = await fetch_stream(request.app[BACKENDS].pg, parse_stream_id(request))
    if row["creator_id"] != claims.user_id:
        raise forbidden("this stream belongs to another creator")
    return claims, row


async def update_stream(request: web.Request) -> web.Response:
    """Change the creator's own stream: `title` and/or `price_per_second`. A
    new price applies to viewing sessions that start after it (a session keeps
    the price it joined at: stream_viewers.price_per_second)."""
    _, row = await owned_stream(request)
    settings = request.app[SETTINGS]
    body = await parse_json_body(request)
    if not {"title", "price_per_second"} & body.keys():
        raise bad_request("nothing_to_update", "give title and/or price_per_second")
    title = parse_title(body["title"]) if "title" in body else row["title"]
    price = parse_price(body.get("price_per_second"), row["price_per_second"],
                        settings.token_decimals)
    pg = request.app[BACKENDS].pg
    await pg.execute("UPDATE streams SET title = $2, price_per_second = $3, updated_at = now() "
                     "WHERE id = $1::uuid", row["id"], title, price)
    return web.json_response(stream_json(await fetch_stream(pg, row["id"]), settings))


async def rotate_stream_key(request: web.Request) -> web.Response:
    """A new key, shown once; the old one fails the next WHIP/websocket
    publish at once (admission reads the hash from Postgres every time). A
    publisher already live stays live: ending it is POST .../end."""
    _, row = await owned_stream(request)
    stream_key = new_stream_key()
    await request.app[BACKENDS].pg.execute(
        "UPDATE streams SET stream_key_hash = $2, updated_at = now() WHERE id = $1::uuid",
        row["id"], hash_stream_key(stream_key))
    return web.json_response({"stream_key": stream_key})


async def _ended_by_worker(app: web.Application, stream_id: str) -> bool:
    """Whether the worker carrying the stream ended it (closing its peers and
    publishing stream_ended); False when no live worker carries it."""
    worker = await stream_worker(app[BACKENDS].redis, stream_id)
    if worker is None:
        return False
    try:
        return await app[SFU_CLIENT].end_stream(worker.control_url, stream_id)
    except SfuError:
        return False  # unreachable (logged by the client): end the rows ourselves


async def end_stream_now(app: web.Application, row: asyncpg.Record) -> None:
    """End a stream (its `STREAM_SELECT` row) at once: through the worker
    that carries it (closing its peers, publishing stream_ended), else in
    Postgres with the worker's own SQL. The creator's end and a moderator's
    removal or suspension all end a stream this one way. Ending an ended
    stream is a no-op, so its end_time stays the true one."""
    if row["status"] in ENDED_STATUSES or await _ended_by_worker(app, row["id"]):
        return
    backends = app[BACKENDS]
    closed = await end_stream_rows(backends.pg, row["id"])
    # No worker told anyone: the websockets and WHEP sessions of this stream
    # hear it from us, as they would from the worker (one event per session
    # closed; one without a session for a stream that never went live).
    events = EventBus(backends.redis, "signaling")
    sessions: list[str | None] = [*closed] or [None]
    for session_id in sessions:
        await events.stream(str(row["id"]), StreamEvent.ENDED, session_id=session_id)


async def end_stream(request: web.Request) -> web.Response:
    _, row = await owned_stream(request)
    pg = request.app[BACKENDS].pg
    await end_stream_now(request.app, row)
    ended = await fetch_stream(pg, row["id"])
    return web.json_response(stream_json(ended, request.app[SETTINGS]))


async def my_streams(request: web.Request) -> web.Response:
    """The creator's own streams, newest first, whatever their status."""
    claims = await require_user(request)
    limit, offset = parse_paging(request)
    rows = await request.app[BACKENDS].pg.fetch(
        f"""{STREAM_SELECT} WHERE s.creator_id = $1::uuid
        ORDER BY s.created_at DESC, s.id LIMIT $2 OFFSET $3""", claims.user_id, limit, offset)
    settings = request.app[SETTINGS]
    return web.json_response({"streams": [stream_json(row, settings) for row in rows],
                              "limit": limit, "offset": offset})


async def my_payouts(request: web.Request) -> web.Response:
    """The creator's on-chain payouts, newest first: one per settlement batch
    that paid them, with the batch's status (only `completed` moved money)."""
    claims = await require_user(request)
    limit, offset = parse_paging(request)
    rows = await request.app[BACKENDS].pg.fetch(
        """SELECT s.id::text AS settlement_id, sp.amount, s.status, s.extrinsic_hash,
                  s.block_hash, s.block_number, s.created_at, s.finalized_at
             FROM settlement_payouts sp JOIN settlements s ON s.id = sp.settlement_id
            WHERE sp.creator_id = $1::uuid
            ORDER BY s.created_at DESC, s.id LIMIT $2 OFFSET $3""",
        claims.user_id, limit, offset)
    return web.json_response({"payouts": [{
        "settlement_id": r["settlement_id"], "amount": format_amount(r["amount"]),
        "status": r["status"], "extrinsic_hash": r["extrinsic_hash"],
        "block_hash": r["block_hash"], "block_number": r["block_number"],
        "created_at": iso_or_none(r["created_at"]), "finalized_at": iso_or_none(r["finalized_at"])}
        for r in rows], "limit": limit, "offset": offset})


def add_api_routes(app: web.Application) -> None:
    app.router.add_post("/api/dev/token", dev_token)
    app.router.add_post("/api/streams", create_stream)
    app.router.add_get("/api/streams", list_streams)
    app.router.add_get("/api/streams/{stream_id}", get_stream)
    app.router.add_patch("/api/streams/{stream_id}", update_stream)
    app.router.add_post("/api/streams/{stream_id}/key", rotate_stream_key)
    app.router.add_post("/api/streams/{stream_id}/end", end_stream)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/me/sessions", my_sessions)
    app.router.add_get("/api/me/earnings", my_earnings)
    app.router.add_get("/api/me/streams", my_streams)
    app.router.add_get("/api/me/payouts", my_payouts)
