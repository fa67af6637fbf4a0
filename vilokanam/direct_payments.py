"""Money a viewer sends a creator directly: tips and subscriptions.

Each is ONE payments row from the payer to the creator (payment_type `tip` or
`subscription`, status `pending` until a settlement batch pays it out on
chain), and the same amount moves in the same transaction out of the payer's
`viewer_balances` and into the creator's `creator_earnings` (total and
pending payout: the whole amount — the platform fee applies to per-second
viewing, not to what a viewer gives a creator on purpose).

The live balance moves first, checked and taken in one Redis script
(`balances.debit_live`), so two payments at once cannot spend the same
money and a payment above the balance is refused before anything is written.
If the Postgres transaction then fails, the planck go back (`adjust_live`); a
crash between the two leaves the live copy low, which the reconciliation
repairs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter as PromCounter

from vilokanam.balances import adjust_live, debit_live
from vilokanam.logs import log_event
from vilokanam.money import to_planck

log = logging.getLogger("vilokanam.direct_payments")

DIRECT_PAYMENTS = PromCounter("vilokanam_direct_payments_total",
                              "Tips and subscriptions paid from a live balance.", ["kind"])
DIRECT_REFUSED = PromCounter("vilokanam_direct_payments_refused_total",
                             "Tips and subscriptions refused: the balance could not pay.",
                             ["kind"])


class InsufficientFunds(Exception):
    """The payer's live balance does not hold the amount (nothing was taken)."""


@dataclass(frozen=True)
class DirectPayment:
    payment_id: str
    amount: Decimal
    balance_planck: int  # the payer's live balance after it
    details: dict[str, Any]  # what `record` returned


# Writes the kind's own row (a tips or subscriptions row) in the payment's
# transaction: (conn, payment id) -> its details for the answer.
Recorder = Callable[[asyncpg.Connection, str], Awaitable[dict[str, Any]]]


async def pay_creator(pg: asyncpg.Pool, redis: aioredis.Redis, *, payer_id: str,
                      creator_id: str, amount: Decimal, kind: str, decimals: int,
                      record: Recorder, lock_key: str | None = None) -> DirectPayment:
    """Take `amount` from the payer's live balance and record the payment.
    `lock_key` serializes payments of one kind between the same two users (a
    subscription's periods must follow one another)."""
    planck = to_planck(amount, decimals)
    left = await debit_live(pg, redis, payer_id, planck, decimals)
    if left is None:
        DIRECT_REFUSED.labels(kind).inc()
        raise InsufficientFunds(f"the balance does not cover {amount}")
    try:
        async with pg.acquire() as conn, conn.transaction():
            if lock_key is not None:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key)
            payment_id = str(await conn.fetchval(
                "INSERT INTO payments (from_user_id, to_user_id, amount, payment_type, status) "
                "VALUES ($1::uuid, $2::uuid, $3, $4, 'pending') RETURNING id",
                payer_id, creator_id, amount, kind))
            details = await record(conn, payment_id)
            await conn.execute(
                "UPDATE payments SET reference_id = $2::uuid WHERE id = $1::uuid",
                payment_id, details.get("id"))
            await conn.execute(
                "INSERT INTO viewer_balances (user_id, balance) VALUES ($1::uuid, -$2::numeric) "
                "ON CONFLICT (user_id) DO UPDATE SET balance = viewer_balances.balance - $2, "
                "updated_at = now()", payer_id, amount)
            await conn.execute(
                "INSERT INTO creator_earnings (creator_id, total_earnings, pending_payout) "
                "VALUES ($1::uuid, $2, $2) ON CONFLICT (creator_id) DO UPDATE "
                "SET total_earnings = creator_earnings.total_earnings + $2, "
                "pending_payout = creator_earnings.pending_payout + $2, updated_at = now()",
                creator_id, amount)
    except BaseException:
        await adjust_live(redis, {payer_id: planck})  # nothing was recorded: give it back
        raise
    DIRECT_PAYMENTS.labels(kind).inc()
    log_event(log, f"{kind}.paid", payment_id=payment_id, payer_id=payer_id,
              creator_id=creator_id, amount=str(amount))
    return DirectPayment(payment_id, amount, left, details)
