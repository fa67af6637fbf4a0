"""What a file really is, from its content (never its name): container,
codecs, size, frame rate, duration. Synchronous (PyAV): call it in a thread.

A file PyAV cannot open is `NotMedia`; one without a video stream is
`NoVideo`; a video codec outside the platform's list is `UnsupportedCodec`;
one whose first frame cannot be decoded is `Corrupt`. Each carries the
sentence the creator sees as the video's failure reason."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import gcd
from pathlib import Path

import av

# Video codecs a creator's upload may carry (what browsers, phones and OBS make).
SUPPORTED_VIDEO = {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "prores",
                   "mjpeg"}
MIN_DURATION_S = 0.5
MAX_SCAN_PACKETS = 2_000_000


class MediaRejected(Exception):
    """The input cannot become a video; `str()` is the creator's reason."""


class NotMedia(MediaRejected):
    pass


class NoVideo(MediaRejected):
    pass


class UnsupportedCodec(MediaRejected):
    pass


class Corrupt(MediaRejected):
    pass


@dataclass(frozen=True)
class Probe:
    format: str
    codec: str
    audio_codec: str | None
    width: int
    height: int
    frame_rate: Decimal
    duration: float  # seconds
    file_size: int

    @property
    def aspect_ratio(self) -> str:
        d = gcd(self.width, self.height) or 1
        return f"{self.width // d}:{self.height // d}"


def _format_name(container: av.container.InputContainer, path: Path) -> str:
    names = container.format.name.split(",")
    if "mp4" in names or "mov" in names:
        return "mp4" if path.suffix.lower() != ".mov" else "mov"
    if "matroska" in names or "webm" in names:
        stream = container.streams.video[0] if container.streams.video else None
        webm = stream is not None and stream.codec_context.name in ("vp8", "vp9", "av1")
        return "webm" if webm else "mkv"
    return names[0]


def _scanned_duration(path: Path) -> float:
    """A file without a duration in its header (a recording cut by a crash):
    the last packet's end, read from the packets."""
    end = 0.0
    with av.open(str(path)) as container:
        for n, packet in enumerate(container.demux()):
            if n > MAX_SCAN_PACKETS:
                break
            if packet.pts is None or packet.time_base is None:
                continue
            start = float(packet.pts * packet.time_base)
            length = float((packet.duration or 0) * packet.time_base)
            end = max(end, start + length)
    return end


def probe(path: Path) -> Probe:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError):
        raise NotMedia("the file is not a video (its content is no media format we read)") \
            from None
    with container:
        if not container.streams.video:
            raise NoVideo("the file has no video stream")
        video = container.streams.video[0]
        codec = video.codec_context.name
        if codec not in SUPPORTED_VIDEO:
            raise UnsupportedCodec(f"the video codec {codec!r} is not supported "
                                   f"(supported: {', '.join(sorted(SUPPORTED_VIDEO))})")
        audio = container.streams.audio[0].codec_context.name if container.streams.audio \
            else None
        width, height = _first_frame_size(container, video)
        rate = video.average_rate or video.guessed_rate or Fraction(30)
        duration = (container.duration / 1_000_000) if container.duration else 0.0
        fmt = _format_name(container, path)
    if duration <= 0:
        duration = _scanned_duration(path)
    if duration < MIN_DURATION_S:
        raise Corrupt(f"the video is {duration:.2f} s long: nothing to play")
    return Probe(fmt, codec, audio, width, height,
                 Decimal(str(round(float(rate), 2))), duration, path.stat().st_size)


def _first_frame_size(container: av.container.InputContainer,
                      video: av.video.stream.VideoStream) -> tuple[int, int]:
    try:
        for frame in container.decode(video):
            return frame.width, frame.height
    except av.FFmpegError as exc:
        raise Corrupt(f"the video cannot be decoded ({exc.__class__.__name__})") from None
    raise Corrupt("the video stream has no frame that decodes")
