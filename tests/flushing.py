"""Flush every tick batch in Redis to Postgres: one helper for the tests that
check what the billing flush wrote (the flush moves a bounded batch per call)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from billing.flush import Flusher

TEST_FEE = Decimal("0.1")


async def drain(flusher: Flusher) -> None:
    """Flush until no batch is left, then sync what the rounds journaled
    (a sync is bounded: as many as it takes)."""
    while (await flusher.flush_once()).batches:
        pass
    while (await flusher.sync_once()).backlog:
        pass


async def flush_all(database_url: str, redis: aioredis.Redis, fee: Decimal = TEST_FEE) -> None:
    """The same with a flusher of its own, on a pool of its own."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await drain(Flusher(pool, redis, fee))
    finally:
        await pool.close()
