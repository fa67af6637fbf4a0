"""aiortc clients for tests: a publisher sending synthetic video and audio
(encoded by the *client*, as a browser would) and a viewer counting what it
decodes. They speak to whatever returns an answer for an offer — the worker's
control API here, the websocket or WHIP/WHEP elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

from tests.waiting import wait_until

Signal = Callable[[str], Awaitable[str]]  # offer SDP -> answer SDP


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))  # loopback only



@contextlib.asynccontextmanager
async def sending_to(viewer: RTCPeerConnection,
                     offered: Callable[[], None] = lambda: None
                     ) -> AsyncIterator[RTCPeerConnection]:
    """An aiortc sender of MovingVideo answering `viewer`'s offer (the viewer
    offers, as the bench's viewers do); `offered` runs once the viewer's offer
    is its local description. The sender is closed on the way out."""
    sender = client_pc()
    await viewer.setLocalDescription(await viewer.createOffer())
    offered()
    await sender.setRemoteDescription(RTCSessionDescription(
        sdp=viewer.localDescription.sdp, type="offer"))
    sender.addTrack(MovingVideo())
    await sender.setLocalDescription(await sender.createAnswer())
    await viewer.setRemoteDescription(RTCSessionDescription(
        sdp=sender.localDescription.sdp, type="answer"))
    try:
        yield sender
    finally:
        await sender.close()

class MovingVideo(VideoStreamTrack):
    """Small frames whose content changes, so the encoder makes real deltas."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.count = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(self.width, self.height, "yuv420p")
        shade = (self.count * 7) % 255
        for plane in frame.planes:
            plane.update(bytes([shade]) * plane.buffer_size)
        self.count += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class Publisher:
    pc: RTCPeerConnection = field(default_factory=client_pc)

    async def start(self, signal: Signal, video_codec: str | None = None) -> str:
        video = self.pc.addTransceiver(MovingVideo(), direction="sendonly")
        if video_codec:
            from aiortc import RTCRtpSender

            caps = RTCRtpSender.getCapabilities("video").codecs
            video.setCodecPreferences([c for c in caps if c.mimeType == video_codec])
        self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        return await _negotiate(self.pc, signal)

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class Viewer:
    pc: RTCPeerConnection = field(default_factory=client_pc)
    frames: dict[str, int] = field(default_factory=lambda: {"video": 0, "audio": 0})
    first_frame_at: float | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, signal: Signal, kinds: tuple[str, ...] = ("video", "audio")) -> str:
        for kind in kinds:
            self.pc.addTransceiver(kind, direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:  # type: ignore[no-untyped-def]
            self._readers.append(asyncio.ensure_future(self._read(track)))

        return await _negotiate(self.pc, signal)

    async def _read(self, track) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames[track.kind] += 1
                if track.kind == "video" and self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()

    async def wait_for_frames(self, kind: str, count: int, timeout: float = 15.0) -> None:
        await wait_until(lambda: self.frames[kind] >= count,
                         f"{count} {kind} frames (so far {self.frames})", timeout=timeout)

    async def close(self) -> None:
        await self.pc.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _negotiate(pc: RTCPeerConnection, signal: Signal) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    answer = await signal(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return answer

