"""The worker's tick emitter (sfu/metering.py) while Redis is unreachable: the
outbox holds the unwritten seconds and says how many ticks are at risk, writes
them once (each batch once) when Redis is back, and when it must give ticks up
(its bound overflowed, or the worker stops) it counts and logs exactly those.

Redis here is real twice over: the shared test server for the writes that
land, and a real client aimed at a port nobody listens on for the outage.
The peers are STAND-INS (`StandInPeer`): plain objects carrying only what
`received_this_second` reads of an aiortc peer — a viewer receiving frames
and sending RTCP reports; the media tests run the real ones."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sfu import metering
from sfu.metering import TickEmitter, ViewerMeter
from vilokanam import live_ticks
from vilokanam.live_ticks import LiveTick
from vilokanam.metering import LIVE_CHANNEL, PENDING_KEY, TickWriter
from vilokanam.services.net import free_port


@dataclass
class StandInTrack:
    frames_sent: int = 0
    last_sent_at: float = 0.0  # time.monotonic() of the last frame sent


@dataclass
class StandInConnection:
    connectionState: str = "connected"  # aiortc's attribute name


@dataclass
class StandInPeer:
    """A viewer that received media this second (see the module's docstring)."""

    peer_id: str
    viewer_session_id: str
    user_id: str
    meter: ViewerMeter = field(default_factory=ViewerMeter)
    track: StandInTrack = field(default_factory=StandInTrack)
    pc: StandInConnection = field(default_factory=StandInConnection)

    @property
    def tracks(self) -> list[tuple[Any, StandInTrack]]:
        return [(None, self.track)]

    def receive_a_second(self) -> None:
        self.track.frames_sent += 30
        self.track.last_sent_at = time.monotonic()
        self.meter.report_received()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def unreachable() -> AsyncIterator[aioredis.Redis]:
    """A real client of a Redis that is down (nothing listens on its port)."""
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5,
                            retry=Retry(NoBackoff(), 0))  # each write fails at once
    yield client
    await client.aclose()


def audience(n: int = 2) -> list[StandInPeer]:
    return [StandInPeer(f"peer-{i}", f"00000000-0000-0000-0000-00000000000{i}", f"user-{i}")
            for i in range(n)]


async def emit_seconds(emitter: TickEmitter, peers: list[StandInPeer], seconds: int) -> None:
    for _ in range(seconds):
        for peer in peers:
            peer.receive_a_second()
        await emitter.emit(peers)


async def test_ticks_held_through_an_outage_are_written_once_when_redis_is_back(
        redis: aioredis.Redis, unreachable: aioredis.Redis) -> None:
    emitter = TickEmitter("w-outage", TickWriter(unreachable))
    peers = audience()
    failures = sample("vilokanam_tick_write_failures_total")
    await emit_seconds(emitter, peers, 3)
    # The fault landed: every write failed, nothing reached Redis.
    assert sample("vilokanam_tick_write_failures_total") - failures == 3
    assert await redis.zcard(PENDING_KEY) == 0
    assert emitter.unwritten == 6
    assert sample("vilokanam_ticks_unwritten") == 6

    emitter.writer = TickWriter(redis)  # Redis is back
    await emit_seconds(emitter, peers, 1)
    assert await redis.zcard(PENDING_KEY) == 4  # three held seconds and this one, once each
    assert emitter.unwritten == 0 and sample("vilokanam_ticks_unwritten") == 0


async def test_an_outbox_past_its_bound_loses_its_oldest_seconds_and_reports_them(
        unreachable: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(metering, "OUTBOX_LIMIT", 3)
    emitter = TickEmitter("w-overflow", TickWriter(unreachable))
    peers = audience()
    lost = sample("vilokanam_ticks_lost_total", reason="outbox_full")
    with caplog.at_level(logging.ERROR, logger="sfu.metering"):
        await emit_seconds(emitter, peers, 5)
    assert emitter.unwritten == 3 * 2  # the bound: three seconds of two viewers
    assert sample("vilokanam_ticks_lost_total", reason="outbox_full") - lost == 2 * 2
    reports = [r for r in caplog.records if r.getMessage() == "ticks.lost"]
    assert len(reports) == 2  # one second overflowed at each of the last two writes
    assert all(getattr(r, "fields")["ticks"] == 2 for r in reports)  # noqa: B009


async def test_a_worker_stopping_with_ticks_unwritten_reports_their_loss(
        unreachable: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    emitter = TickEmitter("w-stopping", TickWriter(unreachable))
    await emit_seconds(emitter, audience(), 2)
    lost = sample("vilokanam_ticks_lost_total", reason="worker_stopped")
    with caplog.at_level(logging.ERROR, logger="sfu.metering"):
        await emitter.close()
    assert sample("vilokanam_ticks_lost_total", reason="worker_stopped") - lost == 4
    [report] = [r for r in caplog.records if r.getMessage() == "ticks.lost"]
    fields = getattr(report, "fields")  # noqa: B009
    assert (fields["worker_id"], fields["batches"], fields["ticks"]) == ("w-stopping", 2, 4)
    assert emitter.unwritten == 0 and sample("vilokanam_ticks_unwritten") == 0


async def test_a_worker_stopping_after_the_outage_writes_its_outbox_and_loses_nothing(
        redis: aioredis.Redis, unreachable: aioredis.Redis) -> None:
    emitter = TickEmitter("w-recovered", TickWriter(unreachable))
    await emit_seconds(emitter, audience(), 2)
    assert emitter.unwritten == 4  # held
    lost = sample("vilokanam_ticks_lost_total", reason="worker_stopped")
    emitter.writer = TickWriter(redis)
    await emitter.close()
    assert await redis.zcard(PENDING_KEY) == 2
    assert sample("vilokanam_ticks_lost_total", reason="worker_stopped") == lost


async def test_a_tick_soon_after_the_last_still_bills_a_viewer_who_received_in_its_second(
        redis: aioredis.Redis) -> None:
    """Found by bench/chaos.py's control run (nothing killed, a loaded machine):
    a viewer who received media the whole time was missing from one batch
    mid-stream. A late beat is followed by one on time, a fraction of a second
    later; no frame moved in between (media comes in bursts), though one was
    sent well within the second that tick bills."""
    emitter = TickEmitter("w-late-beat", TickWriter(redis))
    [peer] = audience(1)
    await emit_seconds(emitter, [peer], 1)
    peer.track.last_sent_at = time.monotonic() - 0.4  # the burst, before the late beat
    await emitter.emit([peer])  # the next beat, on time: no frame since the late one
    assert peer.meter.ticks == 2
    assert await redis.zcard(PENDING_KEY) == 2

    peer.track.last_sent_at = time.monotonic() - metering.FRAME_WINDOW - 0.5  # media stopped
    await emitter.emit([peer])
    assert peer.meter.ticks == 2  # no tick without media in the second billed


async def test_the_live_message_gives_each_ticked_viewer_its_seconds_and_exact_cost(
        redis: aioredis.Redis) -> None:
    """What the worker publishes on vk:ticks:live, read as signaling reads it
    (vilokanam/live_ticks.py): every viewer ticked in that second with its
    seconds so far and their cost at its own price; a viewer with no media in
    the second is not in it."""
    emitter = TickEmitter("w-live", TickWriter(redis), token_decimals=12)
    peers = audience(4)
    for peer, price in zip(peers, (10**9, 10**9, 0, 2**60 + 1), strict=True):
        peer.meter.price_planck = price
    pubsub = redis.pubsub()
    await pubsub.subscribe(LIVE_CHANNEL)
    assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
    try:
        await emit_seconds(emitter, peers, 2)
        peers[3].track.last_sent_at = time.monotonic() - metering.FRAME_WINDOW - 0.5
        await emitter.emit(peers)  # the last peer's media stopped: three ticks
        messages = []
        deadline = time.monotonic() + 10
        while len(messages) < 3 and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                messages.append(live_ticks.decode(message["data"]))
    finally:
        await pubsub.aclose()
    assert [len(ticks) for ticks in messages] == [4, 4, 3]
    assert dict(messages[1]) == {"peer-0": LiveTick(2, "0.002"), "peer-1": LiveTick(2, "0.002"),
                                 "peer-2": LiveTick(2, "0"),
                                 "peer-3": LiveTick(2, "2305843.009213693954")}
    assert dict(messages[2]) == {"peer-0": LiveTick(3, "0.003"), "peer-1": LiveTick(3, "0.003"),
                                 "peer-2": LiveTick(3, "0")}


async def test_a_live_message_that_cannot_be_encoded_costs_the_watch_pages_not_the_ticks(
        redis: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """A peer id the live message cannot carry (never one of the worker's: see
    tests/test_live_ticks.py): that second's ticks are written all the same,
    the message is left out and the fault logged."""
    emitter = TickEmitter("w-unencodable", TickWriter(redis))
    peers = audience(2)
    peers[0].peer_id = "a,b"
    with caplog.at_level(logging.ERROR, logger="sfu.metering"):
        await emit_seconds(emitter, peers, 1)
    assert await redis.zcard(PENDING_KEY) == 1 and emitter.unwritten == 0
    assert [r.getMessage() for r in caplog.records] == ["ticks.live_unencodable"]
