"""Frames counted from RTP headers: a load-generator shortcut for viewers
that must be cheap (bench/viewer_pool.py `--counting rtp`).

A tapped aiortc receiver (sfu.aiortc_hooks.tap_receiver) still runs, per
packet, the remote bitrate estimator, a `datetime` for its active-SSRC
table, the VP8 depayloader and the jitter buffer before it hands over an
assembled frame. A hundred such viewers on the cores the SFU workers use
measure the load generator, not the server. `count_from_rtp` replaces the
receiver's per-packet handler with the part a viewer owes the sender:

- the per-SSRC statistics its RTCP receiver reports are made of (the
  worker's metering and an edge's relay liveness need those reports);
- RTX unwrapping and NACKs for the missing sequence numbers (so loss is
  repaired as before);

and counts a video frame when the packet carrying its marker bit (the last of
a frame) arrives, an audio frame per packet (Opus: one frame per packet). A
timestamp at or behind the last counted one (a retransmitted marker, a
reordered packet) is not counted twice. What it gives up: a frame whose
marker packet was lost and never repaired is not counted, where the jitter
buffer would not have assembled it either; no PLI when the jitter buffer
would have asked for one.

Validated against the assembled-frame count on the same run (docs/benchmarks.md,
"Cascade and overload")."""

from __future__ import annotations

from typing import Any, Protocol

from aiortc import RTCRtpReceiver
from aiortc.codecs import is_rtx
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket, unwrap_rtx

HALF = 2**31  # RTP timestamps compare in serial-number arithmetic


class TimestampSink(Protocol):
    def on_timestamp(self, timestamp: int) -> None: ...


class _Newest:
    """Passes on each RTP timestamp newer than the last one it passed."""

    def __init__(self, sink: TimestampSink) -> None:
        self._sink = sink
        self._last: int | None = None

    def __call__(self, timestamp: int) -> None:
        if self._last is not None and not 0 < (timestamp - self._last) % 2**32 < HALF:
            return
        self._last = timestamp
        self._sink.on_timestamp(timestamp)


def count_from_rtp(receiver: RTCRtpReceiver, sink: TimestampSink, kind: str) -> None:
    """From now on, `receiver` keeps only its receiver-report statistics and
    NACKs, and passes each new frame's RTP timestamp to `sink`."""
    private = "_RTCRtpReceiver__"
    newest: dict[int, _Newest] = {}  # per SSRC: RTP timestamps compare within one
    video = kind == "video"

    async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        codecs: dict[int, Any] = getattr(receiver, private + "codecs")
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        streams: dict[int, StreamStatistics] = getattr(receiver, private + "remote_streams")
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        if is_rtx(codec):
            original = getattr(receiver, private + "rtx_ssrc").get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if (original is None or len(packet.payload) < 2 or not isinstance(apt, int)
                    or apt not in codecs):
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original)
        nack = getattr(receiver, private + "nack_generator")
        if nack is not None and nack.add(packet):
            await receiver._send_rtcp_nack(packet.ssrc, sorted(nack.missing))
        if packet.marker or not video:
            newest.setdefault(packet.ssrc, _Newest(sink))(packet.timestamp)

    receiver._handle_rtp_packet = handle_rtp  # type: ignore[method-assign]
