"""What a worker holds after viewers came and went (the soak's "+18 tasks, +20
open files", docs/reliability.md): with the real signaling app and a real SFU
worker in this process on real Postgres and Redis, a live aiortc publisher and
WHEP viewers joining and leaving, the only thing that grows with the audience
is signaling's keep-alive pool of connections to the worker — one socket and
one request-handler task on each side per connection — and it is bounded by
how many requests were in flight at once, not by how many viewers joined (ten
times the joins, the same pool), and it drains to nothing once idle. No peer
connection, task or file stays behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from sfu.control import MANAGER
from signaling import sfu_client
from tests.test_whip_whep import SDP, Stack, running
from tests.waiting import wait_for_value
from vilokanam.config import Settings
from vilokanam.health import coroutine_name

CONCURRENCY = 3  # viewers joining or leaving at once
KEEPALIVE_S = 1.0  # the pool's idle timeout here (15 s in production): the test waits on it
SETTLE_TIMEOUT = 60.0  # a loaded machine


def connections_to(port: int) -> int:
    """Established TCP connections to `port` on 127.0.0.1, as the kernel lists
    them (the port is this test's own: nobody else connects to it)."""
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[2].split(":")[1], 16) == port and cols[3] == "01":
                count += 1
    return count


def tasks() -> collections.Counter[str]:
    me = asyncio.current_task()
    return collections.Counter(coroutine_name(t) for t in asyncio.all_tasks()
                               if t is not me and not t.done())


def _remote_ports() -> dict[str, int]:
    """Socket inode -> remote port of this machine's TCP sockets."""
    ports = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            ports[cols[9]] = int(cols[2].split(":")[1], 16)
    return ports


def open_files(store_ports: set[int]) -> int:
    """This process's open files, but its connections to Postgres and Redis:
    those pools grow to the largest audience so far and stay (bounded by their
    own limits), which is not what this test is about."""
    ports = _remote_ports()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:[") and ports.get(target[8:-1]) in store_ports:
                continue
            count += 1
    return count


async def offers(count: int) -> list[str]:
    from tests.media_clients import client_pc

    made = []
    for _ in range(count):
        pc = client_pc()
        for kind in ("video", "audio"):
            pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        made.append(str(pc.localDescription.sdp))
        await pc.close()
    return made


async def audience(stack: Stack, http: aiohttp.ClientSession, stream_id: str, token: str,
                   offer: list[str], joins: int) -> int:
    """`joins` WHEP viewers, CONCURRENCY at a time, each joining and leaving
    (DELETE); returns the most connections to the worker seen meanwhile."""
    port = stack.settings.sfu_port
    most = 0
    queue = list(range(joins))

    async def seat() -> None:
        nonlocal most
        while queue:
            number = queue.pop()
            async with http.post(stack.url(f"/whep/{stream_id}"),
                                 data=offer[number % len(offer)],
                                 headers={"Content-Type": SDP,
                                          "Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 201, await resp.text()
                location = resp.headers["Location"]
            most = max(most, connections_to(port))
            async with http.delete(stack.url(location)) as resp:
                assert resp.status == 200, await resp.text()
            most = max(most, connections_to(port))

    await asyncio.gather(*(seat() for _ in range(CONCURRENCY)))
    return most


@pytest.fixture
def short_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sfu_client, "WORKER_KEEPALIVE_S", KEEPALIVE_S)


async def test_joins_and_leaves_leave_only_a_bounded_pool_that_drains(
        settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis,
        short_keepalive: None) -> None:
    async with running(settings, db, redis) as stack:
        manager = stack.worker.app[MANAGER]  # type: ignore[union-attr]
        port = settings.sfu_port
        store_ports = {urlsplit(settings.database_url).port, urlsplit(settings.redis_url).port}
        stream_id, key = await stack.stream()
        await db.execute("UPDATE streams SET record = FALSE")
        publisher, _ = await stack.publish(stream_id, key)
        _, token = await stack.viewer_token()
        offer = await offers(2)
        # No keep-alive on our side: our own connections would be the servers' files and tasks.
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as http:

            async def idle() -> tuple[collections.Counter[str], int]:
                """Once the pool drained and the worker holds only the publisher."""
                await wait_for_value(lambda: len(manager.peers), lambda n: n == 1,
                                     "the worker to hold only the publisher",
                                     timeout=SETTLE_TIMEOUT)
                await wait_for_value(lambda: connections_to(port), lambda n: n == 0,
                                     "the keep-alive pool to the worker to drain",
                                     timeout=SETTLE_TIMEOUT)
                return tasks(), open_files(store_ports)

            # The warm-up: the stores' pools grow to what this audience needs.
            await audience(stack, http, stream_id, token, offer, CONCURRENCY * 2)
            base_tasks, base_files = await idle()

            few = await audience(stack, http, stream_id, token, offer, CONCURRENCY)
            many = await audience(stack, http, stream_id, token, offer, CONCURRENCY * 10)
            # The pool is as large as the requests in flight at once, whatever the joins.
            assert 1 <= few <= CONCURRENCY + 2 and 1 <= many <= CONCURRENCY + 2, (few, many)
            assert many <= few + 2, (few, many)

            def grown() -> dict[str, int]:
                return {name: n - base_tasks[name] for name, n in tasks().items()
                        if n > base_tasks[name]}

            await idle()
            await wait_for_value(grown, lambda more: more == {},
                                 "no more tasks than before the joins (by coroutine)",
                                 timeout=SETTLE_TIMEOUT)
            await wait_for_value(lambda: open_files(store_ports), lambda n: n <= base_files,
                                 f"open files back to {base_files}", timeout=SETTLE_TIMEOUT)
            assert manager.stats()["viewers"] == 0
        await publisher.close()
