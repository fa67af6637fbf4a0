"""Forwarding without re-encoding, packets once per stream: one `Fanout` per
published track cuts each encoded frame into RTP payloads ONCE and hands the
shared `PacketizedFrame` to every viewer's `ForwardedTrack`. Per viewer only
the RTP header and extensions are written (sfu/rtp_out.py), then SRTP and one
`sendto` per packet, straight to the viewer's ICE pair: aiortc's per-viewer
RTCRtpSender loop (recv, pack, serialize, a coroutine chain per packet) is not
on the path (sfu/aiortc_hooks.take_over_sender).

Per viewer: a bounded queue; a video viewer starts on a keyframe and, when it
falls behind (queue full), drops to the next keyframe and asks for one. The
fanout keeps the frames since the last keyframe so a new viewer starts at once
instead of waiting for the publisher's next keyframe, and a packet history
from which NACKed packets are sent again (RTX when the viewer negotiated it).

The fanout's pump sends what viewers have queued in slices of a few
milliseconds, each its own event-loop callback: between slices the loop reads
its sockets, so the publisher's media and ICE consent checks are never stuck
behind a fan-out to hundreds of viewers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu import metrics
from sfu.aiortc_hooks import SenderWiring
from sfu.codecs import Packetizer, is_keyframe
from sfu.congestion import ViewerTransport, now_us
from sfu.rtp_out import Extensions, PacketizedFrame, RtpWriter, abs_send_time, ntp_now
from vilokanam.logs import log_event, ms_since

log = logging.getLogger(__name__)

VIDEO_QUEUE_FRAMES = 90  # 3 s at 30 fps: a slow viewer is cut back to a keyframe after that
AUDIO_QUEUE_FRAMES = 150  # 3 s of 20 ms Opus frames
# 2 s at 30 fps, well inside a viewer's queue (VIDEO_QUEUE_FRAMES): a new
# viewer is offered the whole cache, and a cache longer than its queue would
# overflow it at once, sending the viewer back to wait for a keyframe.
GOP_CACHE_MAX_FRAMES = 60
GOP_CACHE_MAX_BYTES = 8 * 1024 * 1024
HISTORY_PACKETS = {"video": 2048, "audio": 256}  # NACK window: ~8 s of 2 Mbit/s video
PUMP_SLICE_PACKETS = 400  # packets sent per event-loop callback (a few ms)
AUDIO_START_FRAMES = 5  # what a viewer whose connection just came up gets of the audio backlog
KEYFRAME_MIN_INTERVAL = 0.5  # at most 2 upstream keyframe requests per second
# When a publisher reconnects its timestamps restart at 0; viewers must see
# them continue, one frame interval after the last one forwarded.
FRAME_STEP = {"video": 3000, "audio": 960}


class KeyframeThrottle:
    """Coalesces keyframe requests: at most one per interval; a request inside
    the interval is sent when it ends, never dropped."""

    def __init__(self, send: Callable[[], None], interval: float = KEYFRAME_MIN_INTERVAL) -> None:
        self._send = send
        self._interval = interval
        self._last = -interval
        self._pending: asyncio.TimerHandle | None = None

    def request(self) -> None:
        if self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last + self._interval - loop.time()
        if wait <= 0:
            self._fire()
        else:
            self._pending = loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = asyncio.get_running_loop().time()
        self._send()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


class ForwardedTrack(MediaStreamTrack):
    """One viewer's subscription to one published track: a bounded queue of
    the stream's packetized frames, and (once the viewer's DTLS is up) the
    writer that sends them as this viewer's RTP stream. aiortc never calls
    `recv()`: its sender's loop is replaced (aiortc_hooks.take_over_sender)."""

    def __init__(self, kind: str, on_fell_behind: Callable[[], None],
                 history: Callable[[int], PacketizedFrame | None],
                 on_ready: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self._maxsize = VIDEO_QUEUE_FRAMES if kind == "video" else AUDIO_QUEUE_FRAMES
        self._queue: deque[PacketizedFrame] = deque()
        self._on_fell_behind = on_fell_behind
        self._history = history
        self._on_ready = on_ready
        self._wiring: SenderWiring | None = None
        self._writer: RtpWriter | None = None
        # set when the viewer's transport negotiated TWCC (sfu/congestion.py)
        self.transport_cc: ViewerTransport | None = None
        self.waiting_for_keyframe = kind == "video"
        self.frames_sent = 0
        self.bytes_sent = 0
        self.packets_sent = 0
        self.frames_dropped = 0
        self.retransmitted = 0
        self.send_errors = 0
        self.last_sent_at = 0.0  # time.monotonic() of the last frame sent
        # Whose track this is, for its log lines (set by sfu/peers.accept_viewer),
        # and when it was subscribed: its first frame's line says how long after.
        self.log_ids: dict[str, str] = {}
        self.subscribed_at = time.monotonic()

    @property
    def queued(self) -> list[PacketizedFrame]:
        return list(self._queue)

    @property
    def ready(self) -> bool:
        """Connected and with frames waiting: the pump has work here."""
        return self._wiring is not None and bool(self._queue)

    def offer(self, frame: PacketizedFrame) -> None:
        if self.readyState != "live":
            return
        if self.waiting_for_keyframe:
            if not frame.keyframe:
                return
            self.waiting_for_keyframe = False
        if len(self._queue) >= self._maxsize and not self._trim_before_connected():
            self._fall_back(frame)
        else:
            self._queue.append(frame)

    def _trim_before_connected(self) -> bool:
        """A video queue that fills while ICE and DTLS come up starts at its
        newest keyframe instead (what attach does anyway), so a slow
        connection does not send a new viewer back to wait for one. True if
        that made room."""
        if self.kind != "video" or self._wiring is not None:
            return False
        before = len(self._queue)
        self._trim_backlog()
        dropped = before - len(self._queue)
        self.frames_dropped += dropped
        return dropped > 0

    def skip_to_keyframe(self) -> None:
        """The viewer's path is congested (its TWCC feedback says so): drop
        what waits and resume at the next keyframe, as when the queue fills."""
        if self.kind != "video" or self.waiting_for_keyframe:
            return
        dropped = len(self._queue)
        self._queue.clear()
        self.frames_dropped += dropped
        metrics.QUEUE_DROPS.labels(self.kind).inc(dropped)
        self.waiting_for_keyframe = True
        self._on_fell_behind()

    def _fall_back(self, frame: PacketizedFrame) -> None:
        """The viewer cannot keep up: drop what waits and restart cleanly."""
        dropped = len(self._queue)
        self._queue.clear()
        self.frames_dropped += dropped
        metrics.QUEUE_DROPS.labels(self.kind).inc(dropped)
        if self.kind == "video" and not frame.keyframe:
            self.waiting_for_keyframe = True
            self._on_fell_behind()
        else:
            self._queue.append(frame)

    # -- the wire, once aiortc has started the sender -----------------------------------

    def attach(self, wiring: SenderWiring) -> None:
        """DTLS is up: from now on the pump sends this viewer's frames."""
        self._wiring = wiring
        twcc = self.transport_cc if wiring.transport_cc_id else None
        self._writer = RtpWriter(
            ssrc=wiring.ssrc, payload_type=int(wiring.codec.payloadType or 0),
            extensions=Extensions(wiring.mid_id, wiring.mid, wiring.abs_send_time_id,
                                  wiring.transport_cc_id if twcc else None),
            rtx_payload_type=wiring.rtx_payload_type, rtx_ssrc=wiring.rtx_ssrc,
            transport=twcc.sequencer if twcc else None)
        self._trim_backlog()
        log_event(log, "viewer.media_started", logging.INFO, **self.log_ids, kind=self.kind,
                  ssrc=wiring.ssrc, ms=ms_since(self.subscribed_at),
                  rtx=wiring.rtx_payload_type is not None, twcc=twcc is not None,
                  srtp=type(getattr(wiring.protect, "__self__", wiring.protect)).__name__)
        self._on_ready()

    def detach(self) -> None:
        if self._wiring is not None:
            self._wiring.release()
        self._wiring = None
        self._queue.clear()

    def _trim_backlog(self) -> None:
        """What queued while ICE and DTLS came up is late: video restarts at
        the newest keyframe, audio keeps its last few frames."""
        if self.kind == "audio":
            while len(self._queue) > AUDIO_START_FRAMES:
                self._queue.popleft()
            return
        keys = [i for i, frame in enumerate(self._queue) if frame.keyframe]
        for _ in range(keys[-1] if keys else 0):
            self._queue.popleft()

    def flush(self, send_time: bytes, ntp: int) -> int:
        """Send every queued frame; returns the packets sent."""
        wiring, writer = self._wiring, self._writer
        if wiring is None or writer is None:
            return 0
        if not wiring.connected():
            self._stop_sending("dtls_closed")
            return 0
        protect, send, send_batch = wiring.protect, wiring.send, wiring.send_batch
        sent = 0
        sent_us = now_us() if writer.transport is not None else 0
        while self._queue:
            frame = self._queue.popleft()
            packets = [protect(packet) for packet in writer.frame(frame, send_time, sent_us)]
            try:
                if send_batch is not None and len(packets) > 1 and _uniform(packets):
                    delivered = send_batch(packets)
                else:
                    delivered = all(send(packet) for packet in packets)
            except OSError as exc:  # e.g. ENOBUFS: this frame is lost (NACK may recover it)
                self._send_error(exc)
                continue
            if not delivered:  # the ICE connection is gone
                self._stop_sending("ice_closed")
                break
            sent += len(packets)
            if not self.frames_sent:
                log_event(log, "viewer.first_frame", logging.INFO, **self.log_ids, kind=self.kind,
                          keyframe=frame.keyframe, ms=ms_since(self.subscribed_at))
            self.frames_sent += 1
            self.bytes_sent += frame.size
        self.packets_sent += sent
        self.last_sent_at = time.monotonic()
        wiring.report_counters(ntp, writer.last_timestamp, writer.packets, writer.octets)
        return sent

    def _stop_sending(self, reason: str) -> None:
        log_event(log, "viewer.media_stopped", kind=self.kind, reason=reason,
                  frames_sent=self.frames_sent)
        self.detach()

    def _send_error(self, exc: OSError) -> None:
        metrics.SEND_ERRORS.labels(self.kind).inc()
        self.send_errors += 1
        if self.send_errors == 1:  # one line per viewer, the counter has the rest
            log_event(log, "viewer.send_failed", logging.WARNING, kind=self.kind,
                      error=repr(exc))

    def nack(self, sequence_numbers: list[int]) -> None:
        """The viewer lost these: send them again from the stream's history."""
        wiring, writer = self._wiring, self._writer
        if wiring is None or writer is None or not wiring.connected():
            return
        send_time = abs_send_time(ntp_now())
        sent_us = now_us()
        for seq in sequence_numbers:
            index = writer.stream_index(seq)
            frame = self._history(index) if index is not None else None
            if frame is None or index is None:
                metrics.NACK_MISSES.labels(self.kind).inc()
                continue
            try:
                wiring.send(wiring.protect(
                    writer.retransmission(seq, frame, index, send_time, sent_us)))
            except OSError as exc:
                self._send_error(exc)
                continue
            self.retransmitted += 1
            metrics.RETRANSMISSIONS.labels(self.kind).inc()

    async def recv(self) -> None:  # type: ignore[override]
        raise MediaStreamError  # never read: the SFU sends this track's packets itself

    def stop(self) -> None:
        self.detach()
        super().stop()


def _uniform(packets: list[bytes]) -> bool:
    """All of one size but the last, which is no longer: what UDP GSO can
    send in one call (the VP8 packetizer cuts frames so; H.264 may not)."""
    size = len(packets[0])
    return len(packets[-1]) <= size and all(len(p) == size for p in packets[1:-1])


@dataclass
class Fanout:
    """One published track (video or audio) and the viewers subscribed to it.
    Survives a publisher reconnect: `attach` a new source, viewers carry on."""

    kind: str
    request_upstream_keyframe: Callable[[], None]
    on_media: Callable[[], None] = lambda: None  # the publisher is alive
    codec: RTCRtpCodecParameters | None = None
    stream_id: str = ""  # for log lines
    viewers: set[ForwardedTrack] = field(default_factory=set)
    _packetizer: Packetizer | None = None
    _next_index: int = 0
    _history: list[PacketizedFrame | None] = field(default_factory=list)
    _gop: list[PacketizedFrame] = field(default_factory=list)
    # Who else sees every frame once (the recorder, sfu/recorder.py): called
    # on the event loop with (codec, frame bytes, continuous pts, keyframe), so
    # a tap must only queue the frame.
    taps: list[Callable[[RTCRtpCodecParameters, bytes, int, bool], None]] = field(
        default_factory=list)
    # Who places this track on the publisher's clock (the recorder aligns
    # audio and video so): called with each RTCP sender report's (NTP time,
    # its RTP timestamp as a continuous pts), on the event loop.
    clock_taps: list[Callable[[int, int], None]] = field(default_factory=list)
    _gop_bytes: int = 0
    _gop_valid: bool = False
    _offset: int = 0
    _last_pts: int | None = None
    _rebase: bool = False
    _pump_scheduled: bool = False
    _attached_at: float | None = None  # a source's attach, until its first keyframe
    _throttle: KeyframeThrottle = field(init=False)

    def __post_init__(self) -> None:
        self._throttle = KeyframeThrottle(self.request_upstream_keyframe)
        self._history = [None] * HISTORY_PACKETS[self.kind]
        self._frames_metric = metrics.FRAMES_FORWARDED.labels(self.kind)
        self._bytes_metric = metrics.BYTES_FORWARDED.labels(self.kind)
        self._packets_metric = metrics.PACKETS_FORWARDED.labels(self.kind)

    def attach(self, codec: RTCRtpCodecParameters) -> None:
        """A (new) publisher connection feeds this track from now on."""
        self.codec = codec
        if self._packetizer is None or self._packetizer.mime != codec.mimeType.lower():
            self._packetizer = Packetizer(codec.mimeType)
        self._rebase = self._last_pts is not None
        self._clear_gop()
        self._attached_at = time.monotonic()

    def push(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        """Called by the receiver tap, on the event loop, per assembled frame."""
        self.on_media()
        if self._packetizer is None:
            self.attach(codec)
        assert self._packetizer is not None
        payloads = self._packetizer.payloads(frame.data)
        if not payloads:
            return
        packetized = PacketizedFrame(
            payloads, self._continuous_pts(frame.timestamp),
            is_keyframe(codec.mimeType, frame.data), self._next_index, len(frame.data))
        self._next_index = packetized.end_index
        size = len(self._history)
        for index in range(packetized.first_index, packetized.end_index):
            self._history[index % size] = packetized
        if self.kind == "video":
            self._remember(packetized)
            if packetized.keyframe and self._attached_at is not None:
                log_event(log, "fanout.first_keyframe", stream_id=self.stream_id,
                          ms=ms_since(self._attached_at))  # since its source attached
                self._attached_at = None
        for viewer in self.viewers:
            viewer.offer(packetized)
        for tap in self.taps:
            tap(codec, frame.data, packetized.timestamp, packetized.keyframe)
        if self.viewers:
            self._schedule_pump()

    def sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        """Called by the receiver tap for each of the publisher's sender reports."""
        if self._rebase:
            return  # a new connection's timestamps: their offset comes with its first frame
        for tap in self.clock_taps:
            tap(ntp, rtp_timestamp + self._offset)

    def packet(self, index: int) -> PacketizedFrame | None:
        """The frame holding stream packet `index`, while the history has it."""
        frame = self._history[index % len(self._history)]
        if frame is None or not frame.first_index <= index < frame.end_index:
            return None
        return frame

    def subscribe(self) -> ForwardedTrack:
        track = ForwardedTrack(self.kind, self.request_keyframe, self.packet,
                               self._schedule_pump)
        self.viewers.add(track)
        if self.kind == "video":
            if self._gop_valid:
                for frame in self._gop:  # start at once from the cache
                    track.offer(frame)
            else:
                log_event(log, "fanout.keyframe_wait", stream_id=self.stream_id)
                self.request_keyframe()
        return track

    def unsubscribe(self, track: ForwardedTrack) -> None:
        self.viewers.discard(track)
        track.stop()

    def request_keyframe(self) -> None:
        metrics.KEYFRAME_REQUESTS.inc()
        self._throttle.request()

    def close(self) -> None:
        self._throttle.close()
        for track in list(self.viewers):
            self.unsubscribe(track)
        self._clear_gop()

    # -- sending ------------------------------------------------------------------------

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """One slice: send queued frames to viewers until about
        PUMP_SLICE_PACKETS are out, then yield to the loop and go on."""
        self._pump_scheduled = False
        ntp = ntp_now()
        send_time = abs_send_time(ntp)
        packets = frames = octets = 0
        for viewer in [v for v in self.viewers if v.ready]:
            if packets >= PUMP_SLICE_PACKETS:
                self._schedule_pump()
                break
            before_frames, before_bytes = viewer.frames_sent, viewer.bytes_sent
            packets += viewer.flush(send_time, ntp)
            frames += viewer.frames_sent - before_frames
            octets += viewer.bytes_sent - before_bytes
        self._frames_metric.inc(frames)
        self._bytes_metric.inc(octets)
        self._packets_metric.inc(packets)

    # -- the stream's own state -----------------------------------------------------------

    def _continuous_pts(self, timestamp: int) -> int:
        if self._rebase:
            assert self._last_pts is not None
            self._offset = self._last_pts + FRAME_STEP[self.kind] - timestamp
            self._rebase = False
        self._last_pts = timestamp + self._offset
        return self._last_pts

    def _remember(self, frame: PacketizedFrame) -> None:
        """Keep the frames since the last keyframe, within bounds."""
        if frame.keyframe:
            self._clear_gop()
            self._gop_valid = True
        if not self._gop_valid:
            return
        self._gop.append(frame)
        self._gop_bytes += frame.size
        if len(self._gop) > GOP_CACHE_MAX_FRAMES or self._gop_bytes > GOP_CACHE_MAX_BYTES:
            # Too long ago to start a viewer from. Ask for a fresh keyframe now
            # (a browser publisher sends one only when asked), so the cache is
            # valid again before the next viewer comes: it starts at once
            # instead of waiting for a keyframe from upstream (through an
            # edge: the relay's round trip to the publisher and back).
            self._clear_gop()
            self.request_keyframe()

    def _clear_gop(self) -> None:
        self._gop.clear()
        self._gop_bytes = 0
        self._gop_valid = False
