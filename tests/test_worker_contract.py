"""The fake worker of the protocol tests (tests/fake_worker.py) against the
real worker: the same conversation with both — publish, watch, candidates,
leave, and every refusal the fake can be told to give — and both must answer
with the same statuses, error codes and response shapes. The real one is the
worker's own aiohttp app (sfu/app.py) with real aiortc peers, Postgres and
Redis; if the control API changes, this test fails until the fake follows."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from sfu.app import create_app
from sfu.control import MANAGER
from tests.fake_worker import WORKER_REFUSALS, FakeWorker
from tests.media_clients import client_pc
from vilokanam.balances import credit
from vilokanam.config import Settings

Shape = tuple[int, Any]  # (status, the body's shape)


def shape_of(value: Any) -> Any:
    """What a client can rely on: keys and value types, not values; an error's
    code is part of its shape (signaling maps codes to protocol errors)."""
    if isinstance(value, dict):
        if set(value) == {"error"} and isinstance(value["error"], dict):
            return {"error": {"code": value["error"].get("code"),
                              "message": type(value["error"].get("message")).__name__}}
        return {key: shape_of(item) for key, item in value.items()}
    return type(value).__name__


@dataclass
class Door:
    """One worker's control API, and what this conversation learnt from it."""

    url: str
    session: aiohttp.ClientSession
    peers: dict[str, str] = field(default_factory=dict)  # role in the test -> peer id

    async def call(self, method: str, path: str, body: Any = None) -> Shape:
        path = path.format(**self.peers)
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.url + path, data=data) as resp:
            payload = None if resp.status == 204 else await resp.json(content_type=None)
        return resp.status, payload


@dataclass(frozen=True)
class Step:
    """One request; `refusal` is the code the fake is told to refuse with,
    and `arrange` puts the real worker in the state that makes it refuse so;
    `remember` names the peer a 201 answer creates."""

    what: str
    method: str
    path: str
    body: Any = None
    refusal: str | None = None
    arrange: Callable[[web.Application], None] | None = None
    remember: str | None = None


async def offer(kinds: tuple[str, ...], direction: str) -> str:
    pc = client_pc()
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def full(app: web.Application) -> None:
    app[MANAGER].capacity = len(app[MANAGER].peers)


def roomy(app: web.Application) -> None:
    app[MANAGER].capacity = 150


async def conversation(stream: str, viewer_user: str) -> list[Step]:
    publisher_offer = await offer(("video", "audio"), "sendonly")
    viewer_offer = await offer(("video", "audio"), "recvonly")
    unknown_codec = (await offer(("video",), "sendonly")).replace(
        "VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000")
    publish = f"/control/streams/{stream}/publisher"
    watch = f"/control/streams/{stream}/viewers"
    watching = {"sdp": viewer_offer, "viewer_user_id": viewer_user}
    host = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}
    return [
        Step("watch before anyone publishes", "POST", watch, watching,
             refusal="stream_not_live"),
        Step("publish a body with no sdp string", "POST", publish, {"sdp": 42},
             refusal="bad_request"),
        Step("publish what is not SDP", "POST", publish, {"sdp": "hello"}, refusal="bad_sdp"),
        Step("publish only codecs we lack", "POST", publish, {"sdp": unknown_codec},
             refusal="no_supported_codec"),
        Step("publish three tracks", "POST", publish,
             {"sdp": await offer(("video", "video", "audio"), "sendonly")},
             refusal="too_many_tracks"),
        Step("publish", "POST", publish,
             {"sdp": publisher_offer, "signaling_url": "http://127.0.0.1:1"},
             remember="publisher"),
        Step("publish again", "POST", publish, {"sdp": publisher_offer},
             refusal="already_live"),
        Step("watch on a full worker", "POST", watch, watching, refusal="at_capacity",
             arrange=full),
        Step("watch", "POST", watch, watching, arrange=roomy, remember="viewer"),
        Step("a host candidate", "POST", "/control/peers/{viewer}/candidates", host),
        Step("end of candidates", "POST", "/control/peers/{viewer}/candidates",
             {"candidate": "", "sdpMid": None, "sdpMLineIndex": None}),
        Step("a candidate that is not one", "POST", "/control/peers/{viewer}/candidates",
             {"candidate": "not a candidate", "sdpMid": "0", "sdpMLineIndex": 0},
             refusal="bad_candidate"),
        Step("a candidate for no peer", "POST", "/control/peers/nobody/candidates", host),
        Step("the viewer leaves", "DELETE", "/control/peers/{viewer}"),
        Step("the viewer leaves twice", "DELETE", "/control/peers/{viewer}"),
        Step("a candidate for a peer that left", "POST",
             "/control/peers/{viewer}/candidates", host),
        Step("the publisher leaves", "DELETE", "/control/peers/{publisher}"),
    ]


async def run(door: Door, steps: list[Step],
              before: Callable[[Step], Awaitable[None]]) -> list[tuple[str, Shape]]:
    answers = []
    for step in steps:
        await before(step)
        status, body = await door.call(step.method, step.path, step.body)
        if step.remember and status == 201:
            door.peers[step.remember] = str(body["peer_id"])
        answers.append((step.what, (status, shape_of(body))))
    return answers


@pytest.fixture
async def real_worker(settings: Settings) -> AsyncIterator[TestServer]:
    server = TestServer(create_app(settings))
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def fake_worker(redis: aioredis.Redis) -> AsyncIterator[FakeWorker]:
    fake = FakeWorker(redis)
    await fake.start()
    yield fake
    await fake.stop()


async def make_stream_and_viewer(db: asyncpg.Connection, redis: aioredis.Redis,
                                 n: int) -> tuple[str, str]:
    creator = await db.fetchval(
        "INSERT INTO users (account_id, is_creator) VALUES ($1, TRUE) RETURNING id",
        f"creator-{n}")
    stream = await db.fetchval(
        "INSERT INTO streams (creator_id, title) VALUES ($1, 'contract') RETURNING id", creator)
    viewer = str(await db.fetchval(
        "INSERT INTO users (account_id) VALUES ($1) RETURNING id", f"viewer-{n}"))
    await credit(db, redis, viewer, Decimal(10), "adjustment", "test funds", 12)
    return str(stream), viewer


async def test_the_fake_worker_answers_as_the_real_one_does(
        real_worker: TestServer, fake_worker: FakeWorker, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    real_app = real_worker.app

    async def arrange_real(step: Step) -> None:
        if step.arrange is not None:
            step.arrange(real_app)

    async def arrange_fake(step: Step) -> None:
        if step.refusal is not None:
            fake_worker.refuse_next(step.refusal)

    async with aiohttp.ClientSession() as session:
        stream, viewer = await make_stream_and_viewer(db, redis, 1)
        real = await run(Door(str(real_worker.make_url("")).rstrip("/"), session),
                         await conversation(stream, viewer), arrange_real)
        stream, viewer = await make_stream_and_viewer(db, redis, 2)
        fake = await run(Door(fake_worker.control_url, session),
                         await conversation(stream, viewer), arrange_fake)
    for (what, real_answer), (_, fake_answer) in zip(real, fake, strict=True):
        assert fake_answer == real_answer, f"{what}: the fake answers {fake_answer}, " \
                                           f"the real worker {real_answer}"
    # the conversation did reach every refusal the fake may be told to give
    refused = {answer[1]["error"]["code"]: answer[0] for _, answer in real
               if isinstance(answer[1], dict) and "error" in answer[1]}
    assert refused == WORKER_REFUSALS


def test_the_fake_serves_only_routes_the_real_worker_has(
        settings: Settings, redis: aioredis.Redis) -> None:
    def routes(app: web.Application) -> set[tuple[str, str]]:
        return {(route.method, route.resource.canonical) for route in app.router.routes()
                if route.resource is not None}

    fake = routes(FakeWorker(redis).app)
    assert fake and fake <= routes(create_app(settings))
