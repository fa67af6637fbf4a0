"""Small media files made by the tests with PyAV (a few seconds, low
resolution, so processing them stays fast): what an uploader could send."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import av

_TONE = b"".join(struct.pack("<hh", v, v) for v in (
    int(6000 * math.sin(2 * math.pi * 440 * k / 48000)) for k in range(960)))


_FAST = {"libx264": {"preset": "ultrafast"}, "libvpx": {"deadline": "realtime", "cpu-used": "8"}}


def _video_frame(i: int, width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    row = bytes((x + i * 4) % 256 for x in range(frame.planes[0].line_size))
    frame.planes[0].update(row * height)
    chroma = frame.planes[1].line_size * (height // 2)
    frame.planes[1].update(bytes([128]) * chroma)
    frame.planes[2].update(bytes([(i * 5) % 256]) * chroma)
    frame.pts = i
    return frame


def make_clip(path: Path, *, container: str = "mp4", video: str | None = "libx264",
              audio: str | None = "aac", seconds: float = 3, width: int = 320,
              height: int = 240, fps: int = 30) -> Path:
    """A clip: a moving gradient and a 440 Hz tone."""
    out = av.open(str(path), "w", format=container)
    vs = aus = None
    if video is not None:
        vs = out.add_stream(video, rate=fps)
        vs.width, vs.height = width, height
        vs.pix_fmt = "yuv420p"
        vs.options = _FAST.get(video, {})
    if audio is not None:
        aus = out.add_stream(audio, rate=48000)
        aus.layout = "stereo"
    # Interleaved by time, as a real recorder writes.
    for n in range(int(seconds * 50)):
        if vs is not None:
            for i in range(n * fps // 50, (n + 1) * fps // 50):
                out.mux(vs.encode(_video_frame(i, width, height)))
        if aus is not None:
            frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
            frame.planes[0].update(_TONE)
            frame.sample_rate = 48000
            frame.pts = n * 960
            out.mux(aus.encode(frame))
    streams = [s for s in (vs, aus) if s is not None]
    for stream in streams:
        out.mux(stream.encode(None))
    out.close()
    return path


def mp4(path: Path, **kw: object) -> Path:
    return make_clip(path, container="mp4", video="libx264", audio="aac", **kw)  # type: ignore[arg-type]


def webm(path: Path, **kw: object) -> Path:
    return make_clip(path, container="webm", video="libvpx", audio="libopus", **kw)  # type: ignore[arg-type]
