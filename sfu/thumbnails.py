"""Live thumbnails: every VILOKANAM_THUMBNAIL_INTERVAL seconds, one keyframe of
each live stream is decoded into a JPEG — per stream, never per viewer.

Like the recorder, it sees frames through the video `Fanout`'s taps (the
frames the worker forwards anyway). The tap runs on the event loop, so it only
takes the next keyframe once it is wanted and hands it to a task; the decode
(PyAV) and the JPEG encode run in a thread. When a thumbnail is due the worker
asks the publisher for a keyframe (the Fanout throttles such requests). The
JPEG goes to storage under `streams/<id>/thumb.jpg`
(vilokanam/live_thumbnails.py) and the stream's `thumbnail_url` is set, with
the capture time in the query so a browser fetches the new picture; signaling
serves it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction

import asyncpg
import av
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from prometheus_client import Counter

from sfu.relay import Fanout
from vilokanam.live_thumbnails import THUMBNAIL_MAX_WIDTH, thumbnail_key, thumbnail_path
from vilokanam.logs import log_event
from vilokanam.storage import LocalStorage
from vilokanam.tasks import TaskOwner

log = logging.getLogger("sfu.thumbnails")

DECODERS = {"video/vp8": "vp8", "video/h264": "h264"}
RE_REQUEST_S = 5.0  # a keyframe asked for and not come: ask again this often

THUMBNAILS = Counter("vilokanam_live_thumbnails_total",
                     "Live thumbnails made (one keyframe decoded per stream).", ["result"])


def thumbnail_size(width: int, height: int, max_width: int = THUMBNAIL_MAX_WIDTH) -> tuple[
        int, int]:
    """The frame's size, scaled down to `max_width` keeping its aspect (even sides)."""
    if width <= max_width:
        return width - width % 2, height - height % 2
    scaled = round(height * max_width / width)
    return max_width, max(scaled - scaled % 2, 2)


def keyframe_jpeg(mime: str, data: bytes) -> tuple[bytes, int, int]:
    """One encoded keyframe -> (JPEG bytes, width, height). Blocking: a thread."""
    decoder = av.CodecContext.create(DECODERS[mime.lower()], "r")
    assert isinstance(decoder, av.VideoCodecContext)
    frames = list(decoder.decode(av.Packet(data))) or list(decoder.decode(None))
    if not frames:
        raise ValueError("the keyframe decoded to no picture")
    frame = frames[0]
    width, height = thumbnail_size(frame.width, frame.height)
    picture = frame.reformat(width, height, format="yuvj420p")
    picture.pts = 0
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 1)
    packets = list(encoder.encode(picture)) + list(encoder.encode(None))
    return bytes(packets[0]), width, height


@dataclass
class _Capture:
    stream_id: str
    fanout: Fanout
    wanted: bool = True  # the first keyframe of a session makes the first thumbnail
    busy: bool = False
    due_at: float = 0.0
    asked_at: float = 0.0
    tap: object = None


@dataclass
class LiveThumbnails:
    """The thumbnails of the live streams one worker carries."""

    pg: asyncpg.Pool
    storage: LocalStorage
    interval: float
    tasks: TaskOwner
    active: dict[str, _Capture] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def start(self, stream_id: str, video: Fanout) -> None:
        if not self.enabled or stream_id in self.active:
            return
        capture = _Capture(stream_id, video, asked_at=time.monotonic())

        def tap(codec: RTCRtpCodecParameters, data: bytes, pts: int, keyframe: bool) -> None:
            if not keyframe or not capture.wanted or capture.busy:
                return
            if codec.mimeType.lower() not in DECODERS:
                return
            capture.wanted, capture.busy = False, True
            self.tasks.spawn(self._make(capture, codec.mimeType, bytes(data)),
                             f"thumbnail-{stream_id}")

        capture.tap = tap
        video.taps.append(tap)
        self.active[stream_id] = capture
        video.request_keyframe()

    def stop(self, stream_id: str) -> None:
        capture = self.active.pop(stream_id, None)
        if capture is not None and capture.tap in capture.fanout.taps:
            capture.fanout.taps.remove(capture.tap)  # type: ignore[arg-type]

    async def tick(self) -> None:
        """Called every second: a stream whose thumbnail is due wants the next
        keyframe, and the publisher is asked for one."""
        now = time.monotonic()
        for capture in list(self.active.values()):
            if capture.busy:
                continue
            if not capture.wanted and now >= capture.due_at:
                capture.wanted = True
                capture.asked_at = now
                capture.fanout.request_keyframe()
            elif capture.wanted and now - capture.asked_at >= RE_REQUEST_S:
                capture.asked_at = now
                capture.fanout.request_keyframe()

    async def _make(self, capture: _Capture, mime: str, data: bytes) -> None:
        started = time.monotonic()
        try:
            jpeg, width, height = await asyncio.to_thread(keyframe_jpeg, mime, data)
            await self.storage.put(thumbnail_key(capture.stream_id), jpeg)
            await self.pg.execute(
                "UPDATE streams SET thumbnail_url = $2 WHERE id = $1::uuid",
                capture.stream_id, f"{thumbnail_path(capture.stream_id)}?t={int(time.time())}")
        except (av.FFmpegError, ValueError, OSError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            THUMBNAILS.labels("failed").inc()
            log_event(log, "thumbnail.failed", logging.WARNING, stream_id=capture.stream_id,
                      error=repr(exc))
        else:
            THUMBNAILS.labels("made").inc()
            log_event(log, "thumbnail.made", logging.DEBUG, stream_id=capture.stream_id,
                      width=width, height=height, bytes=len(jpeg),
                      ms=int((time.monotonic() - started) * 1000))
        finally:
            capture.busy = False
            capture.due_at = time.monotonic() + self.interval
