"""Ticks at the source: once a second the worker bills every viewer session
that really received the stream in that second — its media connection is up,
frames were handed to its senders during the second, and it sent an RTCP
report within the last 5 s (a viewer whose network died is not billed).

All of a second's ticks go to Redis as one batch in one command
(vilokanam/metering.py); a failed write is kept and retried with the same
batch id, so it can never count twice. Sessions whose viewer cannot pay for
the next second are returned to be cut off in this second.

The outbox of unwritten batches lives in the worker's memory only, bounded
at OUTBOX_LIMIT seconds: while Redis is down, `vilokanam_ticks_unwritten`
says how many ticks a worker death would lose now; the batches that overflow
the bound, and what is still unwritten when the worker stops (`close`), are
lost and reported (`vilokanam_ticks_lost_total{reason}` and an ERROR
`ticks.lost` line with the seconds they cover). A lost tick was never charged
either: the charge is part of the write."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from vilokanam import live_ticks
from vilokanam.logs import log_event
from vilokanam.metering import Tick, TickBatch, TickWriter
from vilokanam.redis_client import REDIS_ERRORS

if TYPE_CHECKING:
    from sfu.peers import Peer

log = logging.getLogger(__name__)

RR_WINDOW = 5.0  # an RTCP report from the viewer within this many seconds
# A frame sent within this long before a tick counts for it, however soon that
# tick follows the last one: a loaded worker's clock runs a late beat and then
# the next on time, and media comes in bursts, so "frames since the last tick"
# alone left out viewers who received media in the second being billed.
FRAME_WINDOW = 1.0
OUTBOX_LIMIT = 3600  # seconds of batches kept while Redis is unreachable

TICKS_EMITTED = Counter("vilokanam_ticks_emitted_total", "Ticks written by this worker.")
TICK_WRITE_FAILURES = Counter(
    "vilokanam_tick_write_failures_total", "Tick batch writes that failed and will be retried.")
TICKS_UNWRITTEN = Gauge(
    "vilokanam_ticks_unwritten",
    "Ticks in this worker's memory outbox, not yet in Redis: lost if the worker dies now.")
TICKS_LOST = Counter(
    "vilokanam_ticks_lost_total",
    "Ticks never written to Redis (never billed, never charged): the outbox overflowed "
    "during a long Redis outage, or the worker stopped with the outbox unwritten.",
    ["reason"])


@dataclass
class ViewerMeter:
    """What metering knows of one viewer session."""

    price_planck: int = 0
    ticks: int = 0
    frames_at_last_tick: int = 0
    last_report_at: float = float("-inf")

    def report_received(self) -> None:
        self.last_report_at = time.monotonic()


def received_this_second(peer: Peer, now: float) -> bool:
    frames = sum(track.frames_sent for _, track in peer.tracks)
    fresh = frames > peer.meter.frames_at_last_tick or (frames > 0 and any(
        now - track.last_sent_at <= FRAME_WINDOW for _, track in peer.tracks))
    peer.meter.frames_at_last_tick = frames
    return (fresh and peer.pc.connectionState == "connected"
            and now - peer.meter.last_report_at <= RR_WINDOW)


@dataclass
class TickEmitter:
    worker_id: str
    writer: TickWriter
    token_decimals: int = 12  # the live message's costs are planck shifted by these
    _last_second: int = 0
    _outbox: list[TickBatch] = field(default_factory=list)

    @classmethod
    def for_redis(cls, worker_id: str, redis: aioredis.Redis,
                  token_decimals: int) -> TickEmitter:
        return cls(worker_id, TickWriter(redis), token_decimals)

    def next_second(self) -> int:
        """The second just completed, strictly after the last one labelled:
        a clock stepping back can never give one session two ticks of a second."""
        self._last_second = max(int(time.time()) - 1, self._last_second + 1)
        return self._last_second

    async def emit(self, viewers: Iterable[Peer]) -> list[str]:
        """Bill this second; returns viewer_session_ids that cannot pay on."""
        now = time.monotonic()
        ticked = [p for p in viewers
                  if p.viewer_session_id and p.user_id and received_this_second(p, now)]
        batch = TickBatch(self.worker_id, self.next_second(), tuple(
            Tick(p.viewer_session_id, p.user_id, p.meter.price_planck)  # type: ignore[arg-type]
            for p in ticked))
        for peer in ticked:
            peer.meter.ticks += 1
        if batch.ticks:
            self._outbox.append(batch)
        return await self._flush_outbox(self._live_message(ticked))

    def _live_message(self, ticked: list[Peer]) -> str:
        """The watch pages' message for this second (vilokanam/live_ticks.py):
        no object and no cost per viewer here, signaling computes the costs."""
        try:
            return live_ticks.encode([p.peer_id for p in ticked],
                                     [p.meter.ticks for p in ticked],
                                     [p.meter.price_planck for p in ticked], self.token_decimals)
        except ValueError as exc:  # cannot happen with our peer ids; billing goes on
            log_event(log, "ticks.live_unencodable", logging.ERROR, worker_id=self.worker_id,
                      error=str(exc))
            return ""

    async def _flush_outbox(self, live: str) -> list[str]:
        broke: list[str] = []
        while self._outbox:
            batch = self._outbox[0]
            try:
                broke += await self.writer.write(batch, live if batch is self._outbox[-1] else "")
            except REDIS_ERRORS as exc:
                TICK_WRITE_FAILURES.inc()
                log_event(log, "ticks.write_failed", logging.WARNING, worker_id=self.worker_id,
                          batch=batch.batch_id, pending=len(self._outbox), error=repr(exc))
                self._lose(self._outbox[:-OUTBOX_LIMIT], "outbox_full")
                break
            self._outbox.pop(0)
            TICKS_EMITTED.inc(len(batch.ticks))
        self._count_unwritten()
        return broke

    @property
    def unwritten(self) -> int:
        """Ticks held in the outbox, not yet in Redis."""
        return sum(len(batch.ticks) for batch in self._outbox)

    def _count_unwritten(self) -> None:
        TICKS_UNWRITTEN.set(self.unwritten)

    def _lose(self, batches: list[TickBatch], reason: str) -> None:
        """Give up `batches` (the oldest of the outbox), and say so."""
        if not batches:
            return
        del self._outbox[:len(batches)]
        ticks = sum(len(batch.ticks) for batch in batches)
        TICKS_LOST.labels(reason).inc(ticks)
        log_event(log, "ticks.lost", logging.ERROR, worker_id=self.worker_id, reason=reason,
                  batches=len(batches), ticks=ticks, first_second=batches[0].second,
                  last_second=batches[-1].second)

    async def close(self) -> None:
        """The worker stops: one last try to write the outbox; what is still
        unwritten is lost, and reported."""
        if self._outbox:
            await self._flush_outbox("")
        self._lose(list(self._outbox), "worker_stopped")
        self._count_unwritten()
