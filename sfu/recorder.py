"""Recording a live session without re-encoding: the frames the worker
forwards anyway are muxed, as they are, into WebM (VP8/Opus).

The one door into forwarding is `Fanout.taps` (sfu/relay.py): a tap sees each
encoded frame once per published track, so recording costs nothing per viewer.
The tap only queues the frame; a writer thread muxes it (file I/O never runs on
the event loop). The WebM is written `live` (no seeking back) with a cluster
at least every second, flushed as written: a worker killed -9 leaves a file
playable up to the crash.

The session's `videos` row is made when recording starts (status `uploading`,
the stream's creator, title and price). When the session ends the row gets its
size, the session its `recording_id`, the stream its `recording_url`, and a
processing job is queued (the media role probes and transcodes it like an
upload). A recording with no video frame becomes `failed` with the reason.
The recording of a worker that died is finished by the media role
(vilokanam/recordings.py) once its session is ended."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import asyncpg
import av
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from prometheus_client import Counter, Gauge

from sfu.relay import Fanout
from vilokanam.logs import log_event
from vilokanam.recordings import finish_recording
from vilokanam.storage import LocalStorage, video_key

log = logging.getLogger("sfu.recorder")

MS = Fraction(1, 1000)
RECORDABLE = {"video": "video/vp8", "audio": "audio/opus"}
QUEUE_MAX = 3000  # ~30 s of frames: beyond, the disk is too slow and frames are dropped

RECORDINGS = Gauge("vilokanam_recordings_active", "Live sessions being recorded.")
RECORDED_FRAMES = Counter("vilokanam_recorded_frames_total", "Frames written to recordings.",
                          ["kind"])
RECORDING_DROPS = Counter("vilokanam_recording_dropped_frames_total",
                          "Frames a recording could not take (queue full, unsupported codec).",
                          ["reason"])

RECORDING_FAILURES = Counter("vilokanam_recording_failures_total",
                             "Recordings that could not start or finish here.", ["stage"])

Tap = Callable[[RTCRtpCodecParameters, av.Packet, bool], None]


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1)."""
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return (int.from_bytes(frame[6:8], "little") & 0x3FFF,
            int.from_bytes(frame[8:10], "little") & 0x3FFF)


@dataclass
class _Clock:
    """Media time in ms from a track's RTP timestamps, placed on the session's
    timeline by the arrival of the track's first frame (tracks' timestamps
    start at unrelated random values)."""

    started: float
    rate: int
    first_pts: int | None = None
    offset_ms: int = 0
    last_ms: int = -1

    def ms(self, pts: int) -> int:
        if self.first_pts is None:
            self.first_pts = pts
            self.offset_ms = int((time.monotonic() - self.started) * 1000)
        value = self.offset_ms + (pts - self.first_pts) * 1000 // self.rate
        self.last_ms = max(value, self.last_ms + 1)  # the muxer wants strictly increasing
        return self.last_ms


@dataclass
class Recording:
    """One live session's WebM, written by its own thread."""

    video_id: str
    stream_id: str
    session_id: str
    path: Path
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    video_frames: int = 0
    unrecordable: str | None = None  # the publisher's codec, when we cannot record it
    _queue: queue.Queue[tuple[str, bytes, int, bool] | None] = field(
        default_factory=lambda: queue.Queue(QUEUE_MAX))
    _clocks: dict[str, _Clock] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    error: str | None = None

    def tap_for(self, kind: str) -> Tap:
        def tap(codec: RTCRtpCodecParameters, packet: av.Packet, keyframe: bool) -> None:
            if codec.mimeType.lower() != RECORDABLE[kind]:
                RECORDING_DROPS.labels("unsupported_codec").inc()
                self.unrecordable = codec.mimeType
                return
            clock = self._clocks.setdefault(kind, _Clock(self.started, codec.clockRate))
            try:
                self._queue.put_nowait((kind, bytes(packet), clock.ms(int(packet.pts or 0)),
                                        keyframe))
            except queue.Full:
                RECORDING_DROPS.labels("queue_full").inc()

        return tap

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._write, name=f"recorder-{self.stream_id}",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Blocks until the file is complete: call it in a thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def _write(self) -> None:
        container: av.container.OutputContainer | None = None
        streams: dict[str, av.stream.Stream] = {}
        try:
            while (item := self._queue.get()) is not None:
                kind, data, ms, keyframe = item
                if container is None:
                    size = vp8_size(data) if kind == "video" and keyframe else None
                    if size is None:
                        continue  # a recording starts on a video keyframe
                    container, streams = _open(self.path, size)
                packet = av.Packet(data)
                packet.stream = streams[kind]
                packet.pts = packet.dts = ms
                packet.time_base = MS
                packet.is_keyframe = keyframe or kind == "audio"
                container.mux(packet)
                self.frames += 1
                self.video_frames += kind == "video"
                RECORDED_FRAMES.labels(kind).inc()
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.error = repr(exc)
            log_event(log, "recording.write_failed", logging.ERROR, stream_id=self.stream_id,
                      video_id=self.video_id, error=self.error)
            while self._queue.get() is not None:  # keep draining until closed
                pass
        finally:
            if container is not None:
                try:
                    container.close()
                except (av.FFmpegError, OSError) as exc:
                    self.error = self.error or repr(exc)


def _open(path: Path, size: tuple[int, int]) -> tuple[av.container.OutputContainer,
                                                      dict[str, av.stream.Stream]]:
    # live: written front to back, never patched afterwards, so a cut file is
    # valid; a cluster at least every second, flushed as written.
    container = av.open(str(path), "w", format="webm", options={
        "live": "1", "cluster_time_limit": "1000", "flush_packets": "1"})
    video = container.add_stream("libvpx", rate=30)
    video.width, video.height = size
    video.pix_fmt = "yuv420p"
    video.time_base = MS
    audio = container.add_stream("libopus", rate=48000)
    audio.layout = "stereo"
    audio.time_base = MS
    return container, {"video": video, "audio": audio}


@dataclass
class Recordings:
    """The recordings of the live sessions one worker carries."""

    pg: asyncpg.Pool
    storage: LocalStorage
    enabled: bool = True
    max_attempts: int = 3
    active: dict[str, tuple[Recording, dict[str, Tap]]] = field(default_factory=dict)

    async def start(self, stream_id: str, session_id: str, fanouts: dict[str, Fanout]) -> None:
        """Records the session unless recording is off here or for the stream.
        A recording that cannot start is logged; the live session goes on."""
        if not self.enabled or stream_id in self.active:
            return
        try:
            await self._start(stream_id, session_id, fanouts)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            RECORDING_FAILURES.labels("start").inc()
            log_event(log, "recording.start_failed", logging.ERROR, stream_id=stream_id,
                      error=repr(exc))

    async def _start(self, stream_id: str, session_id: str, fanouts: dict[str, Fanout]) -> None:
        video_id = str(uuid.uuid4())
        created = await self.pg.fetchval(
            "INSERT INTO videos (id, creator_id, title, status, price_per_second, "
            "source_stream_id, source_session_id, storage_key) "
            "SELECT $1::uuid, creator_id, title, 'uploading', price_per_second, id, $3::uuid, $4 "
            "FROM streams WHERE id = $2::uuid AND record RETURNING id",
            video_id, stream_id, session_id, video_key(video_id, "source"))
        if created is None:
            return  # "record": false
        recording = Recording(video_id, stream_id, session_id,
                              self.storage.path(video_key(video_id, "source")))
        taps = {kind: recording.tap_for(kind) for kind in fanouts}
        for kind, fanout in fanouts.items():
            fanout.taps.append(taps[kind])
        recording.start()
        self.active[stream_id] = (recording, taps)
        for fanout in fanouts.values():
            if fanout.kind == "video":
                fanout.request_keyframe()  # the recording starts on one
        RECORDINGS.set(len(self.active))
        log_event(log, "recording.started", stream_id=stream_id, session_id=session_id,
                  video_id=video_id)

    async def finish(self, stream_id: str, fanouts: dict[str, Fanout]) -> None:
        """The session ended: the file is completed and becomes a video."""
        try:
            await self._finish(stream_id, fanouts)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The media role finishes it from the file (vilokanam/recordings.py).
            RECORDING_FAILURES.labels("finish").inc()
            log_event(log, "recording.finish_failed", logging.ERROR, stream_id=stream_id,
                      error=repr(exc))

    async def _finish(self, stream_id: str, fanouts: dict[str, Fanout]) -> None:
        entry = self.active.pop(stream_id, None)
        if entry is None:
            return
        recording, taps = entry
        RECORDINGS.set(len(self.active))
        for kind, fanout in fanouts.items():
            if taps.get(kind) in fanout.taps:
                fanout.taps.remove(taps[kind])
        await asyncio.to_thread(recording.close)
        size = await self.storage.size(video_key(recording.video_id, "source")) or 0
        reason = None
        if recording.video_frames == 0:
            reason = ("the recording holds no video: the publisher sent no video frame"
                      if recording.unrecordable is None else
                      f"the publisher's codec {recording.unrecordable} is not recorded "
                      "(recording takes VP8 video and Opus audio)")
        await finish_recording(self.pg, recording.video_id, recording.session_id, size,
                               reason, self.max_attempts)
        log_event(log, "recording.finished", stream_id=stream_id, video_id=recording.video_id,
                  frames=recording.frames, video_frames=recording.video_frames, bytes=size,
                  error=recording.error)


