"""Reconciliation: the live balances in Redis are proven against Postgres, and
repaired from it.

Postgres holds the truth of every viewer's money:

    truth = sum(balance_ledger credits) - sum(payments from the viewer)

The live copy `vk:bal:<user>` (integer planck) is charged by the SFU workers
before Postgres hears of a tick, so at any moment

    live = floor(truth) - (planck of the ticks in batches not yet applied:
                           pending in Redis, or in Postgres's tick_journal)

Each round, per chunk of viewers, ONE Redis transaction reads their live
copies together with the pending batch keys (a tick write moves both at once,
so they agree); then one Postgres snapshot reads their truth, which of those
batches are already applied (in `tick_batches` and out of `tick_journal`: the
sync commits the charges and the journal's deletion together; a batch applied
since the Redis read is then not subtracted twice) and the viewers' ticks
still in the journal. What remains is drift.

A drift is repaired only when the next round finds the same drift again: a
credit commits in Postgres a moment before it moves the live copy, and a
flush refunds dropped ticks a moment after its commit, so one look can catch
money in flight; money in flight does not stay put for a whole round. The
repair moves the live copy by the drift (a delta, never a SET: ticks and
credits landing meanwhile are kept), through vilokanam/balances.py, the only
writer of live balances. Every drift is counted and logged; so is a viewer
whose Postgres row `viewer_balances.balance` disagrees with its own ledger
(not repaired: that is for a human to look at)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter as PromCounter

from vilokanam.balances import adjust_live, balance_key, planck_floor
from vilokanam.keyspace import BALANCE_PREFIX, tick_keys
from vilokanam.logs import log_event
from vilokanam.metering import TickBatch, batch_id_of
from vilokanam.tasks import run_forever

log = logging.getLogger("billing.reconcile")

RECONCILE_INTERVAL = 60.0
CHUNK = 2000  # viewers per Redis transaction / Postgres statement
MAX_BACKOFF = 60.0

ROUNDS = PromCounter("vilokanam_reconcile_rounds_total", "Reconciliation rounds completed.")
DRIFTS = PromCounter(
    "vilokanam_balance_drift_total",
    "Viewers found out of balance: `live` (Redis vs Postgres) or `books` (viewer_balances vs "
    "its ledger).", ["kind"])
REPAIRS = PromCounter("vilokanam_balance_repairs_total",
                      "Live balances repaired from Postgres (a drift seen in two rounds).")
REPAIRED_PLANCK = PromCounter("vilokanam_balance_repaired_planck_total",
                              "Absolute planck moved by repairs of live balances.")

# $1: the viewers; $2: pending batch ids seen with their live copies. A batch
# is applied (its charges in payments) once it is in tick_batches and no
# longer in the journal.
_TRUTH = """
SELECT u.id::text AS user_id,
       COALESCE((SELECT sum(amount) FROM balance_ledger l WHERE l.user_id = u.id), 0)
     - COALESCE((SELECT sum(amount) FROM payments p WHERE p.from_user_id = u.id), 0) AS truth,
       (SELECT balance FROM viewer_balances b WHERE b.user_id = u.id) AS books
  FROM users u WHERE u.id = ANY($1::uuid[])
"""
_APPLIED = """
SELECT b.batch_id FROM tick_batches b
 WHERE b.batch_id = ANY($1::text[])
   AND NOT EXISTS (SELECT 1 FROM tick_journal j WHERE j.batch_id = b.batch_id)
"""
# $1: the viewers (as the ticks spell them); $2: the batches already counted
# from Redis. The planck of each viewer's ticks recorded but not yet synced.
_JOURNALED = """
SELECT t.user_id::text AS user_id, sum(t.price) AS planck
  FROM tick_journal j, unnest(j.users, j.prices) AS t(user_id, price)
 WHERE j.batch_id <> ALL($2::text[]) AND t.user_id::text = ANY($1::text[])
 GROUP BY 1
"""


@dataclass
class ReconcileResult:
    checked: int = 0
    drifted: dict[str, int] = field(default_factory=dict)  # user -> live - expected (planck)
    repaired: dict[str, int] = field(default_factory=dict)  # user -> delta applied
    books: list[str] = field(default_factory=list)  # users whose viewer_balances disagree


class Reconciler:
    def __init__(self, pg: asyncpg.Pool, redis: aioredis.Redis, decimals: int,
                 interval: float = RECONCILE_INTERVAL, chunk: int = CHUNK) -> None:
        self.pg = pg
        self.redis = redis
        self.decimals = decimals
        self.interval = interval
        self.chunk = chunk
        self._suspects: dict[str, int] = {}  # drift seen last round, not yet repaired
        self._keys = tick_keys(redis)

    async def run(self) -> None:
        await run_forever("reconcile", self.reconcile_once, every=self.interval,
                          max_backoff=MAX_BACKOFF, failure_event="reconcile.waiting")

    async def reconcile_once(self) -> ReconcileResult:
        result = ReconcileResult()
        # A shard's live copies and pending batches are read together (one
        # hash slot in a cluster; the one shard of a standalone Redis).
        for shard, users in self._keys.group(await self._live_users()).items():
            for start in range(0, len(users), self.chunk):
                await self._check(shard, users[start:start + self.chunk], result)
        suspects = self._suspects
        self._suspects = {}
        for user, drift in result.drifted.items():
            if suspects.get(user) == drift:
                result.repaired[user] = -drift
            else:
                self._suspects[user] = drift
        if result.repaired:
            await adjust_live(self.redis, result.repaired)
            REPAIRS.inc(len(result.repaired))
            REPAIRED_PLANCK.inc(sum(abs(d) for d in result.repaired.values()))
            for user, delta in result.repaired.items():
                log_event(log, "balance.repaired", logging.WARNING, user_id=user,
                          delta_planck=delta)
        ROUNDS.inc()
        log_event(log, "reconcile.round", checked=result.checked,
                  drifted=len(result.drifted), repaired=len(result.repaired),
                  books_mismatched=len(result.books))
        return result

    async def _live_users(self) -> list[str]:
        users = []
        async for key in self.redis.scan_iter(match=f"{BALANCE_PREFIX}*", count=1000):
            users.append(self._keys.user_of_balance(key))
        return users

    async def _check(self, shard: int | None, users: list[str], result: ReconcileResult) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.execute_command("MGET", *[balance_key(u, self._keys) for u in users])
            pipe.zrange(self._keys.pending(shard), 0, -1)
            raw_live, pending_keys = await pipe.execute()
        live = {u: int(v) for u, v in zip(users, raw_live, strict=True) if v is not None}
        # Batches are immutable until the flush deletes them after applying
        # them: one missing now was applied, and tick_batches says so.
        payloads = await self.redis.mget(pending_keys) if pending_keys else []
        # By the key's id: in a cluster a part's id carries its shard's tag.
        batches = {batch_id_of(k): TickBatch.decode(batch_id_of(k), p)
                   for k, p in zip(pending_keys, payloads, strict=True) if p is not None}
        batch_ids = list(batches)
        # One snapshot for the three reads: a sync between them cannot move a
        # charge from the journal into payments unseen.
        async with self.pg.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                readonly=True):
            rows = await conn.fetch(_TRUTH, [u for u in live if _is_uuid(u)])
            applied = {r["batch_id"] for r in await conn.fetch(_APPLIED, batch_ids)}
            journaled = await conn.fetch(_JOURNALED, list(live), batch_ids)
        in_flight: dict[str, int] = {r["user_id"]: int(r["planck"]) for r in journaled}
        for batch_id, batch in batches.items():
            if batch_id in applied:
                continue
            for tick in batch.ticks:
                in_flight[tick.user_id] = in_flight.get(tick.user_id, 0) + tick.price_planck
        known = set()
        for row in rows:
            user = row["user_id"]
            known.add(user)
            truth = Decimal(row["truth"])
            self._check_books(user, truth, row["books"], result)
            expected = planck_floor(truth, self.decimals) - in_flight.get(user, 0)
            self._compare(user, live[user], expected, result)
        for user in set(live) - known:  # a live balance of nobody: nothing backs it
            self._compare(user, live[user], -in_flight.get(user, 0), result)
        result.checked += len(live)

    def _compare(self, user: str, live: int, expected: int, result: ReconcileResult) -> None:
        if live == expected:
            return
        result.drifted[user] = live - expected
        DRIFTS.labels("live").inc()
        log_event(log, "balance.drift", logging.WARNING, user_id=user, live_planck=live,
                  expected_planck=expected, drift_planck=live - expected)

    @staticmethod
    def _check_books(user: str, truth: Decimal, books: Decimal | None,
                     result: ReconcileResult) -> None:
        if Decimal(books if books is not None else 0) == truth:
            return
        result.books.append(user)
        DRIFTS.labels("books").inc()
        log_event(log, "balance.books_mismatch", logging.ERROR, user_id=user,
                  viewer_balance=str(books), ledger_minus_charges=str(truth))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
