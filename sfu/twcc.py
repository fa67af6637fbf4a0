"""Transport-wide congestion control feedback (TWCC,
draft-holmer-rmcat-transport-wide-cc-extensions-01): the packet format, both
directions, and what the SFU learns from it.

- `encode_feedback` / `parse_feedback`: the RTCP transport feedback message
  (PT 205 RTPFB, FMT 15): a base sequence number, the status of each packet
  from it on (run-length and status-vector chunks), and receive deltas in
  250 µs ticks from a 24-bit reference time in 64 ms units.
- `FeedbackBuilder`: the receiving end (a publisher's transport): arrivals of
  transport-wide sequence numbers in, feedback packets out, so the publisher's
  send-side bandwidth estimation (Chromium's) has what it needs.
- `TransportSequencer` + `CongestionMonitor`: the sending end (a viewer's
  transport): one transport-wide sequence number per packet across the
  transport's audio and video, the send time of each, and from the viewer's
  feedback its received / lost counts and queuing delay (how far the one-way
  delay has grown over its minimum), which tells when the viewer fell behind.

Pure logic: no sockets, no aiortc objects, no clock of its own (times come in
as microseconds)."""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RTCP_RTPFB = 205
FMT_TRANSPORT_CC = 15
TICK_US = 250  # a receive delta's unit
REFERENCE_US = 64_000  # the reference time's unit
MAX_STATUSES = 1000  # per feedback packet: it stays well inside one MTU
MAX_RUN = 0x1FFF

NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2

_HEAD = struct.Struct("!BBHIIHHI")  # common header, SSRCs, base, count, ref time + fb count


class FeedbackError(ValueError):
    """Not a transport feedback message this module can read."""


@dataclass(slots=True)
class Feedback:
    """One transport feedback message. `arrivals[i]` belongs to sequence
    number `(base_seq + i) & 0xFFFF`: its arrival time in µs on the receiver's
    clock (reference time plus the deltas), None when it was not received."""

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int  # 64 ms units, 24 bits
    fb_count: int  # 8 bits, one more per feedback sent
    arrivals: list[int | None]

    def packets(self) -> list[tuple[int, int | None]]:
        """(sequence number, arrival µs or None) for each packet reported."""
        return [((self.base_seq + i) & 0xFFFF, t) for i, t in enumerate(self.arrivals)]


class SequenceUnwrapper:
    """16-bit sequence numbers onto a line that does not wrap: each one is
    taken as the nearest to the previous one (RFC 3550 style)."""

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, seq: int) -> int:
        seq &= 0xFFFF
        if self._last is None:
            self._last = seq
            return seq
        delta = ((seq - self._last + 0x8000) & 0xFFFF) - 0x8000
        value = self._last + delta
        if value > self._last:
            self._last = value
        return value


# -- the message --------------------------------------------------------------------------


def encode_feedback(sender_ssrc: int, media_ssrc: int, base_seq: int, fb_count: int,
                    arrivals: list[int | None]) -> bytes:
    """The transport feedback message for packets `base_seq`, `base_seq + 1`,
    ... with these arrival times (µs, None: lost). The first arrival must be a
    received packet (it sets the reference time); deltas beyond the 16-bit
    signed range cannot be said in one message (`split_arrivals` cuts there)."""
    if not arrivals or arrivals[0] is None:
        raise ValueError("a feedback starts at a received packet")
    if len(arrivals) > 0xFFFF:
        raise ValueError("too many packets for one feedback")
    reference = arrivals[0] // REFERENCE_US
    previous = reference * REFERENCE_US // TICK_US
    statuses: list[int] = []
    deltas = bytearray()
    for arrival in arrivals:
        if arrival is None:
            statuses.append(NOT_RECEIVED)
            continue
        ticks = arrival // TICK_US
        delta, previous = ticks - previous, ticks
        if 0 <= delta <= 0xFF:
            statuses.append(SMALL_DELTA)
            deltas.append(delta)
        elif -0x8000 <= delta <= 0x7FFF:
            statuses.append(LARGE_DELTA)
            deltas += struct.pack("!h", delta)
        else:
            raise ValueError("a receive delta beyond 8 s: split the feedback there")
    chunks = _chunks(statuses)
    body = (struct.pack("!IIHH", sender_ssrc, media_ssrc, base_seq & 0xFFFF, len(statuses))
            + struct.pack("!I", ((reference & 0xFFFFFF) << 8) | (fb_count & 0xFF))
            + b"".join(struct.pack("!H", c) for c in chunks) + bytes(deltas))
    padding = -len(body) % 4
    if padding:  # RTCP padding: the last octet counts the padding octets
        body += b"\x00" * (padding - 1) + bytes([padding])
    first = 0x80 | (0x20 if padding else 0) | FMT_TRANSPORT_CC
    return struct.pack("!BBH", first, RTCP_RTPFB, (len(body) + 4) // 4 - 1) + body


def _chunks(statuses: list[int]) -> list[int]:
    """Run-length chunks for runs of 7 or more, two-bit status vectors
    (7 symbols) for the rest."""
    chunks = []
    i, n = 0, len(statuses)
    while i < n:
        run = 1
        while i + run < n and statuses[i + run] == statuses[i] and run < MAX_RUN:
            run += 1
        if run >= 7:
            chunks.append((statuses[i] << 13) | run)
            i += run
            continue
        symbols = statuses[i:i + 7]
        chunk = 0xC000
        for k, status in enumerate(symbols):
            chunk |= status << (12 - 2 * k)
        chunks.append(chunk)
        i += len(symbols)
    return chunks


def parse_feedback(packet: bytes) -> Feedback:
    """One transport feedback message (its RTCP header included)."""
    if len(packet) < 20:
        raise FeedbackError("too short for a transport feedback message")
    first, pt, length = struct.unpack_from("!BBH", packet)
    if first >> 6 != 2 or pt != RTCP_RTPFB or first & 0x1F != FMT_TRANSPORT_CC:
        raise FeedbackError("not a transport feedback message")
    end = (length + 1) * 4
    if end > len(packet):
        raise FeedbackError("the length field runs past the packet")
    if first & 0x20:
        end -= packet[end - 1]
    _, _, _, sender_ssrc, media_ssrc, base_seq, count, ref = _HEAD.unpack_from(packet)
    pos = 20
    statuses: list[int] = []
    while len(statuses) < count:
        if pos + 2 > end:
            raise FeedbackError("the packet ends inside its status chunks")
        (chunk,) = struct.unpack_from("!H", packet, pos)
        pos += 2
        if not chunk & 0x8000:  # run length
            statuses += [(chunk >> 13) & 0x3] * (chunk & MAX_RUN)
        elif chunk & 0x4000:  # seven two-bit symbols
            statuses += [(chunk >> (12 - 2 * k)) & 0x3 for k in range(7)]
        else:  # fourteen one-bit symbols
            statuses += [(chunk >> (13 - k)) & 0x1 for k in range(14)]
    del statuses[count:]
    reference = ref >> 8
    if reference & 0x800000:  # signed 24 bits
        reference -= 0x1000000
    ticks = reference * REFERENCE_US // TICK_US
    arrivals: list[int | None] = []
    for status in statuses:
        if status == NOT_RECEIVED:
            arrivals.append(None)
            continue
        if status == SMALL_DELTA:
            if pos + 1 > end:
                raise FeedbackError("the packet ends inside its deltas")
            ticks += packet[pos]
            pos += 1
        elif status == LARGE_DELTA:
            if pos + 2 > end:
                raise FeedbackError("the packet ends inside its deltas")
            ticks += struct.unpack_from("!h", packet, pos)[0]
            pos += 2
        else:
            raise FeedbackError("a reserved packet status symbol")
        arrivals.append(ticks * TICK_US)
    return Feedback(sender_ssrc, media_ssrc, base_seq, reference & 0xFFFFFF, ref & 0xFF,
                    arrivals)


def split_rtcp(data: bytes) -> list[bytes]:
    """A compound RTCP packet's packets, each with its header; stops at the
    first that does not fit (the rest is not RTCP this can read)."""
    packets = []
    pos = 0
    while pos + 4 <= len(data):
        end = pos + (int.from_bytes(data[pos + 2:pos + 4], "big") + 1) * 4
        if end > len(data):
            break
        packets.append(data[pos:end])
        pos = end
    return packets


def is_transport_feedback(packet: bytes) -> bool:
    return len(packet) >= 2 and packet[1] == RTCP_RTPFB and packet[0] & 0x1F == FMT_TRANSPORT_CC


# -- the receiving end: a publisher's transport ------------------------------------------


def transport_sequence(datagram: bytes, extension_id: int) -> int | None:
    """The transport-wide sequence number of an SRTP packet as it comes off
    the socket (SRTP leaves the RTP header and its extensions in the clear),
    or None: not RTP, or without that extension. One-byte (RFC 8285 0xBEDE)
    and two-byte (0x100x) extension headers."""
    if len(datagram) < 12 or datagram[0] >> 6 != 2 or 192 <= datagram[1] <= 223:
        return None  # not RTP (RTCP, STUN, DTLS)
    if not datagram[0] & 0x10:
        return None
    start = 12 + 4 * (datagram[0] & 0x0F)
    if start + 4 > len(datagram):
        return None
    profile = int.from_bytes(datagram[start:start + 2], "big")
    end = start + 4 + 4 * int.from_bytes(datagram[start + 2:start + 4], "big")
    if end > len(datagram):
        return None
    pos = start + 4
    if profile == 0xBEDE:
        while pos < end:
            byte = datagram[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            element, length = byte >> 4, (byte & 0x0F) + 1
            if element == 15:
                return None
            if element == extension_id and length == 2 and pos + 3 <= end:
                return int.from_bytes(datagram[pos + 1:pos + 3], "big")
            pos += 1 + length
    elif profile >> 4 == 0x100:
        while pos + 2 <= end:
            element, length = datagram[pos], datagram[pos + 1]
            if element == 0:
                pos += 1
                continue
            if element == extension_id and length == 2 and pos + 4 <= end:
                return int.from_bytes(datagram[pos + 2:pos + 4], "big")
            pos += 2 + length
    return None


@dataclass
class FeedbackBuilder:
    """Arrivals of a publisher's transport-wide sequence numbers, and the
    feedback that reports them: every packet from the first not yet
    reported to the newest received, each exactly once (a packet that arrives
    after it was reported lost stays lost, as in libwebrtc's older proxy)."""

    sender_ssrc: int
    media_ssrc: int = 0
    _unwrapper: SequenceUnwrapper = field(default_factory=SequenceUnwrapper)
    _arrivals: dict[int, int] = field(default_factory=dict)
    _next: int | None = None  # the first sequence number not reported yet
    _fb_count: int = 0
    reported_received: int = 0
    reported_lost: int = 0

    def received(self, seq: int, arrival_us: int) -> None:
        value = self._unwrapper.unwrap(seq)
        if self._next is not None and value < self._next:
            return  # already reported
        self._arrivals.setdefault(value, arrival_us)

    def build(self) -> list[bytes]:
        """The feedback for what arrived since the last call (none: [])."""
        if not self._arrivals:
            return []
        newest = max(self._arrivals)
        start = min(self._arrivals) if self._next is None else self._next
        packets: list[bytes] = []
        for base, arrivals in split_arrivals(start, [self._arrivals.get(s)
                                                     for s in range(start, newest + 1)]):
            lost = arrivals.count(None)
            self.reported_lost += lost
            self.reported_received += len(arrivals) - lost
            packets.append(encode_feedback(self.sender_ssrc, self.media_ssrc, base & 0xFFFF,
                                           self._fb_count, arrivals))
            self._fb_count = (self._fb_count + 1) & 0xFF
        self._arrivals.clear()
        self._next = newest + 1
        return packets


def split_arrivals(base: int, arrivals: list[int | None]) -> list[tuple[int, list[int | None]]]:
    """Cut a run of arrivals into pieces one feedback message each can say:
    each starts at a received packet, holds at most MAX_STATUSES, and no delta
    leaves the 16-bit range. Packets before the first received one are not
    reported (they are lost, or will be in the next piece)."""
    pieces: list[tuple[int, list[int | None]]] = []
    current: list[int | None] = []
    start = base
    previous = 0
    for offset, arrival in enumerate(arrivals):
        if not current:
            if arrival is None:
                continue
            start, current = base + offset, [arrival]
            previous = arrival // TICK_US
            continue
        fits = len(current) < MAX_STATUSES
        if arrival is not None and fits:
            delta = arrival // TICK_US - previous
            fits = -0x8000 <= delta <= 0x7FFF
        if not fits:
            pieces.append((start, _trim(current)))
            current = []
            if arrival is not None:
                start, current = base + offset, [arrival]
                previous = arrival // TICK_US
            continue
        current.append(arrival)
        if arrival is not None:
            previous = arrival // TICK_US
    if current:
        pieces.append((start, _trim(current)))
    return pieces


def _trim(arrivals: list[int | None]) -> list[int | None]:
    while arrivals and arrivals[-1] is None:
        arrivals.pop()
    return arrivals


# -- the sending end: a viewer's transport -----------------------------------------------


class TransportSequencer:
    """One viewer transport's transport-wide sequence numbers (one counter
    across its audio and video) and when each packet was sent, for as long as
    feedback about it can come (the last HISTORY packets)."""

    HISTORY = 8192

    def __init__(self, start: int = 1) -> None:
        self._next = start & 0xFFFF
        self._sent_us = array("q", [-1]) * self.HISTORY
        self._seqs = array("l", [-1]) * self.HISTORY

    def take(self, sent_us: int) -> int:
        """The next sequence number, for a packet sent at `sent_us`."""
        seq = self._next
        self._next = (seq + 1) & 0xFFFF
        slot = seq % self.HISTORY
        self._sent_us[slot] = sent_us
        self._seqs[slot] = seq
        return seq

    def sent_at(self, seq: int) -> int | None:
        slot = seq % self.HISTORY
        return self._sent_us[slot] if self._seqs[slot] == seq else None


@dataclass
class CongestionMonitor:
    """What a viewer's feedback says about its path: packets received and
    lost, and the queuing delay — the one-way delay (arrival on its clock
    minus our send time) over the lowest seen in the last two windows, which
    grows when packets queue on the way. `behind()` is true when that delay
    is past `behind_us`: the viewer would do better to skip to the next
    keyframe, as it does when its queue here overflows."""

    behind_us: int = 1_000_000
    window_us: int = 10_000_000
    received: int = 0
    lost: int = 0
    feedbacks: int = 0
    queuing_delay_us: int = 0
    _unwrapper: SequenceUnwrapper = field(default_factory=SequenceUnwrapper)
    _reported_through: int = -1
    _min_now: int | None = None
    _min_before: int | None = None
    _window_start: int | None = None
    _smoothed: float | None = None

    def feedback(self, fb: Feedback, sequencer: TransportSequencer, now_us: int) -> None:
        self.feedbacks += 1
        newest_delay: int | None = None
        for seq, arrival in fb.packets():
            value = self._unwrapper.unwrap(seq)
            if value <= self._reported_through:
                continue  # a packet reported before (feedback repeats some)
            self._reported_through = value
            if arrival is None:
                self.lost += 1
                continue
            self.received += 1
            sent = sequencer.sent_at(seq)
            if sent is None:
                continue
            delay = arrival - sent
            self._note_minimum(delay, now_us)
            newest_delay = delay
        if newest_delay is None:
            return
        # smoothed over a few feedbacks: one late burst is not a trend
        self._smoothed = (newest_delay if self._smoothed is None
                          else 0.7 * self._smoothed + 0.3 * newest_delay)
        self.queuing_delay_us = max(0, int(self._smoothed) - self._baseline())

    def _note_minimum(self, delay: int, now_us: int) -> None:
        if self._window_start is None or now_us - self._window_start >= self.window_us:
            self._min_before, self._min_now, self._window_start = self._min_now, None, now_us
        if self._min_now is None or delay < self._min_now:
            self._min_now = delay

    def _baseline(self) -> int:
        values = [v for v in (self._min_now, self._min_before) if v is not None]
        return min(values)

    def behind(self) -> bool:
        return self.queuing_delay_us > self.behind_us

    def restart_trend(self) -> None:
        """After a skip to a keyframe: judge the path afresh (what queued
        before the skip still drains)."""
        self._smoothed = None
        self.queuing_delay_us = 0

    @property
    def loss_fraction(self) -> float:
        total = self.received + self.lost
        return self.lost / total if total else 0.0
