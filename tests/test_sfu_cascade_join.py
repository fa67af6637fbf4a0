"""Joining through an edge (docs/benchmarks.md, join time through an edge):
an edge keeps its relay `VILOKANAM_SFU_EDGE_KEEP` seconds after its last
viewer left, so the next viewer placed there starts on it without a new
relay, and hands it back once that time has passed with nobody watching.
Real processes as in tests/test_sfu_cascade.py: a signaling server, billing
and two workers on their own addresses; every viewer is billed once, by the
edge, for no more seconds than it watched."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from routing.registry import stream_edges_key, stream_worker_key
from tests.media_clients import Viewer
from tests.test_multiprocess import Cluster, Role, next_message
from tests.test_sfu_cascade import (
    _load_is,
    eventually,
    funded_viewer_token,
    pinned,
    publish,
    start_cluster,
    stream_here,
    try_watch,
)
from vilokanam.config import Settings

KEEP = 4  # seconds: long enough to join again, short enough to wait out


@pytest.fixture
async def two(settings: Settings, tmp_path: Path, db: asyncpg.Connection,
              redis: aioredis.Redis) -> AsyncIterator[Cluster]:
    kept = dataclasses.replace(settings, sfu_edge_keep=Decimal(KEEP))
    async for cluster in start_cluster(kept, tmp_path, 2):
        yield cluster


async def watch(cluster: Cluster, stream_id: str,
                token: str) -> tuple[aiohttp.ClientWebSocketResponse, Viewer]:
    """A viewer that retries after `no_capacity`, as the web app does."""
    placed: tuple[aiohttp.ClientWebSocketResponse, Viewer] = await eventually(
        lambda: try_watch(cluster, stream_id, token), "a viewer to be placed", timeout=30)
    return placed


async def leave(ws: aiohttp.ClientWebSocketResponse, viewer: Viewer) -> None:
    await ws.send_json({"type": "leave"})
    await next_message(ws, {"left"})
    await viewer.close()


def relay_requests(edge: Role, tmp_path: Path, index: int) -> int:
    """How many relays the edge asked its parent for (its log's lines)."""
    log = (tmp_path / f"sfu{index}" / "sfu.log").read_text(errors="replace")
    return log.count(" edge.relay_requested ")


async def test_an_idle_edge_keeps_its_relay_for_the_next_viewer_then_hands_it_back(
        two: Cluster, tmp_path: Path, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    cluster = two
    stream_id, key = await cluster.stream()
    assert await publish(cluster, stream_id, key) is not None
    origin_url = await pinned(redis, stream_id)
    index = next(n for n, role in enumerate(cluster.sfu)
                 if role.settings.sfu_control_url != origin_url)
    edge, origin = cluster.sfu[index], cluster.sfu[1 - index]
    token = await funded_viewer_token(cluster, db, redis)

    # The origin (capacity 3) takes the publisher and one viewer, keeping a
    # peer connection for a relay: the next viewers go to the edge.
    await eventually(partial(_load_is, redis, 1), "the publisher's load reported")
    _, on_origin = await watch(cluster, stream_id, token)
    await on_origin.wait_for_frames("video", 5, timeout=20)
    await eventually(partial(_load_is, redis, 2), "the origin's viewer reported")
    ws, first = await watch(cluster, stream_id, token)
    await first.wait_for_frames("video", 5, timeout=20)
    assert (await stream_here(cluster, edge, stream_id))["edge"]
    assert relay_requests(edge, tmp_path, index) == 1
    origin_id = (await redis.get(stream_worker_key(stream_id))).decode()
    await eventually(lambda: _edge_viewer_billed(db, stream_id, origin_id),
                     "the edge's first viewer billed", timeout=25)

    # Its last viewer leaves: the edge keeps the relay (idle), still an edge
    # of the stream, and its viewer's row ends.
    await leave(ws, first)
    left_db = [await db.fetchval("SELECT localtimestamp")]
    state = await eventually(lambda: _idle(cluster, edge, stream_id), "the edge idle")
    assert state["fed"] and state["viewers"] == 0
    assert (await stream_here(cluster, origin, stream_id))["relays"] == 1
    assert await redis.smembers(stream_edges_key(stream_id))

    # The next viewer placed there starts on the relay it has: no new one.
    await eventually(partial(_load_is, redis, 2 + 2), "the edge's load reported")
    ws, second = await watch(cluster, stream_id, token)
    await second.wait_for_frames("video", 5, timeout=20)
    assert relay_requests(edge, tmp_path, index) == 1
    assert not (await stream_here(cluster, edge, stream_id))["idle"]
    rows = await db.fetch("SELECT sfu_worker_id, is_active FROM stream_viewers "
                          "WHERE stream_id = $1::uuid ORDER BY join_time", stream_id)
    # The origin's viewer, the edge's first (ended) and second: one row each.
    assert [(r["sfu_worker_id"] == origin_id, r["is_active"]) for r in rows] == [
        (True, True), (False, False), (False, True)], rows

    await eventually(lambda: _edge_viewer_billed(db, stream_id, origin_id),
                     "the edge's second viewer billed", timeout=25)

    # It leaves too: after KEEP seconds idle the edge hands its relay back.
    await leave(ws, second)
    left_at = time.monotonic()
    left_db.append(await db.fetchval("SELECT localtimestamp"))
    await eventually(lambda: _idle(cluster, edge, stream_id), "the edge idle again")
    await eventually(lambda: _not_carried(cluster, edge, stream_id),
                     "the kept relay handed back", timeout=KEEP + 20)
    assert time.monotonic() - left_at >= KEEP
    await eventually(lambda: _relays_are(cluster, origin, stream_id, 0),
                     "the origin's relay freed")
    assert not await redis.smembers(stream_edges_key(stream_id))
    # Billed once each, by the edge, for no more seconds than it watched
    # (ticks flush within 2 s: the edge's idle KEEP seconds have passed).
    ended = await db.fetch("SELECT total_ticks, join_time FROM stream_viewers "
                           "WHERE stream_id = $1::uuid AND sfu_worker_id <> $2 "
                           "ORDER BY join_time", stream_id, origin_id)
    assert len(ended) == 2
    for row, left in zip(ended, left_db, strict=True):
        watched = (left - row["join_time"]).total_seconds()
        assert 0 < row["total_ticks"] <= watched + 1, (row["total_ticks"], watched)
    # The origin's viewer never stopped.
    before = on_origin.frames["video"]
    await on_origin.wait_for_frames("video", before + 10, timeout=15)


async def _idle(cluster: Cluster, edge: Role, stream_id: str) -> dict[str, Any] | None:
    state = await stream_here(cluster, edge, stream_id)
    return state if state["idle"] else None


async def _not_carried(cluster: Cluster, edge: Role, stream_id: str) -> bool:
    state = await stream_here(cluster, edge, stream_id)
    return not state["edge"] and not state["fed"]


async def _relays_are(cluster: Cluster, role: Role, stream_id: str, count: int) -> bool:
    return int((await stream_here(cluster, role, stream_id))["relays"]) == count


async def _edge_viewer_billed(db: asyncpg.Connection, stream_id: str, origin_id: str) -> bool:
    """The edge's watching viewer has been ticked for 2 s (flushed)."""
    return bool(await db.fetchval(
        "SELECT total_ticks >= 2 FROM stream_viewers WHERE stream_id = $1::uuid "
        "AND is_active AND sfu_worker_id <> $2", stream_id, origin_id))


@pytest.fixture
async def two_no_keep(settings: Settings, tmp_path: Path, db: asyncpg.Connection,
                      redis: aioredis.Redis) -> AsyncIterator[Cluster]:
    none_kept = dataclasses.replace(settings, sfu_edge_keep=Decimal(0))
    async for cluster in start_cluster(none_kept, tmp_path, 2):
        yield cluster


async def test_with_no_keep_an_edge_hands_its_relay_back_when_its_viewer_leaves(
        two_no_keep: Cluster, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    cluster = two_no_keep
    stream_id, key = await cluster.stream()
    assert await publish(cluster, stream_id, key) is not None
    origin_url = await pinned(redis, stream_id)
    edge, origin = sorted(cluster.sfu, key=lambda r: r.settings.sfu_control_url == origin_url)
    token = await funded_viewer_token(cluster, db, redis)
    await eventually(partial(_load_is, redis, 1), "the publisher's load reported")
    await watch(cluster, stream_id, token)  # the origin's viewer
    await eventually(partial(_load_is, redis, 2), "the origin's viewer reported")
    ws, viewer = await watch(cluster, stream_id, token)
    await viewer.wait_for_frames("video", 5, timeout=20)
    assert (await stream_here(cluster, edge, stream_id))["fed"]
    await leave(ws, viewer)
    # Handed back at once, not after a keep: well inside the 30 s default.
    await eventually(lambda: _not_carried(cluster, edge, stream_id), "the relay handed back",
                     timeout=10)
    await eventually(lambda: _relays_are(cluster, origin, stream_id, 0),
                     "the origin's relay freed", timeout=10)
