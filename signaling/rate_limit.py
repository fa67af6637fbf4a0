"""Limits on failed credential attempts, shared by every signaling server
through Redis, and the Prometheus counter of refused credentials.

A fixed window per remote address: the first failure opens a window of
`window_s`; after `max_failures` failures in it the address is refused
(`rate_limited`) until the window ends, whatever it sends. Callers check
`is_limited` BEFORE comparing a key, so a limited client learns nothing more
about it, correct key or not."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Counter

# kind: stream_key (websocket publish, WHIP) or token (viewer tokens).
AUTH_FAILURES = Counter("vilokanam_auth_failures", "Refused credentials, by kind", ["kind"])


@dataclass(frozen=True)
class FailureLimit:
    kind: str
    max_failures: int
    window_s: int


STREAM_KEY_LIMIT = FailureLimit("stream_key", max_failures=5, window_s=60)


class FailureLimiter:
    def __init__(self, redis: aioredis.Redis, limit: FailureLimit) -> None:
        self._redis = redis
        self._limit = limit

    def _key(self, address: str) -> str:
        return f"vk:ratelimit:{self._limit.kind}:{address}"

    async def is_limited(self, address: str) -> bool:
        failures = await self._redis.get(self._key(address))
        return failures is not None and int(failures) >= self._limit.max_failures

    async def record_failure(self, address: str) -> int:
        """Counts one failure (in Redis and in the Prometheus counter) and
        returns the failures in the current window."""
        AUTH_FAILURES.labels(kind=self._limit.kind).inc()
        key = self._key(address)
        # SET NX EX opens the window on the first failure only; INCR keeps the TTL.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=self._limit.window_s, nx=True)
            pipe.incr(key)
            _, failures = await pipe.execute()
        return int(failures)
