"""The platform as several processes, as it is deployed: two signaling
servers, two SFU workers and billing, on one Postgres and Redis. Streams are
spread over the workers; a worker killed with -9 has its streams ended by the
reaper while the other worker keeps serving; a worker told to drain (SIGTERM)
sends its clients elsewhere and exits in time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from routing.reaper import reap_worker
from routing.registry import WORKERS_KEY, stream_worker_key, worker_key
from tests.media_clients import Publisher, Signal, Viewer
from tests.processes import start_role, wait_healthy
from tests.waiting import wait_until
from vilokanam.balances import credit
from vilokanam.config import Settings
from vilokanam.services.net import free_port
from vilokanam.services.process import ManagedProcess

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
WS_TIMEOUT = 15.0
Socket = aiohttp.ClientWebSocketResponse


@dataclass
class Role:
    proc: ManagedProcess
    settings: Settings
    port: int


@dataclass
class Cluster:
    signaling: list[Role]
    sfu: list[Role]
    http: aiohttp.ClientSession
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def url(self, path: str, server: int = 0) -> str:
        return f"http://127.0.0.1:{self.signaling[server].port}{path}"

    async def post(self, path: str, body: dict[str, Any], token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(self.url(path), json=body, headers=headers) as resp:
            assert resp.status in (200, 201), await resp.text()
            return await resp.json()

    async def stream(self) -> tuple[str, str]:
        token = (await self.post("/api/dev/token", {"account": ALICE}))["token"]
        created = await self.post("/api/streams", {"title": "multi"}, token)
        return str(created["id"]), str(created["stream_key"])

    async def socket(self, server: int) -> Socket:
        ws = await self.http.ws_connect(self.url("/ws", server))
        self.closers.append(ws.close)
        assert (await ws.receive_json(timeout=WS_TIMEOUT))["type"] == "hello"
        return ws

    async def publish(self, server: int, stream_id: str, key: str) -> tuple[Socket, Publisher]:
        ws = await self.socket(server)
        publisher = Publisher()
        self.closers.append(publisher.close)
        await publisher.start(signal_over(ws, {"type": "publish", "stream_id": stream_id,
                                               "stream_key": key}))
        return ws, publisher

    async def watch(self, server: int, stream_id: str, token: str) -> tuple[Socket, Viewer]:
        ws = await self.socket(server)
        viewer = Viewer()
        self.closers.append(viewer.close)
        await viewer.start(signal_over(ws, {"type": "watch", "stream_id": stream_id,
                                            "token": token}))
        return ws, viewer

    def worker_on(self, port: int) -> Role:
        return next(role for role in self.sfu if role.port == port)


def signal_over(ws: Socket, request: dict[str, Any]) -> Signal:
    async def signal(offer: str) -> str:
        await ws.send_json({**request, "sdp": offer})
        reply = await next_message(ws, {"answer", "error"})
        assert reply["type"] == "answer", reply
        return str(reply["sdp"])
    return signal


async def next_message(ws: Socket, types: set[str],
                       timeout: float = WS_TIMEOUT) -> dict[str, Any]:
    """The next message of one of `types`, skipping ticks, counts and the like."""
    async with asyncio.timeout(timeout):
        while True:
            message = dict(await ws.receive_json())
            if message["type"] in types:
                return message


def _start(settings: Settings, role: str, log_dir: Path, port_field: str) -> Role:
    settings = dataclasses.replace(settings, **{port_field: free_port()})
    return Role(start_role(settings, role, log_dir), settings, getattr(settings, port_field))


@pytest.fixture
async def cluster(settings: Settings, tmp_path: Path, db: asyncpg.Connection,
                  redis: aioredis.Redis) -> AsyncIterator[Cluster]:
    # db and redis: an empty database and keyspace before the processes start.
    settings = dataclasses.replace(settings, dev_mode=True, token_secret="x" * 40)
    signaling = [_start(settings, "signaling", tmp_path / f"signaling{n}", "http_port")
                 for n in (1, 2)]
    sfu = [_start(settings, "sfu", tmp_path / f"sfu{n}", "sfu_port") for n in (1, 2)]
    billing = start_role(settings, "billing", tmp_path / "billing")
    roles = [*signaling, *sfu]
    try:
        for role in roles:
            await asyncio.to_thread(wait_healthy, role.proc, role.port)
        await asyncio.to_thread(wait_healthy, billing, settings.billing_port)
        async with aiohttp.ClientSession() as http:
            cluster = Cluster(signaling, sfu, http)
            try:
                yield cluster
            finally:
                for close in reversed(cluster.closers):
                    await close()
    finally:
        for proc in [billing, *(role.proc for role in roles)]:
            await asyncio.to_thread(proc.stop)


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 10.0) -> None:
    await wait_until(check, what, timeout=timeout, interval=0.1)


async def pinned_worker(redis: aioredis.Redis, stream_id: str) -> dict[str, Any]:
    worker_id = await redis.get(stream_worker_key(stream_id))
    assert worker_id is not None, f"stream {stream_id} is not pinned"
    record = await redis.get(worker_key(worker_id.decode()))
    assert record is not None, f"worker {worker_id!r} has no record"
    return dict(json.loads(record))


def port_of(record: dict[str, Any]) -> int:
    return int(str(record["control_url"]).rsplit(":", 1)[1])


async def viewer_of(cluster: Cluster, db: asyncpg.Connection, redis: aioredis.Redis,
                    stream_id: str, server: int) -> tuple[Socket, Viewer]:
    bob = await cluster.post("/api/dev/token", {"account": BOB})
    await credit(db, redis, bob["user_id"], Decimal(100), "adjustment", "test funds", 12)
    ws, viewer = await cluster.watch(server, stream_id, bob["token"])
    await viewer.wait_for_frames("video", 5)
    return ws, viewer


# Every role as a process on a Redis Cluster too (REDIS_URL redis+cluster://).
@pytest.mark.redis_modes
async def test_streams_spread_over_workers_and_a_killed_worker_is_reaped(
        cluster: Cluster, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    stream_a, key_a = await cluster.stream()
    stream_b, key_b = await cluster.stream()
    await cluster.publish(0, stream_a, key_a)
    # Placement reads the load the workers last reported (each second): wait
    # for A's worker to report it, or B may land beside A.
    await eventually(lambda: _loaded(redis, stream_a), "A's worker to report its load")
    ws_b, _ = await cluster.publish(0, stream_b, key_b)
    worker_a, worker_b = await pinned_worker(redis, stream_a), await pinned_worker(redis, stream_b)
    assert worker_a["worker_id"] != worker_b["worker_id"]

    _, viewer = await viewer_of(cluster, db, redis, stream_a, server=1)
    session_b = await db.fetchval(
        "SELECT id FROM stream_sessions WHERE stream_id = $1::uuid", stream_b)

    cluster.worker_on(port_of(worker_b)).proc.kill()

    async def b_ended() -> bool:
        row = await db.fetchrow("SELECT status, end_time FROM streams WHERE id = $1::uuid",
                                stream_b)
        return row is not None and row["status"] == "ended" and row["end_time"] is not None
    # The reaper waits out the reconnect grace (10 s) after the record expires (3 s).
    await eventually(b_ended, "the reaper to end stream B", timeout=25)
    assert await db.fetchval("SELECT end_time FROM stream_sessions WHERE id = $1",
                             session_b) is not None
    assert await redis.get(stream_worker_key(stream_b)) is None
    assert (await next_message(ws_b, {"stream_ended", "error"}))["type"] == "stream_ended"
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                             stream_a) == "live"
    seen = viewer.frames["video"]
    await viewer.wait_for_frames("video", seen + 10, timeout=5)


async def _loaded(redis: aioredis.Redis, stream_id: str) -> bool:
    if await redis.get(stream_worker_key(stream_id)) is None:
        return False
    return int((await pinned_worker(redis, stream_id))["load"]) >= 1


async def test_a_draining_worker_sends_its_viewers_away_and_exits(
        cluster: Cluster, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    stream_id, key = await cluster.stream()
    await cluster.publish(0, stream_id, key)
    ws, _ = await viewer_of(cluster, db, redis, stream_id, server=1)
    worker = cluster.worker_on(port_of(await pinned_worker(redis, stream_id))).proc

    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    # The worker closes each peer (peer_closed worker_draining) before it
    # ends the stream, so the viewer hears "reconnect", not "it is over".
    told = await next_message(ws, {"error", "stream_ended"}, timeout=10)
    assert (told["type"], told.get("code")) == ("error", "worker_draining"), told
    await eventually(lambda: _exited(worker), "the worker to exit", timeout=10)
    assert worker.returncode == 0 and time.monotonic() - started < 10


async def _exited(proc: ManagedProcess) -> bool:
    return not proc.running


async def test_a_worker_reaped_while_alive_ends_what_the_reaper_ended(
        cluster: Cluster, db: asyncpg.Connection, redis: aioredis.Redis,
        pool: asyncpg.Pool) -> None:
    """A worker cut off from Redis past its heartbeat TTL and the reaper's
    grace (while its media flows: only its heartbeat is lost) is taken for
    dead: the reaper ends its stream and viewers in Postgres. The worker must
    not go on serving them unbilled (their ticks are dropped): at its next
    beat it finds itself reaped and ends them too, so the clients reconnect
    and are placed afresh. The reaper's round is run here at once, as it runs
    on such a worker -- a partition of one process from Redis cannot be made
    in a test without cutting off the others."""
    stream_id, key = await cluster.stream()
    await cluster.publish(0, stream_id, key)
    await viewer_of(cluster, db, redis, stream_id, server=1)
    record = await pinned_worker(redis, stream_id)

    async def carried() -> dict[str, Any]:
        async with cluster.http.get(f"{record['control_url']}/control/streams/{stream_id}") as r:
            return dict(await r.json())
    assert (await carried())["live"] and (await carried())["viewers"] == 1

    await reap_worker(redis, pool, str(record["worker_id"]))
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                             stream_id) == "ended"  # the fault landed

    async def let_go() -> bool:
        info = await carried()
        return not info["live"] and info["viewers"] == 0
    await eventually(let_go, "the worker to end the stream the reaper ended", timeout=15)
    # ... and it is a worker again, for new streams.
    await eventually(lambda: _registered(redis, str(record["worker_id"])),
                     "the worker back in the registry")


async def _registered(redis: aioredis.Redis, worker_id: str) -> bool:
    return bool(await redis.sismember(WORKERS_KEY, worker_id)
                and await redis.exists(worker_key(worker_id)))
