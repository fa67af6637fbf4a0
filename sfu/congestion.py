"""Transport-wide congestion control on a worker's transports (the packet
logic is sfu/twcc.py; the aiortc hooks are in sfu/aiortc_hooks.py).

- `ViewerTransport`: a viewer's transport that negotiated TWCC. Its audio and
  video writers take their transport-wide sequence numbers from one
  `TransportSequencer`; the viewer's feedback feeds a `CongestionMonitor`
  (received / lost, queuing delay: Prometheus and the control API's stream
  info), and when the queuing delay says the viewer fell behind, its video
  skips to the next keyframe — as when its queue here overflows.
- `PublisherFeedback`: a publisher's transport that negotiated TWCC (Chromium
  offers it): the arrival of each transport-wide sequence number is stamped
  as its datagram comes off the socket (before aiortc's queue and per-packet
  coroutines, whose delays Chromium's estimator took for a congested path)
  and sent back as feedback every FEEDBACK_INTERVAL, so the publisher's
  send-side bandwidth estimation has its input."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sfu import metrics
from sfu.twcc import (
    CongestionMonitor,
    FeedbackBuilder,
    FeedbackError,
    TransportSequencer,
    is_transport_feedback,
    parse_feedback,
    split_rtcp,
    transport_sequence,
)
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

FEEDBACK_INTERVAL = 0.1  # s: libwebrtc's receivers send about every 100 ms at video rates
SKIP_COOLDOWN_US = 3_000_000  # after a skip, what queued before it drains first


def now_us() -> int:
    return time.monotonic_ns() // 1000


@dataclass
class ViewerTransport:
    peer_id: str
    sequencer: TransportSequencer = field(default_factory=TransportSequencer)
    monitor: CongestionMonitor = field(default_factory=CongestionMonitor)
    # the video tracks on this transport: each drops to its next keyframe
    skip_to_keyframe: list[Callable[[], None]] = field(default_factory=list)
    skips: int = 0
    _skipped_at_us: int | None = None

    def on_rtcp(self, data: bytes) -> None:
        """A compound RTCP packet from the viewer (decrypted)."""
        for packet in split_rtcp(data):
            if not is_transport_feedback(packet):
                continue
            try:
                feedback = parse_feedback(packet)
            except FeedbackError:
                metrics.TWCC_FEEDBACK.labels("in_unreadable").inc()
                continue
            metrics.TWCC_FEEDBACK.labels("in").inc()
            self.feedback(feedback, now_us())

    def feedback(self, feedback: Any, now: int) -> None:
        monitor = self.monitor
        received, lost = monitor.received, monitor.lost
        monitor.feedback(feedback, self.sequencer, now)
        metrics.TWCC_PACKETS.labels("received").inc(monitor.received - received)
        metrics.TWCC_PACKETS.labels("lost").inc(monitor.lost - lost)
        metrics.TWCC_QUEUING_DELAY.observe(monitor.queuing_delay_us / 1e6)
        cooling = (self._skipped_at_us is not None
                   and now - self._skipped_at_us < SKIP_COOLDOWN_US)
        if monitor.behind() and not cooling and self.skip_to_keyframe:
            self.skips += 1
            self._skipped_at_us = now
            metrics.TWCC_SKIPS.inc()
            log_event(log, "viewer.fell_behind", peer_id=self.peer_id,
                      queuing_delay_ms=monitor.queuing_delay_us // 1000,
                      received=monitor.received, lost=monitor.lost)
            for skip in self.skip_to_keyframe:
                skip()
            monitor.restart_trend()

    def info(self) -> dict[str, int | float]:
        monitor = self.monitor
        return {"received": monitor.received, "lost": monitor.lost,
                "feedbacks": monitor.feedbacks,
                "queuing_delay_ms": monitor.queuing_delay_us // 1000,
                "loss_fraction": round(monitor.loss_fraction, 4), "skips": self.skips}


@dataclass
class PublisherFeedback:
    """`send` puts one RTCP packet on the publisher's transport (False: not
    connected); `sender_ssrc` is read at each flush (aiortc sets its
    receivers' RTCP SSRC with the local description)."""

    extension_id: int
    send: Callable[[bytes], Awaitable[bool]]
    sender_ssrc: Callable[[], int]
    builder: FeedbackBuilder = field(default_factory=lambda: FeedbackBuilder(0))
    sent: int = 0

    def datagram(self, data: bytes) -> None:
        """A datagram from the publisher, as it came off the socket."""
        seq = transport_sequence(data, self.extension_id)
        if seq is None:
            return
        if not self.builder.media_ssrc:
            self.builder.media_ssrc = int.from_bytes(data[8:12], "big")
        self.builder.received(seq, now_us())

    def info(self) -> dict[str, int | float]:
        return {"feedbacks_sent": self.sent, "reported_received": self.builder.reported_received,
                "reported_lost": self.builder.reported_lost}

    async def flush(self) -> None:
        """The feedback for what arrived since the last flush."""
        self.builder.sender_ssrc = self.sender_ssrc()
        for packet in self.builder.build():
            if await self.send(packet):
                self.sent += 1
                metrics.TWCC_FEEDBACK.labels("out").inc()
