"""The streams one worker carries: who publishes, who watches, and the life of
each stream — live on publish, a 10 s grace when the publisher's connection is
lost (a reconnect in time resumes the same session, viewers stay connected),
ended after it or on an explicit leave."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from routing.channels import CloseReason, EventBus, StreamEvent
from sfu import metrics
from sfu.lifecycle import Lifecycle
from sfu.load import LoadMonitor
from sfu.metering import TickEmitter
from sfu.peers import (
    Peer,
    PeerError,
    accept_publisher,
    accept_viewer,
    make_peer_connection,
    upstream_keyframe_requester,
)
from sfu.recorder import Recordings
from sfu.relay import Fanout
from sfu.thumbnails import LiveThumbnails
from sfu.udp_mux import UdpMux
from sfu.write_behind import WriteBehind
from vilokanam.logs import log_event
from vilokanam.money import to_planck
from vilokanam.tasks import TaskOwner, run_forever

log = logging.getLogger(__name__)

RECONNECT_GRACE = 10.0
FIRST_MEDIA_TIMEOUT = 10.0  # ICE + DTLS must have brought media by then
MEDIA_TIMEOUT = 5.0  # a publisher silent this long has lost its connection
ANALYTICS_EVERY = 10  # seconds between stream_analytics rows
CLOCK_LOOPS = 5  # the clock's loops (start()): an idle worker runs exactly these tasks


class StreamNotLive(PeerError):
    status = 404
    code = "stream_not_live"


class AlreadyLive(PeerError):
    status = 409
    code = "already_live"


class AtCapacity(PeerError):
    status = 503
    code = "at_capacity"


class UnknownPeer(PeerError):
    status = 404
    code = "unknown_peer"


@dataclass
class LiveStream:
    stream_id: str
    session_id: str = ""
    fanouts: dict[str, Fanout] = field(default_factory=dict)
    publisher: Peer | None = None
    viewers: dict[str, Peer] = field(default_factory=dict)
    grace: asyncio.Task[None] | None = None
    last_media_at: float = field(default_factory=time.monotonic)
    had_media: bool = False

    def media_arrived(self) -> None:
        self.last_media_at = time.monotonic()
        self.had_media = True

    def publisher_silent(self, now: float) -> bool:
        limit = MEDIA_TIMEOUT if self.had_media else FIRST_MEDIA_TIMEOUT
        return self.publisher is not None and now - self.last_media_at > limit


def _new_peer_id() -> str:
    return secrets.token_urlsafe(18)  # unguessable: it names a control resource


@dataclass
class StreamManager:
    ice_servers: list[dict[str, Any]]
    capacity: int
    control_url: str
    lifecycle: Lifecycle
    events: EventBus
    emitter: TickEmitter
    token_decimals: int = 12
    recordings: Recordings | None = None
    thumbnails: LiveThumbnails | None = None  # set by the app: it shares our TaskOwner
    streams: dict[str, LiveStream] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)
    tasks: TaskOwner = field(default_factory=lambda: TaskOwner("sfu"))
    load_monitor: LoadMonitor = field(default_factory=lambda: LoadMonitor(0.85, 0.1))
    udp_mux: UdpMux | None = None  # one UDP port for every peer connection, if configured
    writes: WriteBehind = field(default_factory=WriteBehind)
    analytics_every: int = ANALYTICS_EVERY  # seconds of the clock between samples
    _analytics_beats: int = 0
    _publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _admitting: int = 0  # peer connections being set up, not yet registered

    def start(self) -> None:
        """The worker's clock: five loops under the one loop policy, so a store
        error in one (a cut-off viewer's row, say) never stops the others —
        ticks above all; and the load monitor (admission)."""
        self.tasks.spawn(run_forever("sfu.meter", self._meter, every=1.0), "meter")
        self.tasks.spawn(run_forever("sfu.publisher_watch", self._watch_publishers, every=1.0),
                         "publisher-watch")
        self.tasks.spawn(run_forever("sfu.analytics", self._record_analytics_if_due, every=1.0),
                         "analytics")
        self.tasks.spawn(run_forever("sfu.write_behind", self.writes.retry, every=1.0,
                                     max_backoff=5.0), "write-behind")
        self.tasks.spawn(run_forever("sfu.thumbnails", self._thumbnails_due, every=1.0),
                         "thumbnails")
        self.tasks.spawn(self.load_monitor.run(), "load")

    # -- publishers ---------------------------------------------------------------

    async def publish(self, stream_id: str, offer: str, signaling_url: str) -> dict[str, Any]:
        async with self._publish_lock:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.publisher is not None:
                raise AlreadyLive("this stream already has a publisher")
            self._check_capacity()
            resumed = stream is not None
            stream = stream or self._new_stream(stream_id)
            peer = Peer(_new_peer_id(), stream_id, make_peer_connection(self.ice_servers),
                        "publisher")
            self._admitting += 1
            try:
                answer = await accept_publisher(peer, offer, stream.fanouts, self.udp_mux)
            except BaseException:
                await peer.pc.close()
                if not resumed:
                    self._forget(stream)
                raise
            finally:
                self._admitting -= 1
            if resumed:
                self._cancel_grace(stream)
            else:
                stream.session_id = await self._go_live(stream, signaling_url, peer)
                if self.recordings is not None:
                    await self.recordings.start(stream_id, stream.session_id, stream.fanouts)
                if self.thumbnails is not None:
                    self.thumbnails.start(stream_id, stream.fanouts["video"])
            self._adopt_publisher(stream, peer)
        log_event(log, "publisher.connected", stream_id=stream_id, peer_id=peer.peer_id,
                  session_id=stream.session_id, resumed=resumed)
        return {"peer_id": peer.peer_id, "sdp": answer, "session_id": stream.session_id,
                "resumed": resumed}

    def _new_stream(self, stream_id: str) -> LiveStream:
        stream = LiveStream(stream_id)
        for kind in ("video", "audio"):
            requester = upstream_keyframe_requester(
                lambda: stream.publisher.pc if stream.publisher else None, kind, self.tasks)
            stream.fanouts[kind] = Fanout(kind, requester, on_media=stream.media_arrived)
        self.streams[stream_id] = stream
        return stream

    async def _go_live(self, stream: LiveStream, signaling_url: str, peer: Peer) -> str:
        try:
            # An earlier end of this stream still waiting for its store must
            # land first, or its retry would end the session that starts now.
            await self.writes.retry()
            session_id = await self.lifecycle.stream_started(
                stream.stream_id, self.control_url, signaling_url)
        except BaseException:
            await peer.pc.close()
            self._forget(stream)
            raise
        metrics.LIVE_STREAMS.inc()
        await self.events.stream(stream.stream_id, StreamEvent.STARTED, session_id=session_id)
        return session_id

    def _adopt_publisher(self, stream: LiveStream, peer: Peer) -> None:
        stream.publisher = peer
        stream.last_media_at = time.monotonic()
        stream.had_media = False
        self._register(peer)

        @peer.pc.on("connectionstatechange")
        def on_state() -> None:
            if peer.pc.connectionState in ("failed", "closed"):
                self.tasks.spawn(self._publisher_lost(peer), "publisher-lost")

    async def _publisher_lost(self, peer: Peer) -> None:
        stream = self.streams.get(peer.stream_id)
        if stream is None or stream.publisher is not peer:
            return
        stream.publisher = None
        self._unregister(peer)
        await peer.close()
        await self.events.peer_closed(peer.peer_id, CloseReason.CONNECTION_FAILED)
        log_event(log, "publisher.lost", stream_id=stream.stream_id, peer_id=peer.peer_id,
                  session_id=stream.session_id, grace_s=RECONNECT_GRACE)
        stream.grace = self.tasks.spawn(self._end_after_grace(stream), "grace")

    async def _end_after_grace(self, stream: LiveStream) -> None:
        await asyncio.sleep(RECONNECT_GRACE)
        stream.grace = None
        await self.end_stream(stream.stream_id, CloseReason.STREAM_ENDED)

    def _cancel_grace(self, stream: LiveStream) -> None:
        if stream.grace is not None:
            stream.grace.cancel()
            stream.grace = None

    # -- viewers --------------------------------------------------------------------

    async def watch(self, stream_id: str, offer: str, user_id: str) -> dict[str, Any]:
        stream = self.streams.get(stream_id)
        if stream is None or not stream.session_id:
            raise StreamNotLive("the stream is not live on this worker")
        self._check_capacity()
        self._check_load(stream_id)
        peer = Peer(_new_peer_id(), stream_id, make_peer_connection(self.ice_servers), "viewer",
                    user_id=user_id)
        self._admitting += 1
        try:
            answer = await accept_viewer(peer, offer, stream.fanouts, self.udp_mux)
            stream.viewers[peer.peer_id] = peer
            self._register(peer)
            self._admitting -= 1
            peer.viewer_session_id, price = await self.lifecycle.viewer_joined(
                stream_id, stream.session_id, user_id, len(stream.viewers))
            peer.meter.price = price
            peer.meter.price_planck = to_planck(price, self.token_decimals)
        except BaseException:
            if peer.peer_id not in self.peers:
                self._admitting -= 1
            stream.viewers.pop(peer.peer_id, None)
            self._unregister(peer)
            await peer.close()
            raise
        self._watch_viewer_connection(peer)
        await self._viewer_count_changed(stream)
        log_event(log, "viewer.joined", stream_id=stream_id, peer_id=peer.peer_id,
                  viewer_session_id=peer.viewer_session_id, user_id=user_id)
        return {"peer_id": peer.peer_id, "sdp": answer,
                "viewer_session_id": peer.viewer_session_id}

    def _watch_viewer_connection(self, peer: Peer) -> None:
        @peer.pc.on("connectionstatechange")
        def on_state() -> None:
            if peer.pc.connectionState in ("failed", "closed"):
                self.tasks.spawn(
                    self.leave(peer.peer_id, reason=CloseReason.CONNECTION_FAILED), "viewer-lost")

    # -- any peer ---------------------------------------------------------------------

    async def add_candidate(self, peer_id: str, candidate: dict[str, Any]) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            raise UnknownPeer("no such peer on this worker")
        await peer.add_candidate(candidate)

    async def leave(self, peer_id: str, reason: CloseReason = CloseReason.LEFT,
                    lost: bool = False) -> None:
        """A peer goes. A publisher's explicit leave ends the stream at once;
        a lost publisher connection (`lost`) gets the reconnect grace."""
        peer = self.peers.get(peer_id)
        if peer is None:
            if reason is CloseReason.LEFT:
                raise UnknownPeer("no such peer on this worker")
            return
        if peer.role == "publisher":
            if lost:
                await self._publisher_lost(peer)
            else:
                await self.end_stream(peer.stream_id, CloseReason.STREAM_ENDED)
            return
        await self._viewer_gone(peer, reason)

    async def _viewer_gone(self, peer: Peer, reason: CloseReason) -> None:
        stream = self.streams.get(peer.stream_id)
        # Out of the stream first: _unregister's viewer gauge counts the streams.
        watching = stream is not None and stream.viewers.pop(peer.peer_id, None) is not None
        self._unregister(peer)
        await peer.close()
        await self.events.peer_closed(peer.peer_id, reason)
        if stream is None or not watching:
            return
        if peer.viewer_session_id:
            count, viewer_session_id = len(stream.viewers), peer.viewer_session_id
            await self.writes.write(
                "viewer_left", lambda: self.lifecycle.viewer_left(
                    stream.stream_id, stream.session_id, viewer_session_id, count),
                stream_id=stream.stream_id, viewer_session_id=viewer_session_id)
        await self._viewer_count_changed(stream)
        log_event(log, "viewer.left", stream_id=stream.stream_id, peer_id=peer.peer_id,
                  viewer_session_id=peer.viewer_session_id, reason=reason)

    async def end_stream(self, stream_id: str, reason: CloseReason) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self._cancel_grace(stream)
        peers = list(stream.viewers.values())
        if stream.publisher is not None:
            peers.append(stream.publisher)
        for peer in peers:
            self._unregister(peer)
            await peer.close()
            await self.events.peer_closed(peer.peer_id, reason)
        if self.recordings is not None:
            await self.recordings.finish(stream_id, stream.fanouts)
        if self.thumbnails is not None:
            self.thumbnails.stop(stream_id)
        for fanout in stream.fanouts.values():
            fanout.close()
        metrics.LIVE_STREAMS.dec()
        ids = {"stream_id": stream_id, "session_id": stream.session_id}
        await self.writes.write(
            "stream_ended", lambda: self.lifecycle.stream_ended(stream_id, stream.session_id),
            **ids)
        await self.writes.write("unplace", lambda: self.events.unplace(stream_id), **ids)
        await self.events.stream(stream_id, StreamEvent.ENDED, session_id=stream.session_id)
        log_event(log, "stream.ended", stream_id=stream_id, session_id=stream.session_id,
                  reason=reason.value, viewers=len(stream.viewers))

    async def _viewer_count_changed(self, stream: LiveStream) -> None:
        await self.events.stream(stream.stream_id, StreamEvent.VIEWER_COUNT,
                                 count=len(stream.viewers))

    # -- bookkeeping ------------------------------------------------------------------

    def _check_capacity(self) -> None:
        """Never more than `capacity` peer connections, those being set up included
        (answers await: without them, concurrent offers would overshoot)."""
        if len(self.peers) + self._admitting >= self.capacity:
            metrics.ADMISSIONS_REFUSED.labels("capacity").inc()
            raise AtCapacity(f"this worker holds {self.capacity} peer connections")

    def _check_load(self, stream_id: str) -> None:
        """A new viewer only while the event loop keeps up: the viewers it has
        (and above all the publisher's ICE consent) come first."""
        why = self.load_monitor.overloaded()
        if why is not None:
            metrics.ADMISSIONS_REFUSED.labels("load").inc()
            log_event(log, "viewer.refused", stream_id=stream_id, reason="load", load=why)
            raise AtCapacity(f"this worker is fully loaded ({why})")

    def _register(self, peer: Peer) -> None:
        self.peers[peer.peer_id] = peer
        metrics.PEER_CONNECTIONS.set(len(self.peers))
        metrics.VIEWERS.set(sum(len(s.viewers) for s in self.streams.values()))

    def _unregister(self, peer: Peer) -> None:
        self.peers.pop(peer.peer_id, None)
        metrics.PEER_CONNECTIONS.set(len(self.peers))
        metrics.VIEWERS.set(sum(len(s.viewers) for s in self.streams.values()))

    def _forget(self, stream: LiveStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        for fanout in stream.fanouts.values():
            fanout.close()

    @property
    def load(self) -> int:
        """What the registry reports: a worker that refuses viewers for its load
        reports itself full, so placement sends new streams elsewhere."""
        if self.load_monitor.overloaded() is not None:
            return self.capacity
        return len(self.peers) + self._admitting

    def stats(self) -> dict[str, int]:
        return {
            "publishers": sum(1 for p in self.peers.values() if p.role == "publisher"),
            "viewers": sum(1 for p in self.peers.values() if p.role == "viewer"),
            "peer_connections": len(self.peers),
            "streams": len(self.streams),
            "tasks": len(self.tasks),
        }

    async def _watch_publishers(self) -> None:
        """A publisher whose media stopped has lost its connection (ICE can
        take far longer to notice): it gets the reconnect grace."""
        now = time.monotonic()
        for stream in list(self.streams.values()):
            if stream.publisher is not None and stream.publisher_silent(now):
                await self._publisher_lost(stream.publisher)

    async def _meter(self) -> None:
        viewers = [p for p in self.peers.values() if p.role == "viewer"]
        broke = set(await self.emitter.emit(viewers))
        for peer in viewers:
            if peer.viewer_session_id in broke:
                log_event(log, "viewer.out_of_funds", stream_id=peer.stream_id,
                          peer_id=peer.peer_id, viewer_session_id=peer.viewer_session_id)
                await self.leave(peer.peer_id, reason=CloseReason.INSUFFICIENT_FUNDS)

    async def _thumbnails_due(self) -> None:
        if self.thumbnails is not None:
            await self.thumbnails.tick()

    async def _record_analytics_if_due(self) -> None:
        # Counted in beats of the 1 s loop, not measured: a beat a hair early
        # must not skip a sample.
        self._analytics_beats += 1
        if self._analytics_beats % self.analytics_every:
            return
        counts = {s.stream_id: len(s.viewers) for s in self.streams.values() if s.session_id}
        await self.lifecycle.record_analytics(datetime.now(UTC).replace(tzinfo=None), counts)

    async def close(self) -> None:
        """Shutdown: end every stream here, then stop our tasks."""
        for stream_id in list(self.streams):
            await self.end_stream(stream_id, CloseReason.WORKER_DRAINING)
        await self.tasks.close()
        await self.emitter.close()  # the last seconds' ticks, or a report of their loss
