"""One stream across many workers (the cascade), as deployed: a signaling
server, billing, and SFU workers that each listen on their own address
(127.0.0.2, .3, ...: nothing assumes a shared host — the relays between them
are real aiortc peer connections over those addresses). Capacity is small, so
the origin fills and placement sends the next viewers to edges that relay the
stream; viewers on every worker receive frames and are billed once, by the
worker that serves them; the audience is counted across workers. Then the
faults: an edge killed with -9 (its viewer plays again elsewhere, billed only
for what it got), the origin killed (the publisher reconnects within the
grace and the edge resumes from the new origin, its viewer carrying on)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from routing.registry import ROUTING_PREFIX, stream_edges_key, stream_worker_key, worker_key
from tests.media_clients import Publisher, Viewer
from tests.processes import http_get, start_role, wait_healthy
from tests.test_multiprocess import BOB, WS_TIMEOUT, Cluster, Role, next_message
from tests.waiting import wait_until, wait_until_sync
from vilokanam.balances import credit
from vilokanam.config import Settings
from vilokanam.services.net import free_port
from vilokanam.services.process import ManagedProcess

CAPACITY = 3  # a publisher or relay, one viewer, and one relay on to the next edge


def worker_settings(settings: Settings, n: int) -> Settings:
    """Worker n on its own address: its control port and its ICE candidates."""
    host = f"127.0.0.{n + 2}"
    return dataclasses.replace(settings, sfu_host=host, sfu_port=free_port(host),
                               ice_host_addresses=[host], sfu_capacity=CAPACITY)


def wait_worker(proc: ManagedProcess, settings: Settings) -> None:
    def healthy() -> bool:
        assert proc.running, f"{proc.name} exited early:\n{proc.tail()}"
        try:
            return http_get(f"{settings.sfu_control_url}/healthz")[0] == 200
        except OSError:
            return False
    wait_until_sync(healthy, f"{proc.name} serving /healthz", timeout=20, interval=0.1)


async def start_cluster(settings: Settings, tmp_path: Path,
                        workers: int) -> AsyncIterator[Cluster]:
    settings = dataclasses.replace(settings, dev_mode=True, token_secret="x" * 40)
    signaling_settings = dataclasses.replace(settings, http_port=free_port())
    signaling = Role(start_role(signaling_settings, "signaling", tmp_path / "signaling"),
                     signaling_settings, signaling_settings.http_port)
    sfu = []
    for n in range(workers):
        worker = worker_settings(settings, n)
        sfu.append(Role(start_role(worker, "sfu", tmp_path / f"sfu{n}"), worker,
                        worker.sfu_port))
    billing = start_role(settings, "billing", tmp_path / "billing")
    try:
        await asyncio.to_thread(wait_healthy, signaling.proc, signaling.port)
        for role in sfu:
            await asyncio.to_thread(wait_worker, role.proc, role.settings)
        await asyncio.to_thread(wait_healthy, billing, settings.billing_port)
        async with aiohttp.ClientSession() as http:
            cluster = Cluster([signaling], sfu, http)
            try:
                yield cluster
            finally:
                for close in reversed(cluster.closers):
                    await close()
    finally:
        for proc in [billing, signaling.proc, *(role.proc for role in sfu)]:
            await asyncio.to_thread(proc.stop)


@pytest.fixture
async def four(settings: Settings, tmp_path: Path, db: asyncpg.Connection,
               redis: aioredis.Redis) -> AsyncIterator[Cluster]:
    async for cluster in start_cluster(settings, tmp_path, 4):
        yield cluster


@pytest.fixture
async def three(settings: Settings, tmp_path: Path, db: asyncpg.Connection,
                redis: aioredis.Redis) -> AsyncIterator[Cluster]:
    async for cluster in start_cluster(settings, tmp_path, 3):
        yield cluster


async def eventually(check: Callable[[], Awaitable[Any]], what: str,
                     timeout: float = 20.0) -> Any:
    return await wait_until(check, what, timeout=timeout, interval=0.1)


async def records(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """The live workers' registry records, by control URL."""
    found = {}
    for key in await redis.keys(f"{ROUTING_PREFIX}worker:*"):
        name = key.decode()
        if name.count(":") != 3:
            continue  # a worker's stream set or its dead-since mark
        raw = await redis.get(name)
        if raw is not None:
            record = json.loads(raw)
            found[record["control_url"]] = record
    return found


async def total_load(redis: aioredis.Redis) -> int:
    return sum(int(r["load"]) for r in (await records(redis)).values())


async def stream_here(cluster: Cluster, role: Role, stream_id: str) -> dict[str, Any]:
    async with cluster.http.get(
            f"{role.settings.sfu_control_url}/control/streams/{stream_id}") as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def funded_viewer_token(cluster: Cluster, db: asyncpg.Connection,
                              redis: aioredis.Redis) -> str:
    bob = await cluster.post("/api/dev/token", {"account": BOB})
    await credit(db, redis, bob["user_id"], Decimal(100), "adjustment", "test funds", 12)
    return str(bob["token"])


REFUSALS: list[str] = []  # the codes a viewer was refused with, for a failure's message


class Refused(Exception):
    """Signaling answered an offer with an error."""


def signal_over(ws: aiohttp.ClientWebSocketResponse, request: dict[str, Any],
                ) -> Callable[[str], Awaitable[str]]:
    async def signal(offer: str) -> str:
        await ws.send_json({**request, "sdp": offer})
        reply = await next_message(ws, {"answer", "error"})
        if reply["type"] != "answer":
            raise Refused(reply.get("code"))
        return str(reply["sdp"])
    return signal


Watching = tuple[aiohttp.ClientWebSocketResponse, Viewer]


async def try_watch(cluster: Cluster, stream_id: str, token: str) -> Watching | None:
    """One watch over the websocket: its socket and viewer, or None when
    signaling says no (full, the stream not live where it was, a worker of the
    loaded machine refusing for its load)."""
    ws = await cluster.socket(0)
    viewer = Viewer()
    cluster.closers.append(viewer.close)
    try:
        await viewer.start(signal_over(ws, {"type": "watch", "stream_id": stream_id,
                                            "token": token}))
    except Refused as refused:
        REFUSALS.append(str(refused))
        await viewer.close()
        await ws.close()
        return None
    return ws, viewer


async def try_viewer(cluster: Cluster, stream_id: str, token: str) -> Viewer | None:
    watching = await try_watch(cluster, stream_id, token)
    return None if watching is None else watching[1]


async def watch_until_placed(cluster: Cluster, stream_id: str, token: str,
                             timeout: float = 30.0) -> Viewer:
    """A viewer that retries, as the web app does after `no_capacity`."""
    REFUSALS.clear()
    try:
        return await eventually(lambda: try_viewer(cluster, stream_id, token),
                                "a viewer to be placed", timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; refused with {sorted(set(REFUSALS))}") from None


async def publish(cluster: Cluster, stream_id: str, key: str) -> Publisher | None:
    ws = await cluster.socket(0)
    publisher = Publisher()
    cluster.closers.append(publisher.close)
    try:
        await publisher.start(signal_over(ws, {"type": "publish", "stream_id": stream_id,
                                               "stream_key": key}))
    except Refused:
        await publisher.close()
        await ws.close()
        return None
    return publisher


async def pinned(redis: aioredis.Redis, stream_id: str) -> str:
    worker_id = await redis.get(stream_worker_key(stream_id))
    assert worker_id is not None
    raw = await redis.get(worker_key(worker_id.decode()))
    assert raw is not None
    return str(json.loads(raw)["control_url"])


async def viewers_by_worker(db: asyncpg.Connection, stream_id: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT sfu_worker_id, count(*) AS n FROM stream_viewers WHERE stream_id = $1::uuid "
        "AND is_active GROUP BY sfu_worker_id", stream_id)
    return {row["sfu_worker_id"]: row["n"] for row in rows}


async def test_one_stream_across_four_workers_viewers_on_each_billed_once(
        four: Cluster, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    cluster = four
    stream_id, key = await cluster.stream()
    assert await publish(cluster, stream_id, key) is not None
    origin_url = await pinned(redis, stream_id)
    token = await funded_viewer_token(cluster, db, redis)

    viewers: list[Viewer] = []
    joined_at: list[float] = []
    # Origin (publisher + 1), then one edge after another, each fed by the
    # one before (each keeps a peer connection to feed the next), and the last
    # takes a second viewer: no worker is left to grow onto.
    for n in range(5):
        # Placement reads the load each worker last reported (every second).
        edges = max(0, min(n - 1, 3))
        expected = 1 + n + 2 * edges  # publisher, viewers, each relay's two ends
        await eventually(partial(_load_is, redis, expected), f"the load {expected} reported")
        viewer = await watch_until_placed(cluster, stream_id, token)
        await viewer.wait_for_frames("video", 5, timeout=20)
        viewers.append(viewer)
        joined_at.append(time.monotonic())

    spread = await viewers_by_worker(db, stream_id)
    assert sorted(spread.values()) == [1, 1, 1, 2], spread  # every worker serves viewers
    states = {role.settings.sfu_control_url: await stream_here(cluster, role, stream_id)
              for role in cluster.sfu}
    assert not states[origin_url]["edge"] and states[origin_url]["live"]
    assert sorted(s["edge"] for s in states.values()) == [False, True, True, True]
    # ONE relay into each edge, however many viewers it serves.
    assert sum(s["relays"] for s in states.values()) == 3, states
    assert len(await redis.smembers(stream_edges_key(stream_id))) == 3

    # Every viewer keeps playing, wherever it is.
    seen = [viewer.frames["video"] for viewer in viewers]
    for viewer, before in zip(viewers, seen, strict=True):
        await viewer.wait_for_frames("video", before + 20, timeout=15)

    # The whole audience, counted once across the workers.
    row = await db.fetchrow("SELECT viewer_count FROM streams WHERE id = $1::uuid", stream_id)
    assert row["viewer_count"] == 5
    assert await db.fetchval("SELECT viewer_peak FROM stream_sessions "
                             "WHERE stream_id = $1::uuid", stream_id) == 5
    # stream_analytics: one row per sample, from the origin, with the total.
    samples = await eventually(lambda: db.fetch(
        "SELECT timestamp, viewer_count FROM stream_analytics WHERE stream_id = $1::uuid",
        stream_id), "a stream_analytics sample", timeout=25)
    assert [s["viewer_count"] for s in samples] == [5] * len(samples)
    assert len({s["timestamp"] for s in samples}) == len(samples)

    # Billed once: five viewing sessions (relays are none), each ticked by its
    # own worker no more than the seconds it has watched.
    async def all_ticked() -> bool:
        ticks = await db.fetch("SELECT total_ticks FROM stream_viewers "
                               "WHERE stream_id = $1::uuid", stream_id)
        return len(ticks) == 5 and all(t["total_ticks"] >= 2 for t in ticks)
    await eventually(all_ticked, "every viewer billed (billing flushes the ticks)", timeout=20)
    now = time.monotonic()
    rows = await db.fetch("SELECT total_ticks, join_time FROM stream_viewers "
                          "WHERE stream_id = $1::uuid ORDER BY join_time", stream_id)
    first_join = joined_at[0] - 20  # the first frames came at most 20 s after the join
    for row in rows:
        assert row["total_ticks"] <= now - first_join + 2, rows


async def _load_is(redis: aioredis.Redis, expected: int) -> bool:
    return await total_load(redis) == expected


async def test_an_edge_killed_its_viewer_plays_again_elsewhere_billed_for_what_it_got(
        four: Cluster, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    cluster = four
    stream_id, key = await cluster.stream()
    assert await publish(cluster, stream_id, key) is not None
    token = await funded_viewer_token(cluster, db, redis)
    viewers = []
    for n in range(4):  # origin, edge 1, edge 2, edge 3: one viewer each
        expected = 1 + n + 2 * max(0, n - 1)
        await eventually(partial(_load_is, redis, expected), f"the load {expected} reported")
        viewer = await watch_until_placed(cluster, stream_id, token)
        await viewer.wait_for_frames("video", 5, timeout=20)
        viewers.append(viewer)
    rows = await db.fetch("SELECT id, sfu_worker_id FROM stream_viewers "
                          "WHERE stream_id = $1::uuid ORDER BY join_time", stream_id)
    last_worker = rows[-1]["sfu_worker_id"]
    leaves = []
    for role in cluster.sfu:  # the last edge: an edge that feeds none
        state = await stream_here(cluster, role, stream_id)
        if state["edge"] and state["relays"] == 0:
            leaves.append(role)
    assert len(leaves) == 1
    doomed = leaves[0]

    # It has been billed for some seconds when its edge dies.
    await eventually(lambda: _ticks_above(db, rows[-1]["id"], 2), "the last viewer billed")
    killed_at = time.monotonic()
    killed_db = await db.fetchval("SELECT localtimestamp")
    doomed.proc.kill()
    assert not doomed.proc.running
    # Its viewer's player sees the media stop and watches again: placed on a
    # worker still carrying the stream (the edge that fed the dead one drops
    # that relay when its reports stop, and has room again).
    again = await watch_until_placed(cluster, stream_id, token, timeout=40)
    await again.wait_for_frames("video", 10, timeout=20)
    replayed_after = time.monotonic() - killed_at
    new_row = await db.fetchrow(
        "SELECT sfu_worker_id FROM stream_viewers WHERE stream_id = $1::uuid "
        "ORDER BY join_time DESC LIMIT 1", stream_id)
    assert new_row["sfu_worker_id"] != last_worker
    assert replayed_after < 40

    # The reaper (after the reconnect grace) makes the dead edge's viewer
    # inactive: billed only for the seconds it got before the kill.
    old_id = rows[-1]["id"]

    async def old_inactive() -> bool:
        return await db.fetchval("SELECT NOT is_active FROM stream_viewers WHERE id = $1",
                                 old_id) is True
    await eventually(old_inactive, "the dead edge's viewer made inactive", timeout=30)
    old = await db.fetchrow("SELECT total_ticks, join_time FROM stream_viewers WHERE id = $1",
                            old_id)
    watched = (killed_db - old["join_time"]).total_seconds()
    assert 0 < old["total_ticks"] <= watched + 1, (old["total_ticks"], watched)
    await eventually(lambda: _count_is(db, stream_id, 4), "the audience to be 4 again")
    # The others never stopped.
    for viewer in viewers[:-1]:
        before = viewer.frames["video"]
        await viewer.wait_for_frames("video", before + 10, timeout=15)


async def _count_is(db: asyncpg.Connection, stream_id: str, count: int) -> bool:
    return await db.fetchval("SELECT viewer_count FROM streams WHERE id = $1::uuid",
                             stream_id) == count


async def test_the_origin_killed_the_publisher_reconnects_and_the_edge_resumes(
        three: Cluster, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    cluster = three
    stream_id, key = await cluster.stream()
    assert await publish(cluster, stream_id, key) is not None
    origin_url = await pinned(redis, stream_id)
    first_session = await db.fetchval(
        "SELECT id FROM stream_sessions WHERE stream_id = $1::uuid", stream_id)
    token = await funded_viewer_token(cluster, db, redis)
    for n in range(2):  # one on the origin, one on an edge
        load = 1 + n
        await eventually(partial(_load_is, redis, load), "the load reported")
        viewer = await watch_until_placed(cluster, stream_id, token)
        await viewer.wait_for_frames("video", 5, timeout=20)
    edge_viewer = viewer
    edge_row = await db.fetchrow(
        "SELECT id, sfu_worker_id FROM stream_viewers WHERE stream_id = $1::uuid "
        "ORDER BY join_time DESC LIMIT 1", stream_id)

    next(role for role in cluster.sfu
         if role.settings.sfu_control_url == origin_url).proc.kill()
    # The publisher's client sees its connection die and publishes again: once
    # the dead origin has left placement (its record expires), on another worker.
    published = await eventually(lambda: publish(cluster, stream_id, key),
                                 "the publisher placed on a new origin", timeout=WS_TIMEOUT)
    assert published is not None
    assert await pinned(redis, stream_id) != origin_url

    # The edge finds the new origin and relays from it: its viewer plays on,
    # on the same connection, in the new stream session.
    before = edge_viewer.frames["video"]
    await edge_viewer.wait_for_frames("video", before + 30, timeout=30)
    session = await db.fetchrow(
        "SELECT id, end_time FROM stream_sessions WHERE stream_id = $1::uuid "
        "AND end_time IS NULL", stream_id)
    assert session is not None and session["id"] != first_session

    async def moved() -> bool:
        row = await db.fetchrow("SELECT session_id, is_active FROM stream_viewers "
                                "WHERE id = $1", edge_row["id"])
        return bool(row["is_active"]) and row["session_id"] == session["id"]
    await eventually(moved, "the edge's viewer moved to the new session")
    assert await db.fetchval("SELECT end_time FROM stream_sessions WHERE id = $1",
                             first_session) is not None
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                             stream_id) == "live"
    await eventually(lambda: _count_is(db, stream_id, 1), "the audience: the edge's viewer")
    # Past the reaper's grace the stream is still live (it moved), and billing goes on.
    ticks = await db.fetchval("SELECT total_ticks FROM stream_viewers WHERE id = $1",
                              edge_row["id"])
    await eventually(lambda: _ticks_above(db, edge_row["id"], ticks + 3),
                     "the edge's viewer billed in the new session", timeout=30)
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                             stream_id) == "live"


async def _ticks_above(db: asyncpg.Connection, viewer_id: Any, ticks: int) -> bool:
    return int(await db.fetchval("SELECT total_ticks FROM stream_viewers WHERE id = $1",
                                 viewer_id)) >= ticks
