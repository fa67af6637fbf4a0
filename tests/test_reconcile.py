"""Reconciliation against real Postgres and Redis: live balances with ticks in
flight (pending, recorded but not yet forgotten, journaled but not yet
synced) are proven, not flagged; an
injected drift is found, confirmed in a second round and repaired from
Postgres (counted and logged); a flush that died between its commit and its
refund of dropped ticks leaves a drift that the reconciliation repairs; a
viewer_balances row that disagrees with its ledger is reported."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from billing.flush import Flusher, JournalRow
from billing.reconcile import DRIFTS, REPAIRS, Reconciler
from tests.flushing import drain
from tests.test_metering import (
    FEE,
    FUNDS,
    PRICE_PLANCK,
    batch,
    make_audience,
)
from vilokanam.balances import balance_key, credit
from vilokanam.keyspace import pending_count, tick_keys
from vilokanam.metering import Tick, TickBatch, TickWriter, batch_key

# Every test here runs on a standalone Redis and on a 3-node Redis Cluster.
pytestmark = pytest.mark.redis_modes

FUNDS_PLANCK = int(FUNDS * 10**12)


def key_of(redis: aioredis.Redis, user: str) -> str:
    return balance_key(user, tick_keys(redis))


async def live_of(redis: aioredis.Redis, user: str) -> int:
    return int(await redis.get(key_of(redis, user)))


def rows_of(writer: TickWriter, written: TickBatch) -> list[JournalRow]:
    """The journal rows of a batch as the writer wrote it (its parts, in a cluster)."""
    return [JournalRow.of(part.batch, part.batch_id) for part in writer.parts(written)]


def reconciler(pool: asyncpg.Pool, redis: aioredis.Redis) -> Reconciler:
    return Reconciler(pool, redis, decimals=12, chunk=2)  # small chunks: several per round


async def test_ticks_in_flight_are_proven_not_flagged(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=5)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    for second in range(100, 103):
        await writer.write(batch("w1", second, audience))
    await drain(flusher)  # 3 s in Postgres
    await writer.write(batch("w1", 103, audience))  # pending in Redis
    stuck = batch("w1", 104, audience)
    await writer.write(stuck)
    await flusher.record(rows_of(writer, stuck))  # committed, not forgotten
    assert await pending_count(redis) == 2 * len(writer.parts(stuck))
    journaled = batch("w1", 105, audience)
    await writer.write(journaled)
    await flusher.record(rows_of(writer, journaled))
    for part in writer.parts(journaled):  # journal only
        await flusher._forget(part.shard, [batch_key(part.batch_id).encode()])
    assert await db.fetchval("SELECT count(*) FROM tick_journal") == 2 * len(writer.parts(stuck))
    checker = reconciler(pool, redis)
    for _ in range(2):
        result = await checker.reconcile_once()
        assert result.checked == 5 and result.drifted == {} and result.repaired == {}
    for _, user in audience.viewers:
        assert await live_of(redis, user) == FUNDS_PLANCK - 6 * PRICE_PLANCK
    await flusher.sync_once()  # the journal into payments: still no drift
    assert (await checker.reconcile_once()).drifted == {}


async def test_an_injected_drift_is_confirmed_then_repaired_and_logged(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="billing.reconcile")
    audience = await make_audience(db, redis, viewers=3)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    await writer.write(batch("w1", 200, audience))
    await drain(flusher)
    (_, honest), (_, rich), (_, poor) = audience.viewers
    await redis.incrby(key_of(redis, rich), 777)  # the fault: the live copy says more
    await redis.decrby(key_of(redis, poor), 5 * PRICE_PLANCK)  # ... or less
    drifts, repairs = DRIFTS.labels("live")._value.get(), REPAIRS._value.get()

    checker = reconciler(pool, redis)
    first = await checker.reconcile_once()
    assert first.drifted == {rich: 777, poor: -5 * PRICE_PLANCK}
    assert first.repaired == {}  # one look may catch money in flight: not yet
    assert await live_of(redis, rich) == FUNDS_PLANCK - PRICE_PLANCK + 777
    # The viewers keep watching between the rounds: a delta repair keeps that.
    await writer.write(batch("w1", 201, audience))
    second = await checker.reconcile_once()
    assert second.repaired == {rich: -777, poor: 5 * PRICE_PLANCK}
    for user in (honest, rich, poor):
        assert await live_of(redis, user) == FUNDS_PLANCK - 2 * PRICE_PLANCK
    assert DRIFTS.labels("live")._value.get() == drifts + 4
    assert REPAIRS._value.get() == repairs + 2
    repaired = [r for r in caplog.records if r.getMessage().startswith("balance.repaired")]
    assert {r.fields["user_id"] for r in repaired} == {rich, poor}, [
        r.__dict__ for r in repaired]
    assert (await checker.reconcile_once()).drifted == {}
    await drain(flusher)
    assert (await checker.reconcile_once()).drifted == {}


async def test_a_drift_that_moves_between_rounds_is_not_repaired_blindly(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=1)
    user = audience.viewers[0][1]
    checker = reconciler(pool, redis)
    await redis.incrby(key_of(redis, user), 10)
    assert (await checker.reconcile_once()).drifted == {user: 10}
    await redis.incrby(key_of(redis, user), 5)
    second = await checker.reconcile_once()
    assert second.drifted == {user: 15} and second.repaired == {}
    third = await checker.reconcile_once()
    assert third.repaired == {user: -15}
    assert await live_of(redis, user) == FUNDS_PLANCK


class Crash(Exception):
    pass


async def test_a_flush_that_died_before_refunding_dropped_ticks_is_repaired(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=1)
    session, user = audience.viewers[0]
    ended_at = await db.fetchval(
        "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() "
        "WHERE id = $1 RETURNING extract(epoch FROM updated_at)::bigint", session)
    await TickWriter(redis).write(batch("w1", int(ended_at) + 60, audience))  # will be dropped

    class DiesAfterCommit(Flusher):
        async def _checkpoint(self, name: str) -> None:
            if name == "synced":  # the sync committed; the refund was next
                raise Crash(name)

    with pytest.raises(Crash):
        await DiesAfterCommit(pool, redis, FEE).flush_once()
    assert await live_of(redis, user) == FUNDS_PLANCK - PRICE_PLANCK  # charged, never refunded
    await drain(Flusher(pool, redis, FEE))  # the batch is skipped now: no refund either
    assert await pending_count(redis) == 0
    assert await live_of(redis, user) == FUNDS_PLANCK - PRICE_PLANCK

    checker = reconciler(pool, redis)
    assert (await checker.reconcile_once()).drifted == {user: -PRICE_PLANCK}
    assert (await checker.reconcile_once()).repaired == {user: PRICE_PLANCK}
    assert await live_of(redis, user) == FUNDS_PLANCK


async def test_live_balances_of_nobody_and_books_that_disagree_are_reported(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=1)
    user = audience.viewers[0][1]
    ghost = str(uuid.uuid4())
    await redis.set(key_of(redis, ghost), 42)
    await redis.set(key_of(redis, "not-a-user-id"), 7)
    await db.execute("UPDATE viewer_balances SET balance = balance + 1 WHERE user_id = $1", user)
    books = DRIFTS.labels("books")._value.get()
    checker = reconciler(pool, redis)
    first = await checker.reconcile_once()
    assert first.drifted == {ghost: 42, "not-a-user-id": 7}
    assert first.books == [user] and DRIFTS.labels("books")._value.get() == books + 1
    await checker.reconcile_once()
    assert await live_of(redis, ghost) == 0 and await live_of(redis, "not-a-user-id") == 0
    # The live copy follows the ledger, not the disagreeing viewer_balances row.
    assert await live_of(redis, user) == FUNDS_PLANCK
    await credit(db, redis, user, Decimal(1), "adjustment", "more", 12)
    assert (await checker.reconcile_once()).drifted == {}


async def test_a_missing_live_copy_is_no_drift(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=2)
    await redis.delete(key_of(redis, audience.viewers[0][1]))
    await TickWriter(redis).write(TickBatch("w1", 300, (
        Tick(audience.viewers[1][0], audience.viewers[1][1], PRICE_PLANCK),)))
    result = await reconciler(pool, redis).reconcile_once()
    assert result.checked == 1 and result.drifted == {}
