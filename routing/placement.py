"""Placement: which SFU worker a stream lives on (docs/architecture.md).

Reads the registry the workers write (`sfu/registry.py`): a new stream goes to
the live worker with the lowest load/capacity that has room, and is pinned
there by `vk:stream:<id>:worker`; a stream already pinned to a live worker
stays there (a reconnecting publisher resumes, viewers find it). The load is
what the worker last reported (at most 1 s old), so a burst of placements
within one second may all pick the same worker; the worker refuses what it
cannot take (`at_capacity`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from routing.registry import (
    WORKERS_KEY,
    WorkerRecord,
    stream_edges_key,
    stream_worker_key,
    unplace,
    worker_key,
    worker_streams_key,
)
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

# Pin a stream to `new` only if the pin is still what we read (`expected`, ''
# for none): two signaling servers placing one stream at once agree on one
# worker. The stream joins the worker's stream set in the same step, so a
# reaper never meets a pin its worker's set does not list. Returns the pin
# after the call.
_PIN_IF_UNCHANGED = """
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2])
    redis.call('SADD', KEYS[2], ARGV[3])
    return ARGV[2]
end
return current
"""
_PLACEMENT_ATTEMPTS = 3
# A worker joins a stream's edges and the stream its worker's set in one step
# (as a pin does), so a reaper finds every stream a dead edge carried.
_ADD_EDGE = """
redis.call('SADD', KEYS[1], ARGV[1])
return redis.call('SADD', KEYS[2], ARGV[2])
"""
# While a new edge could still be made, a carrier keeps this many peer
# connections free for feeding one (origin -> edge -> edge ...), else a full
# origin could never hand its stream on.
RELAY_RESERVE = 1


class NoCapacity(Exception):
    """No live worker has room for a new stream (or a stream's next viewer)."""


class StreamNotPlaced(Exception):
    """The stream has no live origin: it is not live (or its worker just died)."""


@dataclass(frozen=True)
class Placement:
    worker: WorkerRecord
    sticky: bool  # the stream was already pinned to this worker


@dataclass(frozen=True)
class ViewerPlacement:
    """Where a viewer goes: the stream's origin or one of its edges. For an
    edge, `relay_from` is the carrier it relays the stream from should it
    not carry it yet; `new_edge` when placement made it an edge just now."""

    worker: WorkerRecord
    relay_from: WorkerRecord | None
    new_edge: bool = False


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _parse(worker_id: str, raw: bytes | str) -> WorkerRecord | None:
    try:
        return WorkerRecord.from_json(raw)
    except ValueError as exc:
        log_event(log, "placement.bad_worker_record", logging.WARNING,
                  worker_id=worker_id, error=str(exc))
        return None


async def get_worker(redis: aioredis.Redis, worker_id: str) -> WorkerRecord | None:
    """The worker's record, or None when it stopped heartbeating."""
    raw = await redis.get(worker_key(worker_id))
    return None if raw is None else _parse(worker_id, raw)


async def live_workers(redis: aioredis.Redis) -> list[WorkerRecord]:
    """Every worker whose record has not expired. Ids whose record is gone
    stay in the set: the reaper (signaling/reaper.py) drops them once it has
    ended their streams, and needs the id to find them."""
    ids = sorted(_text(member) or "" for member in await redis.smembers(WORKERS_KEY))
    if not ids:
        return []
    raws = await redis.mget([worker_key(worker_id) for worker_id in ids])
    records = (_parse(worker_id, raw) for worker_id, raw in zip(ids, raws, strict=True)
               if raw is not None)
    return [record for record in records if record is not None]


def least_loaded(workers: list[WorkerRecord]) -> WorkerRecord | None:
    """The worker with room and the lowest load/capacity (ties: fewer peers,
    then the id, so the choice is deterministic)."""
    with_room = [worker for worker in workers if worker.has_room]
    return min(with_room, key=lambda w: (w.utilisation, w.load, w.worker_id), default=None)


async def place_stream(redis: aioredis.Redis, stream_id: str) -> Placement:
    """The worker a publisher of `stream_id` must go to. Raises NoCapacity."""
    key = stream_worker_key(stream_id)
    pinned = _text(await redis.get(key))
    for _ in range(_PLACEMENT_ATTEMPTS):
        if pinned is not None and (worker := await get_worker(redis, pinned)) is not None:
            return Placement(worker, sticky=True)
        chosen = least_loaded(await live_workers(redis))
        if chosen is None:
            raise NoCapacity("no SFU worker has room for a new stream")
        winner = _text(await redis.eval(_PIN_IF_UNCHANGED, 2, key,
                                        worker_streams_key(chosen.worker_id), pinned or "",
                                        chosen.worker_id, stream_id))
        if winner == chosen.worker_id:
            log_event(log, "placement.pinned", stream_id=stream_id, worker_id=winner,
                      load=chosen.load, capacity=chosen.capacity)
            return Placement(chosen, sticky=False)
        pinned = winner  # someone else pinned it meanwhile: follow them if alive
    raise NoCapacity("the stream's placement kept changing; try again")


async def unpin_stream(redis: aioredis.Redis, stream_id: str, worker_id: str) -> None:
    """Undo a fresh pin the worker refused, so a retry may choose another
    worker. A pin that has since changed is left alone."""
    await unplace(redis, stream_id, worker_id)


async def stream_worker(redis: aioredis.Redis, stream_id: str) -> WorkerRecord | None:
    """Where viewers of `stream_id` go: its pinned worker if that is alive,
    else None (the stream is not live)."""
    pinned = _text(await redis.get(stream_worker_key(stream_id)))
    return None if pinned is None else await get_worker(redis, pinned)


async def stream_carriers(redis: aioredis.Redis,
                          stream_id: str) -> tuple[WorkerRecord | None, list[WorkerRecord]]:
    """The stream's live origin (None: not live) and its live edges."""
    origin = await stream_worker(redis, stream_id)
    edge_ids = sorted(_text(member) or "" for member in
                      await redis.smembers(stream_edges_key(stream_id)))
    edge_ids = [e for e in edge_ids if origin is None or e != origin.worker_id]
    if not edge_ids:
        return origin, []
    raws = await redis.mget([worker_key(worker_id) for worker_id in edge_ids])
    edges = [_parse(worker_id, raw) for worker_id, raw in zip(edge_ids, raws, strict=True)
             if raw is not None]
    return origin, [edge for edge in edges if edge is not None]


def _fits(worker: WorkerRecord, peers: int) -> bool:
    return worker.load + peers <= worker.capacity


def choose_viewer_worker(origin: WorkerRecord, edges: list[WorkerRecord],
                         others: list[WorkerRecord]
                         ) -> tuple[WorkerRecord, WorkerRecord | None] | None:
    """(worker, parent): the origin while it has room, else the emptiest edge
    with room, else a new edge — the emptiest other worker with room for its
    relay and the viewer — fed by a carrier with room for one more peer
    connection (the origin first: the shortest chain). None: nobody has room."""
    can_grow = any(_fits(worker, 2) for worker in others)
    reserve = RELAY_RESERVE if can_grow else 0
    if _fits(origin, 1 + reserve):
        return origin, None
    with_room = [edge for edge in edges if _fits(edge, 1 + reserve)]
    if with_room:
        return min(with_room, key=lambda w: (w.utilisation, w.load, w.worker_id)), None
    if not can_grow:
        return None
    parents = [w for w in (origin, *edges) if _fits(w, 1)]
    if not parents:
        return None
    parent = parents[0] if parents[0] is origin else min(
        parents, key=lambda w: (w.utilisation, w.load, w.worker_id))
    edge = least_loaded([worker for worker in others if _fits(worker, 2)])
    assert edge is not None  # can_grow
    return edge, parent


async def place_viewer(redis: aioredis.Redis, stream_id: str) -> ViewerPlacement:
    """The worker a viewer of `stream_id` goes to (the cascade,
    docs/architecture.md). Raises StreamNotPlaced or NoCapacity."""
    origin, edges = await stream_carriers(redis, stream_id)
    if origin is None:
        raise StreamNotPlaced(stream_id)
    carrying = {origin.worker_id, *(edge.worker_id for edge in edges)}
    others = [w for w in await live_workers(redis) if w.worker_id not in carrying]
    choice = choose_viewer_worker(origin, edges, others)
    if choice is None:
        raise NoCapacity("no SFU worker has room for another viewer of this stream")
    worker, parent = choice
    if parent is None:
        return ViewerPlacement(worker, None if worker is origin else origin)
    await redis.eval(_ADD_EDGE, 2, stream_edges_key(stream_id),
                     worker_streams_key(worker.worker_id), worker.worker_id, stream_id)
    log_event(log, "placement.edge_added", stream_id=stream_id, worker_id=worker.worker_id,
              relay_from=parent.worker_id, edges=len(edges) + 1)
    return ViewerPlacement(worker, parent, new_edge=True)


async def drop_edge(redis: aioredis.Redis, stream_id: str, worker_id: str) -> None:
    """Undo a new edge that refused its first viewer, so the next placement
    does not count on it."""
    await unplace(redis, stream_id, worker_id)
