"""Forwarding without re-encoding: one `Fanout` per published track hands each
encoded frame, as one shared `av.Packet`, to every viewer's `ForwardedTrack`;
the viewer's RTCRtpSender re-packetizes it through the codec's `pack()`.

Per viewer: a bounded queue; a video viewer starts on a keyframe and, when it
falls behind (queue full), drops to the next keyframe and asks for one. The
fanout keeps the frames since the last keyframe so a new viewer starts at once
instead of waiting for the publisher's next keyframe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu import metrics
from sfu.codecs import is_keyframe

VIDEO_QUEUE_FRAMES = 90  # 3 s at 30 fps: a slow viewer is cut back to a keyframe after that
AUDIO_QUEUE_FRAMES = 150  # 3 s of 20 ms Opus frames
GOP_CACHE_MAX_FRAMES = 300
GOP_CACHE_MAX_BYTES = 8 * 1024 * 1024
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
    """What one viewer's sender reads: encoded frames as `av.Packet`."""

    def __init__(self, kind: str, on_fell_behind: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        maxsize = VIDEO_QUEUE_FRAMES if kind == "video" else AUDIO_QUEUE_FRAMES
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue(maxsize)
        self._on_fell_behind = on_fell_behind
        self.waiting_for_keyframe = kind == "video"
        self.frames_sent = 0
        self.bytes_sent = 0
        self.frames_dropped = 0
        self.last_sent_at = 0.0  # time.monotonic() of the last frame handed to the sender

    def offer(self, packet: av.Packet, keyframe: bool) -> None:
        if self.readyState != "live":
            return
        if self.waiting_for_keyframe:
            if not keyframe:
                return
            self.waiting_for_keyframe = False
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:
            self._fall_back(packet, keyframe)

    def _fall_back(self, packet: av.Packet, keyframe: bool) -> None:
        """The viewer cannot keep up: drop what waits and restart cleanly."""
        dropped = self._drain()
        self.frames_dropped += dropped
        metrics.QUEUE_DROPS.labels(self.kind).inc(dropped)
        if self.kind == "video" and not keyframe:
            self.waiting_for_keyframe = True
            self._on_fell_behind()
        else:
            self._queue.put_nowait(packet)

    def _drain(self) -> int:
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        return dropped

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        self.frames_sent += 1
        self.bytes_sent += packet.size
        self.last_sent_at = time.monotonic()
        return packet

    def stop(self) -> None:
        if self.readyState == "live":
            self._drain()
            self._queue.put_nowait(None)  # wakes a sender waiting in recv()
        super().stop()


@dataclass
class Fanout:
    """One published track (video or audio) and the viewers subscribed to it.
    Survives a publisher reconnect: `attach` a new source, viewers carry on."""

    kind: str
    request_upstream_keyframe: Callable[[], None]
    on_media: Callable[[], None] = lambda: None  # the publisher is alive
    codec: RTCRtpCodecParameters | None = None
    viewers: set[ForwardedTrack] = field(default_factory=set)
    # Who else sees every frame once (the recorder, sfu/recorder.py): called
    # on the event loop, so a tap must only queue the frame.
    taps: list[Callable[[RTCRtpCodecParameters, av.Packet, bool], None]] = field(
        default_factory=list)
    _gop: list[tuple[av.Packet, bool]] = field(default_factory=list)
    _gop_bytes: int = 0
    _gop_valid: bool = False
    _offset: int = 0
    _last_pts: int | None = None
    _rebase: bool = False
    _throttle: KeyframeThrottle = field(init=False)

    def __post_init__(self) -> None:
        self._throttle = KeyframeThrottle(self.request_upstream_keyframe)

    def attach(self, codec: RTCRtpCodecParameters) -> None:
        """A (new) publisher connection feeds this track from now on."""
        self.codec = codec
        self._rebase = self._last_pts is not None
        self._clear_gop()

    def push(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        """Called by the receiver tap, on the event loop, per assembled frame."""
        self.on_media()
        keyframe = is_keyframe(codec.mimeType, frame.data)
        packet = av.Packet(frame.data)
        packet.pts = self._continuous_pts(frame.timestamp)
        packet.time_base = Fraction(1, codec.clockRate)
        if self.kind == "video":
            self._remember(packet, keyframe)
        for viewer in self.viewers:
            viewer.offer(packet, keyframe)
        for tap in self.taps:
            tap(codec, packet, keyframe)
        metrics.FRAMES_FORWARDED.labels(self.kind).inc(len(self.viewers))
        metrics.BYTES_FORWARDED.labels(self.kind).inc(len(self.viewers) * packet.size)

    def subscribe(self) -> ForwardedTrack:
        track = ForwardedTrack(self.kind, self.request_keyframe)
        self.viewers.add(track)
        if self.kind == "video":
            if self._gop_valid:
                for packet, keyframe in self._gop:  # start at once from the cache
                    track.offer(packet, keyframe)
            else:
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

    def _continuous_pts(self, timestamp: int) -> int:
        if self._rebase:
            assert self._last_pts is not None
            self._offset = self._last_pts + FRAME_STEP[self.kind] - timestamp
            self._rebase = False
        self._last_pts = timestamp + self._offset
        return self._last_pts

    def _remember(self, packet: av.Packet, keyframe: bool) -> None:
        """Keep the frames since the last keyframe, within bounds."""
        if keyframe:
            self._clear_gop()
            self._gop_valid = True
        if not self._gop_valid:
            return
        self._gop.append((packet, keyframe))
        self._gop_bytes += packet.size
        if len(self._gop) > GOP_CACHE_MAX_FRAMES or self._gop_bytes > GOP_CACHE_MAX_BYTES:
            self._clear_gop()  # too long ago: a new viewer asks for a fresh keyframe

    def _clear_gop(self) -> None:
        self._gop.clear()
        self._gop_bytes = 0
        self._gop_valid = False
