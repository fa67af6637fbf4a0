"""The one place that reaches into aiortc's (and aioice's) internals.

The SFU lives on these, each small and tested:
- a receiver's decoder queue is replaced by a tap, so assembled *encoded*
  frames come to us and nothing is ever decoded; its RTCP sender reports are
  seen on their way in, their RTP timestamps rebased as aiortc rebases the
  frames' (the recorder aligns tracks by them);
- a viewer sender's RTP loop is replaced: it only hands us, once DTLS is up,
  what we need to send RTP ourselves (SSRCs, payload types, header extension
  ids, the SRTP session and the ICE pair), and its RTCP from the viewer (PLI,
  FIR, NACK, receiver reports) comes to us; aiortc keeps the SDP, DTLS, and
  the sender reports (fed our counters);
- a PLI is sent upstream to the publisher for its media SSRCs;
- a transceiver's negotiated codecs are narrowed after setRemoteDescription,
  and the DTLS server role is taken when the offer leaves it open;
- transport-wide congestion control (TWCC): the extension and `transport-cc`
  feedback are negotiated when offered, a viewer transport's raw RTCP is seen
  before aiortc's parser (which cannot read transport feedback), a
  publisher's datagrams are seen as they come off the socket (their arrival
  times), and our feedback goes out on its transport.
pyproject.toml holds aiortc to 1.16.x; tests/test_aiortc_hooks.py checks that
every internal these hooks touch is where they expect it, so an upgrade that
moves one fails loudly there."""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import socket
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import SRTP_PROFILES
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from sfu.srtp import GcmProtector

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


def tap_receiver(receiver: RTCRtpReceiver, on_frame: FrameHandler,
                 on_sender_report: Callable[[int, int], None] | None = None) -> None:
    """Must run before the receiver starts (i.e. on the `track` event).
    `on_sender_report` gets each sender report's (NTP time, RTP timestamp) for
    the media SSRC (aiortc still handles the report)."""
    receiver._RTCRtpReceiver__decoder_queue = EncodedFrameTap(on_frame)  # type: ignore[attr-defined]
    if on_sender_report is None:
        return
    original = receiver._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        rtx_ssrcs = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
        if isinstance(packet, RtcpSrPacket) and packet.ssrc not in rtx_ssrcs:
            mapped = frame_timestamp(receiver, packet.sender_info.rtp_timestamp)
            if mapped is not None:
                on_sender_report(packet.sender_info.ntp_timestamp, mapped)
        await original(packet)

    receiver._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]


def frame_timestamp(receiver: RTCRtpReceiver, rtp_timestamp: int) -> int | None:
    """An RTP timestamp as the frames the tap gets carry it: aiortc rebases
    them to start at 0 (and unwraps them) before the decoder queue. None
    before the first frame (the origin is not known yet)."""
    mapper = receiver._RTCRtpReceiver__timestamp_mapper  # type: ignore[attr-defined]
    if mapper._origin is None or mapper._last is None:
        return None
    delta = ((rtp_timestamp - mapper._last + 2**31) % 2**32) - 2**31
    return int(mapper._last - mapper._origin + delta)


@dataclass
class SenderWiring:
    """What a viewer's sender negotiated, and how to put datagrams on its wire."""

    codec: RTCRtpCodecParameters
    ssrc: int
    rtx_ssrc: int
    rtx_payload_type: int | None
    mid: str | None
    mid_id: int | None
    abs_send_time_id: int | None
    protect: Callable[[bytes], bytes]  # SRTP
    send: Callable[[bytes], bool]  # one datagram to the nominated ICE pair; False: gone
    sender: RTCRtpSender
    # Several datagrams, all of one size but the last (no longer), in one system
    # call when the kernel can (UDP GSO); False: the pair is gone.
    send_batch: Callable[[list[bytes]], bool] | None = None
    release: Callable[[], None] = lambda: None  # the batch sender's socket
    transport_cc_id: int | None = None  # the transport-wide sequence number's extension id

    def connected(self) -> bool:
        # The private enum, not `.state`: that property formats an Enum per call.
        return bool(self.sender.transport._state is DtlsState.CONNECTED)

    def report_counters(self, ntp: int, rtp_timestamp: int, packets: int, octets: int) -> None:
        """What aiortc's RTCP loop puts in its sender reports (lip sync, stats)."""
        sender: Any = self.sender
        sender._RTCRtpSender__ntp_timestamp = ntp
        sender._RTCRtpSender__rtp_timestamp = rtp_timestamp
        sender._RTCRtpSender__packet_count = packets
        sender._RTCRtpSender__octet_count = octets


@dataclass
class SenderRtcp:
    """Where a viewer's RTCP about one sender goes."""

    keyframe: Callable[[], None]  # PLI / FIR
    nack: Callable[[list[int]], None]  # lost sequence numbers
    report: Callable[[], None]  # an RR/SR report block for our SSRC: the viewer is alive


def take_over_sender(sender: RTCRtpSender, on_started: Callable[[SenderWiring], None],
                     on_stopped: Callable[[], None], rtcp: SenderRtcp) -> None:
    """Replace the sender's per-frame RTP loop (track.recv -> pack -> serialize
    -> SRTP -> send, per viewer) by a wait: when aiortc starts the sender
    (DTLS is connected by then) `on_started` gets the wiring and the SFU sends
    the packets. Must run before the sender starts (right after addTrack)."""
    mangled: Any = sender

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        mangled._RTCRtpSender__rtp_started.set()
        try:
            on_started(_wiring(sender, codec))
            await asyncio.Event().wait()  # until the sender stops (cancelled)
        except asyncio.CancelledError:
            pass
        finally:
            on_stopped()
            mangled._RTCRtpSender__rtp_exited.set()

    original = sender._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            if any(report.ssrc == sender._ssrc for report in packet.reports):
                rtcp.report()
            await original(packet)  # round-trip time and remote stats
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            rtcp.nack(list(packet.lost))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_FIR,
                                                                    RTCP_PSFB_PLI):
            rtcp.keyframe()

    sender._run_rtp = run_rtp  # type: ignore[method-assign]
    sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
    sender._send_keyframe = rtcp.keyframe  # type: ignore[method-assign]


def _wiring(sender: RTCRtpSender, codec: RTCRtpCodecParameters) -> SenderWiring:
    mangled: Any = sender
    ids = mangled._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids
    dtls = sender.transport
    nominated = dtls.transport._connection._nominated  # aioice: component -> pair

    def send(datagram: bytes) -> bool:
        pair = nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return False
        pair.protocol.transport.sendto(datagram, pair.remote_addr)
        return True

    batch = BatchSender(nominated, send)
    fast = _gcm_protector(dtls)
    return SenderWiring(
        codec=codec, ssrc=sender._ssrc, rtx_ssrc=sender._rtx_ssrc,
        rtx_payload_type=mangled._RTCRtpSender__rtx_payload_type,
        mid=mangled._RTCRtpSender__mid, mid_id=ids.mid, abs_send_time_id=ids.abs_send_time,
        protect=fast.protect if fast is not None else dtls._tx_srtp.protect, send=send,
        sender=sender, send_batch=batch.send, release=batch.close,
        transport_cc_id=ids.transport_sequence_number)


def _gcm_protector(dtls: Any) -> GcmProtector | None:
    """Our own SRTP for the session's outbound RTP when it negotiated AES-GCM:
    the keys are exported again from the DTLS session exactly as aiortc's
    `_setup_srtp` does (RFC 5764 4.2), so the two can never disagree."""
    selected = dtls._ssl.get_selected_srtp_profile()
    profile = next((p for p in SRTP_PROFILES if p.openssl_profile == selected), None)
    if profile is None:
        return None
    material = dtls._ssl.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length))
    tx_key = profile.get_key_and_salt(material, 1 if dtls._role == "server" else 0)
    return GcmProtector.for_profile(selected, tx_key)


class BatchSender:
    """A frame's packets to one viewer in one `sendmsg` with UDP_SEGMENT
    (Linux UDP GSO): the kernel cuts the buffer into the datagrams, one system
    call instead of one per packet. Sent on a duplicate of the ICE pair's
    socket descriptor (uvloop's transport has no sendmsg), closed in
    `close()`. Where the kernel refuses GSO, it falls back to one datagram
    at a time, for good."""

    MAX_SEGMENTS = 32  # the kernel takes up to 64 segments of at most 64 KiB in all

    def __init__(self, nominated: dict[int, Any], send_one: Callable[[bytes], bool]) -> None:
        self._nominated = nominated
        self._send_one = send_one
        self._socket: socket.socket | None = None
        self._protocol: Any = None

    def send(self, datagrams: list[bytes]) -> bool:
        global GSO_WORKS
        pair = self._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return False
        if GSO_WORKS and len(datagrams) > 1:
            sock = self._socket_for(pair.protocol)
            size = struct.pack("=H", len(datagrams[0]))
            try:
                for start in range(0, len(datagrams), self.MAX_SEGMENTS):
                    sock.sendmsg([b"".join(datagrams[start:start + self.MAX_SEGMENTS])],
                                 [(socket.SOL_UDP, UDP_SEGMENT, size)], 0, pair.remote_addr)
                return True
            except BlockingIOError:
                return True  # the socket's buffer is full: UDP drops, NACK recovers
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT,
                                     errno.EOPNOTSUPP):
                    raise
                GSO_WORKS = False  # this kernel or device cannot: one at a time from now on
        for datagram in datagrams:
            if not self._send_one(datagram):
                return False
        return True

    def _socket_for(self, protocol: Any) -> socket.socket:
        if self._socket is None or self._protocol is not protocol:
            self.close()
            raw = protocol.transport.get_extra_info("socket")
            self._socket = socket.socket(raw.family, raw.type, fileno=os.dup(raw.fileno()))
            self._socket.setblocking(False)
            self._protocol = protocol
        return self._socket

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self._protocol = None


UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h
GSO_WORKS = sys.platform == "linux"


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


def share_udp_port(transceivers: Iterable[RTCRtpTransceiver],
                   host_candidates: Callable[[Any, int], Any]) -> None:
    """Gather this peer connection's host candidates on the worker's shared
    UDP port (sfu/udp_mux.py) instead of a new socket per connection. Runs
    after setRemoteDescription (the ICE gatherers exist) and before
    setLocalDescription (which gathers)."""
    for transceiver in transceivers:
        connection = transceiver.receiver.transport.transport.iceGatherer._connection

        async def gather(component: int, addresses: list[str], *_ignored: Any,
                         _connection: Any = connection, **_options: Any) -> list[Any]:
            return list(await host_candidates(_connection, component))

        connection.get_component_candidates = gather  # type: ignore[method-assign]


def enlarge_receive_buffers(transceivers: Iterable[RTCRtpTransceiver], size: int) -> None:
    """Give the ICE sockets of a publisher a large kernel receive buffer: when
    the worker is busy for a moment, the kernel otherwise drops the incoming
    media — and with it ICE consent checks, which ends the stream for everyone."""
    for transceiver in transceivers:
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        for protocol in connection._protocols:
            sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
            # never shrink one (the worker's shared port has a larger one already)
            if sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def negotiate_transport_cc(transceiver: RTCRtpTransceiver, offered: Any) -> int | None:
    """After setRemoteDescription(offer) and the codec narrowing: when the
    offer's section (`offered`, aiortc's parsed media description) has the
    transport-wide-cc header extension and its codec `a=rtcp-fb:<pt>
    transport-cc`, the answer negotiates both (aiortc itself knows neither:
    HEADER_EXTENSIONS and its codecs' feedback list lack them, so it would
    drop them). Returns the extension id, or None when not negotiated."""
    from aiortc.rtcrtpparameters import RTCRtcpFeedback

    from sfu.twcc import URI

    extension = next((x for x in offered.rtp.headerExtensions if x.uri == URI), None)
    if extension is None:
        return None
    chosen = [c for c in transceiver._codecs if not c.mimeType.lower().endswith("/rtx")]
    offered_pts = {c.payloadType for c in offered.rtp.codecs
                   if any(fb.type == "transport-cc" for fb in c.rtcpFeedback)}
    if not chosen or any(c.payloadType not in offered_pts for c in chosen):
        return None
    for codec in chosen:
        codec.rtcpFeedback = [*codec.rtcpFeedback, RTCRtcpFeedback(type="transport-cc")]
    transceiver._headerExtensions = [*transceiver._headerExtensions, extension]
    return int(extension.id)


def transport_of(transceiver: RTCRtpTransceiver) -> Any:
    """The DTLS transport a transceiver's media runs on (one for all of a
    peer connection's sections when it bundles)."""
    return transceiver.receiver.transport


def tap_rtcp(dtls: Any, on_rtcp: Callable[[bytes], None]) -> None:
    """Every compound RTCP packet that arrives on the transport, decrypted,
    goes to `on_rtcp` before aiortc routes it: aiortc's parser reads a
    transport feedback message (RTPFB FMT 15) as a NACK list and keeps none
    of its bytes, so the SFU reads those itself (sfu/twcc.py)."""
    original = dtls._handle_rtcp_data

    async def handle_rtcp_data(data: bytes) -> None:
        on_rtcp(data)
        await original(data)

    dtls._handle_rtcp_data = handle_rtcp_data


def tap_datagrams(transceiver: RTCRtpTransceiver, on_datagram: Callable[[bytes], None]) -> None:
    """Every datagram this transceiver's ICE connection receives goes to
    `on_datagram` first, as it comes off the socket (or off the worker's UDP
    mux): the earliest point an arrival time can be taken. Runs after
    setLocalDescription (the connection's sockets exist)."""
    connection = transceiver.receiver.transport.transport.iceGatherer._connection
    for protocol in connection._protocols:
        original = protocol.datagram_received

        def datagram_received(data: bytes, addr: Any, _original: Any = original) -> None:
            on_datagram(data)
            _original(data, addr)

        protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int:
    """The SSRC the receiver's own RTCP (receiver reports, REMB) goes out with;
    0 until aiortc has set it."""
    return int(receiver._RTCRtpReceiver__rtcp_ssrc or 0)  # type: ignore[attr-defined]


async def send_rtcp(dtls: Any, packet: bytes) -> bool:
    """An RTCP packet of ours on the transport (SRTCP-protected); False when
    the transport is not (or no longer) connected."""
    if dtls._state is not DtlsState.CONNECTED:
        return False
    try:
        await dtls._send_rtp(packet)
    except ConnectionError:
        return False
    return True
