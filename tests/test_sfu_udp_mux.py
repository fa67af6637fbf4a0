"""One UDP port per worker: every peer connection's ICE, DTLS and SRTP on
the same socket, demultiplexed by ICE username and remote address."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from aioice import stun

from sfu.app import create_app
from sfu.udp_mux import MuxRoutes, MuxTransport, stun_username
from tests.media_clients import Publisher, Viewer
from tests.sfu_in_process import Worker, make_stream, make_viewer_user
from vilokanam.config import Settings
from vilokanam.services.net import free_port


def binding_request(username: str) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    return bytes(message)


def test_routes_by_ufrag_first_then_by_address() -> None:
    routes = MuxRoutes()
    first, second = object(), object()
    routes.add("aaaa", first)
    routes.add("bbbb", second)
    media = b"\x80\x60" + bytes(30)
    assert routes.route(media, ("10.0.0.1", 5000)) is None  # nobody knows that address
    assert routes.route(binding_request("bbbb:zzzz"), ("10.0.0.1", 5000)) is second
    assert routes.route(media, ("10.0.0.1", 5000)) is second  # learnt from the check
    assert routes.route(binding_request("cccc:zzzz"), ("10.0.0.2", 1)) is None
    routes.sent_to(("10.0.0.3", 7), first)  # our own check to a candidate
    assert routes.route(media, ("10.0.0.3", 7)) is first
    routes.remove(second)
    assert routes.route(media, ("10.0.0.1", 5000)) is None
    assert stun_username(media) is None and stun_username(b"\x00\x01") is None


@pytest.fixture
async def mux_worker(settings: Settings, db: asyncpg.Connection,
                     redis: aioredis.Redis) -> AsyncIterator[tuple[Worker, int]]:
    port = free_port()
    server = TestServer(create_app(Settings.from_env(
        {**settings.as_env(), "VILOKANAM_SFU_UDP_PORT": str(port)})))
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Worker(server, session, redis), port
    await server.close()


def candidate_ports(sdp: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+)", sdp)}


async def test_publisher_and_viewers_share_the_workers_one_port(
        mux_worker: tuple[Worker, int], db: asyncpg.Connection) -> None:
    worker, port = mux_worker
    stream_id, _ = await make_stream(db)
    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    answers = [worker.last["sdp"]]
    viewers = [Viewer(), Viewer()]
    for number, viewer in enumerate(viewers):
        await viewer.start(worker.signal_viewer(
            stream_id, await make_viewer_user(worker, db, f"mux-{number}")))
        answers.append(worker.last["sdp"])
    for viewer in viewers:
        await viewer.wait_for_frames("video", 20)
        await viewer.wait_for_frames("audio", 20)
    assert all(candidate_ports(answer) == {port} for answer in answers)
    for peer in worker.manager.peers.values():
        for transceiver in peer.pc.getTransceivers():
            connection = transceiver.receiver.transport.transport.iceGatherer._connection
            assert connection._protocols
            assert all(isinstance(p.transport, MuxTransport) for p in connection._protocols)
    for client in (*viewers, publisher):
        await client.close()
    mux = worker.manager.udp_mux
    assert mux is not None
    for _ in range(100):  # closed connections leave the routes
        if not mux.routes.by_ufrag:
            break
        await asyncio.sleep(0.05)
    assert mux.routes.by_ufrag == {} and mux.routes.by_address == {}
