"""Placement and the worker registry on a real Redis: least-loaded choice,
expired and full workers left out, sticky streams, and the worker side's
heartbeat really writing, refreshing and deleting its record."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from routing.placement import (
    NoCapacity,
    live_workers,
    place_stream,
    stream_worker,
    unpin_stream,
)
from routing.registry import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TTL_MS,
    WORKERS_KEY,
    WorkerRecord,
    WorkerRegistration,
    stream_worker_key,
    worker_key,
    worker_streams_key,
)
from tests.waiting import wait_until


async def register(redis: aioredis.Redis, worker_id: str, *, load: int = 0,
                   capacity: int = 10, px: int = 60_000) -> WorkerRecord:
    """A worker's record written exactly as a worker writes it."""
    record = WorkerRecord(worker_id, f"http://127.0.0.1:1/{worker_id}", capacity, load, 0,
                          int(time.time() * 1000))
    await redis.sadd(WORKERS_KEY, worker_id)
    await redis.set(worker_key(worker_id), record.to_json(), px=px)
    return record


def new_stream() -> str:
    return str(uuid.uuid4())


async def expired(redis: aioredis.Redis, worker_id: str) -> bool:
    """The worker's heartbeat record is gone (its TTL ran out)."""
    return not await redis.exists(worker_key(worker_id))


async def test_a_new_stream_goes_to_the_least_loaded_worker(redis: aioredis.Redis) -> None:
    await register(redis, "half", load=5, capacity=10)
    await register(redis, "fifth", load=20, capacity=100)
    await register(redis, "quarter", load=1, capacity=4)
    stream = new_stream()
    placement = await place_stream(redis, stream)
    assert (placement.worker.worker_id, placement.sticky) == ("fifth", False)
    assert await redis.get(stream_worker_key(stream)) == b"fifth"
    assert await redis.ttl(stream_worker_key(stream)) == -1  # no TTL: the worker deletes it


async def test_a_worker_whose_record_expired_is_not_chosen(redis: aioredis.Redis) -> None:
    await register(redis, "idle-but-dead", load=0, px=50)
    await register(redis, "busy", load=9)
    await wait_until(lambda: expired(redis, "idle-but-dead"), "the 50 ms record expiring")
    assert (await place_stream(redis, new_stream())).worker.worker_id == "busy"
    # the dead id stays listed: the reaper needs it to find the worker's streams
    assert await redis.smembers(WORKERS_KEY) == {b"busy", b"idle-but-dead"}


@pytest.mark.redis_modes  # its scripts and transactions in one cluster slot
async def test_a_pin_joins_the_workers_stream_set_and_unpin_leaves_it(
        redis: aioredis.Redis) -> None:
    await register(redis, "a")
    stream = new_stream()
    await place_stream(redis, stream)
    assert await redis.smembers(worker_streams_key("a")) == {stream.encode()}
    await unpin_stream(redis, stream, "a")
    assert await redis.smembers(worker_streams_key("a")) == set()


async def test_full_workers_are_skipped_and_none_with_room_is_no_capacity(
        redis: aioredis.Redis) -> None:
    await register(redis, "full", load=10, capacity=10)
    await register(redis, "room", load=9, capacity=10)
    assert (await place_stream(redis, new_stream())).worker.worker_id == "room"
    await register(redis, "room", load=10, capacity=10)
    stream = new_stream()
    with pytest.raises(NoCapacity):
        await place_stream(redis, stream)
    assert await redis.get(stream_worker_key(stream)) is None


async def test_no_worker_at_all_is_no_capacity(redis: aioredis.Redis) -> None:
    with pytest.raises(NoCapacity):
        await place_stream(redis, new_stream())


async def test_a_placed_stream_sticks_to_its_live_worker(redis: aioredis.Redis) -> None:
    await register(redis, "a", load=1)
    await register(redis, "b", load=5)
    stream = new_stream()
    assert (await place_stream(redis, stream)).worker.worker_id == "a"
    await register(redis, "a", load=9)  # now busier than b: the stream stays (publisher resumes)
    again = await place_stream(redis, stream)
    assert (again.worker.worker_id, again.sticky) == ("a", True)
    assert (await stream_worker(redis, stream)).worker_id == "a"  # type: ignore[union-attr]

    await redis.delete(worker_key("a"))  # a died: viewers find nothing, a publisher moves
    assert await stream_worker(redis, stream) is None
    moved = await place_stream(redis, stream)
    assert (moved.worker.worker_id, moved.sticky) == ("b", False)
    assert await redis.get(stream_worker_key(stream)) == b"b"


@pytest.mark.redis_modes
async def test_concurrent_placements_of_one_stream_agree(redis: aioredis.Redis) -> None:
    for name in ("a", "b", "c"):
        await register(redis, name)
    stream = new_stream()
    placements = await asyncio.gather(*(place_stream(redis, stream) for _ in range(8)))
    assert len({p.worker.worker_id for p in placements}) == 1


async def test_unpin_removes_only_its_own_pin(redis: aioredis.Redis) -> None:
    await register(redis, "a")
    stream = new_stream()
    await place_stream(redis, stream)
    await unpin_stream(redis, stream, "someone-else")
    assert await redis.get(stream_worker_key(stream)) == b"a"
    await unpin_stream(redis, stream, "a")
    assert await redis.get(stream_worker_key(stream)) is None


async def test_a_malformed_record_is_ignored(redis: aioredis.Redis) -> None:
    await redis.sadd(WORKERS_KEY, "garbled")
    await redis.set(worker_key("garbled"), json.dumps({"worker_id": "garbled"}), px=60_000)
    await register(redis, "good", load=3)
    assert [w.worker_id for w in await live_workers(redis)] == ["good"]


@pytest.mark.redis_modes
async def test_worker_heartbeat_writes_refreshes_and_deletes(redis: aioredis.Redis) -> None:
    assert (HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_MS) == (1.0, 3000)  # the contract
    load = {"now": 2}
    registration = WorkerRegistration(redis, worker_id="w1", control_url="http://127.0.0.1:9",
                                      capacity=50, load_fn=lambda: load["now"],
                                      streams_fn=lambda: 1)
    await registration.start()
    try:
        first = json.loads(await redis.get(worker_key("w1")))
        assert first == {"worker_id": "w1", "control_url": "http://127.0.0.1:9", "capacity": 50,
                         "load": 2, "streams": 1, "heartbeat_ms": first["heartbeat_ms"]}
        assert 0 < await redis.pttl(worker_key("w1")) <= 3000
        assert await redis.sismember(WORKERS_KEY, "w1")

        load["now"] = 7

        async def next_heartbeat() -> dict[str, Any] | None:
            record = json.loads(await redis.get(worker_key("w1")))
            return record if record["heartbeat_ms"] > first["heartbeat_ms"] else None

        second = await wait_until(next_heartbeat, "the next heartbeat",
                                  timeout=HEARTBEAT_INTERVAL_S * 3)
        assert second["load"] == 7 and second["heartbeat_ms"] > first["heartbeat_ms"]
        assert await redis.pttl(worker_key("w1")) > 2000  # refreshed, not counting down
        assert (await place_stream(redis, new_stream())).worker.load == 7
    finally:
        await registration.stop()
    assert await redis.get(worker_key("w1")) is None
    assert not await redis.sismember(WORKERS_KEY, "w1")
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "sfu-registry-w1"]


async def test_a_stopped_heartbeat_expires(redis: aioredis.Redis) -> None:
    registration = WorkerRegistration(redis, worker_id="w2", control_url="http://127.0.0.1:9",
                                      capacity=5, load_fn=lambda: 0, streams_fn=lambda: 0,
                                      interval_s=0.05, ttl_ms=150)
    await registration.start()
    await asyncio.sleep(0.3)  # time passing IS the test: two TTLs, alive only if refreshed
    assert [w.worker_id for w in await live_workers(redis)] == ["w2"]
    # a crash: the task dies without deleting anything
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "sfu-registry-w2")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await wait_until(lambda: expired(redis, "w2"), "the unrefreshed record expiring", timeout=1)
    assert await live_workers(redis) == []
    await registration.stop()


# -- the cascade: viewers of one stream over several workers -------------------------------

@pytest.mark.redis_modes
async def test_viewers_fill_the_origin_then_an_edge_then_make_a_new_edge(
        redis: aioredis.Redis) -> None:
    from routing.placement import place_viewer
    from routing.registry import stream_edges_key

    stream = new_stream()
    await register(redis, "origin", load=1, capacity=3)  # its publisher
    await place_stream(redis, stream)
    await register(redis, "spare", load=0, capacity=3)
    # Room for a viewer and still one peer connection to feed an edge.
    first = await place_viewer(redis, stream)
    assert (first.worker.worker_id, first.relay_from, first.new_edge) == ("origin", None, False)
    # Full but for that one: the next viewer makes "spare" an edge fed by the origin.
    await register(redis, "origin", load=2, capacity=3)
    second = await place_viewer(redis, stream)
    assert second.worker.worker_id == "spare" and second.new_edge
    assert second.relay_from is not None and second.relay_from.worker_id == "origin"
    assert await redis.smembers(stream_edges_key(stream)) == {b"spare"}
    assert await redis.sismember(worker_streams_key("spare"), stream)  # the reaper finds it
    # An edge with room takes the next one (no new edge); nobody left to grow
    # onto, so no reserve is kept.
    await register(redis, "origin", load=3, capacity=3)
    await register(redis, "spare", load=2, capacity=3)
    third = await place_viewer(redis, stream)
    assert (third.worker.worker_id, third.new_edge) == ("spare", False)
    assert third.relay_from is not None and third.relay_from.worker_id == "origin"
    await register(redis, "spare", load=3, capacity=3)
    with pytest.raises(NoCapacity):
        await place_viewer(redis, stream)


async def test_an_edge_feeds_the_next_edge_when_the_origin_is_full(
        redis: aioredis.Redis) -> None:
    from routing.placement import choose_viewer_worker

    origin = await register(redis, "origin", load=3, capacity=3)
    edge = await register(redis, "edge", load=2, capacity=3)
    other = await register(redis, "other", load=0, capacity=3)
    chosen = choose_viewer_worker(origin, [edge], [other])
    assert chosen is not None
    worker, parent = chosen
    assert (worker.worker_id, parent and parent.worker_id) == ("other", "edge")
    # A worker without room for its relay and the viewer is no new edge.
    crowded = await register(redis, "other", load=2, capacity=3)
    assert choose_viewer_worker(origin, [edge], [crowded]) == (edge, None)


async def test_a_viewer_of_a_stream_with_a_dead_origin_finds_it_not_live(
        redis: aioredis.Redis) -> None:
    from routing.placement import StreamNotPlaced, drop_edge, place_viewer, stream_carriers
    from routing.registry import stream_edges_key

    stream = new_stream()
    await register(redis, "origin", load=1, capacity=3)
    await place_stream(redis, stream)
    await register(redis, "edge", load=1, capacity=3)
    await register(redis, "gone", load=1, capacity=3, px=50)
    await redis.sadd(stream_edges_key(stream), "edge", "gone")
    await wait_until(lambda: expired(redis, "gone"), "the 50 ms record expiring")
    origin, edges = await stream_carriers(redis, stream)
    assert origin is not None and [e.worker_id for e in edges] == ["edge"]  # dead ones left out
    await drop_edge(redis, stream, "edge")
    assert await redis.smembers(stream_edges_key(stream)) == {b"gone"}
    await redis.delete(worker_key("origin"))
    with pytest.raises(StreamNotPlaced):
        await place_viewer(redis, stream)
