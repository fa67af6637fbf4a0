"""The real SFU worker app run inside the test's process (aiohttp's
TestServer): the `worker` fixture (a free port, with a client session and
helpers to signal publishers and viewers through its control API) and
`worker_on_settings_port` (on the port signaling's settings name, for tests
that drive it through signaling). tests/processes.py runs workers as real
processes instead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from sfu.app import create_app
from sfu.control import MANAGER
from sfu.streams import StreamManager
from vilokanam.balances import credit
from vilokanam.config import Settings


@dataclass
class Worker:
    server: TestServer
    session: aiohttp.ClientSession
    redis: aioredis.Redis

    @property
    def manager(self) -> StreamManager:
        return self.server.app[MANAGER]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def post(self, path: str, body: object) -> tuple[int, dict]:
        async with self.session.post(self.url(path), json=body) as resp:
            return resp.status, (await resp.json() if resp.status != 204 else {})

    def signal_publisher(self, stream_id: str):  # type: ignore[no-untyped-def]
        async def signal(offer: str) -> str:
            status, body = await self.post(f"/control/streams/{stream_id}/publisher",
                                           {"sdp": offer, "signaling_url": "http://sig"})
            assert status == 201, body
            self.last = body
            return str(body["sdp"])
        return signal

    def signal_viewer(self, stream_id: str, user_id: str):  # type: ignore[no-untyped-def]
        async def signal(offer: str) -> str:
            status, body = await self.post(f"/control/streams/{stream_id}/viewers",
                                           {"sdp": offer, "viewer_user_id": user_id})
            assert status == 201, body
            self.last = body
            return str(body["sdp"])
        return signal


@pytest.fixture
async def worker(settings: Settings, db: asyncpg.Connection,
                 redis: aioredis.Redis) -> AsyncIterator[Worker]:
    server = TestServer(create_app(settings))
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Worker(server, session, redis)
    await server.close()


async def make_stream(db: asyncpg.Connection) -> tuple[str, str]:
    creator = await db.fetchval(
        "INSERT INTO users (account_id, is_creator) VALUES ('creator', TRUE) RETURNING id")
    stream = await db.fetchval(
        "INSERT INTO streams (creator_id, title, stream_key_hash) "
        "VALUES ($1, 'test stream', sha256('k'::bytea)) RETURNING id", creator)
    return str(stream), str(creator)


async def make_viewer_user(worker: Worker, db: asyncpg.Connection, name: str,
                           funds: Decimal = Decimal(1000)) -> str:
    """A viewer with a prepaid balance (a viewer without one is cut off)."""
    user = str(await db.fetchval(
        "INSERT INTO users (account_id) VALUES ($1) RETURNING id", name))
    await credit(db, worker.redis, user, funds, "adjustment", "test funds", 12)
    return user


@pytest.fixture
async def worker_on_settings_port(settings: Settings) -> AsyncIterator[None]:
    """The real SFU worker on the port signaling's settings name."""
    server = TestServer(create_app(settings), host=settings.sfu_host,
                        port=settings.sfu_port)
    await server.start_server()
    yield
    await server.close()
