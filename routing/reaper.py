"""The reaper: ends the streams of SFU workers that died without saying so
(kill -9, a lost machine). A worker that stops cleanly ends its own streams;
one that dies leaves them 'live' in Postgres and pinned in Redis, and nobody
else would ever notice (docs/architecture.md, "Dead workers").

Every signaling server runs one, every `REAP_EVERY_S`; a Redis lock (SET NX
PX) lets one of them work at a time. A worker is dead when its id is still in
`vk:sfu:workers` but its heartbeat record has expired (3 s after its last
beat) and it is not draining: a worker ending its own streams after SIGTERM
holds `draining_key` for the drain's bound, and one killed mid-drain is
reaped once that mark runs out. It is reaped once it has been dead for
`grace_s` (the publisher's reconnect grace: a publisher that reconnects
meanwhile is placed on another worker, and the edges that relayed the stream
resume from there). Then its viewers (on any stream: it may have been an edge)
go inactive, and for each stream still pinned to it: end the rows in Postgres
(the worker's own SQL, `end_stream_rows`), publish `stream_ended` so
websockets watching it are told, unpin it. Then the id leaves the set. Ticks
the worker wrote before it died are in Redis already; billing flushes them as
usual."""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter

import asyncpg
import redis.asyncio as aioredis

from routing.channels import EventBus, StreamEvent
from routing.registry import (
    ROUTING_PREFIX,
    WORKERS_KEY,
    draining_key,
    stream_worker_key,
    unplace,
    worker_key,
    worker_streams_key,
)
from vilokanam.logs import log_event
from vilokanam.stream_rows import end_stream_rows
from vilokanam.tasks import run_forever

log = logging.getLogger(__name__)

REAP_EVERY_S = 2.0
# The publisher's reconnect grace (sfu/streams.py RECONNECT_GRACE; routing
# must not import sfu): the time a dead worker's streams wait for their
# publisher to come back elsewhere.
REAP_GRACE_S = 10.0
LOCK_KEY = f"{ROUTING_PREFIX}reaper:lock"
# Longer than a round normally takes, so two reapers rarely overlap; short
# enough that a signaling server killed mid-round blocks the others briefly.
# (An overlap is harmless: every step is idempotent.)
LOCK_TTL_MS = 10_000
_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def dead_since_key(worker_id: str) -> str:
    """When a reaper first saw the worker dead (ms), so the grace is counted
    from then whichever signaling server reaps."""
    return f"{ROUTING_PREFIX}worker:{worker_id}:dead_since"


async def dead_workers(redis: aioredis.Redis, grace_s: float = 0.0) -> list[str]:
    """Registered workers whose heartbeat record has expired, at least
    `grace_s` ago (as first seen by a reaper, not seen alive since), unless
    they are draining (ending their own streams): a draining mark that
    expired with the worker's id still registered is a worker killed
    mid-drain."""
    ids = sorted(_text(member) for member in await redis.smembers(WORKERS_KEY))
    if not ids:
        return []
    keys = [worker_key(worker_id) for worker_id in ids]
    marks = [draining_key(worker_id) for worker_id in ids]
    found = await redis.mget(keys + marks)
    records, draining = found[:len(ids)], found[len(ids):]
    dead = [worker_id for worker_id, raw, mark in zip(ids, records, draining, strict=True)
            if raw is None and mark is None]
    alive = [worker_id for worker_id, raw in zip(ids, records, strict=True) if raw is not None]
    if alive:
        # The grace counts a death that lasts: a worker seen alive again (its
        # record expired while Redis was down, say) is not dead since then.
        # Left in place, the first sighting would make its next brief absence
        # -- the next Redis restart -- reap a healthy worker at once
        # (the chaos run's Redis rounds: streams ended, viewers unbilled).
        await redis.delete(*(dead_since_key(worker_id) for worker_id in alive))
    now_ms = int(time.time() * 1000)
    due = []
    for worker_id in dead:
        key = dead_since_key(worker_id)
        # A day is far beyond any grace: the key only outlives a reaped id briefly.
        await redis.set(key, now_ms, nx=True, px=86_400_000)
        since = int(_text(await redis.get(key) or str(now_ms)))
        if now_ms - since >= grace_s * 1000:
            due.append(worker_id)
    return due


async def deactivate_viewers(pg: asyncpg.Pool, worker_id: str) -> int:
    """The dead worker's viewers are gone: their rows inactive (billing then
    takes no tick after it died), each stream's audience down by as many."""
    async with pg.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() "
            "WHERE sfu_worker_id = $1 AND is_active RETURNING stream_id", worker_id)
        gone = Counter(row["stream_id"] for row in rows)
        for stream_id in sorted(gone):
            await conn.execute(
                "UPDATE streams SET viewer_count = GREATEST(COALESCE(viewer_count, 0) - $2, 0) "
                "WHERE id = $1", stream_id, gone[stream_id])
    return len(rows)


async def end_orphan(redis: aioredis.Redis, pg: asyncpg.Pool, stream_id: str,
                     worker_id: str) -> None:
    """End one stream its dead worker left behind, unless it has since been
    placed elsewhere (then it is someone else's and only leaves this set)."""
    pinned = await redis.get(stream_worker_key(stream_id))
    if pinned is not None and _text(pinned) == worker_id:
        events = EventBus(redis, worker_id)
        for session_id in await end_stream_rows(pg, stream_id):
            await events.stream(stream_id, StreamEvent.ENDED, session_id=session_id)
        log_event(log, "reaper.stream_ended", stream_id=stream_id, worker_id=worker_id)
    await unplace(redis, stream_id, worker_id)


async def reap_worker(redis: aioredis.Redis, pg: asyncpg.Pool, worker_id: str) -> None:
    viewers = await deactivate_viewers(pg, worker_id)
    streams = [_text(s) for s in await redis.smembers(worker_streams_key(worker_id))]
    for stream_id in streams:
        await end_orphan(redis, pg, stream_id, worker_id)
    # Only now: an id dropped earlier would leave its streams unfindable
    # should this round fail half-way.
    await redis.srem(WORKERS_KEY, worker_id)
    await redis.delete(dead_since_key(worker_id))
    log_event(log, "reaper.worker_reaped", logging.WARNING, worker_id=worker_id,
              streams=len(streams), viewers=viewers)


async def reap_once(redis: aioredis.Redis, pg: asyncpg.Pool,
                    grace_s: float = 0.0) -> list[str]:
    """One round, if this server gets the lock; returns the workers reaped
    (dead for at least `grace_s`)."""
    token = secrets.token_hex(8)
    if not await redis.set(LOCK_KEY, token, nx=True, px=LOCK_TTL_MS):
        return []  # another signaling server is reaping
    try:
        dead = await dead_workers(redis, grace_s)
        for worker_id in dead:
            await reap_worker(redis, pg, worker_id)
        return dead
    finally:
        await redis.eval(_RELEASE_IF_OURS, 1, LOCK_KEY, token)


async def run_reaper(redis: aioredis.Redis, pg: asyncpg.Pool,
                     every_s: float = REAP_EVERY_S, grace_s: float = REAP_GRACE_S) -> None:
    """Reap every `every_s` until cancelled; a store outage never ends it."""
    async def step() -> None:
        await reap_once(redis, pg, grace_s)
    await run_forever("reaper", step, every=every_s)
