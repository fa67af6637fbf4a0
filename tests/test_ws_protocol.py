"""The websocket protocol (docs/protocol.md) end to end through the real
signaling app, real Postgres and real Redis: every message, every error code,
the states, the rate limit, event relay and clean-up. The SFU worker here is
the FAKE in tests/fake_worker.py (checked against the real worker by
tests/test_worker_contract.py); the media tests use the real one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, cast

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from routing.registry import (
    WORKERS_KEY,
    WorkerRecord,
    stream_worker_key,
    worker_key,
)
from signaling import ws as ws_module
from signaling.app import create_app
from signaling.events import EVENTS
from signaling.protocol import MAX_MESSAGE_BYTES, ErrorCode, ProtocolError
from signaling.stream_keys import hash_stream_key, new_stream_key
from signaling.tokens import issue_token
from tests.fake_worker import FAKE_ANSWER_SDP, FakeWorker
from tests.waiting import wait_until
from vilokanam import live_ticks
from vilokanam.balances import credit
from vilokanam.config import Settings
from vilokanam.metering import LIVE_CHANNEL
from vilokanam.money import format_amount, from_planck
from vilokanam.services.net import free_port

SECRET = "x" * 40
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"  # never parsed by the fake
TIMEOUT = 5.0

Socket = aiohttp.ClientWebSocketResponse


@dataclasses.dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    worker: FakeWorker
    redis: aioredis.Redis
    db: asyncpg.Connection
    settings: Settings
    keys: dict[str, str] = dataclasses.field(default_factory=dict)

    async def connect(self) -> Socket:
        ws = await self.client.ws_connect("/ws")
        assert await ws.receive_json(timeout=TIMEOUT) == {"type": "hello", "version": 1}
        return ws

    async def user(self) -> str:
        account = f"5Test{secrets.token_hex(12)}"
        return str(await self.db.fetchval(
            "INSERT INTO users(account_id) VALUES ($1) RETURNING id::text", account))

    async def stream(self) -> tuple[str, str]:
        """A stream row, as the API creates it: (id, its stream key)."""
        key = new_stream_key()
        stream_id = await self.db.fetchval(
            "INSERT INTO streams(creator_id, title, stream_key_hash) VALUES ($1, 'test', $2) "
            "RETURNING id::text", uuid.UUID(await self.user()), hash_stream_key(key))
        self.keys[str(stream_id)] = key
        return str(stream_id), key

    async def stream_key(self, stream_id: str) -> str:
        return self.keys[stream_id]

    async def token(self, funds: Decimal = Decimal(100)) -> tuple[str, str]:
        """A viewer with a prepaid balance: (user id, its token)."""
        user_id = await self.user()
        if funds:
            await credit(self.db, self.redis, user_id, funds, "adjustment", "test funds", 12)
        return user_id, issue_token(SECRET, user_id, "5Viewer")

    async def publishing(self) -> tuple[Socket, str, dict[str, Any]]:
        ws = await self.connect()
        stream_id, key = await self.stream()
        answer = await ask(ws, publish(stream_id, key))
        assert answer["type"] == "answer", answer
        return ws, stream_id, answer

    async def event(self, channel: str, **event: Any) -> None:
        assert await self.redis.publish(channel, json.dumps(event)) >= 1


@asynccontextmanager
async def running(settings: Settings, redis: aioredis.Redis,
                  db: asyncpg.Connection) -> AsyncIterator[Harness]:
    settings = dataclasses.replace(settings, token_secret=SECRET)
    worker = FakeWorker(redis)
    await worker.start()
    try:
        server = TestServer(create_app(settings), host=settings.http_host,
                            port=settings.http_port)
        async with TestClient(server) as client:
            yield Harness(client, worker, redis, db, settings)
    finally:
        await worker.stop()


@pytest.fixture
async def h(settings: Settings, redis: aioredis.Redis,
            db: asyncpg.Connection) -> AsyncIterator[Harness]:
    async with running(settings, redis, db) as harness:
        yield harness


def publish(stream_id: str, key: str, sdp: str = OFFER) -> dict[str, Any]:
    return {"type": "publish", "stream_id": stream_id, "stream_key": key, "sdp": sdp}


def watch(stream_id: str, token: str, sdp: str = OFFER) -> dict[str, Any]:
    return {"type": "watch", "stream_id": stream_id, "token": token, "sdp": sdp}


async def ask(ws: Socket, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json(message)
    return dict(await ws.receive_json(timeout=TIMEOUT))


async def error_code(ws: Socket, message: dict[str, Any] | str) -> str:
    if isinstance(message, str):
        await ws.send_str(message)
        reply = await ws.receive_json(timeout=TIMEOUT)
    else:
        reply = await ask(ws, message)
    assert reply["type"] == "error" and set(reply) == {"type", "code", "message"}, reply
    assert reply["message"]
    return str(reply["code"])


async def eventually(check: Callable[[], bool], what: str) -> None:
    await wait_until(check, what, timeout=TIMEOUT, interval=0.02)


@dataclasses.dataclass(eq=False)
class Witness:
    """A listener of signaling's event hub that keeps what it hears."""

    seen: list[dict[str, Any]]

    def on_event(self, channel: str, event: dict[str, Any]) -> None:
        self.seen.append(event)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- publish -----------------------------------------------------------------------

async def test_publish_answers_and_pins_the_stream(h: Harness) -> None:
    ws, stream_id, answer = await h.publishing()
    assert set(answer) == {"type", "sdp", "session_id", "resumed"}
    assert answer["sdp"] == FAKE_ANSWER_SDP and answer["resumed"] is False
    uuid.UUID(answer["session_id"])
    method, path, body = h.worker.requests[0]
    assert (method, path) == ("POST", f"/control/streams/{stream_id}/publisher")
    assert body == {"sdp": OFFER, "signaling_url": h.settings.base_url}
    assert await h.redis.get(stream_worker_key(stream_id)) == h.worker.worker_id.encode()
    await ws.close()


async def test_publish_to_an_unknown_stream(h: Harness) -> None:
    ws = await h.connect()
    assert await error_code(ws, publish(str(uuid.uuid4()), "sk_whatever")) == "stream_not_found"


async def test_a_wrong_key_is_unauthorized_counted_and_rate_limited(h: Harness) -> None:
    ws = await h.connect()
    stream_id, key = await h.stream()
    before = metric("vilokanam_auth_failures_total", kind="stream_key")
    for _ in range(5):
        assert await error_code(ws, publish(stream_id, "sk_wrong")) == "unauthorized"
    assert metric("vilokanam_auth_failures_total", kind="stream_key") == before + 5
    assert await error_code(ws, publish(stream_id, "sk_wrong")) == "rate_limited"
    # checked before the key: even the right key learns nothing while limited
    assert await error_code(ws, publish(stream_id, key)) == "rate_limited"
    # shared through Redis: another connection from the same address is limited too
    other = await h.connect()
    assert await error_code(other, publish(stream_id, key)) == "rate_limited"
    assert 0 < await h.redis.ttl("vk:ratelimit:stream_key:127.0.0.1") <= 60
    assert not h.worker.requests


async def test_no_worker_is_no_capacity(h: Harness) -> None:
    await h.worker.deregister()
    ws = await h.connect()
    stream_id, key = await h.stream()
    assert await error_code(ws, publish(stream_id, key)) == "no_capacity"


async def test_a_full_worker_is_no_capacity(h: Harness) -> None:
    await h.worker.deregister()
    full = WorkerRecord("full", h.worker.control_url, 2, 2, 1, int(time.time() * 1000))
    await h.redis.sadd(WORKERS_KEY, "full")
    await h.redis.set(worker_key("full"), full.to_json(), px=60_000)
    ws = await h.connect()
    stream_id, key = await h.stream()
    assert await error_code(ws, publish(stream_id, key)) == "no_capacity"


@pytest.mark.parametrize(("status", "worker_code", "code"), [
    (409, "already_live", "already_live"),
    (422, "no_supported_codec", "no_supported_codec"),
    (422, "too_many_tracks", "too_many_tracks"),
    (400, "bad_sdp", "bad_sdp"),
    (503, "at_capacity", "no_capacity"),
    (500, "kaput", "sfu_unavailable"),
])
async def test_worker_refusals_map_to_protocol_codes(h: Harness, status: int, worker_code: str,
                                                     code: str) -> None:
    ws = await h.connect()
    stream_id, key = await h.stream()
    h.worker.refuse_next(worker_code, status)
    assert await error_code(ws, publish(stream_id, key)) == code
    pinned = await h.redis.get(stream_worker_key(stream_id))
    # a fresh pin the worker refused is undone; already_live means someone is live there
    assert (pinned is not None) == (worker_code in ("already_live", "kaput"))
    # still idle: the same connection may publish again
    assert (await ask(ws, publish(stream_id, key)))["type"] == "answer"


async def test_an_unreachable_worker_is_sfu_unavailable(h: Harness) -> None:
    await h.worker.deregister()
    dead = WorkerRecord("dead", f"http://127.0.0.1:{free_port()}", 10, 0, 0,
                        int(time.time() * 1000))
    await h.redis.sadd(WORKERS_KEY, "dead")
    await h.redis.set(worker_key("dead"), dead.to_json(), px=60_000)
    ws = await h.connect()
    stream_id, key = await h.stream()
    assert await error_code(ws, publish(stream_id, key)) == "sfu_unavailable"


async def test_a_reconnecting_publisher_goes_back_to_its_worker(h: Harness) -> None:
    ws, stream_id, _ = await h.publishing()
    key = await h.stream_key(stream_id)
    peer = h.worker.last_peer
    await h.event(f"vk:peer:{peer}:events", type="peer_closed", peer_id=peer,
                  reason="connection_failed")
    assert (await ws.receive_json(timeout=TIMEOUT))["code"] == "connection_failed"
    idler = FakeWorker(h.redis, worker_id="0-idler")  # least loaded, first by id: preferred
    await idler.start()
    try:
        assert (await ask(ws, publish(stream_id, key)))["type"] == "answer"
        assert len(h.worker.requests_to("POST")) == 2 and not idler.requests
        other_id, other_key = await h.stream()
        other = await h.connect()
        assert (await ask(other, publish(other_id, other_key)))["type"] == "answer"
        assert len(idler.requests_to("POST")) == 1  # a new stream does go to the idler
        await other.close()
        await eventually(lambda: bool(idler.requests_to("DELETE")), "the idler's DELETE")
    finally:
        await idler.stop()


# -- watch -------------------------------------------------------------------------

async def test_watch_answers_with_the_viewer_session(h: Harness) -> None:
    _, stream_id, _ = await h.publishing()
    user_id, token = await h.token()
    ws = await h.connect()
    answer = await ask(ws, watch(stream_id, token))
    assert set(answer) == {"type", "sdp", "session_id", "viewer_session_id"}
    assert answer["session_id"] == answer["viewer_session_id"]
    method, path, body = h.worker.requests_to("POST")[-1]
    assert path == f"/control/streams/{stream_id}/viewers"
    assert body == {"sdp": OFFER, "viewer_user_id": user_id}


@pytest.mark.parametrize("token", ["v1.bad.token", issue_token("y" * 40, "u", "a"),
                                   issue_token(SECRET, "u", "a", ttl_s=-5)])
async def test_watch_with_a_bad_token_is_unauthorized(h: Harness, token: str) -> None:
    _, stream_id, _ = await h.publishing()
    ws = await h.connect()
    before = metric("vilokanam_auth_failures_total", kind="token")
    assert await error_code(ws, watch(stream_id, token)) == "unauthorized"
    assert metric("vilokanam_auth_failures_total", kind="token") == before + 1
    assert not h.worker.requests_to("POST")[1:]  # only the publisher reached the worker


async def test_watch_a_stream_that_is_not_live(h: Harness) -> None:
    _, token = await h.token()
    ws = await h.connect()
    never_placed, _ = await h.stream()
    assert await error_code(ws, watch(never_placed, token)) == "stream_not_live"
    # pinned to a worker that has died
    await h.redis.set(stream_worker_key(never_placed), "gone-worker")
    assert await error_code(ws, watch(never_placed, token)) == "stream_not_live"
    # the worker has no publisher for it
    await h.redis.set(stream_worker_key(never_placed), h.worker.worker_id)
    h.worker.refuse_next("stream_not_live")
    assert await error_code(ws, watch(never_placed, token)) == "stream_not_live"


async def test_the_balance_hook_refuses_with_insufficient_funds(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broke(*_: Any) -> None:
        raise ProtocolError(ErrorCode.INSUFFICIENT_FUNDS, "top up first")

    monkeypatch.setattr(ws_module, "ensure_viewer_can_pay", broke)
    _, stream_id, _ = await h.publishing()
    _, token = await h.token()
    ws = await h.connect()
    assert await error_code(ws, watch(stream_id, token)) == "insufficient_funds"


async def test_an_unexpected_exception_is_internal_error_and_the_socket_lives(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    async def bug(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ws_module, "ensure_viewer_can_pay", bug)
    _, stream_id, _ = await h.publishing()
    _, token = await h.token()
    ws = await h.connect()
    assert await error_code(ws, watch(stream_id, token)) == "internal_error"
    assert (await ask(ws, {"type": "leave"}))["type"] == "left"


# -- candidates, leave, close ------------------------------------------------------------

async def test_candidates_reach_the_worker_in_order(h: Harness) -> None:
    ws, _, _ = await h.publishing()
    peer = h.worker.last_peer
    candidate = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
                 "sdpMid": "0", "sdpMLineIndex": 0}
    await ws.send_json({"type": "candidate", "candidate": candidate})
    await ws.send_json({"type": "candidate", "candidate": None})
    assert (await ask(ws, {"type": "leave"}))["type"] == "left"  # candidates send no reply
    assert h.worker.requests[-3:] == [
        ("POST", f"/control/peers/{peer}/candidates", candidate),
        ("POST", f"/control/peers/{peer}/candidates", {"candidate": None}),
        ("DELETE", f"/control/peers/{peer}", None),
    ]


async def test_a_candidate_the_worker_cannot_parse_is_bad_candidate(h: Harness) -> None:
    ws, _, _ = await h.publishing()
    h.worker.refuse_next("bad_candidate")
    candidate = {"candidate": "candidate:garbage", "sdpMid": "0", "sdpMLineIndex": 0}
    assert await error_code(ws, {"type": "candidate", "candidate": candidate}) == "bad_candidate"
    await ws.send_json({"type": "candidate", "candidate": None})  # still publishing
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}
    assert [r[2] for r in h.worker.requests_to("POST")[-2:]] == [candidate, {"candidate": None}]


async def test_a_candidate_for_a_peer_the_worker_closed_is_ignored(h: Harness) -> None:
    ws, _, _ = await h.publishing()
    h.worker.peers.clear()  # the worker closed it; its peer_closed event is on the way
    await ws.send_json({"type": "candidate", "candidate": None})
    assert (await ask(ws, {"type": "leave"}))["type"] == "left"


async def test_leave_deletes_the_peer_and_returns_to_idle(h: Harness) -> None:
    ws, _, _ = await h.publishing()
    peer = h.worker.last_peer
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}
    assert h.worker.requests_to("DELETE") == [("DELETE", f"/control/peers/{peer}", None)]
    assert peer not in h.worker.peers
    assert await error_code(ws, {"type": "candidate", "candidate": None}) == "wrong_state"
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}  # idempotent
    assert len(h.worker.requests_to("DELETE")) == 1


async def test_closing_the_websocket_deletes_the_peer(h: Harness) -> None:
    ws, _, _ = await h.publishing()
    peer = h.worker.last_peer
    await ws.close()
    await eventually(lambda: bool(h.worker.requests_to("DELETE")), "the DELETE")
    assert h.worker.requests_to("DELETE") == [("DELETE", f"/control/peers/{peer}", None)]


async def test_a_watcher_closing_deletes_its_peer(h: Harness) -> None:
    _, stream_id, _ = await h.publishing()
    _, token = await h.token()
    ws = await h.connect()
    await ask(ws, watch(stream_id, token))
    viewer_peer = h.worker.last_peer
    await ws.close()
    await eventually(lambda: bool(h.worker.requests_to("DELETE")), "the DELETE")
    assert h.worker.requests_to("DELETE") == [("DELETE", f"/control/peers/{viewer_peer}", None)]


# -- states ------------------------------------------------------------------------

async def test_wrong_state_messages_keep_the_connection(h: Harness) -> None:
    ws = await h.connect()
    assert await error_code(ws, {"type": "candidate", "candidate": None}) == "wrong_state"
    stream_id, key = await h.stream()
    assert (await ask(ws, publish(stream_id, key)))["type"] == "answer"
    assert await error_code(ws, publish(stream_id, key)) == "wrong_state"
    _, token = await h.token()
    assert await error_code(ws, watch(stream_id, token)) == "wrong_state"
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}

    assert (await ask(ws, watch(stream_id, token)))["type"] == "answer"
    assert await error_code(ws, watch(stream_id, token)) == "wrong_state"
    assert await error_code(ws, publish(stream_id, key)) == "wrong_state"
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}


# -- bad input ----------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "code", "field"), [
    ("not json", "bad_json", None),
    ('{"type": "publish",', "bad_json", None),
    ("[1, 2]", "unknown_type", None),
    ('"publish"', "unknown_type", None),
    ("{}", "unknown_type", None),
    ('{"type": "dance"}', "unknown_type", None),
    ('{"type": "publish", "stream_key": "k", "sdp": "x"}', "bad_request", "stream_id"),
    ('{"type": "publish", "stream_id": "no-uuid", "stream_key": "k", "sdp": "x"}',
     "bad_request", "stream_id"),
    (f'{{"type": "publish", "stream_id": "{uuid.uuid4()}", "sdp": "x"}}',
     "bad_request", "stream_key"),
    (f'{{"type": "watch", "stream_id": "{uuid.uuid4()}", "token": "t"}}', "bad_request", "sdp"),
    (f'{{"type": "watch", "stream_id": "{uuid.uuid4()}", "token": 5, "sdp": "x"}}',
     "bad_request", "token"),
    ('{"type": "candidate"}', "bad_request", "candidate"),
    ('{"type": "candidate", "candidate": "a=candidate"}', "bad_request", "candidate"),
    ('{"type": "candidate", "candidate": {"sdpMid": "0"}}', "bad_request",
     "candidate.candidate"),
    ('{"type": "candidate", "candidate": {"candidate": "", "sdpMLineIndex": true}}',
     "bad_request", "candidate.sdpMLineIndex"),
])
async def test_bad_input_is_an_error_and_the_socket_lives(h: Harness, raw: str, code: str,
                                                          field: str | None) -> None:
    ws = await h.connect()
    await ws.send_str(raw)
    reply = await ws.receive_json(timeout=TIMEOUT)
    assert (reply["type"], reply["code"]) == ("error", code)
    if field is not None:
        assert reply["message"].startswith(f"{field}:")
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}


async def test_binary_frames_are_bad_request(h: Harness) -> None:
    ws = await h.connect()
    await ws.send_bytes(b'{"type": "leave"}')
    assert (await ws.receive_json(timeout=TIMEOUT))["code"] == "bad_request"
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}


async def test_a_message_over_64_kib_is_refused_and_the_socket_lives(h: Harness) -> None:
    ws = await h.connect()
    stream_id, key = await h.stream()
    huge = json.dumps(publish(stream_id, key, sdp="a" * MAX_MESSAGE_BYTES))
    assert await error_code(ws, huge) == "message_too_large"
    assert (await ask(ws, publish(stream_id, key)))["type"] == "answer"
    assert len(h.worker.requests_to("POST")) == 1  # the huge one never reached the worker


async def test_a_frame_over_1_mib_closes_with_1009(h: Harness) -> None:
    ws = await h.connect()
    await ws.send_str("x" * (1024 * 1024 + 1))
    closing = await ws.receive(timeout=TIMEOUT)
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == 1009


# -- events ----------------------------------------------------------------------------

async def test_stream_events_are_relayed(h: Harness) -> None:
    ws, stream_id, answer = await h.publishing()
    channel = f"vk:stream:{stream_id}:events"
    other_stream = f"vk:stream:{uuid.uuid4()}:events"
    await h.redis.publish(other_stream, json.dumps({"type": "viewer_count", "count": 99}))
    await h.event(channel, type="viewer_count", stream_id=stream_id, count=3)
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "viewer_count", "count": 3}
    await h.event(channel, type="stream_started", stream_id=stream_id,
                  session_id=answer["session_id"])
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "stream_started"}
    # the end of an earlier session of this stream is not ours
    await h.event(channel, type="stream_ended", stream_id=stream_id, session_id="earlier")
    await h.event(channel, type="stream_ended", stream_id=stream_id,
                  session_id=answer["session_id"])
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "stream_ended"}
    assert await error_code(ws, {"type": "candidate", "candidate": None}) == "wrong_state"


async def test_viewers_get_counts_and_the_end(h: Harness) -> None:
    _, stream_id, _ = await h.publishing()
    _, token = await h.token()
    ws = await h.connect()
    await ask(ws, watch(stream_id, token))
    channel = f"vk:stream:{stream_id}:events"
    await h.event(channel, type="viewer_count", stream_id=stream_id, count=1)
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "viewer_count", "count": 1}
    await h.event(channel, type="stream_ended", stream_id=stream_id, session_id="s")
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "stream_ended"}
    # the worker's peer_closed for the same end is not a second message
    await h.event(f"vk:peer:{h.worker.last_peer}:events", type="peer_closed",
                  peer_id=h.worker.last_peer, reason="stream_ended")
    assert await ask(ws, {"type": "leave"}) == {"type": "left"}


async def test_events_published_while_the_worker_answers_follow_the_answer(
        h: Harness) -> None:
    _, stream_id, _ = await h.publishing()

    async def count_this_viewer() -> None:
        # signaling's hub hands an event to every listener of its channel in
        # one go: once this one has it, the watcher's connection has it too
        seen: list[dict[str, Any]] = []
        witness = Witness(seen)
        hub = h.client.app[EVENTS]
        hub.add(f"vk:stream:{stream_id}:events", witness)
        await h.event(f"vk:stream:{stream_id}:events", type="viewer_count",
                      stream_id=stream_id, count=1)
        await wait_until(lambda: seen, "signaling receiving the event before the answer")
        hub.remove(f"vk:stream:{stream_id}:events", witness)

    h.worker.while_answering = count_this_viewer
    _, token = await h.token()
    ws = await h.connect()
    assert (await ask(ws, watch(stream_id, token)))["type"] == "answer"
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "viewer_count", "count": 1}


@pytest.mark.parametrize(("reason", "expected"), [
    ("stream_ended", {"type": "stream_ended"}),
    ("connection_failed", {"type": "error", "code": "connection_failed"}),
    ("worker_draining", {"type": "error", "code": "worker_draining"}),
    ("insufficient_funds", {"type": "error", "code": "insufficient_funds"}),
    ("left", {"type": "error", "code": "peer_closed"}),
])
async def test_peer_closed_ends_the_session(h: Harness, reason: str,
                                            expected: dict[str, str]) -> None:
    ws, stream_id, _ = await h.publishing()
    peer = h.worker.last_peer
    await h.event(f"vk:peer:{peer}:events", type="peer_closed", peer_id=peer, reason=reason)
    reply = await ws.receive_json(timeout=TIMEOUT)
    assert {k: reply[k] for k in expected} == expected
    # idle again, with no DELETE: the worker closed it already
    assert await error_code(ws, {"type": "candidate", "candidate": None}) == "wrong_state"
    assert not h.worker.requests_to("DELETE")


async def test_malformed_events_are_dropped(h: Harness) -> None:
    ws, stream_id, _ = await h.publishing()
    channel = f"vk:stream:{stream_id}:events"
    await h.redis.publish(channel, b"\xff not json")
    await h.redis.publish(channel, json.dumps([1, 2]))
    await h.event(channel, type="viewer_count", count="many")
    await h.event(channel, type="viewer_count", count=2)
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "viewer_count", "count": 2}


# -- resources -------------------------------------------------------------------------

class StuckSocket:
    """A websocket whose client never reads: every send blocks."""

    async def send_json(self, message: dict[str, Any]) -> None:
        await asyncio.Event().wait()


async def test_a_client_that_does_not_read_is_dropped_once() -> None:
    overflows: list[int] = []
    outbox = ws_module.Outbox(cast(web.WebSocketResponse, StuckSocket()),
                              lambda: overflows.append(1), name="test-outbox")
    for n in range(ws_module.OUTBOX_LIMIT + 10):
        outbox.put({"n": n})
    await wait_until(lambda: overflows, "the outbox reporting its overflow")
    assert overflows == [1]
    await outbox.close()


async def test_connections_are_counted(h: Harness) -> None:
    before = metric("vilokanam_ws_connections")
    sockets = [await h.connect() for _ in range(3)]
    assert metric("vilokanam_ws_connections") == before + 3
    for ws in sockets:
        await ws.close()
    await eventually(lambda: metric("vilokanam_ws_connections") == before, "the gauge")


async def test_no_task_outlives_the_app(settings: Settings, redis: aioredis.Redis,
                                        db: asyncpg.Connection) -> None:
    before = asyncio.all_tasks()
    # The publisher's socket is not the test client's: the server's shutdown
    # must close it (1001) and end its session on the worker by itself.
    async with aiohttp.ClientSession() as outsider:
        async with running(settings, redis, db) as h:
            publisher = await outsider.ws_connect(h.client.make_url("/ws"))
            assert (await publisher.receive_json(timeout=TIMEOUT))["type"] == "hello"
            stream_id, key = await h.stream()
            assert (await ask(publisher, publish(stream_id, key)))["type"] == "answer"
            _, token = await h.token()
            viewer = await h.connect()
            await ask(viewer, watch(stream_id, token))
            await h.event(f"vk:stream:{stream_id}:events", type="viewer_count", count=1)
            assert (await publisher.receive_json(timeout=TIMEOUT))["count"] == 1
            assert (await viewer.receive_json(timeout=TIMEOUT))["count"] == 1
            await h.connect()  # an idle one too
            h.worker.delete_delay = 0.5  # still ending when the app shuts down
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert sum(name.startswith("ws-outbox-") for name in names) == 3
            assert "signaling-events" in names
        closing = await publisher.receive(timeout=TIMEOUT)
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1001)
    # both peers were deleted before the app let go of its SFU client
    assert len(h.worker.requests_to("DELETE")) == 2

    def leaked() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() - before if not t.done()}

    await eventually(lambda: not leaked(), "every task to end")


async def test_watch_needs_ten_seconds_of_the_price(h: Harness) -> None:
    """The stream costs 0.001/s by default: 0.0099 is refused, 0.01 is enough."""
    _, stream_id, _ = await h.publishing()
    for funds, expected in ((Decimal("0.0099"), "error"), (Decimal("0.01"), "answer")):
        _, token = await h.token(funds)
        reply = await ask(await h.connect(), watch(stream_id, token))
        assert reply["type"] == expected, reply
        if expected == "error":
            assert reply["code"] == "insufficient_funds"


def live_message(ticks: dict[str, tuple[int, int]], old: bool) -> str:
    """A worker's live tick message for {peer: (seconds, price planck)}: this
    format (vilokanam/live_ticks.py), or the JSON of workers before it."""
    if old:
        return json.dumps({peer: {"seconds": seconds, "cost": format_amount(
            from_planck(price * seconds, 12))} for peer, (seconds, price) in ticks.items()})
    return live_ticks.encode(list(ticks), [s for s, _ in ticks.values()],
                             [p for _, p in ticks.values()], 12)


@pytest.mark.parametrize("old", [False, True], ids=["compact", "old-json"])
async def test_a_viewer_hears_its_own_ticks_only(h: Harness, old: bool) -> None:
    """A worker's live tick message names many viewers; each websocket gets
    its own, its cost as the worker's format_amount wrote it."""
    _, stream_id, _ = await h.publishing()
    _, token = await h.token()
    ws = await h.connect()
    await ask(ws, watch(stream_id, token))
    mine = h.worker.last_peer
    others = {secrets.token_urlsafe(18): (99, 10**12) for _ in range(50)}
    assert await h.redis.publish(LIVE_CHANNEL, live_message(
        {**others, mine: (7, 10**9)}, old)) >= 1
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "tick", "seconds": 7,
                                                      "cost": "0.007"}
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive_json(timeout=0.3)


async def test_the_hub_hands_a_tick_to_the_listened_peers_of_a_message_only(
        h: Harness) -> None:
    """Both ways of matching a message to this server's peers (the message's
    peers when it is smaller, this server's when they are fewer) find the
    same; a peer whose listener left hears no more."""
    hub = h.client.app[EVENTS]
    seen: dict[str, list[dict[str, Any]]] = {p: [] for p in ("p1", "p2", "p3")}
    witnesses = {p: Witness(seen[p]) for p in seen}
    for peer, witness in witnesses.items():
        hub.add(f"vk:peer:{peer}:events", witness)
    try:
        hub.dispatch_ticks(live_message({"p1": (4, 10**9)}, old=False))  # 1 peer < 3 listened
        crowd = {f"x{k}": (1, 1) for k in range(10)}
        hub.dispatch_ticks(live_message({**crowd, "p2": (5, 0), "p3": (6, 10**12)}, old=False))
        hub.remove("vk:peer:p3:events", witnesses["p3"])
        hub.dispatch_ticks(live_message({**crowd, "p3": (7, 10**12)}, old=False))
    finally:
        for peer, witness in witnesses.items():
            hub.remove(f"vk:peer:{peer}:events", witness)
    assert seen == {"p1": [{"type": "tick", "seconds": 4, "cost": "0.004"}],
                    "p2": [{"type": "tick", "seconds": 5, "cost": "0"}],
                    "p3": [{"type": "tick", "seconds": 6, "cost": "6"}]}


async def test_a_bad_live_message_is_logged_once_and_the_next_one_delivered(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    _, stream_id, _ = await h.publishing()
    _, token = await h.token()
    ws = await h.connect()
    await ask(ws, watch(stream_id, token))
    mine = h.worker.last_peer
    good = live_message({mine: (3, 10**9), "other": (3, 0)}, old=False)
    caplog.set_level(logging.WARNING, logger="signaling.events")
    for bad in (good.replace(",other", ",oth,er"), "{not json", json.dumps({mine: 3})):
        assert await h.redis.publish(LIVE_CHANNEL, bad) >= 1
    assert await h.redis.publish(LIVE_CHANNEL, good) >= 1
    # the hub reads its messages in order, on: the good one heard, the bad ones were read
    assert await ws.receive_json(timeout=TIMEOUT) == {"type": "tick", "seconds": 3,
                                                      "cost": "0.003"}
    bad_events = [getattr(r, "fields") for r in caplog.records  # noqa: B009
                  if r.getMessage() == "events.bad_event"]
    assert len(bad_events) == 3 and all(f["channel"] == LIVE_CHANNEL for f in bad_events)


async def test_watch_checks_run_at_once_and_refuse_in_their_order() -> None:
    """`first_refusal` (the watch's checks): all run together, every one
    finishes, and the refusal raised is the first in argument order, not the
    first in time."""
    finished: list[str] = []
    both_started = asyncio.Event()
    started: list[str] = []

    async def check(name: str, delay: float, refusal: ErrorCode | None) -> str:
        started.append(name)
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 5)  # only if they run at once
        await asyncio.sleep(delay)
        finished.append(name)
        if refusal is not None:
            raise ProtocolError(refusal, name)
        return name

    assert await ws_module.first_refusal(check("a", 0, None), check("b", 0, None)) == ["a", "b"]
    started.clear()
    both_started.clear()
    finished.clear()
    with pytest.raises(ProtocolError) as refused:
        await ws_module.first_refusal(check("slow", 0.05, ErrorCode.SUSPENDED),
                                      check("fast", 0, ErrorCode.INSUFFICIENT_FUNDS))
    assert refused.value.code is ErrorCode.SUSPENDED
    assert finished == ["fast", "slow"]
