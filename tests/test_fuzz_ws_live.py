"""The websocket protocol fuzzed over live sockets (hypothesis): a real
signaling app and a real SFU worker (aiortc) in this process, real Postgres
and Redis, and a real aiortc publisher live on one stream. Each example opens
up to three websockets and sends, in any order and without waiting for
answers, any mix of valid and invalid messages — publish, watch, candidate,
receipt, leave, auth, chat_join, chat_leave, chat, unknown types, non-objects,
bad JSON, binary frames, an oversized frame — closing sockets at random points.

After each example:
- no exception escaped a handler or a task: nothing logged at ERROR, no
  record carrying a traceback (aiohttp's "Error handling request", asyncio's
  "Task exception was never retrieved", a TaskOwner's `task.failed`);
- every message the server sent is one docs/protocol.md lists (its table of
  server messages), with the fields it lists, and every error has a code from
  its table of error codes and a message;
- once every socket is closed (waited for, with a deadline): the worker holds
  no peer connection the example made (only the live publisher), no coroutine
  runs in more tasks than before the example (the count /metrics'
  `vilokanam_asyncio_tasks_by_coroutine` gives; both roles share this loop, so
  this is signaling's and the worker's), and every Redis key the example made
  has a TTL (rate-limit windows) or is gone.

The live publisher is an aiortc client in this loop: a machine loaded enough
to starve its media for 5 s makes the worker count it lost, as it should;
the next example then publishes it again (counted in `World.republished`).

`VILOKANAM_WS_FUZZ_EXAMPLES` sets the number of examples (CI: 20); the long
form is in docs/reliability.md."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from sfu import streams as sfu_streams
from sfu.control import MANAGER
from signaling import sfu_client
from tests.media_clients import Publisher, client_pc
from tests.test_whip_whep import Stack, running
from tests.waiting import wait_for_value
from vilokanam.config import Settings
from vilokanam.health import coroutine_name

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("VILOKANAM_WS_FUZZ_EXAMPLES", "20"))
# No shrinking: a replay costs seconds of live sockets; the failing example's
# draws are printed as they were.
LIVE = settings(max_examples=EXAMPLES, deadline=None, database=None,
                phases=(Phase.explicit, Phase.generate), print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SOCKETS = 3
SETTLE_TIMEOUT = 30.0  # a loaded machine: peers close, ws endings finish
# Keys of a user, not of a call, that stay by design: a viewer's live balance
# (docs/metering.md), loaded from the books at its first watch.
USER_KEYS = (b"vk:bal:",)
GRACE = 0.5  # the worker's publisher grace, shortened here (10 s in production)


def _doc_tables() -> tuple[dict[str, set[str]], set[str]]:
    """From docs/protocol.md: each server message type with the fields its
    rows list (the smallest set when a type has several rows), and every error
    code of its error table."""
    text = (REPO / "docs" / "protocol.md").read_text()
    messages = text.split("## Messages: server → client", 1)[1].split("## Error codes", 1)[0]
    fields: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `(\{\"type\": \"\w+\".*?\})` \|", messages, re.M):
        kind = re.match(r'\{"type": "(\w+)"', row).group(1)  # type: ignore[union-attr]
        # top-level names only: drop nested objects and lists first
        flat = row[1:-1]
        while re.search(r"\{[^{}]*\}|\[[^\[\]]*\]", flat):
            flat = re.sub(r"\{[^{}]*\}|\[[^\[\]]*\]", "", flat)
        names = set(re.findall(r'"(\w+)"', flat)) - {"type", kind}
        fields[kind] = fields[kind] & names if kind in fields else names
    errors = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    codes = {code for cell in re.findall(r"^\| ([^|]+) \|", errors, re.M)
             for code in re.findall(r"`(\w+)`", cell)}
    return fields, codes


MESSAGE_FIELDS, ERROR_CODES = _doc_tables()


def documented(message: object) -> str | None:
    """Why `message` is not a documented server message, or None."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return f"not a typed object: {message!r:.200}"
    kind = message["type"]
    if kind not in MESSAGE_FIELDS:
        return f"undocumented type {kind!r}"
    missing = MESSAGE_FIELDS[kind] - set(message)
    if missing:
        return f"{kind} lacks {sorted(missing)}: {message!r:.200}"
    if kind == "error" and (message["code"] not in ERROR_CODES
                            or not isinstance(message["message"], str)
                            or not message["message"]):
        return f"undocumented error {message!r:.200}"
    return None


class Records(logging.Handler):
    """Every record at ERROR or above, and every record with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info or record.stack_info:
            self.bad.append(f"{record.name} {record.levelname}: {record.getMessage()[:500]}"
                            + (f" ({record.exc_info[1]!r})" if record.exc_info else ""))


@dataclasses.dataclass
class World:
    """What the messages may name: streams, keys, tokens and offers that exist,
    beside ones that do not."""

    stack: Stack
    live_stream: str  # a publisher is live on it (the baseline's one peer)
    live_key: str
    publisher: Publisher
    idle_stream: str  # exists, nobody publishes: a fuzz publish may go live
    idle_key: str
    tokens: list[str]  # viewers with funds; then one without
    broke_token: str
    publish_offers: list[str]
    watch_offers: list[str]
    records: Records
    republished: int = 0  # times the machine starved the live publisher


async def _offers(direction: str, count: int) -> list[str]:
    """Real offers aiortc made (their peer connections closed: the worker's
    ICE finds nobody, and a session ends by signaling, never by media)."""
    offers = []
    for _ in range(count):
        pc = client_pc()
        for kind in ("video", "audio"):
            pc.addTransceiver(kind, direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(str(pc.localDescription.sdp))
        await pc.close()
    return offers


@pytest.fixture
async def world(settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    # A publisher lost by a socket closing keeps its stream for the grace: the
    # same path, shorter, so each example can wait for the end of it.
    monkeypatch.setattr(sfu_streams, "RECONNECT_GRACE", GRACE)
    # Signaling's keep-alive pool to the worker drains 1-2 s after its last
    # use instead of 15-30 s (tests/test_worker_pool.py: the pool is bounded);
    # until then each connection is a request-handler task on the worker.
    monkeypatch.setattr(sfu_client, "WORKER_KEEPALIVE_S", 1.0)
    records = Records()
    logging.getLogger().addHandler(records)
    try:
        async with running(settings, db, redis) as stack:
            live_stream, live_key = await stack.stream()
            idle_stream, idle_key = await stack.stream()
            # no recording: its muxer thread is load this test does not need
            await stack.db.execute("UPDATE streams SET record = FALSE")
            publisher, _ = await stack.publish(live_stream, live_key)
            tokens = [(await stack.viewer_token())[1] for _ in range(SOCKETS)]
            _, broke = await stack.viewer_token(Decimal(0))
            world = World(stack, live_stream, live_key, publisher, idle_stream, idle_key,
                          tokens, broke, await _offers("sendonly", 2),
                          await _offers("recvonly", 2), records)
            yield world
            await world.publisher.close()
    finally:
        logging.getLogger().removeHandler(records)


# --- messages -----------------------------------------------------------------------------

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)
KINDS = ["publish", "watch", "candidate", "receipt", "leave", "auth", "chat_join",
         "chat_leave", "chat"]


def message(world: World, data: st.DataObject) -> Any:
    """One frame's content: a dict to send as JSON, a str sent as is, bytes
    sent binary. Mostly well-formed messages naming what exists (so sessions
    start and end in every order), some with a field missing or mistyped,
    some frames that are no message at all."""
    d = data.draw

    def mostly(good: Any, *others: Any) -> Any:
        """Mostly `good` (five times in 5 + len(others)), else one of `others`."""
        return d(st.sampled_from([good] * 5 + list(others)))

    shape = d(st.sampled_from(["valid"] * 8 + ["mutated"] * 2 + ["frame"] * 2))
    if shape == "frame":
        return d(st.one_of(
            junk.map(json.dumps),  # JSON but no message: unknown_type
            st.text(max_size=30),  # mostly bad_json
            st.binary(max_size=16),
            st.just("x" * (70 * 1024)),  # message_too_large, the socket stays
        ))
    stream = mostly(world.live_stream, world.idle_stream, str(uuid.uuid4()), "not-a-uuid")
    token = mostly(d(st.sampled_from(world.tokens)), world.broke_token, "v1.forged")
    kind = d(st.sampled_from(["watch"] * 8 + ["publish"] * 5 + ["leave"] * 3
                             + ["candidate"] * 3 + KINDS[3:] + ["nope"]))
    body: dict[str, Any] = {"type": kind}
    if kind == "publish":
        body |= {"stream_id": mostly(world.idle_stream, stream),
                 "stream_key": mostly(world.idle_key, "wrong-key"),
                 "sdp": mostly(d(st.sampled_from(world.publish_offers)), "v=0\r\n",
                               world.watch_offers[0])}
    elif kind == "watch":
        body |= {"stream_id": stream, "token": token,
                 "sdp": mostly(d(st.sampled_from(world.watch_offers)), world.publish_offers[0],
                               "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n")}
    elif kind == "candidate":
        body["candidate"] = d(st.one_of(
            st.none(), junk,
            st.fixed_dictionaries({"candidate": st.sampled_from(
                ["candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "candidate:x", ""])},
                optional={"sdpMid": st.sampled_from(["0", "1", None, "z"]),
                          "sdpMLineIndex": st.sampled_from([0, 1, None, -1, 7])})))
    elif kind == "receipt":
        body |= {"viewer_session_id": d(st.sampled_from([str(uuid.uuid4()), "x"])),
                 "seconds": d(st.integers(-1, 10**6)), "signature": "0x00"}
    elif kind == "auth":
        body["token"] = token
    elif kind == "chat_join":
        body["stream_id"] = stream
    elif kind == "chat":
        body |= {"stream_id": stream,
                 "content": d(st.one_of(st.text(min_size=1, max_size=30), st.just("x" * 501),
                                        junk)),
                 "ref": d(st.one_of(st.none(), st.text(max_size=8), st.integers()))}
        if d(st.booleans()):
            body["parent_id"] = d(st.one_of(st.uuids().map(str), junk))
    if shape == "mutated":  # a field missing or of another type
        for name in d(st.lists(st.sampled_from(sorted(body.keys() - {"type"}) or ["x"]),
                               min_size=1, max_size=2, unique=True)):
            if d(st.booleans()):
                body.pop(name, None)
            else:
                body[name] = d(junk)
    return body


# --- sockets ------------------------------------------------------------------------------

@dataclasses.dataclass
class Socket:
    ws: aiohttp.ClientWebSocketResponse
    received: list[Any] = dataclasses.field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for frame in self.ws:
            if frame.type is WSMsgType.TEXT:
                self.received.append(json.loads(frame.data))
            else:
                self.received.append(("non-text frame", frame.type, frame.data))

    async def send(self, content: Any) -> None:
        if self.ws.closed:
            return
        try:
            if isinstance(content, bytes):
                await self.ws.send_bytes(content)
            elif isinstance(content, str):
                await self.ws.send_str(content)
            else:
                await self.ws.send_str(json.dumps(content))
        except (ConnectionResetError, aiohttp.ClientConnectionError):
            pass  # the server closed it (e.g. a suspension): what we check is its reason

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


def live_tasks() -> collections.Counter[str]:
    me = asyncio.current_task()
    return collections.Counter(coroutine_name(t) for t in asyncio.all_tasks()
                               if t is not me and not t.done())


async def _redis_keys(redis: aioredis.Redis) -> set[bytes]:
    return {key async for key in redis.scan_iter("*")}


async def ensure_live(world: World) -> None:
    """The live stream's publisher, again if the machine starved its media
    (no frame for 5 s: the worker counts it lost, as it should)."""
    manager = world.stack.worker.app[MANAGER]  # type: ignore[union-attr]
    stream = manager.streams.get(world.live_stream)
    if stream is not None and stream.publisher is not None:
        return
    await world.publisher.close()
    await wait_for_value(lambda: world.live_stream in manager.streams, lambda live: not live,
                         "the starved stream to end", timeout=SETTLE_TIMEOUT)
    world.publisher, _ = await world.stack.publish(world.live_stream, world.live_key)
    world.republished += 1


@LIVE
@given(data=st.data())
async def test_any_messages_in_any_order_leave_nothing_behind(world: World,
                                                              data: st.DataObject) -> None:
    stack = world.stack
    manager = stack.worker.app[MANAGER]  # type: ignore[union-attr]
    await ensure_live(world)
    # Each example in a fresh window of the wrong-key limit (its keys expire
    # in 60 s; tests/test_ws_protocol.py tests the limit): else five wrong keys
    # would refuse every publish of the next examples.
    async for key in stack.redis.scan_iter("vk:ratelimit:*"):
        await stack.redis.delete(key)
    peers_before = set(manager.peers)
    keys_before = await _redis_keys(stack.redis)
    tasks_before = live_tasks()
    world.records.bad.clear()

    sockets: list[Socket | None] = [None] * SOCKETS
    used: list[Socket] = []

    async def socket(number: int) -> Socket:
        current = sockets[number]
        if current is None or current.ws.closed:
            current = Socket(await stack.http.ws_connect(stack.url("/ws")))
            current.reader = asyncio.create_task(current.read())
            sockets[number] = current
            used.append(current)
        return current

    actions = st.sampled_from(["send"] * 8 + ["close", "pause", "pause"])
    steps = data.draw(st.lists(st.tuples(st.integers(0, SOCKETS - 1), actions),
                               min_size=3, max_size=16), label="steps")
    try:
        for number, step in steps:
            target = await socket(number)
            if step == "close":
                await target.close()  # mid-call, mid-answer: wherever it happens to be
            elif step == "pause":
                await asyncio.sleep(data.draw(st.sampled_from([0.0, 0.05, 0.3]),
                                              label="pause"))
            else:
                await target.send(message(world, data))
        # Before the last close, each open socket's messages are all handled
        # (one at a time, in order: a `chat_leave` is answered after them), so
        # sessions that started are closed as sessions, not as offers.
        def chat_lefts(socket: Socket) -> int:
            return sum(isinstance(m, dict) and m.get("type") == "chat_left"
                       for m in socket.received)

        drained = [(t, chat_lefts(t)) for t in used if not t.ws.closed]
        for target, _ in drained:
            await target.send({"type": "chat_leave"})
        for target, before in drained:
            await wait_for_value(lambda t=target, n=before: t.ws.closed or chat_lefts(t) > n,
                                 bool, "the socket's messages handled",
                                 timeout=SETTLE_TIMEOUT)
    finally:
        for target in used:
            await target.close()

    for target in used:
        assert target.ws.close_code in (1000, 1008, None), target.ws.close_code
        # (a socket closed at once may have dropped its hello unread)
        assert target.received[:1] in ([], [{"type": "hello", "version": 1}]), target.received
        for received in target.received:
            assert documented(received) is None, documented(received)
            # what the examples reached (--hypothesis-show-statistics)
            event(f"{received['type']} {received.get('code', '')}".strip())

    # Nothing new is left: every peer on the worker was there before (the live
    # publisher, unless the machine starved it meanwhile), no coroutine runs in
    # more tasks than before, every new Redis key expires.
    await wait_for_value(lambda: set(manager.peers), lambda peers: peers <= peers_before,
                         "the worker to hold no peer of this example", timeout=SETTLE_TIMEOUT)

    def grown() -> dict[str, int]:
        return {name: count - tasks_before[name] for name, count in live_tasks().items()
                if count > tasks_before[name]}

    await wait_for_value(grown, lambda more: more == {}, "no more tasks than before (by "
                         "coroutine)", timeout=SETTLE_TIMEOUT)

    async def lasting_new_keys() -> list[bytes]:
        new = await _redis_keys(stack.redis) - keys_before
        return [key for key in sorted(new) if not key.startswith(USER_KEYS)
                and await stack.redis.pttl(key) == -1]

    await wait_for_value(lasting_new_keys, lambda left: left == [],
                         "no new Redis key without a TTL", timeout=SETTLE_TIMEOUT)
    assert world.records.bad == []
