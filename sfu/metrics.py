"""Prometheus metrics of an SFU worker: what an operator watches."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES_FORWARDED = Counter(
    "vilokanam_sfu_frames_forwarded_total",
    "Encoded frames sent to viewers (one per viewer per frame).", ["kind"])
BYTES_FORWARDED = Counter(
    "vilokanam_sfu_bytes_forwarded_total",
    "Bytes of encoded frames sent to viewers.", ["kind"])
PACKETS_FORWARDED = Counter(
    "vilokanam_sfu_packets_forwarded_total",
    "RTP packets sent to viewers, retransmissions not included.", ["kind"])
RETRANSMISSIONS = Counter(
    "vilokanam_sfu_retransmissions_total",
    "Packets sent again after a viewer's NACK (RTX when negotiated).", ["kind"])
NACK_MISSES = Counter(
    "vilokanam_sfu_nack_misses_total",
    "NACKed packets no longer in the stream's history (or never sent to that viewer).",
    ["kind"])
QUEUE_DROPS = Counter(
    "vilokanam_sfu_viewer_queue_drops_total",
    "Frames dropped because a viewer's queue was full.", ["kind"])
KEYFRAME_REQUESTS = Counter(
    "vilokanam_sfu_keyframe_requests_total",
    "Keyframe requests (viewer PLI/FIR, joins, overflows) before throttling.")
KEYFRAME_REQUESTS_SENT = Counter(
    "vilokanam_sfu_keyframe_requests_sent_total", "PLIs sent upstream to publishers.")
LIVE_STREAMS = Gauge("vilokanam_sfu_live_streams", "Streams with a publisher on this worker.")
VIEWERS = Gauge("vilokanam_sfu_viewers", "Viewer peer connections on this worker.")
PEER_CONNECTIONS = Gauge("vilokanam_sfu_peer_connections", "Open peer connections.")
ADMISSIONS_REFUSED = Counter(
    "vilokanam_sfu_admissions_refused_total",
    "Peer connections refused: `capacity` (VILOKANAM_SFU_CAPACITY) or `load` (CPU / loop lag).",
    ["reason"])
SEND_ERRORS = Counter(
    "vilokanam_sfu_send_errors_total",
    "Frames to a viewer the kernel refused to send (e.g. ENOBUFS); the viewer stays.", ["kind"])
RELAYS = Gauge(
    "vilokanam_sfu_relays",
    "Cascade relays: `out` feeds this worker sends to edges, `in` the feeds its edge streams "
    "receive (one per stream, however many viewers).", ["direction"])
TWCC_FEEDBACK = Counter(
    "vilokanam_sfu_twcc_feedback_total",
    "Transport-wide congestion control feedback: `in` from viewers (parsed), `in_unreadable`, "
    "`out` sent to publishers.", ["direction"])
TWCC_PACKETS = Counter(
    "vilokanam_sfu_twcc_packets_total",
    "Packets to viewers their TWCC feedback reports `received` or `lost`.", ["result"])
TWCC_QUEUING_DELAY = Histogram(
    "vilokanam_sfu_twcc_queuing_delay_seconds",
    "A viewer's queuing delay after each of its TWCC feedbacks (one-way delay over its minimum).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
TWCC_SKIPS = Counter(
    "vilokanam_sfu_twcc_skips_total",
    "Viewers whose TWCC queuing delay said they fell behind: their video skipped to the next "
    "keyframe.")
