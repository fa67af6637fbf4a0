"""The tick path's Redis key names, for a standalone Redis and for a Redis
Cluster -- built here, once, by the same functions (docs/metering.md,
"Redis Cluster").

A Lua script or multi-key command in a cluster must keep all its keys in one
hash slot. The tick path's atomic step is "write a batch, index it as
pending, charge its viewers' live balances", so a viewer's live balance, the
batches that charge it and the pending index that lists them share a **shard**:
the hash tag `{t<n>}`, n = crc32(user id) mod `CLUSTER_SHARDS`. A worker's
second becomes one sub-batch per shard it has viewers in; the flush consumes
every shard's pending index.

On a standalone Redis there is one shard and no tag, so every name is exactly
the one docs/metering.md has always listed (`vk:bal:<user>`,
`vk:ticks:pending`, `vk:ticks:batch:<worker>:<second>`)."""

from __future__ import annotations

import functools
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

# Fixed, not a setting: a key's shard is part of its name, so changing this
# would orphan every live balance and pending batch. 16 tags spread over the
# slots of any small cluster; a worker's second is at most 16 sub-batches.
CLUSTER_SHARDS = 16

BALANCE_PREFIX = "vk:bal:"
PENDING_PREFIX = "vk:ticks:pending"
BATCH_PREFIX = "vk:ticks:batch:"


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


@functools.lru_cache(maxsize=1 << 18)
def shard_of(user_id: str) -> int:
    """Cached: a worker splits every second's batch by it, mostly the same viewers."""
    return zlib.crc32(user_id.encode()) % CLUSTER_SHARDS


@dataclass(frozen=True)
class TickKeys:
    """Key names for one mode. `shard` is None on a standalone Redis (one
    shard, no tag) and 0..CLUSTER_SHARDS-1 in a cluster."""

    cluster: bool

    @property
    def shards(self) -> list[int | None]:
        return list(range(CLUSTER_SHARDS)) if self.cluster else [None]

    def shard(self, user_id: str) -> int | None:
        return shard_of(user_id) if self.cluster else None

    @staticmethod
    def tag(shard: int | None) -> str:
        return "" if shard is None else f"{{t{shard}}}"

    def balance_prefix(self, shard: int | None) -> str:
        return f"{BALANCE_PREFIX}{self.tag(shard)}"

    def balance(self, user_id: str) -> str:
        return f"{self.balance_prefix(self.shard(user_id))}{user_id}"

    def pending(self, shard: int | None) -> str:
        return f"{PENDING_PREFIX}{self.tag(shard)}"

    def batch_id(self, base_id: str, shard: int | None) -> str:
        """A sub-batch's id: the batch's `<worker>:<second>` plus its tag, so
        its key lands in its shard's slot and its tick_batches row is its own."""
        return f"{base_id}{self.tag(shard)}"

    def group(self, user_ids: Iterable[str]) -> dict[int | None, list[str]]:
        """Users by shard, for one script or transaction per shard."""
        groups: dict[int | None, list[str]] = defaultdict(list)
        for user in user_ids:
            groups[self.shard(user)].append(user)
        return dict(groups)

    def user_of_balance(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        user = text.removeprefix(BALANCE_PREFIX)
        if self.cluster and user.startswith("{"):
            user = user.split("}", 1)[1]
        return user


STANDALONE = TickKeys(cluster=False)


def tick_keys(redis: Any) -> TickKeys:
    """The layout for the client's mode: the client's type says which."""
    return TickKeys(cluster=is_cluster(redis))


def batch_key(batch_id: str) -> str:
    return f"{BATCH_PREFIX}{batch_id}"


def batch_id_of(key: str | bytes) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text.removeprefix(BATCH_PREFIX)


async def pending_count(redis: Any) -> int:
    """Batches waiting for billing, over every shard's pending index."""
    keys = tick_keys(redis)
    return sum([int(await redis.zcard(keys.pending(s))) for s in keys.shards])
