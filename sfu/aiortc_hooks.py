"""The one place that reaches into aiortc's (and aioice's) internals.

The SFU relies on these hooks, each small:
- `tap_receiver`: a receiver's decoder queue is replaced by a tap, so
  assembled *encoded* frames come to us and nothing is ever decoded;
- `route_keyframe_requests`: a viewer sender's keyframe request (PLI/FIR from
  the viewer) is routed to us, since with pre-encoded packets the sender has no
  encoder to ask;
- `request_keyframe_upstream`: a PLI is sent to the publisher for its media SSRCs;
- `negotiated_codecs` / `narrow_codecs`: a transceiver's negotiated codecs are
  read, and narrowed after setRemoteDescription;
- `take_dtls_server_role`: the DTLS server role when the offer leaves it open;
- `on_receiver_reports`: a viewer's RTCP reports on a sender's stream are
  observed (metering bills only the seconds a viewer reports on);
- `enlarge_receive_buffers`: a publisher's ICE sockets get a large kernel
  receive buffer;
- `restrict_host_candidates`: aioice offers host candidates only on the
  configured addresses (process-wide).
pyproject.toml holds aiortc to 1.16.x; tests/test_aiortc_hooks.py checks that
every internal these hooks touch is where they expect it, so an upgrade that
moves one fails loudly there."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

FrameHandler = Callable[[RTCRtpCodecParameters, JitterFrame], None]


class EncodedFrameTap:
    """Stands in for the receiver's decoder queue. `put` runs on the event
    loop (from the receiver's RTP handler) and hands each assembled encoded
    frame to `on_frame`; only the stop sentinel reaches the decoder thread,
    which therefore idles and decodes nothing."""

    def __init__(self, on_frame: FrameHandler) -> None:
        self._on_frame = on_frame
        self._sentinel: queue.Queue[None] = queue.Queue()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._sentinel.put(None)
        else:
            self._on_frame(*item)

    def get(self, *args: Any, **kwargs: Any) -> None:
        return self._sentinel.get(*args, **kwargs)


def tap_receiver(receiver: RTCRtpReceiver, on_frame: FrameHandler) -> None:
    """Must run before the receiver starts (i.e. on the `track` event)."""
    receiver._RTCRtpReceiver__decoder_queue = EncodedFrameTap(on_frame)  # type: ignore[attr-defined]


def route_keyframe_requests(sender: RTCRtpSender, on_request: Callable[[], None]) -> None:
    """The sender calls `_send_keyframe()` on PLI/FIR from its remote peer."""
    sender._send_keyframe = on_request  # type: ignore[method-assign]


async def request_keyframe_upstream(receiver: RTCRtpReceiver) -> None:
    """PLI for each media SSRC the receiver has seen (not its RTX SSRCs)."""
    rtx_ssrcs = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    for ssrc in list(streams):
        if ssrc not in rtx_ssrcs:
            await receiver._send_rtcp_pli(ssrc)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def narrow_codecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """After setRemoteDescription(offer): the answer will list only `codecs`."""
    transceiver._codecs = codecs


def take_dtls_server_role(transceiver: RTCRtpTransceiver) -> None:
    """Answer `a=setup:passive` when the offer said actpass. WHIP clients built
    on GStreamer (1.22) present an RSA certificate, while aiortc as DTLS client
    offers only ECDSA suites: with us as client the handshake fails ("no shared
    cipher"); with us as server it works."""
    dtls = transceiver.receiver.transport
    if dtls._role == "auto":
        dtls._set_role("server")


def restrict_host_candidates(addresses: list[str]) -> None:
    """Offer host ICE candidates only on `addresses` (process-wide: aioice
    reads its interface list from one module function). aioice never offers
    127.0.0.1 by itself; tests and single-machine setups need exactly that."""
    import aioice.ice

    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [  # type: ignore[assignment]
        a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def on_receiver_reports(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` whenever the remote peer reports on this sender's stream
    (an RTCP RR or SR report block for its SSRC): proof the viewer is alive and
    receiving, which metering requires."""
    from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket) and any(
                report.ssrc == sender._ssrc for report in packet.reports):
            callback()
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


def enlarge_receive_buffers(transceivers: Iterable[RTCRtpTransceiver], size: int) -> None:
    """Give the ICE sockets of a publisher a large kernel receive buffer: when
    the worker is busy for a moment, the kernel otherwise drops the incoming
    media — and with it ICE consent checks, which ends the stream for everyone."""
    import socket

    for transceiver in transceivers:
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        for protocol in connection._protocols:
            sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
