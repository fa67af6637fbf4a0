"""The SFU worker registry (docs/architecture.md, "Worker registry").

A worker announces itself every second: `SADD vk:sfu:workers <id>` and
`SET vk:sfu:worker:<id> <record> PX 3000`. A worker that dies stops
refreshing its record, which expires 3 s later and so leaves placement; a
worker that stops cleanly deletes it at once. The key names and the record are
defined here, once: placement (routing/placement.py) reads what this module
writes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from vilokanam.logs import log_event
from vilokanam.tasks import run_forever

log = logging.getLogger(__name__)

# Every routing key carries one hash tag, so on a Redis Cluster they all live
# in one slot: placement's scripts and the heartbeat's transactions span a
# worker's and a stream's keys, which a cluster allows only within a slot.
# Routing is a few commands per join and per worker-second: one node carries it.
ROUTING_PREFIX = "vk:{sfu}:"
WORKERS_KEY = f"{ROUTING_PREFIX}workers"
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_MS = 3000


def worker_key(worker_id: str) -> str:
    return f"{ROUTING_PREFIX}worker:{worker_id}"


def stream_worker_key(stream_id: str) -> str:
    """Which worker a stream lives on; set by placement, deleted by the worker
    when the stream ends."""
    return f"{ROUTING_PREFIX}stream:{stream_id}:worker"


def draining_key(worker_id: str) -> str:
    """Set while the worker drains (its record already gone): the reaper
    leaves the worker's streams to it until the mark expires. A worker killed
    mid-drain (kill -9 after SIGTERM) stops nothing else, so the mark running
    out is what hands its unended streams to the reaper."""
    return f"{ROUTING_PREFIX}worker:{worker_id}:draining"


# A drain ends within 10 s (docs/architecture.md, "Draining"); the mark
# outlives that with room to spare, so a slow drain is not reaped under it.
DRAIN_MARK_MS = 15_000


def stream_edges_key(stream_id: str) -> str:
    """The workers that relay a stream from its origin to their own viewers
    (the cascade); set by placement, each edge leaves it when it stops
    carrying the stream (`unplace`)."""
    return f"{ROUTING_PREFIX}stream:{stream_id}:edges"


def worker_streams_key(worker_id: str) -> str:
    """The streams pinned to a worker, kept beside the pins so that whoever
    reaps a dead worker finds its streams without scanning every pin."""
    return f"{ROUTING_PREFIX}worker:{worker_id}:streams"


# Undo a pin only if it is still this worker's: a stream that has since moved
# (its worker was reaped, the stream placed again) keeps its new pin. The
# worker leaves the stream's edges too (it was its origin or one of them).
_UNPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
redis.call('SREM', KEYS[3], ARGV[1])
return redis.call('SREM', KEYS[2], ARGV[2])
"""


async def unplace(redis: aioredis.Redis, stream_id: str, worker_id: str) -> None:
    """Unpin `stream_id` from `worker_id` (if pinned there), drop the worker
    from the stream's edges and the stream from the worker's stream set,
    atomically."""
    await redis.eval(_UNPLACE, 3, stream_worker_key(stream_id), worker_streams_key(worker_id),
                     stream_edges_key(stream_id), worker_id, stream_id)


def new_worker_id() -> str:
    """Unique per process, and readable in logs: host, pid, a random tail."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerRecord:
    """The JSON a worker keeps under `vk:sfu:worker:<id>`."""

    worker_id: str
    control_url: str
    capacity: int
    load: int  # peer connections open now
    streams: int
    heartbeat_ms: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerRecord:
        """Raises ValueError for anything that is not a well-formed record."""
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("worker record is not a JSON object")
        try:
            record = cls(str(data["worker_id"]), str(data["control_url"]),
                         _count(data["capacity"]), _count(data["load"]),
                         _count(data["streams"]), _count(data["heartbeat_ms"]))
        except KeyError as missing:
            raise ValueError(f"worker record lacks {missing}") from None
        if record.capacity < 1:
            raise ValueError("worker capacity must be at least 1")
        return record

    @property
    def has_room(self) -> bool:
        return self.load < self.capacity

    @property
    def utilisation(self) -> float:
        return self.load / self.capacity


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


class WorkerRegistration:
    """Keeps one worker in the registry while it runs.

    `await start()` writes the record once (so the worker is placeable as soon
    as it serves, and an unreachable Redis fails the start loudly), then
    refreshes it every `interval_s` from a task it owns. `await stop()` cancels
    that task and deletes the record: the worker leaves placement at once
    instead of 3 s later.

    Draining is two steps: `begin_drain()` first thing (the record goes, so
    no new placement; the id stays registered and a draining mark is set, so
    a worker killed before it ends its streams is still found by the reaper
    once the mark expires), then `stop()` once every stream is ended.
    """

    def __init__(self, redis: aioredis.Redis, *, worker_id: str, control_url: str,
                 capacity: int, load_fn: Callable[[], int], streams_fn: Callable[[], int],
                 interval_s: float = HEARTBEAT_INTERVAL_S,
                 ttl_ms: int = HEARTBEAT_TTL_MS,
                 on_reaped: Callable[[], Awaitable[None]] | None = None) -> None:
        self.worker_id = worker_id
        self._redis = redis
        self._control_url = control_url
        self._capacity = capacity
        self._load_fn = load_fn
        self._streams_fn = streams_fn
        self._interval_s = interval_s
        self._ttl_ms = ttl_ms
        self._on_reaped = on_reaped
        self._beaten = False
        self._reaped = False  # taken for dead, and `on_reaped` has not yet succeeded
        self._task: asyncio.Task[None] | None = None

    def record(self) -> WorkerRecord:
        return WorkerRecord(self.worker_id, self._control_url, self._capacity,
                            self._load_fn(), self._streams_fn(), int(time.time() * 1000))

    async def beat(self) -> None:
        # One transaction, so a reader never sees the id without its record
        # because of us (a record that expired is another matter).
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(WORKERS_KEY, self.worker_id)
            pipe.set(worker_key(self.worker_id), self.record().to_json(), px=self._ttl_ms)
            added, _ = await pipe.execute()
        # Our id back in the set after the first beat: a reaper took us for
        # dead (stalled or cut off from Redis past the TTL and its grace) and
        # ended our streams and viewers in Postgres. Until `on_reaped` has
        # dealt with that, every beat tries again.
        self._reaped = self._reaped or bool(added and self._beaten)
        self._beaten = True
        if self._reaped and self._on_reaped is not None:
            log_event(log, "sfu.reaped_while_alive", logging.WARNING, worker_id=self.worker_id)
            await self._on_reaped()
            self._reaped = False

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("worker registration already started")
        await self.beat()
        self._task = asyncio.create_task(self._run(), name=f"sfu-registry-{self.worker_id}")
        log_event(log, "sfu.registered", worker_id=self.worker_id,
                  control_url=self._control_url, capacity=self._capacity)

    async def _stop_beating(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def begin_drain(self, mark_ms: int = DRAIN_MARK_MS) -> None:
        """Out of placement at once, still findable by the reaper."""
        await self._stop_beating()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(draining_key(self.worker_id), "1", px=mark_ms)
                pipe.delete(worker_key(self.worker_id))
                await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            # The record expires on its own within the TTL; without the mark
            # the reaper may end our streams while we do: both are idempotent.
            log_event(log, "sfu.drain_mark_failed", logging.WARNING,
                      worker_id=self.worker_id, error=str(exc))
            return
        log_event(log, "sfu.draining", worker_id=self.worker_id)

    async def stop(self) -> None:
        """Leave the registry for good (after a drain: its streams are ended)."""
        await self._stop_beating()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(worker_key(self.worker_id))
                pipe.srem(WORKERS_KEY, self.worker_id)
                pipe.delete(draining_key(self.worker_id))
                await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            # The record still expires on its own within the TTL.
            log_event(log, "sfu.deregister_failed", logging.WARNING,
                      worker_id=self.worker_id, error=str(exc))
            return
        log_event(log, "sfu.deregistered", worker_id=self.worker_id)

    async def _run(self) -> None:
        # The heartbeat must outlive any one failure: a Redis restart must not
        # take the worker out of placement for longer than it lasts.
        await run_forever("sfu.heartbeat", self.beat, every=self._interval_s,
                          failure_event="sfu.heartbeat_failed")
