"""The streams one worker carries: who publishes, who watches, and the life of
each stream — live on publish, a 10 s grace when the publisher's connection is
lost (a reconnect in time resumes the same session, viewers stay connected),
ended after it or on an explicit leave.

A stream is carried either as its origin (the publisher is here) or as an
edge (sfu/cascade.py: fed by one relay from its origin or another edge, when
placement sent it viewers the origin had no room for). An edge writes only
its viewers' rows; the stream's own rows, its recording and its analytics are
the origin's. An edge that loses its feed keeps its viewers and resumes from
wherever the stream is pinned next (the publisher reconnected elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp

from routing.channels import CloseReason, EventBus, StreamEvent
from routing.placement import stream_carriers
from routing.registry import stream_worker_key, worker_key
from sfu import metrics
from sfu.cascade import RelayFailed, RelayLoop, RelaySource, call_parent, open_relay, relay_peer
from sfu.congestion import FEEDBACK_INTERVAL
from sfu.lifecycle import Lifecycle
from sfu.load import LoadMonitor
from sfu.metering import RR_WINDOW, TickEmitter
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
from vilokanam.logs import log_event, ms_between, ms_since
from vilokanam.money import to_planck
from vilokanam.tasks import TaskOwner, run_forever

log = logging.getLogger(__name__)

RECONNECT_GRACE = 10.0
FIRST_MEDIA_TIMEOUT = 10.0  # ICE + DTLS must have brought media by then
MEDIA_TIMEOUT = 5.0  # a publisher silent this long has lost its connection
ANALYTICS_EVERY = 10  # seconds between stream_analytics rows
CLOCK_LOOPS = 6  # start()'s loops (the clock, TWCC feedback): an idle worker runs exactly these
# An edge without its feed waits this long for the stream to come back (the
# dead origin's record expiring, the publisher's grace, its reconnect) before
# it sends its viewers away to be placed again.
EDGE_GRACE = 3.0 + RECONNECT_GRACE + 5.0
# An edge's receivers report every second or so: a relay without a report for
# this long feeds a dead edge (ICE consent would take 30 s to say so), and its
# peer connection is a place the next viewer needs.
RELAY_SILENCE = RR_WINDOW


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
    edge: bool = False  # fed by a relay, not by a publisher here
    source: RelaySource | None = None  # an edge's feed, None while it has lost it
    source_lost_at: float = 0.0
    relays: dict[str, Peer] = field(default_factory=dict)  # feeds to edges
    chain: list[str] = field(default_factory=list)  # worker ids, origin first, us last
    resuming: bool = False  # an edge's new relay is being opened
    idle_since: float | None = None  # an edge's last viewer left then: its relay is kept
    joining: int = 0  # viewers being answered, not yet in `viewers`

    @property
    def idle(self) -> bool:
        """An edge nobody watches or is fed by: its relay serves no one."""
        return self.edge and not self.viewers and not self.relays and not self.joining

    def media_arrived(self) -> None:
        self.last_media_at = time.monotonic()
        self.had_media = True

    def _silent(self, now: float) -> bool:
        limit = MEDIA_TIMEOUT if self.had_media else FIRST_MEDIA_TIMEOUT
        return now - self.last_media_at > limit

    def publisher_silent(self, now: float) -> bool:
        return self.publisher is not None and self._silent(now)

    def source_failed(self, now: float) -> bool:
        """An edge's relay died or went silent."""
        if self.source is None:
            return False
        state = self.source.peer.pc.connectionState
        return state in ("failed", "closed") or self._silent(now)

    def upstream_pc(self) -> Any:
        """Where keyframe requests go: the publisher, or an edge's relay."""
        if self.publisher is not None:
            return self.publisher.pc
        return self.source.peer.pc if self.source is not None else None


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
    edge_keep: float = 30.0  # VILOKANAM_SFU_EDGE_KEEP: an idle edge keeps its relay this long
    _analytics_beats: int = 0
    _publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _relay_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one relay per edge
    _admitting: int = 0  # peer connections being set up, not yet registered
    _http: aiohttp.ClientSession | None = None  # control calls to other workers

    @property
    def worker_id(self) -> str:
        return self.events.worker_id

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

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
        self.tasks.spawn(run_forever("sfu.twcc_feedback", self._send_transport_feedback,
                                     every=FEEDBACK_INTERVAL), "twcc-feedback")

    # -- publishers ---------------------------------------------------------------

    async def publish(self, stream_id: str, offer: str, signaling_url: str) -> dict[str, Any]:
        async with self._publish_lock:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.publisher is not None:
                raise AlreadyLive("this stream already has a publisher")
            self._check_capacity()
            carried = stream is not None
            # The publisher came back on a worker that was an edge of its
            # stream: it becomes the origin, its viewers stay.
            converting = stream is not None and stream.edge
            resumed = carried and not converting
            stream = stream or self._new_stream(stream_id)
            if converting:
                await self._drop_source(stream)
            peer = Peer(_new_peer_id(), stream_id, make_peer_connection(self.ice_servers),
                        "publisher")
            self._admitting += 1
            try:
                answer = await accept_publisher(peer, offer, stream.fanouts, self.udp_mux)
            except BaseException:
                await peer.pc.close()
                if not carried:
                    self._forget(stream)
                raise
            finally:
                self._admitting -= 1
            if resumed:
                self._cancel_grace(stream)
            else:
                stream.session_id = await self._go_live(stream, signaling_url, peer)
                stream.edge, stream.chain = False, [self.worker_id]
                if self.recordings is not None:
                    await self.recordings.start(stream_id, stream.session_id, stream.fanouts)
                if self.thumbnails is not None:
                    self.thumbnails.start(stream_id, stream.fanouts["video"])
                if converting:
                    await self._move_viewers(stream)
            self._adopt_publisher(stream, peer)
        log_event(log, "publisher.connected", stream_id=stream_id, peer_id=peer.peer_id,
                  session_id=stream.session_id, resumed=resumed)
        return {"peer_id": peer.peer_id, "sdp": answer, "session_id": stream.session_id,
                "resumed": resumed}

    def _new_stream(self, stream_id: str) -> LiveStream:
        stream = LiveStream(stream_id, chain=[self.worker_id])
        for kind in ("video", "audio"):
            requester = upstream_keyframe_requester(stream.upstream_pc, kind, self.tasks)
            stream.fanouts[kind] = Fanout(kind, requester, on_media=stream.media_arrived,
                                          stream_id=stream_id)
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

    async def watch(self, stream_id: str, offer: str, user_id: str,
                    relay_from: str | None = None) -> dict[str, Any]:
        """A viewer. With `relay_from` (placement made us an edge of the
        stream) a worker that does not carry the stream relays it from there
        first: one relay, however many viewers follow."""
        started = time.monotonic()
        stream = self.streams.get(stream_id)
        new_edge = False
        if (stream is None or not stream.session_id) and relay_from:
            before = stream
            stream = await self._become_edge(stream_id, relay_from)
            new_edge = stream is not before
        if stream is None or not stream.session_id:
            raise StreamNotLive("the stream is not live on this worker")
        try:
            return await self._add_viewer(stream, offer, user_id, started)
        except BaseException:
            # An edge made for this viewer alone goes with it; one that had
            # served others keeps its relay as after a viewer's leave.
            await self._end_idle_edge(stream, at_once=new_edge)
            raise

    async def _add_viewer(self, stream: LiveStream, offer: str, user_id: str,
                          started: float) -> dict[str, Any]:
        stream_id = stream.stream_id
        self._check_capacity()
        self._check_load(stream_id)
        peer = Peer(_new_peer_id(), stream_id, make_peer_connection(self.ice_servers), "viewer",
                    user_id=user_id)
        self._admitting += 1
        joining = time.monotonic()
        stream.joining += 1  # a kept relay is not dropped under this viewer's answer
        # The viewer's row is written while the answer is made, once the offer
        # is taken (a refused offer writes none); a join that fails after
        # that has its row undone.
        rows: list[asyncio.Future[tuple[str, Decimal, int]]] = []

        def write_row() -> None:
            rows.append(asyncio.ensure_future(self.lifecycle.viewer_joined(
                stream_id, stream.session_id, user_id, self.worker_id)))

        try:
            answer = await accept_viewer(peer, offer, stream.fanouts, self.udp_mux,
                                         accepted=write_row)
            answered = time.monotonic()
            stream.viewers[peer.peer_id] = peer
            stream.idle_since = None
            self._register(peer)
            self._admitting -= 1
            peer.viewer_session_id, price, audience = await asyncio.shield(rows[0])
            stored = time.monotonic()
            peer.meter.price_planck = to_planck(price, self.token_decimals)
        except BaseException:
            if peer.peer_id not in self.peers:
                self._admitting -= 1
            stream.viewers.pop(peer.peer_id, None)
            self._unregister(peer)
            for row in rows:
                self.tasks.spawn(self._undo_viewer_row(stream, row), "viewer-row-undo")
            await peer.close()
            raise
        finally:
            stream.joining -= 1
        self._watch_viewer_connection(peer)
        await self._audience_changed(stream_id, audience)
        log_event(log, "viewer.joined", stream_id=stream_id, peer_id=peer.peer_id,
                  viewer_session_id=peer.viewer_session_id, user_id=user_id, edge=stream.edge,
                  # the watch call's answer; of it, the SDP answer and the wait after
                  # it for the row (written meanwhile)
                  ms=ms_since(started), sdp_ms=ms_between(joining, answered),
                  store_ms=ms_between(answered, stored))
        return {"peer_id": peer.peer_id, "sdp": answer,
                "viewer_session_id": peer.viewer_session_id}

    async def _undo_viewer_row(self, stream: LiveStream,
                               row: asyncio.Future[tuple[str, Decimal, int]]) -> None:
        """A join that failed after its row was written: the row goes
        inactive (no tick was ever counted on it) and the count falls back."""
        try:
            viewer_session_id = (await row)[0]
        except Exception:
            return  # no row was written (the write itself failed, e.g. the stream ended)
        await self._write_viewer_left(stream.stream_id, stream.session_id, viewer_session_id)

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
        if peer.role == "relay":
            await self._relay_gone(peer, reason)
            return
        if peer.role == "relay_in":  # our own feed: only its loss (the watch loop) ends it
            raise UnknownPeer("no such peer on this worker")
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
            await self._write_viewer_left(stream.stream_id, stream.session_id,
                                          peer.viewer_session_id)
        log_event(log, "viewer.left", stream_id=stream.stream_id, peer_id=peer.peer_id,
                  viewer_session_id=peer.viewer_session_id, reason=reason)
        await self._end_idle_edge(stream)

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
        await self._close_relays(stream, reason)
        await self._drop_source(stream)
        if stream.edge:
            await self._edge_ended(stream, reason)
            return
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

    async def _write_viewer_left(self, stream_id: str, session_id: str,
                                 viewer_session_id: str) -> None:
        async def left() -> None:
            audience = await self.lifecycle.viewer_left(stream_id, session_id,
                                                        viewer_session_id)
            if audience is not None:
                await self._audience_changed(stream_id, audience)

        await self.writes.write("viewer_left", left, stream_id=stream_id,
                                viewer_session_id=viewer_session_id)

    async def _audience_changed(self, stream_id: str, audience: int) -> None:
        """`viewer_count` events carry the whole audience, every worker's."""
        await self.events.stream(stream_id, StreamEvent.VIEWER_COUNT, count=audience)

    # -- the cascade: relays to edges, and an edge's own feed ---------------------------

    async def relay(self, stream_id: str, offer: str, worker_id: str,
                    edge_url: str) -> dict[str, Any]:
        """Another worker (an edge) asks for this stream: one peer connection
        that gets every frame, as a viewer would, but is never metered."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.session_id:
            raise StreamNotLive("the stream is not live on this worker")
        if worker_id == self.worker_id or worker_id in stream.chain:
            raise RelayLoop("that worker feeds this one: a relay would make a loop")
        self._check_capacity()
        peer = Peer(_new_peer_id(), stream_id, make_peer_connection(self.ice_servers), "relay",
                    user_id=worker_id, remote_url=edge_url)
        self._admitting += 1
        try:
            answer = await accept_viewer(peer, offer, stream.fanouts, self.udp_mux)
        except BaseException:
            await peer.close()
            raise
        finally:
            self._admitting -= 1
        stream.relays[peer.peer_id] = peer
        stream.idle_since = None  # an edge that feeds another is not idle
        peer.meter.report_received()  # counts from now until its first report
        self._register(peer)
        metrics.RELAYS.labels("out").inc()

        @peer.pc.on("connectionstatechange")
        def on_state() -> None:
            if peer.pc.connectionState in ("failed", "closed"):
                self.tasks.spawn(self.leave(peer.peer_id, CloseReason.CONNECTION_FAILED),
                                 "relay-lost")

        log_event(log, "relay.opened", stream_id=stream_id, peer_id=peer.peer_id,
                  edge_worker_id=worker_id, session_id=stream.session_id)
        return {"peer_id": peer.peer_id, "sdp": answer, "session_id": stream.session_id,
                "chain": stream.chain}

    async def _relay_gone(self, peer: Peer, reason: CloseReason) -> None:
        stream = self.streams.get(peer.stream_id)
        self._unregister(peer)
        await peer.close()
        if stream is None or stream.relays.pop(peer.peer_id, None) is None:
            return
        metrics.RELAYS.labels("out").dec()
        log_event(log, "relay.closed", stream_id=peer.stream_id, peer_id=peer.peer_id,
                  edge_worker_id=peer.user_id, reason=reason)
        await self._end_idle_edge(stream)

    async def _close_relays(self, stream: LiveStream, reason: CloseReason) -> None:
        """The stream ends here: the edges it feeds are told at once when it is
        over (else they see their feed go and look for the stream again)."""
        for peer in list(stream.relays.values()):
            await self._relay_gone(peer, reason)
            if reason is CloseReason.STREAM_ENDED and peer.remote_url:
                self.tasks.spawn(self._tell_edge_ended(peer.remote_url, stream.stream_id),
                                 "edge-end")

    async def _tell_edge_ended(self, edge_url: str, stream_id: str) -> None:
        try:
            await call_parent(self.http, "POST", f"{edge_url}/control/streams/{stream_id}/end")
        except RelayFailed as exc:  # it also finds the stream unpinned within a second
            log_event(log, "relay.end_not_told", logging.WARNING, stream_id=stream_id,
                      edge_url=edge_url, error=str(exc))

    async def _become_edge(self, stream_id: str, parent_url: str) -> LiveStream:
        async with self._relay_lock:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.session_id:
                return stream  # another viewer's request opened the relay meanwhile
            # Room for the relay and the viewer it is opened for.
            if len(self.peers) + self._admitting + 2 > self.capacity:
                metrics.ADMISSIONS_REFUSED.labels("capacity").inc()
                raise AtCapacity(f"this worker holds {self.capacity} peer connections")
            self._check_load(stream_id)
            stream = self._new_stream(stream_id)
            stream.edge = True
            try:
                await self._attach_source(stream, parent_url)
            except BaseException:
                self._forget(stream)
                raise
            return stream

    async def _attach_source(self, stream: LiveStream, parent_url: str) -> None:
        """Open the relay from `parent_url` and feed the stream's fanouts from it."""
        peer = relay_peer(_new_peer_id(), stream.stream_id, self.ice_servers)
        self._log_relay_connected(peer, parent_url)
        self._admitting += 1
        try:
            relayed = await open_relay(self.http, peer, stream.fanouts, parent_url=parent_url,
                                       worker_id=self.worker_id, control_url=self.control_url,
                                       mux=self.udp_mux)
        except RelayFailed as exc:
            if exc.parent_code == "stream_not_live":
                raise StreamNotLive("the stream is not live at its origin") from None
            if exc.parent_code == "at_capacity":
                raise AtCapacity("the worker that would feed this one is full") from None
            raise
        finally:
            self._admitting -= 1
        stream.source, stream.session_id = relayed.source, relayed.session_id
        stream.chain = [*relayed.source.chain, self.worker_id]
        stream.last_media_at, stream.had_media = time.monotonic(), False
        self._register(peer)
        metrics.RELAYS.labels("in").inc()

    @staticmethod
    def _log_relay_connected(peer: Peer, parent_url: str) -> None:
        """One line when the relay's ICE and DTLS are up, with the time since
        it was asked for (docs/benchmarks.md, join time through an edge)."""
        requested = time.monotonic()
        log_event(log, "edge.relay_requested", stream_id=peer.stream_id, peer_id=peer.peer_id,
                  parent_url=parent_url)

        @peer.pc.on("connectionstatechange")
        def on_state() -> None:
            if peer.pc.connectionState == "connected":
                log_event(log, "edge.relay_connected", stream_id=peer.stream_id,
                          peer_id=peer.peer_id, ms=ms_since(requested))

    async def _drop_source(self, stream: LiveStream) -> None:
        """Close an edge's feed (and free its peer on the parent)."""
        source, stream.source = stream.source, None
        if source is None:
            return
        stream.source_lost_at = time.monotonic()
        self._unregister(source.peer)
        await source.peer.close()
        metrics.RELAYS.labels("in").dec()
        self.tasks.spawn(self._free_parent_peer(source), "relay-free")

    async def _free_parent_peer(self, source: RelaySource) -> None:
        with contextlib.suppress(RelayFailed):  # a dead parent frees nothing
            await call_parent(self.http, "DELETE",
                              f"{source.parent_url}/control/peers/{source.parent_peer_id}")

    async def _end_idle_edge(self, stream: LiveStream, at_once: bool = False) -> None:
        """An edge with no viewer and no edge of its own hands its relay back:
        after `edge_keep` seconds (the tend loop, _drop_if_idle_too_long), so
        the next viewer placed here starts on the relay it has instead of
        waiting for a new one; at once when asked (or the keep is 0)."""
        if not stream.idle or self.streams.get(stream.stream_id) is not stream:
            return
        if at_once or self.edge_keep <= 0:
            await self.end_stream(stream.stream_id, CloseReason.LEFT)
        elif stream.idle_since is None:
            stream.idle_since = time.monotonic()
            log_event(log, "edge.idle", stream_id=stream.stream_id,
                      session_id=stream.session_id, keep_s=self.edge_keep)

    async def _drop_if_idle_too_long(self, stream: LiveStream, now: float) -> bool:
        """End an edge kept idle for `edge_keep` seconds (or idle without its
        feed: nobody is waiting for it to come back); True if it ended."""
        if not stream.idle:
            stream.idle_since = None
            return False
        if stream.idle_since is None:
            stream.idle_since = now
        if stream.source is not None and now - stream.idle_since < self.edge_keep:
            return False
        log_event(log, "edge.idle_ended", stream_id=stream.stream_id,
                  session_id=stream.session_id, idle_s=round(now - stream.idle_since, 1),
                  fed=stream.source is not None)
        await self.end_stream(stream.stream_id, CloseReason.LEFT)
        return True

    async def _edge_ended(self, stream: LiveStream, reason: CloseReason) -> None:
        """An edge stops carrying the stream: its viewers' rows end here (the
        stream's own rows are the origin's)."""
        for fanout in stream.fanouts.values():
            fanout.close()
        for peer in stream.viewers.values():
            if peer.viewer_session_id:
                await self._write_viewer_left(stream.stream_id, stream.session_id,
                                              peer.viewer_session_id)
        await self.writes.write("unplace", lambda: self.events.unplace(stream.stream_id),
                                stream_id=stream.stream_id)
        log_event(log, "edge.ended", stream_id=stream.stream_id, session_id=stream.session_id,
                  reason=reason.value)

    async def _tend_edge(self, stream: LiveStream, now: float) -> None:
        """Once a second per edge stream: an ended stream (unpinned) ends here
        too; a lost feed is looked for again where the stream is pinned now."""
        if not stream.session_id:
            return  # its first relay is being opened (_become_edge)
        if await self._drop_if_idle_too_long(stream, now):
            return
        redis = self.events.redis
        pinned = await redis.get(stream_worker_key(stream.stream_id))
        if pinned is None:
            await self.end_stream(stream.stream_id, CloseReason.STREAM_ENDED)
            return
        if stream.source_failed(now):
            log_event(log, "edge.relay_lost", logging.WARNING, stream_id=stream.stream_id,
                      parent_url=stream.source.parent_url if stream.source else None)
            await self._drop_source(stream)
        if stream.source is not None:
            # A new origin upstream of a feed that never broke (an edge above
            # us became the origin): our viewers follow the new session.
            session_id = await self.lifecycle.open_session(stream.stream_id)
            if session_id is not None and session_id != stream.session_id:
                stream.session_id = session_id
                await self._move_viewers(stream)
            return
        if now - stream.source_lost_at > EDGE_GRACE:
            await self.end_stream(stream.stream_id, CloseReason.CONNECTION_FAILED)
            return
        origin_id = pinned.decode() if isinstance(pinned, bytes) else str(pinned)
        raw = await redis.get(worker_key(origin_id))
        if raw is None or origin_id == self.worker_id or stream.resuming:
            return  # the origin died: wait for the publisher to be placed again
        # The origin first; else any other carrier with room (one we feed
        # refuses: `relay_loop`, its chain holds us).
        origin, edges = await stream_carriers(redis, stream.stream_id)
        parents = [w for w in (origin, *edges) if w is not None
                   and w.worker_id != self.worker_id and (w is origin or w.has_room)]
        stream.resuming = True
        self.tasks.spawn(self._resume_edge(stream, [w.control_url for w in parents]),
                         "edge-resume")

    async def _resume_edge(self, stream: LiveStream, parent_urls: list[str]) -> None:
        old_session = stream.session_id
        try:
            for parent_url in parent_urls:
                try:
                    async with self._relay_lock:
                        if self.streams.get(stream.stream_id) is not stream or stream.source:
                            return
                        await self._attach_source(stream, parent_url)
                    break
                except PeerError as exc:
                    log_event(log, "edge.resume_failed", stream_id=stream.stream_id,
                              parent_url=parent_url, error=str(exc))
            else:
                return
        finally:
            stream.resuming = False
        log_event(log, "edge.resumed", stream_id=stream.stream_id, parent_url=parent_url,
                  session_id=stream.session_id, viewers=len(stream.viewers))
        if stream.session_id != old_session:
            await self._move_viewers(stream)

    async def _move_viewers(self, stream: LiveStream) -> None:
        """The stream's session changed under our viewers (a new origin): their
        viewing sessions carry on in it."""
        ids = [p.viewer_session_id for p in stream.viewers.values() if p.viewer_session_id]
        if ids:
            audience = await self.lifecycle.viewers_moved(stream.stream_id, stream.session_id,
                                                          ids)
            await self._audience_changed(stream.stream_id, audience)

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
            "relays": sum(1 for p in self.peers.values() if p.role in ("relay", "relay_in")),
            "peer_connections": len(self.peers),
            "streams": len(self.streams),
            "tasks": len(self.tasks),
        }

    async def _send_transport_feedback(self) -> None:
        """TWCC feedback to every publisher that negotiated it."""
        for stream in list(self.streams.values()):
            publisher = stream.publisher
            if publisher is not None:
                for feedback in list(publisher.publisher_feedback.values()):
                    await feedback.flush()

    def congestion(self, stream_id: str) -> dict[str, dict[str, int | float]]:
        """Each TWCC viewer's received / lost counts and queuing delay."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return {}
        peers = {peer_id: state.info() for peer_id, peer in stream.viewers.items()
                 for state in peer.viewer_transports.values()}
        if stream.publisher is not None:  # what the publisher was told
            for feedback in stream.publisher.publisher_feedback.values():
                peers[stream.publisher.peer_id] = feedback.info()
        return peers

    async def _watch_publishers(self) -> None:
        """A publisher whose media stopped has lost its connection (ICE can
        take far longer to notice): it gets the reconnect grace."""
        now = time.monotonic()
        for stream in list(self.streams.values()):
            if stream.publisher is not None and stream.publisher_silent(now):
                await self._publisher_lost(stream.publisher)
            elif stream.edge and self.streams.get(stream.stream_id) is stream:
                await self._tend_edge(stream, now)
            for relay in list(stream.relays.values()):
                if now - relay.meter.last_report_at > RELAY_SILENCE:
                    await self._relay_gone(relay, CloseReason.CONNECTION_FAILED)

    async def forget_what_was_reaped(self) -> None:
        """A reaper took this worker for dead (stalled, or cut off from Redis,
        past the heartbeat TTL and the grace) and ended its streams and
        viewers in Postgres. Serving them on would be media nobody is billed
        for (their ticks are dropped): end what it ended, so the publishers
        and viewers reconnect and are placed afresh. What it did not end (our
        sessions still open) carries on."""
        sessions = [s.session_id for s in self.streams.values() if s.session_id and not s.edge]
        viewers = [p for p in self.peers.values() if p.role == "viewer" and p.viewer_session_id]
        ended, inactive = await self.lifecycle.ended_by_others(
            sessions, [str(p.viewer_session_id) for p in viewers])
        # Read again after the await: a stream published anew meanwhile has a new session.
        for stream in [s for s in self.streams.values() if s.session_id in ended and not s.edge]:
            await self.end_stream(stream.stream_id, CloseReason.WORKER_DRAINING)
        for peer in viewers:
            if peer.viewer_session_id in inactive and peer.peer_id in self.peers:
                await self.leave(peer.peer_id, reason=CloseReason.WORKER_DRAINING)
        log_event(log, "sfu.reaped_streams_ended", logging.WARNING, streams=len(ended),
                  viewers=len(inactive))

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
        origins = [s.stream_id for s in self.streams.values() if s.session_id and not s.edge]
        await self.lifecycle.record_analytics(datetime.now(UTC).replace(tzinfo=None), origins)

    async def close(self) -> None:
        """Shutdown: end every stream here, then stop our tasks."""
        for stream_id in list(self.streams):
            await self.end_stream(stream_id, CloseReason.WORKER_DRAINING)
        await self.tasks.close()
        await self.emitter.close()  # the last seconds' ticks, or a report of their loss
        if self._http is not None:
            await self._http.close()
