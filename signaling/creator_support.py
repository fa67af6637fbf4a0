"""Tips and subscriptions: a viewer pays a creator from their balance.

- `POST /api/users/{account}/tips` `{"amount", "message"?}` (Bearer): 201; a
  `tip` payment, out of the live balance at once, settled on chain in the next
  batch. 402 above the balance, 404 to a non-creator, 400 for zero, sub-planck
  or malformed amounts, and for yourself.
- `PUT /api/me/subscription-offer` `{"price"}` / `DELETE` (Bearer): the
  caller (a creator) offers a 30-day subscription at a price, or stops.
- `GET /api/users/{account}/subscription-offer` (none): the offer, or 404.
- `POST /api/users/{account}/subscription` (Bearer): 201; a `subscription`
  payment of the offer's price for 30 days, starting when the caller's
  current period (if any) ends: bought twice extends, never two charges for
  the same days. 404 if the creator offers none; 402 above the balance.
- `GET /api/me/subscriptions` (Bearer): the caller's periods, newest first.

The money moves in vilokanam/direct_payments.py. A tip to a creator who is
live is also shown in the chat of each of their live streams (`chat_tip` on
/ws, docs/protocol.md)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from signaling.community.chat_events import announce_tip
from signaling.errors import ApiError, bad_request, not_found, parse_json_body
from signaling.state import SETTINGS
from signaling.users import canonical_or_400, find_user, require_user
from vilokanam.backends import BACKENDS
from vilokanam.direct_payments import InsufficientFunds, pay_creator
from vilokanam.logs import log_event
from vilokanam.money import decimal_from_json, format_amount, from_planck
from vilokanam.subscriptions import PERIOD_DAYS
from vilokanam.users import User

log = logging.getLogger(__name__)

AMOUNT_LIMIT = Decimal(10) ** 20  # NUMERIC(38, 18): 20 integer digits
MESSAGE_MAX = 500


def parse_amount(value: object, field: str, decimals: int) -> Decimal:
    """Tokens > 0, below 10^20, in whole planck; else 400 `invalid_amount`."""
    amount = decimal_from_json(value)
    if (amount is None or not amount.is_finite() or not 0 < amount < AMOUNT_LIMIT
            or amount.adjusted() < -decimals
            or len(format_amount(amount).partition(".")[2]) > decimals):
        raise bad_request("invalid_amount", f"{field} must be a number of tokens > 0, below "
                                            f"10^20, in whole planck (at most {decimals} "
                                            "decimals)")
    return amount


def parse_message(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MESSAGE_MAX or "\x00" in value:
        raise bad_request("invalid_message", f"message must be text of at most {MESSAGE_MAX} "
                                             "characters")
    return value.strip() or None


async def _creator(request: web.Request) -> User:
    """The creator named by the path, or 404 (no such user, or not a creator)."""
    settings = request.app[SETTINGS]
    account = canonical_or_400(request.match_info["account"], settings)
    user = await find_user(request.app[BACKENDS].pg, account)
    if user is None or not user.is_creator:
        raise not_found("creator_not_found", f"{account} is not a creator")
    return user


def _not_yourself(payer_id: str, creator: User, what: str) -> None:
    if payer_id == creator.id:
        raise bad_request("invalid_recipient", f"you cannot {what} yourself")


def _payment_required(exc: InsufficientFunds) -> ApiError:
    return ApiError(402, "insufficient_funds", str(exc))


async def tip(request: web.Request) -> web.Response:
    claims = await require_user(request)
    settings = request.app[SETTINGS]
    body = await parse_json_body(request)
    amount = parse_amount(body.get("amount"), "amount", settings.token_decimals)
    message = parse_message(body.get("message"))
    creator = await _creator(request)
    _not_yourself(claims.user_id, creator, "tip")

    async def record(conn: asyncpg.Connection, payment_id: str) -> dict[str, Any]:
        row = await conn.fetchrow(
            "INSERT INTO tips (payment_id, message) VALUES ($1::uuid, $2) "
            "RETURNING id::text AS id, created_at", payment_id, message)
        assert row is not None
        return {"id": row["id"], "created_at": row["created_at"].isoformat()}

    backends = request.app[BACKENDS]
    try:
        paid = await pay_creator(backends.pg, backends.redis, payer_id=claims.user_id,
                                 creator_id=creator.id, amount=amount, kind="tip",
                                 decimals=settings.token_decimals, record=record)
    except InsufficientFunds as exc:
        raise _payment_required(exc) from None
    await _show_in_live_chat(backends.pg, backends.redis, creator, {
        "id": paid.details["id"], "amount": format_amount(amount),
        "from_account": claims.account, "from_username": None, "message": message,
        "created_at": paid.details["created_at"]}, claims.user_id)
    return web.json_response({
        "id": paid.details["id"], "payment_id": paid.payment_id,
        "creator_account": creator.account, "amount": format_amount(amount),
        "message": message, "status": "pending", "created_at": paid.details["created_at"],
        "balance": format_amount(from_planck(paid.balance_planck, settings.token_decimals)),
    }, status=201)


async def _show_in_live_chat(pg: asyncpg.Pool, redis: aioredis.Redis, creator: User,
                             tip: dict[str, Any], payer_id: str) -> None:
    """`chat_tip` in the chat of each live stream of the creator. The money has
    moved by now: a failure here is logged, never turned into a refused tip."""
    try:
        rows = await pg.fetch(
            "SELECT s.id::text AS id, (SELECT username FROM users WHERE id = $2::uuid) AS name "
            "FROM streams s WHERE s.creator_id = $1::uuid AND s.status = 'live'",
            creator.id, payer_id)
        for row in rows:
            await announce_tip(redis, row["id"], {**tip, "from_username": row["name"]})
            log_event(log, "tip.shown_in_chat", tip_id=tip["id"], stream_id=row["id"])
    except (OSError, asyncpg.PostgresError, aioredis.RedisError) as exc:
        log_event(log, "tip.chat_failed", logging.WARNING, tip_id=tip["id"],
                  error=type(exc).__name__)


async def subscribe(request: web.Request) -> web.Response:
    claims = await require_user(request)
    settings = request.app[SETTINGS]
    creator = await _creator(request)
    _not_yourself(claims.user_id, creator, "subscribe to")
    backends = request.app[BACKENDS]
    offer = await backends.pg.fetchrow(
        "SELECT price, period_days FROM subscription_offers WHERE creator_id = $1::uuid",
        creator.id)
    if offer is None:
        raise not_found("no_subscription_offer", f"{creator.account} offers no subscription")
    price, days = Decimal(offer["price"]), int(offer["period_days"])

    async def record(conn: asyncpg.Connection, payment_id: str) -> dict[str, Any]:
        # Under the pair's lock: the new period starts where the last one ends.
        row = await conn.fetchrow(
            """INSERT INTO subscriptions (subscriber_id, creator_id, payment_id, price,
                                          starts_at, ends_at)
               SELECT $1::uuid, $2::uuid, $3::uuid, $4, start, start + make_interval(days => $5)
                 FROM (SELECT GREATEST(now(), COALESCE(max(ends_at), now())) AS start
                         FROM subscriptions
                        WHERE subscriber_id = $1::uuid AND creator_id = $2::uuid) s
               RETURNING id::text AS id, starts_at, ends_at""",
            claims.user_id, creator.id, payment_id, price, days)
        assert row is not None
        return {"id": row["id"], "starts_at": row["starts_at"].isoformat(),
                "ends_at": row["ends_at"].isoformat()}

    try:
        paid = await pay_creator(backends.pg, backends.redis, payer_id=claims.user_id,
                                 creator_id=creator.id, amount=price, kind="subscription",
                                 decimals=settings.token_decimals, record=record,
                                 lock_key=f"subscription:{claims.user_id}:{creator.id}")
    except InsufficientFunds as exc:
        raise _payment_required(exc) from None
    return web.json_response({
        "id": paid.details["id"], "payment_id": paid.payment_id,
        "creator_account": creator.account, "price": format_amount(price),
        "starts_at": paid.details["starts_at"], "ends_at": paid.details["ends_at"],
        "status": "pending",
        "balance": format_amount(from_planck(paid.balance_planck, settings.token_decimals)),
    }, status=201)


async def put_offer(request: web.Request) -> web.Response:
    claims = await require_user(request)
    settings = request.app[SETTINGS]
    body = await parse_json_body(request)
    price = parse_amount(body.get("price"), "price", settings.token_decimals)
    pg = request.app[BACKENDS].pg
    user = await find_user(pg, claims.account)
    if user is None or not user.is_creator:
        raise ApiError(403, "not_a_creator", "only a creator (someone who made a stream) can "
                                             "offer a subscription")
    await pg.execute(
        "INSERT INTO subscription_offers (creator_id, price, period_days) "
        "VALUES ($1::uuid, $2, $3) ON CONFLICT (creator_id) DO UPDATE "
        "SET price = EXCLUDED.price, updated_at = now()", user.id, price, PERIOD_DAYS)
    return web.json_response(_offer_json(user.account, price, PERIOD_DAYS))


async def delete_offer(request: web.Request) -> web.Response:
    """Stop offering; periods already bought run to their end."""
    claims = await require_user(request)
    await request.app[BACKENDS].pg.execute(
        "DELETE FROM subscription_offers WHERE creator_id = $1::uuid", claims.user_id)
    return web.json_response({"account": claims.account, "price": None})


async def get_offer(request: web.Request) -> web.Response:
    creator = await _creator(request)
    row = await request.app[BACKENDS].pg.fetchrow(
        "SELECT price, period_days FROM subscription_offers WHERE creator_id = $1::uuid",
        creator.id)
    if row is None:
        raise not_found("no_subscription_offer", f"{creator.account} offers no subscription")
    return web.json_response(_offer_json(creator.account, row["price"], row["period_days"]))


def _offer_json(account: str, price: Decimal, days: int) -> dict[str, Any]:
    return {"account": account, "price": format_amount(price), "period_days": days}


async def my_subscriptions(request: web.Request) -> web.Response:
    claims = await require_user(request)
    rows = await request.app[BACKENDS].pg.fetch(
        """SELECT s.id::text AS id, u.account_id AS creator_account, s.price, s.starts_at,
                  s.ends_at, p.status, now() BETWEEN s.starts_at AND s.ends_at AS current
             FROM subscriptions s JOIN users u ON u.id = s.creator_id
             JOIN payments p ON p.id = s.payment_id
            WHERE s.subscriber_id = $1::uuid ORDER BY s.starts_at DESC, s.id LIMIT 200""",
        claims.user_id)
    return web.json_response({"subscriptions": [{
        "id": r["id"], "creator_account": r["creator_account"],
        "price": format_amount(r["price"]), "starts_at": r["starts_at"].isoformat(),
        "ends_at": r["ends_at"].isoformat(), "current": bool(r["current"]),
        "status": r["status"]} for r in rows]})


def add_creator_support_routes(app: web.Application) -> None:
    app.router.add_post("/api/users/{account}/tips", tip)
    app.router.add_post("/api/users/{account}/subscription", subscribe)
    app.router.add_get("/api/users/{account}/subscription-offer", get_offer)
    app.router.add_put("/api/me/subscription-offer", put_offer)
    app.router.add_delete("/api/me/subscription-offer", delete_offer)
    app.router.add_get("/api/me/subscriptions", my_subscriptions)
