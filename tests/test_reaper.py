"""The reaper on a real Postgres and Redis: a dead worker's streams end in
Postgres and Redis, a stream that moved to another worker is left alone, one
reaper works at a time, and a worker killed during its own drain is reaped
once its draining mark runs out."""

from __future__ import annotations

import json
import time
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from routing.channels import stream_channel
from routing.placement import place_stream, stream_worker
from routing.reaper import LOCK_KEY, dead_since_key, reap_once
from routing.registry import (
    WORKERS_KEY,
    WorkerRegistration,
    draining_key,
    stream_worker_key,
    worker_key,
    worker_streams_key,
)
from signaling.stream_keys import hash_stream_key, new_stream_key
from tests.test_placement import expired, register
from tests.waiting import wait_until


async def live_stream(db: asyncpg.Connection) -> tuple[str, str]:
    """A live stream with an open session and an active viewer: (stream, session)."""
    user = await db.fetchval("INSERT INTO users(account_id) VALUES ($1) RETURNING id",
                             f"5Reap{uuid.uuid4().hex[:16]}")
    stream = await db.fetchval(
        "INSERT INTO streams(creator_id, title, stream_key_hash, status, start_time) "
        "VALUES ($1, 'reap', $2, 'live', now()) RETURNING id::text",
        user, hash_stream_key(new_stream_key()))
    session = await db.fetchval(
        "INSERT INTO stream_sessions (stream_id, sfu_server_url, signaling_server_url, "
        "start_time) VALUES ($1, 'http://sfu', 'http://sig', now()) RETURNING id::text", stream)
    await db.execute(
        "INSERT INTO stream_viewers (stream_id, viewer_id, join_time, is_active, session_id, "
        "price_per_second) VALUES ($1, $2, now(), TRUE, $3, 1)", stream, user, session)
    return str(stream), str(session)


@pytest.mark.redis_modes  # its scripts and transactions in one cluster slot
async def test_a_dead_workers_streams_are_ended(db: asyncpg.Connection, redis: aioredis.Redis,
                                                pool: asyncpg.Pool) -> None:
    await register(redis, "doomed")
    stream, session = await live_stream(db)
    await place_stream(redis, stream)
    # It dies only now: a 50 ms record from the start could expire before the
    # placement on a loaded machine.
    await redis.pexpire(worker_key("doomed"), 50)
    await wait_until(lambda: expired(redis, "doomed"), "the 50 ms heartbeat record expiring")

    pubsub = redis.pubsub()
    await pubsub.subscribe(stream_channel(stream))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    assert await reap_once(redis, pool) == ["doomed"]

    row = await db.fetchrow("SELECT status, end_time FROM streams WHERE id = $1::uuid", stream)
    assert row["status"] == "ended" and row["end_time"] is not None
    assert await db.fetchval("SELECT end_time FROM stream_sessions WHERE id = $1::uuid",
                             session) is not None
    assert not await db.fetchval("SELECT bool_or(is_active) FROM stream_viewers")
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    await pubsub.aclose()
    assert message is not None and json.loads(message["data"]) == {
        "type": "stream_ended", "stream_id": stream, "session_id": session}
    assert await redis.get(stream_worker_key(stream)) is None
    assert not await redis.exists(worker_streams_key("doomed"))
    assert not await redis.sismember(WORKERS_KEY, "doomed")


async def test_a_stream_that_moved_on_is_left_alone(db: asyncpg.Connection,
                                                    redis: aioredis.Redis,
                                                    pool: asyncpg.Pool) -> None:
    stream, _ = await live_stream(db)
    await redis.sadd(WORKERS_KEY, "doomed")  # registered, its record long gone
    await redis.sadd(worker_streams_key("doomed"), stream)
    await redis.set(stream_worker_key(stream), "elsewhere")
    assert await reap_once(redis, pool) == ["doomed"]
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid", stream) == "live"
    assert await redis.get(stream_worker_key(stream)) == b"elsewhere"


@pytest.mark.redis_modes
async def test_one_reaper_at_a_time(db: asyncpg.Connection, redis: aioredis.Redis,
                                    pool: asyncpg.Pool) -> None:
    await redis.sadd(WORKERS_KEY, "doomed")
    await redis.set(LOCK_KEY, "another-signaling-server", px=5000)
    assert await reap_once(redis, pool) == []
    assert await redis.sismember(WORKERS_KEY, "doomed")
    await redis.delete(LOCK_KEY)
    assert await reap_once(redis, pool) == ["doomed"]
    assert not await redis.exists(LOCK_KEY)  # released after the round


@pytest.mark.redis_modes
async def test_a_worker_killed_during_its_drain_is_reaped_when_its_mark_runs_out(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """SIGTERM, then kill -9 before the worker ended its streams: the drain's
    first step (out of placement) ran, its last (leaving the registry, after
    every stream ended) never did."""
    registration = WorkerRegistration(
        redis, worker_id="drainer", control_url="http://127.0.0.1:1", capacity=10,
        load_fn=lambda: 1, streams_fn=lambda: 1)
    await registration.start()
    stream, _ = await live_stream(db)
    await place_stream(redis, stream)
    await registration.begin_drain(mark_ms=400)
    # ... and the process dies here: nothing else of the drain runs.

    # The fault landed: out of placement, its stream still live and pinned.
    assert await redis.get(worker_key("drainer")) is None
    assert await stream_worker(redis, stream) is None
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid", stream) == "live"
    # While the mark holds, the drain is the worker's own business.
    assert await reap_once(redis, pool) == []
    assert await redis.sismember(WORKERS_KEY, "drainer")  # still findable
    await wait_until(lambda: _mark_gone(redis, "drainer"), "the 400 ms drain mark expiring")
    assert await reap_once(redis, pool) == ["drainer"]
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid", stream) == "ended"
    assert not await db.fetchval("SELECT bool_or(is_active) FROM stream_viewers "
                                 "WHERE stream_id = $1::uuid", stream)
    assert await redis.get(stream_worker_key(stream)) is None
    assert not await redis.sismember(WORKERS_KEY, "drainer")


async def test_a_drain_that_finishes_leaves_nothing_to_reap(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    registration = WorkerRegistration(
        redis, worker_id="tidy", control_url="http://127.0.0.1:1", capacity=10,
        load_fn=lambda: 0, streams_fn=lambda: 0)
    await registration.start()
    await registration.begin_drain()
    await registration.stop()
    assert not await redis.sismember(WORKERS_KEY, "tidy")
    assert await _mark_gone(redis, "tidy")
    assert await reap_once(redis, pool) == []


async def _mark_gone(redis: aioredis.Redis, worker_id: str) -> bool:
    return not await redis.exists(draining_key(worker_id))


async def test_a_dead_worker_waits_out_the_grace_and_its_edge_viewers_go_inactive(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """A dead edge: its streams live on elsewhere, only its viewers go (after
    the grace a publisher has to reconnect), and the audience falls by them."""
    from routing.registry import stream_edges_key

    stream, _ = await live_stream(db)
    await db.execute("UPDATE stream_viewers SET sfu_worker_id = 'edge'")
    await db.execute("UPDATE streams SET viewer_count = 2 WHERE id = $1::uuid", stream)
    await redis.set(stream_worker_key(stream), "origin")
    await redis.sadd(WORKERS_KEY, "edge")  # registered, its record gone
    await redis.sadd(worker_streams_key("edge"), stream)
    await redis.sadd(stream_edges_key(stream), "edge")
    assert await reap_once(redis, pool, grace_s=60) == []  # first seen dead now
    assert await db.fetchval("SELECT bool_and(is_active) FROM stream_viewers")
    assert await reap_once(redis, pool, grace_s=0) == ["edge"]
    assert not await db.fetchval("SELECT bool_or(is_active) FROM stream_viewers")
    assert await db.fetchval("SELECT viewer_count FROM streams WHERE id = $1::uuid",
                             stream) == 1
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid", stream) == "live"
    assert not await redis.sismember(stream_edges_key(stream), "edge")
    assert await redis.get(stream_worker_key(stream)) == b"origin"


async def test_a_worker_seen_alive_again_starts_its_grace_afresh(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """A worker whose record expired briefly (Redis down longer than its TTL)
    and came back is not dead since that first sighting: its next brief
    absence must wait out a whole grace, not be reaped at once."""
    stream, _ = await live_stream(db)
    await db.execute("UPDATE stream_viewers SET sfu_worker_id = 'flaky'")
    await redis.sadd(WORKERS_KEY, "flaky")  # registered, its record gone
    await redis.set(stream_worker_key(stream), "flaky")
    await redis.sadd(worker_streams_key("flaky"), stream)
    assert await reap_once(redis, pool, grace_s=60) == []  # first seen dead now
    # ... two minutes ago, as far as the mark can tell:
    await redis.set(dead_since_key("flaky"), int(time.time() * 1000) - 120_000)
    await register(redis, "flaky")  # it beats again
    assert await reap_once(redis, pool, grace_s=60) == []
    assert not await redis.exists(dead_since_key("flaky"))
    await redis.delete(worker_key("flaky"))  # and is briefly gone once more
    assert await reap_once(redis, pool, grace_s=60) == []
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid", stream) == "live"
    assert await db.fetchval("SELECT bool_and(is_active) FROM stream_viewers")
    assert await redis.get(stream_worker_key(stream)) == b"flaky"


@pytest.mark.redis_modes
async def test_a_reaped_worker_hears_of_it_at_its_next_beat_until_it_has_dealt_with_it(
        redis: aioredis.Redis) -> None:
    calls: list[str] = []

    async def on_reaped() -> None:
        calls.append("reaped")
        if len(calls) == 1:
            raise ConnectionError("Postgres did not answer")  # the first try fails

    registration = WorkerRegistration(redis, worker_id="alive", control_url="http://w",
                                      capacity=10, load_fn=lambda: 0, streams_fn=lambda: 0,
                                      on_reaped=on_reaped)
    await registration.beat()  # its first beat adds it: no reap there
    await registration.beat()
    assert calls == []
    await redis.srem(WORKERS_KEY, "alive")  # what a reaper's round ends with
    with pytest.raises(ConnectionError):
        await registration.beat()
    await registration.beat()  # tried again, though the id is back in the set
    await registration.beat()
    assert calls == ["reaped", "reaped"]
