"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) end to end: the real
signaling app and a real SFU worker in this process, aiortc publishers and
viewers speaking plain HTTP to them, real Postgres and Redis; a Chromium
player on WHEP. Every status code and header the endpoints promise
(docs/whip-whep.md), the lifecycle rows, sessions served by any signaling
server, and nothing left behind on the worker or in Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import urljoin

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from prometheus_client import REGISTRY

from routing.registry import stream_worker_key
from sfu.app import create_app as create_worker_app
from sfu.control import MANAGER
from sfu.streams import CLOCK_LOOPS
from signaling import http_sessions
from signaling.app import create_app as create_signaling_app
from signaling.http_sessions import (
    INDEX_KEY,
    HttpSession,
    Kind,
    SessionStore,
    Timing,
    session_key,
)
from signaling.sdpfrag import (
    IceCredentials,
    MalformedFragment,
    offer_credentials,
    parse_trickle_fragment,
)
from signaling.sfu_client import PeerRef
from signaling.stream_keys import hash_stream_key, new_stream_key
from signaling.tokens import issue_token
from tests.conftest import chromium_path, require
from tests.media_clients import Publisher, Signal, Viewer, client_pc
from tests.waiting import wait_for_value
from vilokanam.balances import credit
from vilokanam.config import Settings
from vilokanam.services.net import free_port

SECRET = "w" * 40
SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
TIMEOUT = 15.0
LOCATION = re.compile(r"^/(whip|whep)/[0-9a-f-]{36}/sessions/[A-Za-z0-9_-]{32}$")
STRONG_ETAG = re.compile(r'^"[^"]+"$')


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json_error(self) -> str:
        """The project's error shape; returns its code."""
        import json

        body = json.loads(self.text)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        assert body["error"]["message"]
        return str(body["error"]["code"])


@dataclass
class Created:
    """A session resource from a 201."""

    url: str  # absolute
    etag: str
    reply: Reply
    offer: str


@dataclass
class Stack:
    """Signaling (one or more servers) + one real worker, over real stores."""

    settings: Settings
    http: aiohttp.ClientSession
    signaling: list[TestServer]
    worker: TestServer | None
    db: asyncpg.Connection
    redis: aioredis.Redis
    keys: dict[str, str] = field(default_factory=dict)

    def url(self, path: str, server: int = 0) -> str:
        return str(self.signaling[server].make_url(path))

    async def request(self, method: str, url: str, body: str | bytes | None = None,
                      headers: dict[str, str] | None = None) -> Reply:
        if not url.startswith("http"):
            url = self.url(url)
        async with self.http.request(method, url, data=body, headers=headers) as resp:
            return Reply(resp.status, resp.headers, await resp.text())

    async def post(self, kind: str, stream_id: str, bearer: str | None, body: str | bytes,
                   content_type: str = SDP, server: int = 0) -> Reply:
        headers = {"Content-Type": content_type}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return await self.request("POST", self.url(f"/{kind}/{stream_id}", server), body,
                                  headers)

    async def patch(self, created: Created, fragment: str, if_match: str | None = None,
                    content_type: str = TRICKLE, url: str | None = None) -> Reply:
        headers = {"Content-Type": content_type}
        if if_match is not None:
            headers["If-Match"] = if_match
        return await self.request("PATCH", url or created.url, fragment, headers)

    async def delete(self, url: str) -> Reply:
        return await self.request("DELETE", url)

    def signal(self, kind: str, stream_id: str, bearer: str, sessions: list[Created],
               server: int = 0) -> Signal:
        """A `signal(offer) -> answer` for the media clients: a WHIP/WHEP POST."""
        async def signal(offer: str) -> str:
            reply = await self.post(kind, stream_id, bearer, offer, server=server)
            assert reply.status == 201, (reply.status, reply.text)
            url = urljoin(self.url(f"/{kind}/{stream_id}", server), reply.headers["Location"])
            sessions.append(Created(url, reply.headers["ETag"], reply, offer))
            return reply.text
        return signal

    async def user(self) -> str:
        return str(await self.db.fetchval(
            "INSERT INTO users(account_id) VALUES ($1) RETURNING id::text",
            f"5Whip{secrets.token_hex(12)}"))

    async def stream(self) -> tuple[str, str]:
        key = new_stream_key()
        stream_id = str(await self.db.fetchval(
            "INSERT INTO streams(creator_id, title, stream_key_hash) VALUES ($1, 'whip', $2) "
            "RETURNING id::text", uuid.UUID(await self.user()), hash_stream_key(key)))
        self.keys[stream_id] = key
        return stream_id, key

    async def viewer_token(self, funds: Decimal = Decimal(100)) -> tuple[str, str]:
        user_id = await self.user()
        if funds:
            await credit(self.db, self.redis, user_id, funds, "adjustment", "test", 12)
        return user_id, issue_token(SECRET, user_id, "5Viewer")

    async def publish(self, stream_id: str, key: str,
                      **start: Any) -> tuple[Publisher, Created]:
        publisher, sessions = Publisher(), []
        await publisher.start(self.signal("whip", stream_id, key, sessions), **start)
        return publisher, sessions[0]

    async def watch(self, stream_id: str, server: int = 0) -> tuple[Viewer, Created]:
        _, token = await self.viewer_token()
        viewer, sessions = Viewer(), []
        await viewer.start(self.signal("whep", stream_id, token, sessions, server))
        return viewer, sessions[0]

    async def worker_stats(self) -> dict[str, int]:
        assert self.worker is not None
        return dict(self.worker.app[MANAGER].stats())

    async def session_keys(self) -> list[bytes]:
        """Every session hash and the index (which goes when it is empty)."""
        keys = [key async for key in self.redis.scan_iter(session_key("*"))]
        return keys + ([INDEX_KEY.encode()] if await self.redis.exists(INDEX_KEY) else [])

    async def assert_nothing_left(self) -> None:
        """No peer on the worker (its clock is its one task), no session in Redis."""
        idle = {"publishers": 0, "viewers": 0, "relays": 0, "peer_connections": 0,
                "streams": 0, "tasks": CLOCK_LOOPS + 1}
        await eventually(lambda: self.worker_stats(), lambda stats: stats == idle,
                         "the worker to hold nothing")
        await eventually(self.session_keys, lambda keys: keys == [], "no session keys")


async def eventually(probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool],
                     what: str, timeout: float = TIMEOUT) -> Any:
    return await wait_for_value(probe, ok, what, timeout=timeout)


def methods(header: str) -> set[str]:
    return {item.strip() for item in header.split(",")}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def running(settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis, *,
                  with_worker: bool = True, signaling_servers: int = 1,
                  worker_overrides: dict[str, Any] | None = None,
                  **signaling_overrides: Any) -> AsyncIterator[Stack]:
    """A real worker on `settings.sfu_port` (the control URL it registers) and
    signaling servers sharing the stores; the worker never sees the
    signaling-only overrides (e.g. ICE servers it must not contact)."""
    settings = dataclasses.replace(settings, token_secret=SECRET)
    async with AsyncExitStack() as stack:
        worker = None
        if with_worker:
            worker_settings = dataclasses.replace(settings, **(worker_overrides or {}))
            worker = TestServer(create_worker_app(worker_settings), host="127.0.0.1",
                                port=settings.sfu_port)
            await worker.start_server()
            stack.push_async_callback(worker.close)
        servers = []
        for number in range(signaling_servers):
            port = settings.http_port if number == 0 else free_port()
            own = dataclasses.replace(settings, http_port=port, **signaling_overrides)
            server = TestServer(create_signaling_app(own), host=own.http_host, port=port)
            await server.start_server()
            stack.push_async_callback(server.close)
            servers.append(server)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield Stack(settings, http, servers, worker, db, redis)


@pytest.fixture
async def stack(settings: Settings, db: asyncpg.Connection,
                redis: aioredis.Redis) -> AsyncIterator[Stack]:
    async with running(settings, db, redis) as s:
        yield s


async def close_all(*clients: Publisher | Viewer) -> None:
    for client in clients:
        await client.close()


def trickle_fragment(created: Created, *candidates: str, end: bool = False,
                     ufrag: str | None = None, pwd: str | None = None) -> str:
    """A fragment as RFC 8840 shapes it, with the offer's credentials unless given."""
    offered = offer_credentials(created.offer)
    lines = [f"a=ice-ufrag:{ufrag or offered.ufrag}", f"a=ice-pwd:{pwd or offered.pwd}",
             "m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:0"]
    lines += [f"a={candidate}" for candidate in candidates]
    if end:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


# --- the media path, the lifecycle rows, and the end ----------------------------------------

@pytest.mark.redis_modes  # on a Redis Cluster too: routing and the sessions' keys
async def test_whip_publisher_and_two_whep_viewers_then_everything_ends(stack: Stack) -> None:
    stream_id, key = await stack.stream()
    publisher, whip = await stack.publish(stream_id, key)
    reply = whip.reply
    assert reply.headers["Content-Type"] == SDP
    assert LOCATION.match(reply.headers["Location"]), reply.headers["Location"]
    assert reply.headers["Location"].startswith(f"/whip/{stream_id}/sessions/")
    assert STRONG_ETAG.match(whip.etag)
    assert reply.headers["Accept-Patch"] == TRICKLE
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in reply.headers["Access-Control-Expose-Headers"]
    assert reply.text.startswith("v=0\r\n") and "a=setup:passive" in reply.text
    assert "a=candidate:" in reply.text  # every server candidate is in the answer
    assert "Link" not in reply.headers  # no ICE servers configured

    watching = [await stack.watch(stream_id), await stack.watch(stream_id)]
    viewers = [viewer for viewer, _ in watching]
    try:
        for viewer, whep in watching:
            assert whep.reply.headers["Location"].startswith(f"/whep/{stream_id}/sessions/")
            await viewer.wait_for_frames("video", 20)
            await viewer.wait_for_frames("audio", 20)

        stream = await stack.db.fetchrow("SELECT * FROM streams WHERE id = $1", stream_id)
        assert (stream["status"], stream["viewer_count"]) == ("live", 2)
        session = await stack.db.fetchrow(
            "SELECT * FROM stream_sessions WHERE stream_id = $1", stream_id)
        assert session["end_time"] is None and session["viewer_peak"] == 2
        assert session["signaling_server_url"] == stack.settings.base_url
        rows = await stack.db.fetch("SELECT is_active FROM stream_viewers WHERE stream_id = $1",
                                    stream_id)
        assert [r["is_active"] for r in rows] == [True, True]
        keys = [k async for k in stack.redis.scan_iter(session_key("*"))]
        assert len(keys) == 3 and await stack.redis.zcard(INDEX_KEY) == 3
        for key_name in keys:
            assert 0 < await stack.redis.ttl(key_name) <= 30

        # A viewer leaves: its row closes, the count drops, a replay is 404.
        first_url = watching[0][1].url
        assert (await stack.delete(first_url)).status == 200
        replay = await stack.delete(first_url)
        assert (replay.status, replay.json_error()) == (404, "session_not_found")
        await eventually(lambda: stack.db.fetchval(
            "SELECT viewer_count FROM streams WHERE id = $1", stream_id), lambda n: n == 1,
            "the viewer count")

        # The publisher's DELETE ends the stream at once, for every viewer.
        assert (await stack.delete(whip.url)).status == 200
        await eventually(lambda: stack.db.fetchval(
            "SELECT status FROM streams WHERE id = $1", stream_id), lambda s: s == "ended",
            "the stream to end")
        ended = await stack.db.fetchrow(
            "SELECT s.end_time, ss.end_time AS session_end FROM streams s "
            "JOIN stream_sessions ss ON ss.stream_id = s.id WHERE s.id = $1", stream_id)
        assert ended["end_time"] is not None and ended["session_end"] is not None
        assert await stack.db.fetchval(
            "SELECT count(*) FROM stream_viewers WHERE stream_id = $1 AND is_active",
            stream_id) == 0
        # The worker's peer_closed took the remaining viewer's resource with it.
        second_url = watching[1][1].url
        await eventually(lambda: stack.request("GET", second_url), lambda r: r.status == 404,
                         "the viewer's resource to go")
        # A replayed DELETE is 404 and changes nothing.
        replay = await stack.delete(whip.url)
        assert (replay.status, replay.json_error()) == (404, "session_not_found")
        assert await stack.db.fetchval("SELECT end_time FROM streams WHERE id = $1",
                                       stream_id) == ended["end_time"]
    finally:
        await close_all(publisher, *viewers)
    await stack.assert_nothing_left()


async def test_a_publisher_whose_connection_dies_loses_its_resource(stack: Stack) -> None:
    """The worker ends the peer (peer_closed, connection_failed): 404 after."""
    stream_id, key = await stack.stream()
    publisher, whip = await stack.publish(stream_id, key)
    viewer, whep = await stack.watch(stream_id)
    await viewer.wait_for_frames("video", 5)
    await publisher.close()  # no DELETE: the connection just goes
    await eventually(lambda: stack.request("GET", whip.url), lambda r: r.status == 404,
                     "the publisher's resource to go")
    # The stream is in its reconnect grace: the viewer's session goes on.
    assert (await stack.request("GET", whep.url)).status == 204
    assert (await stack.delete(whep.url)).status == 200
    await viewer.close()


# --- headers: OPTIONS, CORS, Link, methods ----------------------------------------------

ICE_SERVERS = [
    {"urls": "stun:stun.example.net"},
    {"urls": ["turn:turn.example.net?transport=udp", "turns:turn.example.net?transport=tcp"],
     "username": "user", "credential": 'pa"ss'},
]
LINKS = [
    '<stun:stun.example.net>; rel="ice-server"',
    '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; '
    'credential="pa\\"ss"; credential-type="password"',
    '<turns:turn.example.net?transport=tcp>; rel="ice-server"; username="user"; '
    'credential="pa\\"ss"; credential-type="password"',
]


async def test_options_cors_and_ice_server_links(settings: Settings, db: asyncpg.Connection,
                                                 redis: aioredis.Redis) -> None:
    async with running(settings, db, redis, ice_servers=ICE_SERVERS) as stack:
        stream_id, key = await stack.stream()
        for kind in ("whip", "whep"):
            preflight = await stack.request("OPTIONS", f"/{kind}/{stream_id}", headers={
                "Origin": "http://player.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})
            assert preflight.status == 200
            assert preflight.headers["Accept-Post"] == SDP
            assert preflight.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in methods(preflight.headers["Access-Control-Allow-Methods"])
            allowed = preflight.headers["Access-Control-Allow-Headers"]
            assert {"Authorization", "Content-Type", "If-Match"} <= methods(allowed)
            assert "Link" not in preflight.headers  # not on a CORS preflight (RFC 9725 4.6)
            plain = await stack.request("OPTIONS", f"/{kind}/{stream_id}")
            assert plain.status == 200 and plain.headers.getall("Link") == LINKS

        publisher, whip = await stack.publish(stream_id, key)
        try:
            assert whip.reply.headers.getall("Link") == LINKS
            options = await stack.request("OPTIONS", whip.url, headers={
                "Origin": "http://player.example", "Access-Control-Request-Method": "PATCH"})
            assert options.status == 200 and options.headers["Accept-Patch"] == TRICKLE
            assert {"PATCH", "DELETE"} <= methods(options.headers["Access-Control-Allow-Methods"])
            assert (await stack.request("GET", whip.url)).status == 204
        finally:
            assert (await stack.delete(whip.url)).status == 200
            await publisher.close()


async def test_get_head_and_wrong_methods(stack: Stack) -> None:
    stream_id, _ = await stack.stream()
    for kind in ("whip", "whep"):
        get = await stack.request("GET", f"/{kind}/{stream_id}")
        assert (get.status, get.text) == (200, "")
        head = await stack.request("HEAD", f"/{kind}/{stream_id}")
        assert head.status == 200 and head.headers["Content-Type"] == SDP
        put = await stack.request("PUT", f"/{kind}/{stream_id}", "x")
        assert (put.status, put.json_error()) == (405, "method_not_allowed")
        assert {"POST", "OPTIONS"} <= methods(put.headers["Allow"])
        assert put.headers["Access-Control-Allow-Origin"] == "*"
        session = f"/{kind}/{stream_id}/sessions/{secrets.token_urlsafe(24)}"
        post = await stack.request("POST", session, "x")
        assert post.status == 405
        assert {"PATCH", "DELETE"} <= methods(post.headers["Allow"])
        assert (await stack.request("GET", session)).status == 404
        assert (await stack.delete(session)).status == 404


# --- WHIP refusals ------------------------------------------------------------------------

async def test_whip_keys_are_checked_counted_and_rate_limited_like_the_websocket(
        stack: Stack) -> None:
    stream_id, key = await stack.stream()
    offer = "v=0\r\n"  # never read: the key is checked first
    before = metric("vilokanam_auth_failures_total", kind="stream_key")
    missing = await stack.post("whip", stream_id, None, offer)
    assert (missing.status, missing.json_error()) == (401, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for _ in range(4):
        wrong = await stack.post("whip", stream_id, "sk_wrong", offer)
        assert (wrong.status, wrong.json_error()) == (401, "unauthorized")
    assert metric("vilokanam_auth_failures_total", kind="stream_key") == before + 5
    limited = await stack.post("whip", stream_id, key, offer)  # even the right key
    assert (limited.status, limited.json_error()) == (429, "rate_limited")
    assert limited.headers["Retry-After"] == "60"
    assert 0 < await stack.redis.ttl("vk:ratelimit:stream_key:127.0.0.1") <= 60
    # One limit for every front: the websocket from this address is limited too.
    ws = await stack.http.ws_connect(stack.url("/ws"))
    assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "hello"
    await ws.send_json({"type": "publish", "stream_id": stream_id, "stream_key": key,
                        "sdp": offer})
    assert (await ws.receive_json(timeout=TIMEOUT))["code"] == "rate_limited"
    await ws.close()
    assert (await stack.worker_stats())["publishers"] == 0


async def test_whip_to_a_stream_that_does_not_exist_is_404(stack: Stack) -> None:
    for stream_id in (str(uuid.uuid4()), "not-a-uuid"):
        reply = await stack.post("whip", stream_id, "sk_any", "v=0\r\n")
        assert (reply.status, reply.json_error()) == (404, "stream_not_found")


async def test_whip_body_checks(stack: Stack) -> None:
    stream_id, key = await stack.stream()
    wrong_type = await stack.post("whip", stream_id, key, "{}", content_type="application/json")
    assert (wrong_type.status, wrong_type.json_error()) == (415, "unsupported_media_type")
    assert wrong_type.headers["Accept-Post"] == SDP
    empty = await stack.post("whip", stream_id, key, "")
    assert (empty.status, empty.json_error()) == (400, "bad_request")
    huge = await stack.post("whip", stream_id, key, "v=0\r\n" + "a" * (64 * 1024))
    assert (huge.status, huge.json_error()) == (413, "payload_too_large")
    not_sdp = await stack.post("whip", stream_id, key, "hello")
    assert (not_sdp.status, not_sdp.json_error()) == (400, "bad_sdp")
    # None of these left the stream placed on the worker.
    assert await stack.redis.get(stream_worker_key(stream_id)) is None
    await stack.assert_nothing_left()


async def _offer(kinds: tuple[str, ...], codec: str | None = None) -> str:
    pc = client_pc()
    for kind in kinds:
        pc.addTransceiver(kind, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    if codec == "VP9 only":  # a codec the worker cannot forward
        sdp = re.sub(r"(?i)vp8/90000|h264/90000", "VP9/90000", sdp)
    return str(sdp)


async def test_whip_unsupported_offers_are_422(stack: Stack) -> None:
    stream_id, key = await stack.stream()
    no_codec = await stack.post("whip", stream_id, key, await _offer(("video",), "VP9 only"))
    assert (no_codec.status, no_codec.json_error()) == (422, "no_supported_codec")
    two_videos = await stack.post("whip", stream_id, key, await _offer(("video", "video")))
    assert (two_videos.status, two_videos.json_error()) == (422, "too_many_tracks")
    await stack.assert_nothing_left()


async def test_a_second_publisher_is_refused_not_swapped_in(stack: Stack) -> None:
    stream_id, key = await stack.stream()
    publisher, whip = await stack.publish(stream_id, key)
    viewer, whep = await stack.watch(stream_id)
    try:
        second = await stack.post("whip", stream_id, key, await _offer(("video", "audio")))
        assert (second.status, second.json_error()) == (409, "already_live")
        assert "Retry-After" not in second.headers
        seen = viewer.frames["video"]
        await viewer.wait_for_frames("video", seen + 10)  # the first one still streams
        assert await stack.redis.zcard(INDEX_KEY) == 2
    finally:
        await stack.delete(whep.url)
        await stack.delete(whip.url)
        await close_all(viewer, publisher)
    await stack.assert_nothing_left()


async def test_no_worker_with_room_is_503_with_retry_after(
        settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    async with running(settings, db, redis, with_worker=False) as stack:
        stream_id, key = await stack.stream()
        reply = await stack.post("whip", stream_id, key, await _offer(("video",)))
        assert (reply.status, reply.json_error()) == (503, "no_capacity")
        assert int(reply.headers["Retry-After"]) > 0


# --- PATCH: trickle ICE, preconditions, ICE restart -------------------------------------

async def test_trickle_patch_preconditions_and_ice_restart(stack: Stack) -> None:
    """The publisher's offer goes without candidates; they follow in PATCHes."""
    stream_id, key = await stack.stream()
    publisher, sessions, held = Publisher(), [], []
    signal = stack.signal("whip", stream_id, key, sessions)

    async def trickling(offer: str) -> str:
        lines = offer.split("\r\n")
        held.extend(line[2:] for line in lines if line.startswith("a=candidate:"))
        return await signal("\r\n".join(
            line for line in lines if not line.startswith(("a=candidate:", "a=end-of-"))))

    await publisher.start(trickling)
    whip = sessions[0]
    assert "a=candidate" not in whip.offer and held
    fragment = trickle_fragment(whip, *held)
    viewer = whep = None
    try:
        missing = await stack.patch(whip, fragment)
        assert (missing.status, missing.json_error()) == (428, "precondition_required")
        stale = await stack.patch(whip, fragment, if_match='"not-the-etag"')
        assert (stale.status, stale.json_error()) == (412, "precondition_failed")
        weak = await stack.patch(whip, fragment, if_match=f"W/{whip.etag}")
        assert weak.status == 412  # If-Match compares strongly
        wrong_type = await stack.patch(whip, fragment, whip.etag, content_type=SDP)
        assert (wrong_type.status, wrong_type.json_error()) == (415, "unsupported_media_type")
        assert wrong_type.headers["Accept-Patch"] == TRICKLE
        assert (await stack.patch(whip, "", whip.etag)).status == 400
        garbage = await stack.patch(whip, "not an sdp fragment", whip.etag)
        assert (garbage.status, garbage.json_error()) == (400, "bad_sdpfrag")

        ok = await stack.patch(whip, fragment, whip.etag)
        assert (ok.status, ok.text) == (204, "")
        assert "ETag" not in ok.headers  # RFC 9725 4.3.2: no ETag on a trickle answer
        assert worker_remote_candidates(stack) == {_address(c) for c in held}
        viewer, whep = await stack.watch(stream_id)
        await viewer.wait_for_frames("video", 10)
        # Unusable candidates are dropped silently; end-of-candidates is accepted.
        odd = trickle_fragment(whip, "candidate:garbage", end=True)
        assert (await stack.patch(whip, odd, whip.etag)).status == 204
        assert (await stack.patch(whip, odd, f'"x", {whip.etag}')).status == 204

        # An ICE restart cannot be done: 422, and the session carries on as it was.
        restart = trickle_fragment(whip, *held, ufrag="newU", pwd="new-password-1234567890")
        refused = await stack.patch(whip, restart, if_match="*")
        assert (refused.status, refused.json_error()) == (422, "ice_restart_unsupported")
        seen = viewer.frames["video"]
        await viewer.wait_for_frames("video", seen + 10)
        assert (await stack.patch(whip, fragment, whip.etag)).status == 204

        # A session is found by its own URL only: another kind or stream is 404.
        for path in (whip.url.replace("/whip/", "/whep/"),
                     whip.url.replace(stream_id, str(uuid.uuid4()))):
            assert (await stack.patch(whip, fragment, whip.etag, url=path)).status == 404
    finally:
        if whep is not None and viewer is not None:
            await stack.delete(whep.url)
            await viewer.close()
        await stack.delete(whip.url)
        await publisher.close()
    gone = await stack.patch(whip, fragment, whip.etag)
    assert (gone.status, gone.json_error()) == (404, "session_not_found")
    await stack.assert_nothing_left()


def _address(candidate: str) -> tuple[str, int]:
    fields = candidate.split()
    return fields[4], int(fields[5])


def worker_remote_candidates(stack: Stack) -> set[tuple[str, int]]:
    """The publisher's candidates the worker's ICE agent knows."""
    assert stack.worker is not None
    peer = next(p for p in stack.worker.app[MANAGER].peers.values() if p.role == "publisher")
    transport = peer.pc.getTransceivers()[0].receiver.transport.transport
    return {(c.ip, c.port) for c in transport.getRemoteCandidates()}


# --- WHEP refusals --------------------------------------------------------------------------

async def test_whep_tokens_funds_and_liveness(stack: Stack) -> None:
    stream_id, key = await stack.stream()
    offer = await _offer(("video", "audio"))
    _, token = await stack.viewer_token()
    before = metric("vilokanam_auth_failures_total", kind="token")
    for bearer in (None, "v1.forged.token", issue_token("z" * 40, "u", "a")):
        reply = await stack.post("whep", stream_id, bearer, offer)
        assert (reply.status, reply.json_error()) == (401, "unauthorized")
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert metric("vilokanam_auth_failures_total", kind="token") == before + 3

    not_live = await stack.post("whep", stream_id, token, offer)
    assert (not_live.status, not_live.json_error()) == (409, "stream_not_live")
    assert not_live.headers["Retry-After"] == "5"

    publisher, whip = await stack.publish(stream_id, key)
    try:
        _, poor = await stack.viewer_token(Decimal("0.0099"))  # 10 s cost 0.01
        broke = await stack.post("whep", stream_id, poor, offer)
        assert (broke.status, broke.json_error()) == (402, "insufficient_funds")
        wrong_type = await stack.post("whep", stream_id, token, offer, content_type="text/plain")
        assert (wrong_type.status, wrong_type.headers["Accept-Post"]) == (415, SDP)
        assert (await stack.worker_stats())["viewers"] == 0
    finally:
        await stack.delete(whip.url)
        await publisher.close()
    await stack.assert_nothing_left()


# --- several signaling servers; sessions outlive their keeper ---------------------------

async def test_any_signaling_server_serves_any_session(settings: Settings,
                                                       db: asyncpg.Connection,
                                                       redis: aioredis.Redis) -> None:
    async with running(settings, db, redis, signaling_servers=2) as stack:
        stream_id, key = await stack.stream()
        publisher, whip = await stack.publish(stream_id, key)  # through server 0
        viewer, whep = await stack.watch(stream_id, server=1)
        try:
            await viewer.wait_for_frames("video", 5)
            on_other = whip.url.replace(str(stack.signaling[0].port),
                                        str(stack.signaling[1].port))
            assert on_other != whip.url
            fragment = trickle_fragment(whip, "candidate:1 1 udp 1 127.0.0.1 9 typ host")
            assert (await stack.patch(whip, fragment, whip.etag, url=on_other)).status == 204
            viewer_on_first = whep.url.replace(str(stack.signaling[1].port),
                                               str(stack.signaling[0].port))
            assert (await stack.delete(viewer_on_first)).status == 200
            assert (await stack.delete(on_other)).status == 200
            assert (await stack.delete(whip.url)).status == 404
        finally:
            await close_all(viewer, publisher)
        await stack.assert_nothing_left()


@pytest.mark.redis_modes
async def test_sessions_are_adopted_when_their_server_goes_and_dropped_with_their_worker(
        settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    timing = Timing(ttl_s=2.0, refresh_s=0.2, orphan_after_s=0.7)
    monkeypatch.setattr(http_sessions, "TIMING", timing)
    async with running(settings, db, redis, signaling_servers=2) as stack:
        stream_id, key = await stack.stream()
        publisher, whip = await stack.publish(stream_id, key)  # kept by server 0
        on_other = whip.url.replace(str(stack.signaling[0].port), str(stack.signaling[1].port))
        try:
            await stack.signaling[0].close()  # its keeper stops refreshing
            # adopted by server 1 once the TTL of server 0's lease runs out
            await eventually(lambda: stack.request("GET", on_other),
                             lambda resp: resp.status == 204, "server 1 adopting the session",
                             timeout=timing.ttl_s * 1.5)

            # Sessions whose worker stopped heartbeating, or whose stream that worker no
            # longer carries (an end whose events were missed), go at the next refresh.
            store = SessionStore(redis, timing)
            live_worker = (await redis.get(stream_worker_key(stream_id))).decode()
            stale = [HttpSession.new(Kind.WHEP, stream, worker, PeerRef("http://127.0.0.1:9", "p"),
                                     IceCredentials(None, None))
                     for stream, worker in ((stream_id, "dead-worker"),
                                            (str(uuid.uuid4()), live_worker))]
            for session in stale:
                await store.save(session)
            for session in stale:
                await eventually(partial(store.load, session.resource_id),
                                 lambda found: found is None, "the stale session to go", 5)
            assert (await stack.request("GET", on_other)).status == 204
            assert (await stack.delete(on_other)).status == 200
        finally:
            await publisher.close()
        await stack.assert_nothing_left()


# --- a browser player ----------------------------------------------------------------------

PLAYER = """<!doctype html><meta charset="utf-8"><title>WHEP player</title>
<video id="video" autoplay muted playsinline></video>
<script>
// A minimal WHEP player: POST the offer, trickle candidates in one PATCH.
window.whep = {};
async function play(endpoint, token) {
  const pc = new RTCPeerConnection();
  window.whep.pc = pc;
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  pc.ontrack = (e) => { document.getElementById("video").srcObject = e.streams[0]; };
  const gathered = new Promise((done) => {
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
  });
  await pc.setLocalDescription(await pc.createOffer());
  const created = await fetch(endpoint, {method: "POST", body: pc.localDescription.sdp,
    headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token}});
  window.whep.status = created.status;
  if (created.status !== 201) return;
  window.whep.location = new URL(created.headers.get("Location"), endpoint).href;
  window.whep.etag = created.headers.get("ETag");
  await pc.setRemoteDescription({type: "answer", sdp: await created.text()});
  await gathered;
  const sdp = pc.localDescription.sdp;
  const lines = sdp.split("\\r\\n");
  const pick = (prefix) => lines.filter((l) => l.startsWith(prefix));
  const mid = pick("a=mid:")[0];
  const fragment = [pick("a=ice-ufrag:")[0], pick("a=ice-pwd:")[0], "m=video 9 UDP/TLS/RTP/SAVPF 0",
    mid, ...pick("a=candidate:"), "a=end-of-candidates", ""].join("\\r\\n");
  const patched = await fetch(window.whep.location, {method: "PATCH", body: fragment,
    headers: {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": window.whep.etag}});
  window.whep.patchStatus = patched.status;
}
async function stop() {
  const ended = await fetch(window.whep.location, {method: "DELETE"});
  window.whep.pc.close();
  return ended.status;
}
</script>"""

FRAMES_DECODED = """async () => {
  let frames = 0;
  (await window.whep.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames = r.framesDecoded || 0;
  });
  return frames;
}"""


@pytest.mark.browser
async def test_chromium_plays_a_whip_stream_over_whep(stack: Stack) -> None:
    path = chromium_path()
    require(path is not None, "Debian's chromium")
    from playwright.async_api import async_playwright

    from tests.conftest import CHROMIUM_ARGS

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PLAYER, content_type="text/html")

    site = web.Application()
    site.router.add_get("/", page)
    player_site = TestServer(site, host="127.0.0.1")  # another origin: CORS is exercised
    await player_site.start_server()
    stream_id, key = await stack.stream()
    publisher, whip = await stack.publish(stream_id, key)
    _, token = await stack.viewer_token()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            player = await (await browser.new_context()).new_page()
            errors: list[str] = []
            player.on("pageerror", lambda exc: errors.append(str(exc)))
            await player.goto(str(player_site.make_url("/")))
            await player.evaluate("([e, t]) => play(e, t)",
                                  [stack.url(f"/whep/{stream_id}"), token])
            assert await player.evaluate("window.whep.status") == 201
            assert await player.evaluate("window.whep.patchStatus") == 204
            await player.wait_for_function(f"({FRAMES_DECODED})().then((n) => n > 10)",
                                           timeout=20_000)
            first = await player.evaluate(FRAMES_DECODED)
            await asyncio.sleep(2)  # time passing IS the test: the frame rate over 2 s
            assert await player.evaluate(FRAMES_DECODED) > first + 20  # ~30 fps
            assert await stack.db.fetchval(
                "SELECT count(*) FROM stream_viewers WHERE stream_id = $1 AND is_active",
                stream_id) == 1
            assert await player.evaluate("stop()") == 200
            assert errors == []
            await browser.close()
    finally:
        await stack.delete(whip.url)
        await publisher.close()
        await player_site.close()
    await stack.assert_nothing_left()


# --- trickle fragments as clients write them -------------------------------------------

def test_fragments_from_simple_whip_client_and_browsers() -> None:
    # simple-whip-client: credentials first, a made-up m= line, the offer's first mid.
    gst = parse_trickle_fragment(
        "a=ice-ufrag:abcd\r\na=ice-pwd:secret\r\nm=video 9 RTP/AVP 0\r\na=mid:video0\r\n"
        "a=candidate:1 1 UDP 2015363327 172.17.0.2 40000 typ host\r\na=end-of-candidates\r\n")
    assert gst.candidates[0].to_json() == {
        "candidate": "candidate:1 1 UDP 2015363327 172.17.0.2 40000 typ host",
        "sdpMid": "video0", "sdpMLineIndex": None}
    assert gst.end_of_candidates
    assert not gst.restarts(IceCredentials("abcd", "secret"))
    assert gst.restarts(IceCredentials("other", "secret"))
    assert not gst.restarts(IceCredentials(None, None))  # unknown: not a restart
    # No mid: the candidate is placed by its m= line's position.
    bare = parse_trickle_fragment("m=audio 9 RTP/AVP 0\na=candidate:2 1 udp 1 ::1 9 typ host\n")
    assert bare.candidates[0].sdp_mline_index == 0 and bare.candidates[0].sdp_mid is None
    for bad in ("hello", "a=group:BUNDLE 0\r\n", "a=candidate:\r\n"):
        with pytest.raises(MalformedFragment):
            parse_trickle_fragment(bad)
    assert offer_credentials("v=0\r\nm=audio 9 X 0\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\n") == \
        IceCredentials("u", "p")
