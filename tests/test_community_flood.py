"""The chat flood limit's token bucket against a real Redis: the burst, the
refill rate, and no extra token under concurrent takes (as from two
signaling servers at once)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from signaling.community.flood import BucketLimit, Flooding, TokenBucket


async def _takes(bucket: TokenBucket, who: str, n: int) -> list[float | None]:
    """n concurrent takes: None for a token, the retry delay for a refusal."""
    async def take() -> float | None:
        try:
            await bucket.take(who)
            return None
        except Flooding as flood:
            return flood.retry_after_s
    return list(await asyncio.gather(*[take() for _ in range(n)]))


async def test_concurrent_takes_get_exactly_the_burst(redis: aioredis.Redis) -> None:
    limit = BucketLimit("test", rate_per_s=1.0, burst=5)
    results = await _takes(TokenBucket(redis, limit), "u1", 40)
    assert results.count(None) == 5
    assert all(0 < wait <= 1.0 for wait in results if wait is not None)
    # Another user's bucket is their own.
    assert (await _takes(TokenBucket(redis, limit), "u2", 1)) == [None]


async def test_tokens_come_back_at_the_rate(redis: aioredis.Redis) -> None:
    limit = BucketLimit("refill", rate_per_s=20.0, burst=2)  # a token every 50 ms
    bucket = TokenBucket(redis, limit)
    assert (await _takes(bucket, "u", 3)).count(None) == 2
    with pytest.raises(Flooding) as refused:
        await bucket.take("u")
    wait = refused.value.retry_after_s
    assert 0 < wait <= 0.05 and refused.value.retry_after_header == "1"
    deadline = time.monotonic() + 2
    while True:  # a token is back after `wait`: poll until it is, never past 2 s
        try:
            await bucket.take("u")
            break
        except Flooding:
            assert time.monotonic() < deadline, "no token came back"
            await asyncio.sleep(0.01)
