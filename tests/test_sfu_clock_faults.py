"""The worker's clock survives a store outage: real aiortc peers through a real
worker, Postgres or Redis killed at the moment the clock must write to it.

Before the one loop policy, a Postgres error in the cut-off of a viewer who
ran out of funds stopped the clock for good: no more ticks for anyone (they
watched free), no silent-publisher detection, no analytics."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from routing.channels import PUBLISH_FAILURES
from routing.registry import stream_worker_key
from sfu.write_behind import DEFERRED
from tests.conftest import Stores
from tests.flushing import flush_all
from tests.media_clients import Publisher, Viewer
from tests.sfu_in_process import Worker, make_stream, make_viewer_user
from tests.waiting import wait_until


async def billed_ticks(stores: Stores) -> dict[str, tuple[int, bool]]:
    conn = await asyncpg.connect(stores.database_url)
    try:
        rows = await conn.fetch("SELECT id::text AS id, total_ticks, is_active FROM stream_viewers")
    finally:
        await conn.close()
    return {r["id"]: (r["total_ticks"], r["is_active"]) for r in rows}


async def test_postgres_down_while_a_viewer_runs_out_of_funds(
        worker: Worker, db: asyncpg.Connection, redis: aioredis.Redis,
        stores: Stores) -> None:
    postgres = stores.owned_postgres()
    stream_id, _ = await make_stream(db)
    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    poor_user = await make_viewer_user(worker, db, "poor", funds=Decimal("0.004"))  # 4 s
    rich_user = await make_viewer_user(worker, db, "rich")
    poor, rich = Viewer(), Viewer()
    await rich.start(worker.signal_viewer(stream_id, rich_user))
    rich_peer = worker.manager.peers[worker.last["peer_id"]]
    await rich.wait_for_frames("video", 5)
    deferred_before = DEFERRED.labels("viewer_left")._value.get()
    # The poor viewer joins last, so that its 4 s cannot run out before the
    # kill however slow the machine is (its first tick needs media delivered).
    await poor.start(worker.signal_viewer(stream_id, poor_user))
    poor_peer = worker.manager.peers[worker.last["peer_id"]]
    assert poor_peer.meter.ticks < 4

    postgres.kill()  # before the poor viewer's money runs out
    await wait_until(lambda: poor_peer.peer_id not in worker.manager.peers,
                     "the poor viewer is cut off while Postgres is down",
                     timeout=10)
    # The fault landed: the cut-off's Postgres write failed and was kept (the
    # write follows the peer's removal: wait for it, then exactly one).
    await wait_until(lambda: DEFERRED.labels("viewer_left")._value.get() > deferred_before,
                     "the cut-off's write is deferred", timeout=10)
    assert DEFERRED.labels("viewer_left")._value.get() == deferred_before + 1
    assert len(worker.manager.writes) >= 1
    during = rich_peer.meter.ticks
    await wait_until(lambda: rich_peer.meter.ticks >= during + 2,
                     "the other viewer is still ticked during the outage",
                     timeout=8)

    postgres.start()
    back = rich_peer.meter.ticks
    await wait_until(lambda: rich_peer.meter.ticks >= back + 2,
                     "ticks go on within 3 s of Postgres's return",
                     timeout=3)
    await wait_until(lambda: len(worker.manager.writes) == 0,
                     "the kept cut-off write lands once Postgres is back",
                     timeout=20)

    await rich.close()
    await wait_until(lambda: rich_peer.peer_id not in worker.manager.peers, "rich viewer gone",
                     timeout=10)
    await poor.close()
    await publisher.close()
    await flush_all(stores.database_url, redis)
    billed = await billed_ticks(stores)
    assert billed[poor_peer.viewer_session_id] == (poor_peer.meter.ticks, False)
    assert billed[rich_peer.viewer_session_id] == (rich_peer.meter.ticks, False)
    assert poor_peer.meter.ticks == 4  # exactly what its money paid for


async def test_redis_down_while_the_publisher_goes_silent(
        worker: Worker, db: asyncpg.Connection, redis: aioredis.Redis,
        stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    import sfu.streams

    monkeypatch.setattr(sfu.streams, "MEDIA_TIMEOUT", 1.0)
    monkeypatch.setattr(sfu.streams, "RECONNECT_GRACE", 0.5)
    server = stores.owned_redis()
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    await viewer.start(worker.signal_viewer(stream_id, await make_viewer_user(worker, db, "v")))
    peer = worker.manager.peers[worker.last["peer_id"]]
    await viewer.wait_for_frames("video", 5)
    await wait_until(lambda: peer.meter.ticks >= 1, "the viewer is billed before the outage",
                     timeout=10)
    publish_failures = PUBLISH_FAILURES.labels("peer_closed")._value.get()

    server.stop()  # a clean stop: the append-only file keeps the live balances
    for transceiver in publisher.pc.getTransceivers():
        transceiver.sender._enabled = False  # aiortc: read but send nothing; ICE stays up
    await wait_until(lambda: db.fetchval("SELECT status = 'ended' FROM streams WHERE id = $1",
                                         stream_id),
                     "the silent publisher's stream ends while Redis is down", timeout=10)
    # The fault landed: its events could not be published, its unpin is kept.
    assert PUBLISH_FAILURES.labels("peer_closed")._value.get() > publish_failures
    assert len(worker.manager.writes) >= 1

    server.start()
    await wait_until(lambda: len(worker.manager.writes) == 0,
                     "the kept unpin lands once Redis is back",
                     timeout=10)
    client = aioredis.Redis.from_url(stores.redis_url)
    try:
        assert await client.get(stream_worker_key(stream_id)) is None
        await flush_all(stores.database_url, client)
    finally:
        await client.aclose()
    await viewer.close()
    await publisher.close()
    billed = await billed_ticks(stores)
    assert billed[peer.viewer_session_id] == (peer.meter.ticks, False)
    assert peer.meter.ticks >= 1
