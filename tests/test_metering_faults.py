"""Exactly once, under fire: a simulated SFU worker writes tick batches while
the real billing process is killed with -9 at random moments among its flushes
(20 times), at each named point of its two steps (record, sync), while Redis
restarts, and while Postgres dies mid-flush. Each test
first shows its fault landed (billing had been flushing; a flush round then
failed, logged as `flush.failed`); at the end every table holds exactly the
ticks written — none lost, none counted twice."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import Stores
from tests.processes import start_role, wait_healthy
from tests.test_metering import Audience, assert_books_balance, batch, make_audience, parts_of
from tests.waiting import wait_until
from vilokanam.config import Settings
from vilokanam.keyspace import pending_count
from vilokanam.metering import TickWriter
from vilokanam.redis_client import redis_from_url
from vilokanam.services.process import ManagedProcess

BATCH_EVERY = 0.03  # many small batches: kills land inside flushes often
MAX_SECONDS = 6000  # a ticker's upper bound (billing starts slowly on a loaded machine)


@dataclasses.dataclass
class Ticker:
    """A simulated SFU worker: one batch per 'second', retried until written."""

    redis_url: str
    audience: Audience
    written: int = 0
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def run(self, seconds: int) -> None:
        redis = redis_from_url(self.redis_url)
        writer = TickWriter(redis)
        try:
            for second in range(seconds):
                if self.stop.is_set():
                    break
                tick_batch = batch("sim-worker", 100_000 + second, self.audience)
                while True:  # the worker keeps a failed batch and retries it
                    try:
                        await writer.write(tick_batch)
                        break
                    except (OSError, aioredis.RedisError):
                        await asyncio.sleep(0.05)  # the worker's retry pace, not a wait
                self.written = second + 1
                await asyncio.sleep(BATCH_EVERY)  # the simulated worker's pace
        finally:
            await redis.aclose()


@pytest.fixture
async def ticking() -> AsyncIterator[Callable[[Ticker, int], asyncio.Future[None]]]:
    """Starts a ticker beside the test and stops it when the test ends, however
    it ends: a failed test's ticker left running wrote its batches, under the
    same batch ids, into the next test's Redis (whose own writes of those ids
    were then no-ops, so its books came out short)."""
    running: list[asyncio.Future[None]] = []

    def start(ticker: Ticker, seconds: int) -> asyncio.Future[None]:
        running.append(asyncio.ensure_future(ticker.run(seconds)))
        return running[-1]

    yield start
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


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


async def settle(redis: aioredis.Redis, db: asyncpg.Connection) -> None:
    """Until billing has flushed everything pending and synced its journal."""
    async def nothing_pending() -> bool:
        return (await pending_count(redis) == 0
                and await db.fetchval("SELECT count(*) FROM tick_journal") == 0)

    await wait_until(nothing_pending, "billing flushing and syncing every pending tick",
                     timeout=15)


@pytest.mark.redis_modes
async def test_kill_9_of_billing_twenty_times_loses_and_doubles_nothing(
        db: asyncpg.Connection, redis: aioredis.Redis, redis_url: str,
        billing: Callable[[], ManagedProcess],
        ticking: Callable[[Ticker, int], asyncio.Future[None]]) -> None:
    audience = await make_audience(db, redis, viewers=5)
    ticker = Ticker(redis_url, audience)
    writing = ticking(ticker, MAX_SECONDS)
    rng = random.Random(20261126)
    pending_at_kill = []
    for _ in range(20):
        applied_before = await applied_batches(db)
        proc = billing()
        # Each billing starts up (most of a second), then flushes: kill it only
        # once it has committed a round of its own, so the kill lands among flushes.
        await wait_until(lambda n=applied_before + 1: applied(db, at_least=n),
                         "the new billing process committing a flush", timeout=15)
        await asyncio.sleep(rng.uniform(0, 0.1))  # the random moment IS the fault
        assert proc.running, proc.tail()
        pending_at_kill.append(await pending_count(redis))
        proc.kill()
    ticker.stop.set()
    await writing
    assert ticker.written < MAX_SECONDS, "the ticker ran out before the kills did"
    # the kills met work in flight: batches written but not yet flushed
    assert sum(1 for pending in pending_at_kill if pending) >= 5, pending_at_kill
    final = billing()
    wait_healthy(final, final_port(final))
    await settle(redis, db)
    await assert_books_balance(db, audience, seconds=ticker.written)
    skipped = await db.fetchval("SELECT count(*) FROM tick_batches")
    # one ledger row per batch (per shard's part, in a cluster): each applied once
    assert skipped == ticker.written * parts_of(redis, audience)


def final_port(proc: ManagedProcess) -> int:
    env = proc.env or {}
    return int(env["VILOKANAM_BILLING_PORT"])


async def applied_batches(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM tick_batches"))


def logged(proc: ManagedProcess, event: str) -> list[str]:
    """The lines of `event` in a role process's log (text format: the event
    name is the word after the logger's)."""
    pattern = re.compile(rf"\s{re.escape(event)}(\s|$)")
    return [line for line in proc.log_path.read_text(errors="replace").splitlines()
            if pattern.search(line)]


def reached(crasher: ManagedProcess, point: str) -> bool:
    assert crasher.running, crasher.tail()
    return f"at {point}" in crasher.tail()


async def applied(db: asyncpg.Connection, at_least: int) -> bool:
    return await applied_batches(db) >= at_least


async def test_redis_restart_mid_run_loses_no_tick(
        db: asyncpg.Connection, redis: aioredis.Redis, stores: Stores,
        billing: Callable[[], ManagedProcess],
        ticking: Callable[[Ticker, int], asyncio.Future[None]]) -> None:
    server = stores.owned_redis()
    audience = await make_audience(db, redis, viewers=4)
    proc = billing()
    wait_healthy(proc, final_port(proc))
    ticker = Ticker(stores.redis_url, audience)
    writing = ticking(ticker, 60)
    await wait_until(lambda: applied(db, at_least=5), "billing flushing the first batches")
    assert not logged(proc, "flush.failed")
    server.stop()  # a clean restart: the append-only file keeps every write
    # the fault landed: a flush round met the dead Redis, and said so
    failures = await wait_until(lambda: logged(proc, "flush.failed"), "a flush.failed line")
    assert "ConnectionError" in failures[0], failures
    assert ticker.written < 60, "the outage came after the last batch: nothing was mid-run"
    server.start()
    await writing
    client = aioredis.Redis.from_url(stores.redis_url)
    try:
        await settle(client, db)
    finally:
        await client.aclose()
    assert proc.running, proc.tail()
    await assert_books_balance(db, audience, seconds=60)


async def test_postgres_killed_mid_flush_loses_no_tick(
        redis: aioredis.Redis, stores: Stores, db: asyncpg.Connection,
        billing: Callable[[], ManagedProcess],
        ticking: Callable[[Ticker, int], asyncio.Future[None]]) -> None:
    postgres = stores.owned_postgres()
    audience = await make_audience(db, redis, viewers=4)
    proc = billing()
    wait_healthy(proc, final_port(proc))
    ticker = Ticker(stores.redis_url, audience)
    writing = ticking(ticker, 60)
    await wait_until(lambda: applied(db, at_least=5), "billing flushing the first batches")
    assert not logged(proc, "flush.failed")
    postgres.kill()  # in the middle of the flushes
    # the fault landed: flush rounds failed against the dead Postgres, while
    # batches kept arriving in Redis
    # The first failure may be the round the kill cut short (asyncpg then
    # reports its protocol state, e.g. InternalClientError); the retries after
    # it cannot connect: refused, lost, or cannot connect now.
    await wait_until(lambda: [line for line in logged(proc, "flush.failed") if "Connect" in line],
                     "a flush.failed line of the dead Postgres")
    await wait_until(lambda: pending_count(redis), "batches pending during the outage")
    assert ticker.written < 60, "the outage came after the last batch: nothing was mid-run"
    postgres.start()
    await writing
    conn = await asyncpg.connect(stores.database_url)
    try:
        await settle(redis, conn)
        assert proc.running, proc.tail()
        await assert_books_balance(conn, audience, seconds=60)
    finally:
        await conn.close()


@pytest.mark.redis_modes
@pytest.mark.parametrize("point", ["recorded", "committed", "applied", "synced"])
async def test_a_flush_killed_at_each_point_of_a_batch_is_exact(
        point: str, db: asyncpg.Connection, redis: aioredis.Redis, stores: Stores,
        redis_url: str, billing: Callable[[], ManagedProcess], tmp_path: Path) -> None:
    """The record step inside its transaction and after its commit but before
    Redis forgot the batches; the sync inside its transaction and after its
    commit but before its refunds — each killed -9, five times."""
    import sys

    audience = await make_audience(db, redis, viewers=3)
    ticker = Ticker(redis_url, audience)
    await ticker.run(40)
    script = str(Path(__file__).with_name("flush_crasher.py"))
    for attempt in range(5):
        crasher = ManagedProcess(
            f"crasher-{attempt}", [sys.executable, script, stores.database_url,
                                   redis_url, point],
            log_path=tmp_path / f"crasher-{attempt}.log")
        crasher.start()
        await wait_until(lambda proc=crasher: reached(proc, point),
                         f"the flusher reaching {point}", timeout=20, interval=0.02)
        crasher.kill()
    # Only a commit survives a kill: of the record step (tick_batches and the
    # journal), of the sync (the totals, out of the journal).
    recorded = await db.fetchval("SELECT count(*) FROM tick_batches")
    assert (recorded > 0) == (point != "recorded")
    synced = await db.fetchval("SELECT COALESCE(sum(total_ticks), 0) FROM stream_viewers "
                               "WHERE stream_id = $1", audience.stream_id)
    assert (synced > 0) == (point == "synced")
    journaled = await db.fetchval("SELECT count(*) FROM tick_journal")
    assert (journaled > 0) == (point in ("committed", "applied"))
    proc = billing()
    wait_healthy(proc, final_port(proc))
    await settle(redis, db)
    await assert_books_balance(db, audience, seconds=40)
