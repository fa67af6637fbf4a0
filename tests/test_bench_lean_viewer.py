"""The lean viewer (bench/lean_viewer.py): media is counted from the clear RTP
headers at the socket and dropped before SRTP, STUN, DTLS and RTCP keep
their path, and the viewer still sends receiver reports whose highest
sequence number moves."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtcpRrPacket

from bench.lean_viewer import LeanMedia, _Route
from bench.sfu_fanout import FrameCounter, TappedViewer
from tests.media_clients import Publisher, client_pc, sending_to
from tests.sfu_in_process import Worker, make_stream, make_viewer_user
from tests.waiting import wait_until

VP8, RTX = 97, 98


def rtp(pt: int, seq: int, timestamp: int, ssrc: int, marker: bool = False) -> bytes:
    """An RTP datagram as it arrives under SRTP: clear header, opaque payload."""
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, timestamp,
                       ssrc) + bytes(60)


def test_rtp_is_counted_by_marker_and_other_datagrams_pass() -> None:
    counter = FrameCounter(3000)
    streams: dict[int, StreamStatistics] = {}
    lean = LeanMedia({}, {}, routes={VP8: _Route(streams, 90000, counter, video=True),
                                     RTX: _Route(streams, 90000, None, video=True)})
    # Three frames of three packets each: three frames, not nine.
    for frame in range(3):
        for part in range(3):
            assert lean.take(rtp(VP8, 100 + frame * 3 + part, 1000 + 3000 * frame, 7,
                                 marker=part == 2))
    assert counter.frames == 3
    # A retransmitted (or reordered) marker of a counted frame counts nothing.
    assert lean.take(rtp(VP8, 105, 4000, 7, marker=True))
    assert counter.frames == 3
    # RTX feeds its SSRC's statistics, never the frame count.
    assert lean.take(rtp(RTX, 1, 99_000, 8, marker=True))
    assert counter.frames == 3 and streams[8].packets_received == 1
    # What the receiver reports are made of: every packet, the highest sequence number.
    assert streams[7].packets_received == 10 and streams[7].max_seq == 108
    # Not RTP of a negotiated type: left to aiortc.
    stun = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + bytes(12)
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(20)
    rtcp_sr = struct.pack("!BBH", 0x80, 200, 6) + bytes(24)
    rtcp_rr = struct.pack("!BBH", 0x81, 201, 7) + bytes(28)
    for data in (stun, dtls, rtcp_sr, rtcp_rr, rtp(111, 1, 1, 9), b"\x80"):
        assert not lean.take(data), data[:2]
    assert lean.taken == 11 and lean.passed == 6
    assert counter.frames == 3


@pytest.fixture
async def watching() -> AsyncIterator[tuple[TappedViewer, RTCPeerConnection]]:
    """A lean viewer connected to an aiortc sender of small moving video (the
    viewer offers, as the bench's viewers do). Its media path is diverted
    before ICE runs, so connecting at all shows STUN and DTLS pass through."""
    viewer = TappedViewer(pc=client_pc(), counting="raw")
    async with sending_to(viewer.pc, viewer.offered) as sender:
        yield viewer, sender
        await viewer.pc.close()


async def test_a_lean_viewer_counts_frames_without_srtp_and_still_reports(
        watching: tuple[TappedViewer, RTCPeerConnection]) -> None:
    viewer, sender = watching
    lean = viewer.lean
    assert lean is not None
    reported: list[int] = []
    rtp_sender = sender.getSenders()[0]
    handle_rtcp = rtp_sender._handle_rtcp_packet

    async def seen(packet: object) -> None:
        if isinstance(packet, RtcpRrPacket):
            reported.extend(r.highest_sequence for r in packet.reports)
        await handle_rtcp(packet)  # type: ignore[arg-type]

    rtp_sender._handle_rtcp_packet = seen  # type: ignore[method-assign]
    counter = viewer.counters["video"]
    await wait_until(lambda: counter.frames >= 5, "5 frames counted", timeout=30)
    dtls = viewer.receivers["video"].transport
    seen_by_dtls, taken = dtls._RTCDtlsTransport__rx_packets, lean.taken  # type: ignore[attr-defined]
    counted = counter.frames  # read with `taken`: each frame after it needs a packet taken
    await wait_until(lambda: counter.frames >= 30, "30 frames counted", timeout=30)
    # The media never reached the DTLS transport (no SRTP unprotect, no queue):
    # what did is RTCP, about one sender report a second.
    through_dtls = dtls._RTCDtlsTransport__rx_packets - seen_by_dtls  # type: ignore[attr-defined]
    assert lean.taken - taken >= counter.frames - counted >= 1
    assert through_dtls * 5 < lean.taken - taken, (through_dtls, lean.taken - taken)
    jitter = viewer.receivers["video"]._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    assert all(p is None for p in jitter._packets)
    # Receiver reports still reach the sender, their highest sequence number moving.
    await wait_until(lambda: len(set(reported)) >= 2, "two receiver reports that differ",
                     timeout=30)
    assert reported == sorted(reported) and reported[-1] > reported[0]


async def test_a_worker_bills_a_lean_viewer(worker: Worker, db: asyncpg.Connection) -> None:
    """The worker's metering ticks a viewer only with a receiver report in the
    last 5 s: a lean viewer is billed second by second like any other."""
    stream_id, _ = await make_stream(db)
    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    viewer = TappedViewer(pc=client_pc(), counting="raw")
    await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
    viewer.offered()
    answer = await worker.signal_viewer(stream_id, await make_viewer_user(worker, db, "lean"))(
        viewer.pc.localDescription.sdp)
    await viewer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    try:
        await wait_until(lambda: viewer.counters["video"].frames >= 10, "10 frames", timeout=30)
        peer = next(p for p in worker.manager.peers.values() if p.role == "viewer")
        await wait_until(lambda: peer.meter.ticks >= 2, "two billed seconds", timeout=30,
                         interval=0.1)
        assert viewer.lean is not None and viewer.lean.taken > viewer.counters["video"].frames
    finally:
        await viewer.pc.close()
        await publisher.close()
