"""A token bucket per user in Redis, so every signaling server shares it:
chat allows RATE messages a second with bursts of BURST. One Lua script
takes a token or says how long until one is back; Redis runs it atomically,
so concurrent messages of one user on two servers cannot both take the last
token. Time is Redis's own clock (TIME), so servers whose clocks differ
cannot hand out extra tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS[1] bucket; ARGV: rate per ms, burst. The bucket is a hash of tokens
# (float) and the time it was last filled; it expires once full again.
_TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return wait
"""


@dataclass(frozen=True)
class BucketLimit:
    name: str
    rate_per_s: float
    burst: int


CHAT_LIMIT = BucketLimit("chat", rate_per_s=1.0, burst=5)


class Flooding(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"retry after {retry_after_s:.3f} s")
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Retry-After is whole seconds, rounded up (never 0 for a refusal)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class TokenBucket:
    def __init__(self, redis: aioredis.Redis, limit: BucketLimit) -> None:
        self._redis = redis
        self._limit = limit
        self._script = redis.register_script(_TAKE)

    async def take(self, who: str) -> None:
        """Take one token for `who`, or raise Flooding."""
        limit = self._limit
        wait_ms = await self._script(keys=[f"vk:bucket:{limit.name}:{who}"],
                                     args=[limit.rate_per_s / 1000, limit.burst])
        if int(wait_ms) > 0:
            raise Flooding(int(wait_ms) / 1000)
