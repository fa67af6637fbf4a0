"""The H.264/AAC HLS ladder and the thumbnail, with PyAV (its wheel carries
FFmpeg with libx264 and AAC). Synchronous and CPU-heavy: the media role runs it
in a thread, never on the event loop (PyAV releases the GIL while coding).

The source is decoded ONCE; every rendition scales and encodes the same
frames. Keyframes are aligned across renditions: the decision to start a new
GOP is taken per source frame (the first frame at or after each
SEGMENT_SECONDS boundary) and forced in every encoder, scene-cut keyframes are
off, so segment n covers the same media time in every rendition and a player
switching renditions neither skips nor repeats a second (billing relies on it,
signaling/playback.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from media.probe import Probe

SEGMENT_SECONDS = 2
# (name, height, video kbps): the ladder, cut at the source's height.
LADDER = [("240p", 240, 400), ("360p", 360, 800), ("480p", 480, 1400),
          ("720p", 720, 2800), ("1080p", 1080, 5000)]
AUDIO_KBPS = 128
TIME_BASE = Fraction(1, 90000)
THUMBNAIL_WIDTH = 320


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    kbps: int


@dataclass
class Rendition:
    rung: Rung
    directory: Path
    segments: list[Path] = field(default_factory=list)

    @property
    def playlist(self) -> Path:
        return self.directory / "index.m3u8"

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.segments)


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def ladder_for(width: int, height: int) -> list[Rung]:
    """Every rung no taller than the source; a source below 240p gets one
    rendition at its own size."""
    rungs = [Rung(name, _even(h * width / height), h, kbps)
             for name, h, kbps in LADDER if h <= height]
    if not rungs:
        rungs = [Rung(f"{_even(height)}p", _even(width), _even(height), LADDER[0][2])]
    return rungs


class _Output:
    """One rendition being written by FFmpeg's HLS muxer."""

    def __init__(self, rung: Rung, directory: Path, fps: int, audio: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.rung = rung
        self.directory = directory
        self.container = av.open(str(directory / "index.m3u8"), "w", format="hls", options={
            "hls_time": str(SEGMENT_SECONDS), "hls_playlist_type": "vod",
            "hls_segment_filename": str(directory / "seg_%05d.ts"),
            "hls_flags": "independent_segments"})
        self.video = self.container.add_stream("libx264", rate=fps)
        self.video.width, self.video.height = rung.width, rung.height
        self.video.pix_fmt = "yuv420p"
        self.video.bit_rate = rung.kbps * 1000
        self.video.codec_context.time_base = TIME_BASE
        self.video.options = {"preset": "veryfast", "sc_threshold": "0", "forced-idr": "1",
                              "g": str(fps * SEGMENT_SECONDS * 10), "bf": "0",
                              "maxrate": f"{rung.kbps * 3 // 2}k", "bufsize": f"{rung.kbps * 2}k"}
        self.audio = None
        if audio:
            self.audio = self.container.add_stream("aac", rate=48000)
            self.audio.layout = "stereo"
            self.audio.bit_rate = AUDIO_KBPS * 1000
            self.audio.options = {"aac_coder": "fast"}
        self.last_pts = -1

    def video_frame(self, frame: av.VideoFrame, pts: int, key: bool) -> None:
        if pts <= self.last_pts:
            return  # FFmpeg refuses non-increasing timestamps
        self.last_pts = pts
        scaled = frame.reformat(self.rung.width, self.rung.height, "yuv420p")
        scaled.pts, scaled.time_base = pts, TIME_BASE
        scaled.pict_type = av.video.frame.PictureType.I if key else \
            av.video.frame.PictureType.NONE
        self.container.mux(self.video.encode(scaled))

    def audio_frame(self, frame: av.AudioFrame) -> None:
        if self.audio is not None:
            self.container.mux(self.audio.encode(frame))

    def close(self) -> None:
        self.container.mux(self.video.encode(None))
        if self.audio is not None:
            self.container.mux(self.audio.encode(None))
        self.container.close()


def transcode(source: Path, work: Path, info: Probe,
              progress: Callable[[float], None] = lambda _f: None,
              cancel: threading.Event | None = None,
              rungs: list[Rung] | None = None) -> list[Rendition]:
    """The ladder (or the given rungs: bench/transcode.py times them one by
    one) as HLS under `work/<rendition>/` (index.m3u8 + seg_NNNNN.ts)."""
    rungs = rungs if rungs is not None else ladder_for(info.width, info.height)
    fps = max(1, min(60, round(float(info.frame_rate))))
    with av.open(str(source)) as inp:
        video = inp.streams.video[0]
        video.thread_type = "AUTO"
        audio = inp.streams.audio[0] if inp.streams.audio else None
        outputs = [_Output(r, work / r.name, fps, audio is not None) for r in rungs]
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
        start: float | None = None
        next_key = 0.0
        last_report = -1.0
        streams = [video] if audio is None else [video, audio]
        for packet in inp.demux(*streams):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue  # one damaged packet (a cut recording) is skipped, not fatal
            for frame in frames:
                if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                    continue
                if frame.pts is None or frame.time_base is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if isinstance(frame, av.VideoFrame):
                    if start is None:
                        start = t
                    rel = t - start
                    key = rel >= next_key
                    if key:
                        next_key = (int(rel // SEGMENT_SECONDS) + 1) * SEGMENT_SECONDS
                    pts = int(round(rel / TIME_BASE))
                    for out in outputs:
                        out.video_frame(frame, pts, key)
                    if rel - last_report >= 1.0:
                        last_report = rel
                        progress(min(0.99, rel / max(info.duration, 0.001)))
                elif start is not None and t >= start:
                    frame.pts = None  # the AAC encoders count samples from here
                    for resampled in resampler.resample(frame):
                        for out in outputs:
                            out.audio_frame(resampled)
        if start is None:
            raise av.error.InvalidDataError(0, "no video frame decoded")
        for out in outputs:
            out.close()
    renditions = []
    for out in outputs:
        segments = sorted(out.directory.glob("seg_*.ts"))
        renditions.append(Rendition(out.rung, out.directory, segments))
    progress(1.0)
    return renditions


def thumbnail(source: Path, target: Path, duration: float) -> None:
    """A JPEG of the frame a third of the way in (at most 5 s in), 320 px wide."""
    at = min(5.0, duration / 3)
    with av.open(str(source)) as inp:
        video = inp.streams.video[0]
        chosen: av.VideoFrame | None = None
        first: float | None = None
        for frame in inp.decode(video):
            if frame.time is None:
                continue
            first = frame.time if first is None else first
            if chosen is not None and frame.time - first > at:
                break
            chosen = frame
    if chosen is None:
        raise av.error.InvalidDataError(0, "no frame for a thumbnail")
    height = _even(THUMBNAIL_WIDTH * chosen.height / chosen.width)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = THUMBNAIL_WIDTH, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    image = chosen.reformat(THUMBNAIL_WIDTH, height, "yuvj420p")
    image.pts = 0
    packets = encoder.encode(image) + encoder.encode(None)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join(bytes(p) for p in packets))
