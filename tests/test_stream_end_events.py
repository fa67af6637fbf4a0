"""`POST /api/streams/{id}/end` for a stream no worker carries any more (its
worker stopped heartbeating, the reaper has not come round yet): signaling
ends the rows itself and must also tell everyone connected, as the worker
would have — websockets in a call hear `stream_ended`, WHEP sessions are
closed on the worker and dropped. The signaling app, Postgres and Redis are
real; the worker is tests/fake_worker.py's FAKE (the protocol tests')."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from routing.placement import stream_worker
from signaling.http_sessions import KEEPER, HttpSession, Kind
from signaling.sdpfrag import IceCredentials
from signaling.sfu_client import PeerRef
from signaling.tokens import issue_token
from tests.test_ws_protocol import SECRET, TIMEOUT, Harness, ask, publish, running, watch
from tests.waiting import wait_until
from vilokanam.config import Settings


@pytest.fixture
async def h(settings: Settings, redis: aioredis.Redis,
            db: asyncpg.Connection) -> AsyncIterator[Harness]:
    async with running(settings, redis, db) as harness:
        yield harness


async def test_ending_a_stream_without_its_worker_tells_every_client(h: Harness) -> None:
    stream_id, key = await h.stream()
    publisher = await h.connect()
    answer = await ask(publisher, publish(stream_id, key))
    assert answer["type"] == "answer", answer
    # What the real worker writes when the publisher connects.
    await h.db.execute("UPDATE streams SET status = 'live', start_time = now() "
                       "WHERE id = $1::uuid", stream_id)
    await h.db.execute("INSERT INTO stream_sessions (id, stream_id, start_time) "
                       "VALUES ($1::uuid, $2::uuid, now())", answer["session_id"], stream_id)
    viewer_id, token = await h.token()
    viewer = await h.connect()
    assert (await ask(viewer, watch(stream_id, token)))["type"] == "answer"
    # A WHEP viewer's session, kept by this server as POST /whep keeps it.
    whep_peer = f"peer-{secrets.token_hex(4)}"
    h.worker.peers.add(whep_peer)
    keeper = h.client.app[KEEPER]
    whep = HttpSession.new(Kind.WHEP, stream_id, h.worker.worker_id,
                           PeerRef(h.worker.control_url, whep_peer),
                           IceCredentials("ufrag", "pwd"), viewer_id)
    await keeper.open(whep)

    await h.worker.deregister()  # the worker is gone from placement
    assert await stream_worker(h.redis, stream_id) is None  # the fault: nobody carries it
    creator = await h.db.fetchval("SELECT creator_id::text FROM streams WHERE id = $1::uuid",
                                  stream_id)
    owner = issue_token(SECRET, creator, "5Owner")
    response = await h.client.post(f"/api/streams/{stream_id}/end",
                                   headers={"Authorization": f"Bearer {owner}"})
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "ended"

    assert await viewer.receive_json(timeout=TIMEOUT) == {"type": "stream_ended"}
    assert await publisher.receive_json(timeout=TIMEOUT) == {"type": "stream_ended"}
    await wait_until(lambda: ("DELETE", f"/control/peers/{whep_peer}", None)
                     in h.worker.requests, "the WHEP peer closed on its worker")
    assert await wait_until(lambda: _gone(h, whep.resource_id), "the WHEP session dropped")
    assert len(keeper) == 0


async def test_ending_a_stream_that_never_went_live_still_says_so(h: Harness) -> None:
    """No session was open: one `stream_ended` without a session id, which
    no call takes for another session's end."""
    stream_id, _ = await h.stream()
    pubsub = h.redis.pubsub()
    await pubsub.subscribe(f"vk:stream:{stream_id}:events")
    await pubsub.get_message(timeout=TIMEOUT)  # the subscribe confirmation
    creator = await h.db.fetchval("SELECT creator_id::text FROM streams WHERE id = $1::uuid",
                                  stream_id)
    response = await h.client.post(
        f"/api/streams/{stream_id}/end",
        headers={"Authorization": f"Bearer {issue_token(SECRET, creator, '5Owner')}"})
    assert response.status == 200, await response.text()
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT)
    await pubsub.aclose()
    assert message is not None
    assert json.loads(message["data"]) == {"type": "stream_ended", "stream_id": stream_id,
                                           "session_id": None}


async def _gone(harness: Harness, resource_id: str) -> bool:
    return await harness.client.app[KEEPER].store.load(resource_id) is None
