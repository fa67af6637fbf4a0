"""Recording a live session without re-encoding: the frames the worker
forwards anyway are muxed, as they are, into WebM (VP8/Opus) or Matroska
(H.264/Opus).

The one door into forwarding is `Fanout.taps` (sfu/relay.py): a tap sees each
encoded frame once per published track, so recording costs nothing per viewer;
`Fanout.clock_taps` hands on the publisher's RTCP sender reports. The taps only
queue; a writer thread muxes (file I/O never runs on the event loop). Both
containers are written `live` (no seeking back) with a cluster at least every
second, flushed as written: a worker killed -9 leaves a file playable up to the
crash.

Audio and video are placed on one timeline by the publisher's sender reports
(each maps a track's RTP timestamp to the publisher's NTP clock, RFC 3550
6.4.1), so the recording keeps the offset the publisher captured them with.
The writer holds the first frames until every track has a report (at most
ALIGN_HOLD_S); a track without one by then puts every track on the arrival
time of its first frame instead (`aligned_by` says which).

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
from vilokanam.storage import Storage, video_key

log = logging.getLogger("sfu.recorder")

MS = Fraction(1, 1000)
RECORDABLE = {"video": ("video/vp8", "video/h264"), "audio": ("audio/opus",)}
QUEUE_MAX = 3000  # ~30 s of frames: beyond, the disk is too slow and frames are dropped
ALIGN_HOLD_S = 4.0  # aiortc reports every 0.5-1.5 s, browsers about every second
# Reports whose offsets between tracks differ from the arrival's by more than
# this are not believed (network delays differ by far less): arrival instead.
MAX_REPORT_DISAGREEMENT_S = 2.0

RECORDINGS = Gauge("vilokanam_recordings_active", "Live sessions being recorded.")
RECORDED_FRAMES = Counter("vilokanam_recorded_frames_total", "Frames written to recordings.",
                          ["kind"])
RECORDING_DROPS = Counter("vilokanam_recording_dropped_frames_total",
                          "Frames a recording could not take (queue full, unsupported codec, "
                          "codec changed by a reconnect).", ["reason"])

RECORDING_FAILURES = Counter("vilokanam_recording_failures_total",
                             "Recordings that could not start or finish here.", ["stage"])
RECORDING_ALIGNMENT = Counter("vilokanam_recording_alignments_total",
                              "Recordings whose tracks were aligned, by what.", ["by"])

Tap = Callable[[RTCRtpCodecParameters, bytes, int, bool], None]
ClockTap = Callable[[int, int], None]


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1)."""
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return (int.from_bytes(frame[6:8], "little") & 0x3FFF,
            int.from_bytes(frame[8:10], "little") & 0x3FFF)


def annexb_units(frame: bytes) -> list[bytes]:
    """The NAL units of an H.264 Annex B frame (what aiortc's depacketizer
    assembles: each unit after a 00 00 00 01 start code)."""
    units = []
    for part in frame.split(b"\x00\x00\x01"):
        part = part.rstrip(b"\x00")  # the 4-byte start code's leading zero
        if part:
            units.append(part)
    return units


def h264_parameters(frame: bytes) -> tuple[bytes, tuple[int, int]] | None:
    """From an H.264 keyframe that carries its SPS and PPS (browsers and OBS
    send them with every IDR): the container's extradata (the parameter sets,
    Annex B) and the picture size, read by decoding this one frame."""
    sets = [u for u in annexb_units(frame) if u[0] & 0x1F in (7, 8)]
    if {u[0] & 0x1F for u in sets} != {7, 8}:
        return None
    try:
        decoder = av.CodecContext.create("h264", "r")
        frames = [*decoder.decode(av.Packet(frame)), *decoder.decode(None)]
    except av.FFmpegError:
        return None
    if not frames:
        return None
    return b"".join(b"\x00\x00\x00\x01" + u for u in sets), (frames[0].width, frames[0].height)


def ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32


def _ticks(later: int, earlier: int) -> int:
    """later - earlier for 32-bit RTP timestamps, across a wrap."""
    return ((later - earlier + 2**31) % 2**32) - 2**31


@dataclass
class _Track:
    rate: int
    first_pts: int
    first_arrival: float
    last_pts: int
    elapsed: int = 0  # ticks since first_pts, unwrapped
    report: tuple[float, int] | None = None  # (publisher's NTP seconds, pts) of the last SR
    start: float = 0.0  # when first_pts plays, on the placed clock
    last_ms: int = -1

    def wall(self) -> float:
        """first_pts on the publisher's clock (needs a report)."""
        assert self.report is not None
        seconds, pts = self.report
        return seconds - _ticks(pts, self.first_pts) / self.rate


@dataclass
class Timeline:
    """Media time in ms for each track's RTP timestamps (which start at
    unrelated random values). Pure logic; the writer thread owns it."""

    kinds: tuple[str, ...]
    tracks: dict[str, _Track] = field(default_factory=dict)
    reports: dict[str, tuple[float, int]] = field(default_factory=dict)
    aligned_by: str | None = None  # None while not yet placed
    disagreement: float | None = None  # s between what reports and arrival say, when both
    _origin: float = 0.0
    _skew: float = 0.0  # arrival - publisher's clock, for a track that comes late

    def sender_report(self, kind: str, ntp: int, pts: int) -> None:
        self.reports[kind] = (ntp_seconds(ntp), pts)
        if kind in self.tracks:
            self.tracks[kind].report = self.reports[kind]

    def frame(self, kind: str, rate: int, pts: int, arrival: float) -> int:
        """Registers a frame's timestamp (every frame, in order); returns its
        ticks since the track's first frame, for `ms`."""
        track = self.tracks.get(kind)
        if track is None:
            track = self.tracks[kind] = _Track(rate, pts, arrival, pts,
                                               report=self.reports.get(kind))
            if self.aligned_by is not None:
                self._place_late(track)
        track.elapsed += _ticks(pts, track.last_pts)
        track.last_pts = pts
        return track.elapsed

    def ready(self, now: float) -> bool:
        """Whether the tracks can be placed: all have a report, or waited long enough."""
        if not self.tracks:
            return False
        every = all(k in self.tracks and self.tracks[k].report for k in self.kinds)
        first = min(t.first_arrival for t in self.tracks.values())
        return every or now - first >= ALIGN_HOLD_S

    def place(self) -> None:
        tracks = list(self.tracks.values())
        if tracks and all(t.report for t in tracks):
            skews = [t.first_arrival - t.wall() for t in tracks]
            self.disagreement = max(skews) - min(skews)
        if self.disagreement is not None and self.disagreement <= MAX_REPORT_DISAGREEMENT_S:
            self.aligned_by = "sender_reports"
            for t in tracks:
                t.start = t.wall()
            self._skew = min(t.first_arrival - t.start for t in tracks)
        else:
            self.aligned_by = "arrival"
            for t in tracks:
                t.start = t.first_arrival
        self._origin = min((t.start for t in tracks), default=0.0)

    def _place_late(self, track: _Track) -> None:
        if self.aligned_by == "sender_reports" and track.report is not None:
            track.start = track.wall()
        else:
            track.start = track.first_arrival - self._skew

    def ms(self, kind: str, elapsed: int) -> int:
        """A frame's ms on the recording, from what `frame()` returned for it
        (once placed); called in frame order per track."""
        track = self.tracks[kind]
        value = round((track.start - self._origin) * 1000) + elapsed * 1000 // track.rate
        track.last_ms = max(value, track.last_ms + 1, 0)  # the muxer wants strictly increasing
        return track.last_ms


@dataclass
class _Frame:
    kind: str
    mime: str
    rate: int
    data: bytes
    pts: int
    arrival: float
    keyframe: bool
    elapsed: int = 0  # ticks since the track's first frame (Timeline.frame)


@dataclass
class _Report:
    kind: str
    ntp: int
    pts: int


@dataclass
class Recording:
    """One live session's file, written by its own thread."""

    video_id: str
    stream_id: str
    session_id: str
    path: Path
    kinds: tuple[str, ...] = ("video", "audio")
    frames: int = 0
    video_frames: int = 0
    unrecordable: str | None = None  # the publisher's codec, when we cannot record it
    _queue: queue.Queue[_Frame | _Report | None] = field(
        default_factory=lambda: queue.Queue(QUEUE_MAX))
    _thread: threading.Thread | None = None
    timeline: Timeline = field(init=False)
    video_codec: str | None = None  # what the file holds, once open
    error: str | None = None

    def __post_init__(self) -> None:
        self.timeline = Timeline(self.kinds)

    def tap_for(self, kind: str) -> Tap:
        def tap(codec: RTCRtpCodecParameters, data: bytes, pts: int, keyframe: bool) -> None:
            mime = codec.mimeType.lower()
            if mime not in RECORDABLE[kind]:
                RECORDING_DROPS.labels("unsupported_codec").inc()
                self.unrecordable = codec.mimeType
                return
            try:
                self._queue.put_nowait(_Frame(kind, mime, codec.clockRate, data, pts,
                                              time.monotonic(), keyframe))
            except queue.Full:
                RECORDING_DROPS.labels("queue_full").inc()

        return tap

    def clock_tap_for(self, kind: str) -> ClockTap:
        def clock_tap(ntp: int, pts: int) -> None:
            try:
                self._queue.put_nowait(_Report(kind, ntp, pts))
            except queue.Full:
                RECORDING_DROPS.labels("queue_full").inc()

        return clock_tap

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
        writer = _Writer(self)
        held: list[_Frame] = []  # until the timeline is placed
        try:
            while (item := self._queue.get()) is not None:
                if isinstance(item, _Report):
                    self.timeline.sender_report(item.kind, item.ntp, item.pts)
                else:
                    item.elapsed = self.timeline.frame(item.kind, item.rate, item.pts,
                                                       item.arrival)
                    held.append(item)
                if self.timeline.aligned_by is None:
                    if not self.timeline.ready(time.monotonic()):
                        continue
                    self.timeline.place()
                    RECORDING_ALIGNMENT.labels(self.timeline.aligned_by).inc()
                for frame in held:
                    writer.write(frame, self.timeline.ms(frame.kind, frame.elapsed))
                held.clear()
            if self.timeline.aligned_by is None and held:
                self.timeline.place()
                RECORDING_ALIGNMENT.labels(self.timeline.aligned_by).inc()
                for frame in held:
                    writer.write(frame, self.timeline.ms(frame.kind, frame.elapsed))
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.error = repr(exc)
            log_event(log, "recording.write_failed", logging.ERROR, stream_id=self.stream_id,
                      video_id=self.video_id, error=self.error)
            while self._queue.get() is not None:  # keep draining until closed
                pass
        finally:
            writer.close()


@dataclass
class _Writer:
    """The container, opened on the first video keyframe in the codec's own."""

    recording: Recording
    container: av.container.OutputContainer | None = None
    streams: dict[str, av.stream.Stream] = field(default_factory=dict)

    def write(self, frame: _Frame, ms: int) -> None:
        # Timeline.ms runs for every frame (held or dropped) so each track's
        # last_ms stays in step.
        recording = self.recording
        if self.container is None:
            if frame.kind != "video" or not frame.keyframe:
                return  # a recording starts on a video keyframe
            opened = _open(recording.path, frame)
            if opened is None:
                return  # no size (or H.264 parameter sets) in this keyframe
            self.container, self.streams = opened
            recording.video_codec = frame.mime
        if frame.kind == "video" and frame.mime != recording.video_codec:
            RECORDING_DROPS.labels("codec_changed").inc()  # a reconnect in another codec
            return
        packet = av.Packet(frame.data)
        packet.stream = self.streams[frame.kind]
        packet.pts = packet.dts = ms
        packet.time_base = MS
        packet.is_keyframe = frame.keyframe or frame.kind == "audio"
        self.container.mux(packet)
        recording.frames += 1
        recording.video_frames += frame.kind == "video"
        RECORDED_FRAMES.labels(frame.kind).inc()

    def close(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except (av.FFmpegError, OSError) as exc:
                self.recording.error = self.recording.error or repr(exc)


def _open(path: Path, keyframe: _Frame) -> tuple[av.container.OutputContainer,
                                                 dict[str, av.stream.Stream]] | None:
    extradata = None
    if keyframe.mime == "video/h264":
        parameters = h264_parameters(keyframe.data)
        if parameters is None:
            return None
        extradata, size = parameters
        form, codec = "matroska", "h264"
    else:
        vp8 = vp8_size(keyframe.data)
        if vp8 is None:
            return None
        size, form, codec = vp8, "webm", "libvpx"
    # live: written front to back, never patched afterwards, so a cut file is
    # valid; a cluster at least every second, flushed as written.
    container = av.open(str(path), "w", format=form, options={
        "live": "1", "cluster_time_limit": "1000", "flush_packets": "1"})
    video = container.add_stream(codec, rate=30)
    assert isinstance(video, av.VideoStream)
    video.width, video.height = size
    video.pix_fmt = "yuv420p"
    video.time_base = MS
    if extradata is not None:
        # Annex B parameter sets: the muxer writes them as the avcC and turns
        # each frame's start codes into lengths.
        video.codec_context.extradata = extradata
    audio = container.add_stream("libopus", rate=48000)
    audio.layout = "stereo"
    audio.time_base = MS
    return container, {"video": video, "audio": audio}


@dataclass
class Recordings:
    """The recordings of the live sessions one worker carries."""

    pg: asyncpg.Pool
    storage: Storage
    enabled: bool = True
    max_attempts: int = 3
    active: dict[str, tuple[Recording, dict[str, tuple[Tap, ClockTap]]]] = field(
        default_factory=dict)

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
                              self.storage.path(video_key(video_id, "source")),
                              kinds=tuple(fanouts))
        taps = {kind: (recording.tap_for(kind), recording.clock_tap_for(kind))
                for kind in fanouts}
        for kind, fanout in fanouts.items():
            fanout.taps.append(taps[kind][0])
            fanout.clock_taps.append(taps[kind][1])
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
            if kind in taps:
                tap, clock_tap = taps[kind]
                if tap in fanout.taps:
                    fanout.taps.remove(tap)
                if clock_tap in fanout.clock_taps:
                    fanout.clock_taps.remove(clock_tap)
        await asyncio.to_thread(recording.close)
        await self.storage.commit_spooled(video_key(recording.video_id, "source"))
        size = await self.storage.size(video_key(recording.video_id, "source")) or 0
        reason = None
        if recording.video_frames == 0:
            reason = ("the recording holds no video: the publisher sent no video frame"
                      if recording.unrecordable is None else
                      f"the publisher's codec {recording.unrecordable} is not recorded "
                      "(recording takes VP8 or H.264 video and Opus audio)")
        await finish_recording(self.pg, recording.video_id, recording.session_id, size,
                               reason, self.max_attempts)
        log_event(log, "recording.finished", stream_id=stream_id, video_id=recording.video_id,
                  frames=recording.frames, video_frames=recording.video_frames, bytes=size,
                  video_codec=recording.video_codec, aligned_by=recording.timeline.aligned_by,
                  report_disagreement_s=recording.timeline.disagreement, error=recording.error)


