"""The lean viewer: media counted from clear RTP headers at the socket, a
load-generator shortcut for viewers that must cost the machine almost
nothing (bench/viewer_pool.py `--counting raw`).

Even counting from RTP headers (bench/rtp_frames.py), an aiortc viewer pays
per packet for aioice's STUN parse attempt and its queue, a coroutine resume
in the DTLS transport's loop, SRTP unprotect, `RtpPacket.parse` and the RTP
router: about 3 % of a core per viewer, so a hundred of them starve beside
the SFU workers on two cores, their ICE consent checks time out and their
connections expire (docs/benchmarks.md, "Cascade and overload").

`LeanMedia` keeps aiortc for everything a real client does up to media: the
offer/answer, ICE, the DTLS handshake, SRTP keys. Installed on the viewer's
ICE connection (each aioice `StunProtocol.datagram_received`), it takes
every RTP datagram (first byte 0x80–0xBF, second byte not an RTCP type) off
the path before anything else sees it and reads its header, which SRTP does
not encrypt (`struct.unpack_from`: marker, payload type, sequence number,
timestamp, SSRC):

- the receiver that negotiated the payload type gets the packet in its
  per-SSRC `StreamStatistics` (what its RTCP loop makes receiver reports
  of: highest sequence number, loss, jitter), so aiortc still sends its RRs
  through SRTCP as before — a worker's metering ticks a viewer only with an
  RR in the last 5 s, an edge's relay liveness needs them;
- a video frame is counted when the packet with its marker bit arrives, an
  audio frame per packet, each once (`_Newest`, per SSRC);

and the datagram is dropped: no SRTP unprotect, no queue, no coroutine.
STUN (consent checks), DTLS and RTCP (sender reports, the worker's PLIs)
take the original path unchanged.

What it gives up, against a real client: no SRTP authentication check on
media (a forged or corrupted packet is counted); no NACKs, so a lost packet
is not repaired (a frame whose marker packet was lost is not counted); no
RTX unwrapping (the RTX payload, whose first bytes name the original
sequence number, is encrypted; without NACKs the worker sends none); no
REMB and no PLI from the viewer. The frame rate it measures is the rate
the worker delivered marker packets, which is what the cascade asks.

Validated against `--counting assembled` on the same run
(docs/benchmarks.md, "Cascade and overload")."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.codecs import is_rtx
from aiortc.rtcrtpreceiver import StreamStatistics

from bench.rtp_frames import TimestampSink, _Newest

RTP_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
RTCP_TYPES = range(192, 224)  # RFC 5761: the second byte of RTCP multiplexed with RTP


class _Header:
    """What `StreamStatistics.add` reads of a packet; one reused instance."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0


@dataclass
class _Route:
    """Where one payload type's packets go: the statistics of the receiver
    that negotiated it, and (not for RTX) the frame count."""

    streams: dict[int, StreamStatistics]  # the receiver's own, per SSRC
    clock_rate: int
    sink: TimestampSink | None  # None: RTX, statistics only
    video: bool
    newest: dict[int, _Newest] = field(default_factory=dict)  # per SSRC


@dataclass
class LeanMedia:
    """Takes RTP datagrams off one viewer's path (see the module docstring)."""

    receivers: dict[str, RTCRtpReceiver]  # kind -> receiver
    sinks: dict[str, TimestampSink]  # kind -> frame count
    routes: dict[int, _Route] = field(default_factory=dict)  # payload type -> route
    taken: int = 0  # RTP datagrams counted and dropped
    passed: int = 0  # datagrams left to aiortc (STUN, DTLS, RTCP, unknown)
    _header: _Header = field(default_factory=_Header)

    def _learn_routes(self) -> None:
        """The payload types the receivers negotiated (aiortc fills their codec
        tables once DTLS is up, so this is read again until they are there)."""
        for kind, receiver in self.receivers.items():
            codecs: dict[int, Any] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
            streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
            for pt, codec in codecs.items():
                if pt not in self.routes:
                    self.routes[pt] = _Route(streams, codec.clockRate,
                                             None if is_rtx(codec) else self.sinks[kind],
                                             kind == "video")

    def take(self, data: bytes) -> bool:
        """Count and drop `data` if it is RTP of a negotiated payload type;
        False leaves it to aiortc."""
        if len(data) < 12 or not 0x80 <= data[0] <= 0xBF or data[1] in RTCP_TYPES:
            self.passed += 1
            return False
        _, second, seq, timestamp, ssrc = RTP_HEADER.unpack_from(data)
        route = self.routes.get(second & 0x7F)
        if route is None:
            self._learn_routes()
            route = self.routes.get(second & 0x7F)
            if route is None:  # not negotiated (yet): aiortc decides
                self.passed += 1
                return False
        self.taken += 1
        stats = route.streams.get(ssrc)
        if stats is None:
            stats = route.streams[ssrc] = StreamStatistics(route.clock_rate)
        header = self._header
        header.sequence_number, header.timestamp = seq, timestamp
        stats.add(header)  # type: ignore[arg-type]
        if route.sink is not None and (second & 0x80 or not route.video):
            newest = route.newest.get(ssrc)
            if newest is None:
                newest = route.newest[ssrc] = _Newest(route.sink)
            newest(timestamp)
        return True


def divert_media(receivers: dict[str, RTCRtpReceiver],
                 sinks: dict[str, TimestampSink]) -> LeanMedia:
    """Install a `LeanMedia` on the receivers' ICE connections (one, when
    BUNDLE is negotiated). Call after the local description is set: the ICE
    gatherers' sockets exist from then on."""
    lean = LeanMedia(receivers, sinks)
    gatherers = {id(r.transport.transport.iceGatherer): r.transport.transport.iceGatherer
                 for r in receivers.values()}
    for gatherer in gatherers.values():
        for protocol in gatherer._connection._protocols:
            protocol.datagram_received = _diverted(lean, protocol.datagram_received)
    return lean


def _diverted(lean: LeanMedia, original: Callable[[Any, Any], None]
              ) -> Callable[[Any, Any], None]:
    def datagram_received(data: Any, addr: Any) -> None:
        if not lean.take(data):
            original(data, addr)
    return datagram_received
