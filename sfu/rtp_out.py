"""What differs per viewer in a forwarded RTP stream, and nothing else.

A stream's frames are packetized once (`PacketizedFrame`); each viewer's
`RtpWriter` only puts its own 12-byte header (SSRC, sequence number,
timestamp origin, payload type) and header extensions (MID, abs-send-time) in
front of the shared payloads. Sequence numbers stay contiguous for a viewer
even when it skips frames (a late join, a drop to the next keyframe), so the
viewer never NACKs what it was never meant to get; `stream_index` maps a
NACKed sequence number back to the stream's packet history.

Pure logic: no sockets, no aiortc objects."""

from __future__ import annotations

import random
import struct
import time
from dataclasses import dataclass, field

from sfu.twcc import TransportSequencer

HEADER = struct.Struct("!BBHII")
RTX_OSN = struct.Struct("!H")
TWCC_SEQ = struct.Struct("!H")
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)


@dataclass(slots=True)
class PacketizedFrame:
    """One encoded frame of a stream, cut into RTP payloads once."""

    payloads: list[bytes]
    timestamp: int  # the stream's continuous RTP timestamp
    keyframe: bool
    first_index: int  # the stream's packet index of payloads[0]
    size: int  # encoded bytes

    @property
    def end_index(self) -> int:
        return self.first_index + len(self.payloads)


def ntp_now() -> int:
    """64-bit NTP time of now (aiortc's clock builds a datetime per call)."""
    return int((time.time() + NTP_EPOCH_OFFSET) * (1 << 32))


def abs_send_time(ntp: int) -> bytes:
    """The abs-send-time extension's 24-bit 6.18 fixed-point seconds."""
    return ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")


def random_sequence_number() -> int:
    """In the lower half of the range, as aiortc does (an early wrap breaks
    some SRTP receivers)."""
    return random.getrandbits(16) % 32768


@dataclass(slots=True)
class Extensions:
    """The one-byte header extensions a viewer negotiated (RFC 8285): MID,
    abs-send-time and the transport-wide sequence number (TWCC), in that order."""

    mid_id: int | None = None
    mid: str | None = None
    abs_send_time_id: int | None = None
    transport_cc_id: int | None = None
    _head: bytes = b""
    _twcc: bytes = b""
    _tail: bytes = b""

    def __post_init__(self) -> None:
        elements = b""
        if self.mid_id and self.mid:
            value = self.mid.encode()
            elements += bytes([(self.mid_id << 4) | (len(value) - 1)]) + value
        if self.abs_send_time_id:
            elements += bytes([(self.abs_send_time_id << 4) | 2])
        if self.transport_cc_id:
            self._twcc = bytes([(self.transport_cc_id << 4) | 1])
        length = (len(elements) + (3 if self.abs_send_time_id else 0)
                  + (3 if self.transport_cc_id else 0))
        if not length:
            return
        padding = -length % 4
        self._head = struct.pack("!HH", 0xBEDE, (length + padding) // 4) + elements
        self._tail = b"\x00" * padding

    def block(self, send_time: bytes, transport_seq: int = 0) -> bytes:
        """The extension block for packets sent now (`send_time` from
        `abs_send_time`; `transport_seq` when TWCC is negotiated); empty when
        the viewer negotiated none."""
        if not self._head:
            return b""
        block = self._head + send_time if self.abs_send_time_id else self._head
        if self._twcc:
            block += self._twcc + TWCC_SEQ.pack(transport_seq)
        return block + self._tail


@dataclass(slots=True)
class RtpWriter:
    """One viewer's view of one forwarded stream."""

    ssrc: int
    payload_type: int
    extensions: Extensions = field(default_factory=Extensions)
    rtx_payload_type: int | None = None
    rtx_ssrc: int = 0
    next_seq: int = field(default_factory=random_sequence_number)
    timestamp_origin: int = field(default_factory=lambda: random.getrandbits(32))
    rtx_seq: int = field(default_factory=random_sequence_number)
    # the viewer transport's transport-wide sequence numbers, when it negotiated TWCC
    transport: TransportSequencer | None = None
    packets: int = 0
    octets: int = 0  # payload bytes, as RTCP SR counts them
    last_timestamp: int = 0
    _next_index: int = -1  # the stream index that would follow the last one sent
    _epoch_start: int = 0  # first stream index since the last skip

    def frame(self, frame: PacketizedFrame, send_time: bytes, sent_us: int = 0) -> list[bytes]:
        """The RTP packets of `frame` for this viewer, in order (`sent_us`:
        now, what TWCC feedback is measured against)."""
        if frame.first_index != self._next_index:  # first frame, or frames skipped
            self._epoch_start = frame.first_index
        if self.transport is not None and self.extensions.transport_cc_id:
            return self._frame_with_transport_seqs(frame, send_time, sent_us)
        ext = self.extensions.block(send_time)
        first = 0x90 if ext else 0x80
        timestamp = (frame.timestamp + self.timestamp_origin) & 0xFFFFFFFF
        seq, pt, ssrc = self.next_seq, self.payload_type, self.ssrc
        last = len(frame.payloads) - 1
        pack = HEADER.pack
        out = []
        for i, payload in enumerate(frame.payloads):
            out.append(pack(first, pt | 0x80 if i == last else pt, seq, timestamp, ssrc)
                       + ext + payload)
            seq = (seq + 1) & 0xFFFF
        return self._sent(frame, out, seq, timestamp)

    def _frame_with_transport_seqs(self, frame: PacketizedFrame, send_time: bytes,
                                   sent_us: int) -> list[bytes]:
        """As `frame`, each packet with its own transport-wide sequence number."""
        assert self.transport is not None
        take, block = self.transport.take, self.extensions.block
        timestamp = (frame.timestamp + self.timestamp_origin) & 0xFFFFFFFF
        seq, pt, ssrc = self.next_seq, self.payload_type, self.ssrc
        last = len(frame.payloads) - 1
        pack = HEADER.pack
        out = []
        for i, payload in enumerate(frame.payloads):
            out.append(pack(0x90, pt | 0x80 if i == last else pt, seq, timestamp, ssrc)
                       + block(send_time, take(sent_us)) + payload)
            seq = (seq + 1) & 0xFFFF
        return self._sent(frame, out, seq, timestamp)

    def _sent(self, frame: PacketizedFrame, out: list[bytes], next_seq: int,
              timestamp: int) -> list[bytes]:
        self.next_seq = next_seq
        self._next_index = frame.end_index
        self.packets += len(out)
        self.octets += frame.size
        self.last_timestamp = timestamp
        return out

    def stream_index(self, seq: int) -> int | None:
        """The stream packet index this viewer sent as `seq`, if it is one
        of the packets sent since its last skip."""
        if self._next_index < 0:
            return None
        back = (self.next_seq - seq) & 0xFFFF  # 1 = the last packet sent
        index = self._next_index - back
        if back == 0 or index < self._epoch_start:
            return None
        return index

    def retransmission(self, seq: int, frame: PacketizedFrame, index: int,
                       send_time: bytes, sent_us: int = 0) -> bytes:
        """Packet `seq` again: wrapped in RTX (RFC 4588) when negotiated,
        else the same packet."""
        i = index - frame.first_index
        payload = frame.payloads[i]
        marker = 0x80 if i == len(frame.payloads) - 1 else 0
        transport_seq = self.transport.take(sent_us) if self.transport is not None else 0
        ext = self.extensions.block(send_time, transport_seq)
        first = 0x90 if ext else 0x80
        timestamp = (frame.timestamp + self.timestamp_origin) & 0xFFFFFFFF
        if self.rtx_payload_type is None:
            return HEADER.pack(first, marker | self.payload_type, seq, timestamp,
                               self.ssrc) + ext + payload
        rtx_seq, self.rtx_seq = self.rtx_seq, (self.rtx_seq + 1) & 0xFFFF
        return (HEADER.pack(first, marker | self.rtx_payload_type, rtx_seq, timestamp,
                            self.rtx_ssrc) + ext + RTX_OSN.pack(seq) + payload)
