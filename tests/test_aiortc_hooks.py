"""Every aiortc/aioice internal that sfu/aiortc_hooks.py touches is still
where the hooks expect it: an aiortc upgrade that moves one fails here, by
name, rather than as silent decoding, lost keyframes or unbilled viewers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription

from sfu import aiortc_hooks as hooks
from tests.media_clients import client_pc


@pytest.fixture
async def answered() -> AsyncIterator[tuple[RTCPeerConnection, RTCRtpTransceiver]]:
    """A worker-side peer connection that has applied a client's offer and
    answered it (what every hook runs on), and one of its transceivers."""
    client, worker = client_pc(), client_pc()
    client.addTransceiver("video", direction="sendrecv")
    await client.setLocalDescription(await client.createOffer())
    await worker.setRemoteDescription(RTCSessionDescription(
        sdp=client.localDescription.sdp, type="offer"))
    transceiver = worker.getTransceivers()[0]
    hooks.take_dtls_server_role(transceiver)
    await worker.setLocalDescription(await worker.createAnswer())
    yield worker, transceiver
    await worker.close()
    await client.close()


async def test_the_receiver_internals_the_tap_and_plis_use(
        answered: tuple[RTCPeerConnection, RTCRtpTransceiver]) -> None:
    receiver = answered[1].receiver
    assert hasattr(receiver, "_RTCRtpReceiver__decoder_queue")
    frames: list[object] = []
    hooks.tap_receiver(receiver, lambda codec, frame: frames.append(frame))
    tap = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
    assert isinstance(tap, hooks.EncodedFrameTap)
    assert isinstance(receiver._RTCRtpReceiver__rtx_ssrc, dict)  # type: ignore[attr-defined]
    assert isinstance(receiver._RTCRtpReceiver__remote_streams,  # type: ignore[attr-defined]
                      dict)
    assert callable(receiver._send_rtcp_pli)
    await hooks.request_keyframe_upstream(receiver)  # no SSRC seen yet: sends nothing


async def test_the_receiver_hands_on_sender_reports_and_still_handles_them(
        answered: tuple[RTCPeerConnection, RTCRtpTransceiver]) -> None:
    from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

    receiver = answered[1].receiver
    reports: list[tuple[int, int]] = []
    hooks.tap_receiver(receiver, lambda codec, frame: None,
                       lambda ntp, rtp: reports.append((ntp, rtp)))
    receiver._RTCRtpReceiver__rtx_ssrc[99] = 42  # type: ignore[attr-defined]
    info = RtcpSenderInfo(ntp_timestamp=(3_900_000_000 << 32) | 5, rtp_timestamp=123456,
                          packet_count=10, octet_count=1000)
    await receiver._handle_rtcp_packet(RtcpSrPacket(ssrc=42, sender_info=info))
    assert reports == []  # before the first frame the timestamps' origin is unknown
    # aiortc rebases the frames' timestamps to start at 0 (its TimestampMapper):
    # the report's timestamp is rebased the same way.
    mapper = receiver._RTCRtpReceiver__timestamp_mapper  # type: ignore[attr-defined]
    assert mapper.map(100_000) == 0 and mapper.map(103_000) == 3000
    await receiver._handle_rtcp_packet(RtcpSrPacket(ssrc=42, sender_info=info))
    await receiver._handle_rtcp_packet(RtcpSrPacket(ssrc=99, sender_info=info))  # RTX: not ours
    assert reports == [((3_900_000_000 << 32) | 5, 23456)]
    assert hooks.frame_timestamp(receiver, 99_000) == -1000
    lsr = receiver._RTCRtpReceiver__lsr  # type: ignore[attr-defined]
    assert 42 in lsr  # aiortc's own handling (receiver reports' LSR) still ran


async def test_the_sender_internals_the_take_over_uses(
        answered: tuple[RTCPeerConnection, RTCRtpTransceiver]) -> None:
    """`take_over_sender` replaces the sender's RTP loop and RTCP handler and
    reads its SSRCs, MID, RTX payload type and header extension ids."""
    sender: Any = answered[1].sender
    for name in ("_run_rtp", "_handle_rtcp_packet", "_send_keyframe"):
        assert callable(getattr(sender, name)), name
    assert isinstance(sender._ssrc, int) and isinstance(sender._rtx_ssrc, int)
    for name in ("__rtp_started", "__rtp_exited", "__rtx_payload_type", "__mid"):
        assert hasattr(sender, f"_RTCRtpSender{name}"), name
    ids = sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids
    assert hasattr(ids, "mid") and hasattr(ids, "abs_send_time")
    asked: list[str] = []
    original = sender._handle_rtcp_packet
    hooks.take_over_sender(sender, lambda wiring: None, lambda: None, hooks.SenderRtcp(
        keyframe=lambda: asked.append("keyframe"), nack=lambda lost: None,
        report=lambda: None))
    assert sender._handle_rtcp_packet is not original
    sender._send_keyframe()
    assert asked == ["keyframe"]


async def test_the_codec_and_dtls_internals(
        answered: tuple[RTCPeerConnection, RTCRtpTransceiver]) -> None:
    worker, transceiver = answered
    codecs = hooks.negotiated_codecs(transceiver)
    assert codecs and all(c.mimeType.startswith("video/") for c in codecs)
    hooks.narrow_codecs(transceiver, codecs[:1])
    assert hooks.negotiated_codecs(transceiver) == codecs[:1]
    assert transceiver.receiver.transport._role == "server"
    assert "a=setup:passive" in worker.localDescription.sdp


async def test_the_ice_internals_buffers_and_host_candidates_use(
        answered: tuple[RTCPeerConnection, RTCRtpTransceiver],
        monkeypatch: pytest.MonkeyPatch) -> None:
    transceiver = answered[1]
    connection = transceiver.receiver.transport.transport.iceGatherer._connection
    assert connection._protocols  # the answer gathered: its sockets exist
    hooks.enlarge_receive_buffers([transceiver], 1 << 20)
    assert callable(aioice.ice.get_host_addresses)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    hooks.restrict_host_candidates(["127.0.0.1", "::1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]


async def test_the_transport_internals_twcc_uses(
        answered: tuple[RTCPeerConnection, RTCRtpTransceiver]) -> None:
    """TWCC reads a transport's raw RTCP, a connection's datagrams, the
    receiver's RTCP SSRC, and sends on the DTLS transport."""
    worker, transceiver = answered
    dtls: Any = hooks.transport_of(transceiver)
    seen: list[bytes] = []
    hooks.tap_rtcp(dtls, seen.append)
    await dtls._handle_rtcp_data(b"\x80\xc9\x00\x01\x00\x00\x00\x2a")  # an empty RR
    assert seen == [b"\x80\xc9\x00\x01\x00\x00\x00\x2a"]
    datagrams: list[bytes] = []
    connection = dtls.transport.iceGatherer._connection
    assert connection._protocols  # gathered: the sockets exist
    hooks.tap_datagrams(transceiver, datagrams.append)
    connection._protocols[0].datagram_received(b"\x00\x01\x00\x00", ("127.0.0.1", 9))
    assert datagrams == [b"\x00\x01\x00\x00"]
    assert isinstance(hooks.receiver_rtcp_ssrc(transceiver.receiver), int)
    assert callable(dtls._send_rtp)
    assert await hooks.send_rtcp(dtls, b"\x80\xc9\x00\x01\x00\x00\x00\x2a") is False  # no DTLS yet
