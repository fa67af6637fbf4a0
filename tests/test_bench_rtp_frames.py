"""The bench viewers' RTP-header frame count (bench/rtp_frames.py): it counts
frames, not packets, once each, through RTX, and the viewer still sends the
receiver reports a worker's metering and an edge's relay liveness need."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket, wrap_rtx

from bench.sfu_fanout import TappedViewer
from tests.media_clients import client_pc, sending_to
from tests.waiting import wait_until


@pytest.fixture
async def watching() -> AsyncIterator[tuple[TappedViewer, RTCPeerConnection]]:
    """A viewer counting from RTP headers, connected to an aiortc sender of
    small moving video (the viewer offers, as the bench's viewers do)."""
    viewer = TappedViewer(pc=client_pc(), counting="rtp")
    async with sending_to(viewer.pc) as sender:
        yield viewer, sender
        await viewer.pc.close()


async def _reported(sender: RTCPeerConnection) -> bool:
    """The sender has had a receiver report (aiortc makes its
    remote-inbound-rtp statistics of the reports it gets)."""
    stats = (await sender.getSenders()[0].getStats()).values()
    return any(item.type == "remote-inbound-rtp" for item in stats)


async def test_a_connected_viewer_counts_frames_and_still_reports(
        watching: tuple[TappedViewer, RTCPeerConnection]) -> None:
    viewer, sender = watching
    counter = viewer.counters["video"]
    await wait_until(lambda: counter.frames >= 20, "20 frames counted", timeout=30)
    # The jitter buffer is bypassed: it never holds a packet.
    jitter = viewer.receivers["video"]._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    assert all(p is None for p in jitter._packets)
    await wait_until(lambda: _reported(sender), "a receiver report from the viewer", timeout=30)


async def test_frames_not_packets_each_once_and_through_rtx(
        watching: tuple[TappedViewer, RTCPeerConnection]) -> None:
    viewer, _ = watching
    counter = viewer.counters["video"]
    await wait_until(lambda: counter.frames >= 1, "the first frame", timeout=30)
    receiver = viewer.receivers["video"]
    codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    vp8 = next(pt for pt, c in codecs.items() if c.mimeType == "video/VP8")
    rtx = next((pt for pt, c in codecs.items() if c.mimeType == "video/rtx"), None)
    ssrc, rtx_ssrc = 0x1234, 0x5678
    receiver._RTCRtpReceiver__rtx_ssrc[rtx_ssrc] = ssrc  # type: ignore[attr-defined]
    before = counter.frames

    def packet(seq: int, timestamp: int, marker: bool) -> RtpPacket:
        return RtpPacket(payload_type=vp8, sequence_number=seq, timestamp=timestamp,
                         ssrc=ssrc, marker=int(marker), payload=b"\x10\x00" + bytes(50))

    # Three frames of three packets each: three frames, not nine.
    for frame in range(3):
        for part in range(3):
            await receiver._handle_rtp_packet(
                packet(frame * 3 + part, 1000 + 3000 * frame, part == 2), 0)
    assert counter.frames - before == 3
    # A retransmitted (or reordered) marker of a counted frame counts nothing.
    await receiver._handle_rtp_packet(packet(5, 4000, True), 0)
    assert counter.frames - before == 3
    # The next frame's marker arriving only as RTX still counts, once.
    if rtx is not None:
        lost = packet(11, 10_000, True)
        await receiver._handle_rtp_packet(wrap_rtx(lost, payload_type=rtx, sequence_number=1,
                                                   ssrc=rtx_ssrc), 0)
        assert counter.frames - before == 4
    streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    assert streams[ssrc].packets_received >= 10  # what the receiver reports are made of
