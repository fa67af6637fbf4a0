"""Exactly once, under fire: a simulated SFU worker writes tick batches while
the real billing process is killed with -9 at random moments (20 times), while
Redis restarts, and while Postgres dies mid-flush. At the end every table
holds exactly the ticks written — none lost, none counted twice."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import Stores
from tests.processes import start_role, wait_healthy
from tests.test_metering import Audience, assert_books_balance, batch, make_audience
from vilokanam.config import Settings
from vilokanam.metering import PENDING_KEY, TickWriter
from vilokanam.services.process import ManagedProcess

BATCH_EVERY = 0.03  # many small batches: kills land inside flushes often


@dataclasses.dataclass
class Ticker:
    """A simulated SFU worker: one batch per 'second', retried until written."""

    redis_url: str
    audience: Audience
    written: int = 0
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def run(self, seconds: int) -> None:
        redis = aioredis.Redis.from_url(self.redis_url)
        writer = TickWriter(redis)
        try:
            for second in range(seconds):
                tick_batch = batch("sim-worker", 100_000 + second, self.audience)
                while True:  # the worker keeps a failed batch and retries it
                    try:
                        await writer.write(tick_batch)
                        break
                    except (OSError, aioredis.RedisError):
                        await asyncio.sleep(0.05)
                self.written = second + 1
                await asyncio.sleep(BATCH_EVERY)
        finally:
            await redis.aclose()


@pytest.fixture
def billing_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, flush_interval=Decimal("0.05"))


@pytest.fixture
async def billing(billing_settings: Settings,
                  tmp_path: Path) -> AsyncIterator[Callable[[], ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        proc = start_role(billing_settings, "billing", tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


async def settle(redis: aioredis.Redis, alive: Callable[[], Awaitable[None]]) -> None:
    """Until billing has flushed everything pending."""
    for _ in range(300):
        await alive()
        if await redis.zcard(PENDING_KEY) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("ticks were still pending after 15 s")


async def test_kill_9_of_billing_twenty_times_loses_and_doubles_nothing(
        db: asyncpg.Connection, redis: aioredis.Redis, stores: Stores,
        billing: Callable[[], ManagedProcess]) -> None:
    audience = await make_audience(db, redis, viewers=5)
    ticker = Ticker(stores.redis_url, audience)
    seconds = 160
    writing = asyncio.ensure_future(ticker.run(seconds))
    rng = random.Random(20261126)
    for _ in range(20):
        proc = billing()
        await asyncio.sleep(rng.uniform(0.15, 0.6))  # start-up takes ~0.1 s; then flushes
        proc.kill()
    await writing
    final = billing()
    wait_healthy(final, final_port(final))
    await settle(redis, _noop)
    await assert_books_balance(db, audience, seconds=seconds)
    skipped = await db.fetchval("SELECT count(*) FROM tick_batches")
    assert skipped == seconds  # one ledger row per batch: each applied once


def final_port(proc: ManagedProcess) -> int:
    env = proc.env or {}
    return int(env["VILOKANAM_BILLING_PORT"])


async def _noop() -> None:
    return None


async def test_redis_restart_mid_run_loses_no_tick(
        db: asyncpg.Connection, redis: aioredis.Redis, stores: Stores,
        billing: Callable[[], ManagedProcess]) -> None:
    server = stores.owned_redis()
    audience = await make_audience(db, redis, viewers=4)
    proc = billing()
    wait_healthy(proc, final_port(proc))
    ticker = Ticker(stores.redis_url, audience)
    writing = asyncio.ensure_future(ticker.run(60))
    await asyncio.sleep(0.7)
    server.stop()  # a clean restart: the append-only file keeps every write
    await asyncio.sleep(0.5)
    server.start()
    await writing
    client = aioredis.Redis.from_url(stores.redis_url)
    try:
        await settle(client, _noop)
    finally:
        await client.aclose()
    assert proc.running, proc.tail()
    await assert_books_balance(db, audience, seconds=60)


async def test_postgres_killed_mid_flush_loses_no_tick(
        redis: aioredis.Redis, stores: Stores, db: asyncpg.Connection,
        billing: Callable[[], ManagedProcess]) -> None:
    postgres = stores.owned_postgres()
    audience = await make_audience(db, redis, viewers=4)
    proc = billing()
    wait_healthy(proc, final_port(proc))
    ticker = Ticker(stores.redis_url, audience)
    writing = asyncio.ensure_future(ticker.run(60))
    await asyncio.sleep(0.8)
    postgres.kill()  # in the middle of the flushes
    await asyncio.sleep(1.0)
    postgres.start()
    await writing
    await settle(redis, _noop)
    assert proc.running, proc.tail()
    conn = await asyncpg.connect(stores.database_url)
    try:
        await assert_books_balance(conn, audience, seconds=60)
    finally:
        await conn.close()


@pytest.mark.parametrize("point", ["recorded", "applied", "committed"])
async def test_a_flush_killed_at_each_point_of_a_batch_is_exact(
        point: str, db: asyncpg.Connection, redis: aioredis.Redis, stores: Stores,
        billing: Callable[[], ManagedProcess], tmp_path: Path) -> None:
    """Inside the transaction (after the batch ids, after the updates) and after
    the commit but before Redis forgot the batches — each killed -9, five times."""
    import sys

    audience = await make_audience(db, redis, viewers=3)
    ticker = Ticker(stores.redis_url, audience)
    await ticker.run(40)
    script = str(Path(__file__).with_name("flush_crasher.py"))
    for attempt in range(5):
        crasher = ManagedProcess(
            f"crasher-{attempt}", [sys.executable, script, stores.database_url,
                                   stores.redis_url, point],
            log_path=tmp_path / f"crasher-{attempt}.log")
        crasher.start()
        for _ in range(200):
            if f"at {point}" in crasher.tail():
                break
            assert crasher.running, crasher.tail()
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the flusher never reached {point}")
        crasher.kill()
    applied = await db.fetchval("SELECT count(*) FROM tick_batches")
    assert (applied > 0) == (point == "committed")  # only a commit survives a kill
    proc = billing()
    wait_healthy(proc, final_port(proc))
    await settle(redis, _noop)
    await assert_books_balance(db, audience, seconds=40)
