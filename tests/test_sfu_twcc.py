"""sfu/twcc.py: the transport feedback message both ways, sequence number
unwrapping, the feedback a publisher gets, and what a viewer's feedback says."""

from __future__ import annotations

import struct

import pytest

from sfu.twcc import (
    CongestionMonitor,
    FeedbackBuilder,
    FeedbackError,
    SequenceUnwrapper,
    TransportSequencer,
    encode_feedback,
    is_transport_feedback,
    parse_feedback,
    split_arrivals,
    split_rtcp,
    transport_sequence,
)


def test_a_feedback_round_trips_with_losses_and_every_delta_size() -> None:
    arrivals: list[int | None] = [
        1_000_000, 1_000_250, None, None, 1_010_000,  # small deltas, two lost
        1_090_000,  # 80 ms: a large delta
        1_080_000,  # reordered: a negative (large) delta
        None, 1_080_500]
    packet = encode_feedback(0x1234, 0x5678, 65530, 7, arrivals)
    assert len(packet) % 4 == 0 and is_transport_feedback(packet)
    fb = parse_feedback(packet)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.fb_count) == (0x1234, 0x5678, 65530, 7)
    assert fb.arrivals == arrivals
    # the sequence numbers wrap past 65535
    assert [seq for seq, _ in fb.packets()] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2]


def test_long_runs_are_run_length_chunks_and_round_trip() -> None:
    arrivals: list[int | None] = [500_000 + 250 * i for i in range(300)]
    arrivals[100:250] = [None] * 150  # a long loss: one run-length chunk
    packet = encode_feedback(1, 2, 10, 0, arrivals)
    # 300 statuses in 3 run-length chunks (received, lost, received) not 43 vectors
    chunks = struct.unpack_from("!3H", packet, 20)
    assert all(not c & 0x8000 for c in chunks)
    assert [c & 0x1FFF for c in chunks] == [100, 150, 50]
    assert parse_feedback(packet).arrivals == arrivals


def test_a_one_bit_status_vector_from_another_sender_is_read() -> None:
    """libwebrtc may send 14 one-bit symbols in a chunk (1 = small delta)."""
    body = struct.pack("!IIHHI", 9, 8, 100, 3, (16 << 8) | 2)  # reference 16 * 64 ms
    chunk = 0x8000 | (0b10100000000000)  # received, lost, received
    body += struct.pack("!H", chunk) + bytes([4, 8]) + b"\x00\x00"
    packet = struct.pack("!BBH", 0x8F, 205, (len(body) + 4) // 4 - 1) + body
    fb = parse_feedback(packet)
    ref = 16 * 64_000
    assert fb.arrivals == [ref + 1000, None, ref + 3000]


def test_broken_feedback_is_refused_with_a_clear_error() -> None:
    good = encode_feedback(1, 2, 0, 0, [64_000, 64_250, 64_500])
    with pytest.raises(FeedbackError):
        parse_feedback(good[:18])
    with pytest.raises(FeedbackError):  # the length field says more than there is
        parse_feedback(good[:4] + good[4:-4])
    truncated = bytearray(good)
    truncated[2:4] = struct.pack("!H", 4)  # 20 bytes: the chunks and deltas are cut
    with pytest.raises(FeedbackError):
        parse_feedback(bytes(truncated[:20]))
    nack = bytearray(good)
    nack[0] = 0x81  # FMT 1: a generic NACK
    with pytest.raises(FeedbackError):
        parse_feedback(bytes(nack))


def test_a_compound_packet_is_split_and_its_feedback_found() -> None:
    rr = struct.pack("!BBHI", 0x80, 201, 1, 42)
    fb = encode_feedback(1, 2, 0, 0, [64_000])
    parts = split_rtcp(rr + fb + b"\x80\xc9\x00\x09")  # a last header that runs past the end
    assert parts == [rr, fb]
    assert [is_transport_feedback(p) for p in parts] == [False, True]


def test_the_unwrapper_follows_wraparound_both_ways() -> None:
    unwrapper = SequenceUnwrapper()
    values = [unwrapper.unwrap(s) for s in (65533, 65535, 0, 2, 1, 65534, 30000, 60000, 10000,
                                             60000)]
    assert values[:6] == [65533, 65535, 65536, 65538, 65537, 65534]
    # each is the nearest to the newest seen: steps under half the range forward
    assert values[6:9] == [65536 + 30000, 65536 + 60000, 2 * 65536 + 10000]
    assert values[9] == 65536 + 60000  # nearer backwards (a late one)


def test_the_builder_reports_each_packet_once_across_the_wrap() -> None:
    builder = FeedbackBuilder(sender_ssrc=5, media_ssrc=6)
    for seq, t in ((65534, 100_000), (65535, 101_000), (1, 103_000)):  # 0 lost
        builder.received(seq, t)
    [first] = builder.build()
    fb = parse_feedback(first)
    assert fb.packets() == [(65534, 100_000), (65535, 101_000), (0, None), (1, 103_000)]
    assert builder.build() == []  # nothing new
    builder.received(0, 104_000)  # too late: reported lost already
    builder.received(2, 105_000)
    [second] = builder.build()
    fb = parse_feedback(second)
    assert fb.packets() == [(2, 105_000)] and fb.fb_count == 1


def test_arrivals_too_far_apart_for_one_message_are_split() -> None:
    # a 10 s gap cannot be one 16-bit delta of 250 µs ticks (8.19 s)
    arrivals: list[int | None] = [0, 250, None, 10_000_000, 10_000_250]
    pieces = split_arrivals(100, arrivals)
    assert pieces == [(100, [0, 250]), (103, [10_000_000, 10_000_250])]
    for base, part in pieces:
        assert parse_feedback(encode_feedback(1, 2, base, 0, part)).arrivals == part
    many: list[int | None] = [1000 * i for i in range(2500)]
    assert [len(p) for _, p in split_arrivals(0, many)] == [1000, 1000, 500]


def test_the_sequencer_counts_across_the_wrap_and_remembers_send_times() -> None:
    sequencer = TransportSequencer(start=65535)
    assert [sequencer.take(10 * i) for i in range(3)] == [65535, 0, 1]
    assert sequencer.sent_at(0) == 10 and sequencer.sent_at(2) is None
    for i in range(TransportSequencer.HISTORY):  # overwrites the ring
        sequencer.take(i)
    assert sequencer.sent_at(65535) is None


def feedback_for(sequencer: TransportSequencer, seqs: range, delay: int,
                 lost: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    arrivals: list[int | None] = []
    for seq in seqs:
        sent = sequencer.sent_at(seq & 0xFFFF)
        assert sent is not None
        arrivals.append(None if seq in lost else sent + delay + 7_000_000)  # another clock
    return encode_feedback(1, 2, seqs.start & 0xFFFF, 0, arrivals)


def test_the_monitor_counts_losses_and_sees_a_growing_queue() -> None:
    sequencer = TransportSequencer(start=65000)
    monitor = CongestionMonitor(behind_us=500_000)
    now = 0
    seq = 65000
    for step in range(40):  # 40 feedbacks of 10 packets, 20 ms apart
        for _ in range(10):
            sequencer.take(now)
            now += 2_000
        queue = 0 if step < 20 else (step - 20) * 50_000  # the path queues after step 20
        fb = feedback_for(sequencer, range(seq, seq + 10), 30_000 + queue,
                          lost={seq + 3} if step % 10 == 0 else set())
        monitor.feedback(parse_feedback(fb), sequencer, now)
        seq += 10
        if step == 19:
            assert monitor.queuing_delay_us < 5_000 and not monitor.behind()
    assert monitor.received + monitor.lost == 400 and monitor.lost == 4
    assert monitor.loss_fraction == pytest.approx(0.01)
    assert monitor.queuing_delay_us > 500_000 and monitor.behind()
    monitor.restart_trend()
    assert not monitor.behind()
    # a repeated feedback does not count twice
    monitor.feedback(parse_feedback(fb), sequencer, now)
    assert monitor.received + monitor.lost == 400


def rtp(extensions: bytes, profile: int = 0xBEDE, csrcs: int = 0) -> bytes:
    header = struct.pack("!BBHII", 0x90 | csrcs, 96, 1, 2, 3) + b"\x00\x00\x00\x07" * csrcs
    padded = extensions + b"\x00" * (-len(extensions) % 4)
    return header + struct.pack("!HH", profile, len(padded) // 4) + padded + b"payload"


def test_the_transport_sequence_is_read_off_the_wire_in_the_clear() -> None:
    # one-byte elements: MID "0", abs-send-time, then TWCC (id 5) = 0x1234
    one_byte = rtp(b"\x10" + b"0" + b"\x32\x01\x02\x03" + b"\x51\x12\x34")
    assert transport_sequence(one_byte, 5) == 0x1234
    assert transport_sequence(one_byte, 4) is None
    assert transport_sequence(rtp(b"\x00\x00\x51\xab\xcd", csrcs=2), 5) == 0xABCD  # padding
    two_byte = rtp(b"\x01\x01" + b"0" + b"\x05\x02\x00\x09", profile=0x1000)
    assert transport_sequence(two_byte, 5) == 9
    assert transport_sequence(one_byte[:20], 5) is None  # cut inside its extensions
    assert transport_sequence(b"\x80\xc8" + b"\x00" * 20, 5) is None  # RTCP
    assert transport_sequence(b"\x00\x01" + b"\x00" * 20, 5) is None  # STUN
    plain = struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"payload"  # no extension
    assert transport_sequence(plain, 5) is None
