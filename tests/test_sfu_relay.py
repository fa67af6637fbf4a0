"""Units of the forwarding path, without a network: keyframe detection, the
per-viewer queue's fall-back to a keyframe, the GOP cache for new viewers,
timestamps across a publisher reconnect, the keyframe request throttle, and
the packets a viewer gets (one packetization per stream, NACK from history)."""

from __future__ import annotations

import asyncio
import socket
from struct import unpack
from types import SimpleNamespace

import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from sfu import aiortc_hooks, relay, twcc
from sfu.aiortc_hooks import SenderWiring
from sfu.codecs import is_keyframe
from sfu.congestion import ViewerTransport
from sfu.relay import Fanout, KeyframeThrottle
from sfu.rtp_out import Extensions, PacketizedFrame, RtpWriter
from tests.waiting import wait_until

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111,
                             channels=2)
VP8_KEY = b"\x10\x02\x00\x9d\x01\x2a"  # frame tag bit 0 = 0: key frame
VP8_DELTA = b"\x31\x02\x00"


def test_keyframe_detection() -> None:
    assert is_keyframe("video/VP8", VP8_KEY)
    assert not is_keyframe("video/VP8", VP8_DELTA)
    assert not is_keyframe("video/VP8", b"")
    idr = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68" + b"\x00\x00\x01\x65\x88"
    non_idr = b"\x00\x00\x00\x01\x41\x9a"
    assert is_keyframe("video/H264", idr)
    assert not is_keyframe("video/H264", non_idr)
    assert is_keyframe("audio/opus", b"\xfc")


def vp8_depayload(payload: bytes) -> bytes:
    _descriptor, data = VpxPayloadDescriptor.parse(payload)
    return data


class Requests:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_new_viewer_starts_from_the_cached_keyframe_at_once() -> None:
    upstream = Requests()
    fanout = Fanout("video", upstream)
    fanout.attach(VP8)
    fanout.push(VP8, JitterFrame(VP8_KEY, 0))
    fanout.push(VP8, JitterFrame(VP8_DELTA, 3000))
    track = fanout.subscribe()
    assert len(track.queued) == 2  # keyframe + delta, no wait for the publisher
    assert track.queued[0].timestamp == 0 and track.queued[0].keyframe
    assert upstream.count == 0
    fanout.close()


def full_cache(upstream: Requests) -> Fanout:
    """A video fanout whose GOP cache holds as many frames as it may: a
    keyframe and the deltas after it."""
    fanout = Fanout("video", upstream)
    fanout.attach(VP8)
    fanout.push(VP8, JitterFrame(VP8_KEY, 0))
    for n in range(1, relay.GOP_CACHE_MAX_FRAMES):
        fanout.push(VP8, JitterFrame(VP8_DELTA, n * 3000))
    return fanout


async def test_a_cache_grown_too_long_asks_for_a_fresh_keyframe_for_the_next_viewer() -> None:
    upstream = Requests()
    fanout = full_cache(upstream)
    await asyncio.sleep(0)
    assert upstream.count == 0  # the cache still starts a viewer
    fanout.push(VP8, JitterFrame(VP8_DELTA, relay.GOP_CACHE_MAX_FRAMES * 3000))
    await wait_until(lambda: upstream.count, "a keyframe request upstream", timeout=1)
    assert upstream.count == 1  # asked before any viewer came
    fanout.push(VP8, JitterFrame(VP8_KEY, 10**6))
    track = fanout.subscribe()
    assert track.queued[0].keyframe and len(track.queued) == 1  # starts at once
    fanout.close()


async def test_a_new_viewer_offered_the_longest_cache_still_starts_on_its_keyframe() -> None:
    upstream = Requests()
    fanout = full_cache(upstream)
    track = fanout.subscribe()
    assert len(track.queued) == relay.GOP_CACHE_MAX_FRAMES and track.queued[0].keyframe
    assert not track.waiting_for_keyframe
    # ICE and DTLS take long: the queue fills, then starts at the newer keyframe.
    n = relay.GOP_CACHE_MAX_FRAMES
    fanout.push(VP8, JitterFrame(VP8_KEY, n * 3000))
    while len(track.queued) < relay.VIDEO_QUEUE_FRAMES:
        n += 1
        fanout.push(VP8, JitterFrame(VP8_DELTA, n * 3000))
    fanout.push(VP8, JitterFrame(VP8_DELTA, (n + 1) * 3000))
    first = track.queued[0]
    assert first.keyframe and first.timestamp == relay.GOP_CACHE_MAX_FRAMES * 3000
    assert not track.waiting_for_keyframe
    await asyncio.sleep(0)
    assert upstream.count == 0  # nobody waits: no keyframe asked for
    fanout.close()


async def test_viewer_without_cache_waits_for_keyframe_and_asks_for_one() -> None:
    upstream = Requests()
    fanout = Fanout("video", upstream)
    fanout.attach(VP8)
    track = fanout.subscribe()
    await wait_until(lambda: upstream.count, "a keyframe request upstream", timeout=1)
    assert upstream.count == 1
    fanout.push(VP8, JitterFrame(VP8_DELTA, 0))
    assert len(track.queued) == 0  # a delta alone cannot start a decoder
    fanout.push(VP8, JitterFrame(VP8_KEY, 3000))
    assert len(track.queued) == 1
    fanout.close()


async def test_full_queue_drops_to_next_keyframe_and_asks_for_it() -> None:
    upstream = Requests()
    fanout = Fanout("video", upstream)
    fanout.attach(VP8)
    fanout.push(VP8, JitterFrame(VP8_KEY, 0))
    track = fanout.subscribe()
    for n in range(1, relay.VIDEO_QUEUE_FRAMES + 5):  # a viewer that reads nothing
        fanout.push(VP8, JitterFrame(VP8_DELTA, n * 3000))
    assert track.frames_dropped > 0 and track.waiting_for_keyframe
    assert len(track.queued) < relay.VIDEO_QUEUE_FRAMES
    await asyncio.sleep(0)
    assert upstream.count == 1
    fanout.push(VP8, JitterFrame(VP8_KEY, 10**6))
    assert not track.waiting_for_keyframe
    fanout.close()


async def test_timestamps_continue_across_a_publisher_reconnect() -> None:
    fanout = Fanout("audio", Requests())
    fanout.attach(OPUS)
    track = fanout.subscribe()
    fanout.push(OPUS, JitterFrame(b"\xfc", 48000))
    fanout.attach(OPUS)  # the new connection's timestamps restart at 0
    fanout.push(OPUS, JitterFrame(b"\xfc", 0))
    first, second = track.queued
    assert second.timestamp == first.timestamp + relay.FRAME_STEP["audio"]
    fanout.close()


async def test_sender_reports_reach_the_clock_taps_in_the_continuous_timestamps() -> None:
    fanout = Fanout("audio", Requests())
    reports: list[tuple[int, int]] = []
    fanout.clock_taps.append(lambda ntp, pts: reports.append((ntp, pts)))
    fanout.attach(OPUS)
    fanout.push(OPUS, JitterFrame(b"\xfc", 48000))
    fanout.sender_report(7, 48000)
    fanout.attach(OPUS)  # a reconnect: its timestamps restart at 0
    fanout.sender_report(8, 0)  # before its first frame the offset is unknown: dropped
    fanout.push(OPUS, JitterFrame(b"\xfc", 0))
    fanout.sender_report(9, 960)
    assert reports == [(7, 48000), (9, 48000 + relay.FRAME_STEP["audio"] + 960)]
    fanout.close()


async def test_throttle_sends_at_most_two_per_second_and_never_drops() -> None:
    sent = Requests()
    throttle = KeyframeThrottle(sent, interval=0.5)
    for _ in range(10):
        throttle.request()
    assert sent.count == 1
    started = asyncio.get_running_loop().time()
    await wait_until(lambda: sent.count == 2, "the coalesced request", timeout=1, interval=0.01)
    # the coalesced request went out when the interval ended, not before
    assert asyncio.get_running_loop().time() - started >= 0.45
    throttle.request()
    await asyncio.sleep(0.05)  # time passing IS the test: nothing more within the interval
    assert sent.count == 2
    throttle.close()


class Wire:
    """A SenderWiring whose datagrams land in a list: SRTP is the identity
    here (the real session is tested through aiortc in test_sfu_media)."""

    def __init__(self, rtx: bool = True) -> None:
        self.sent: list[bytes] = []
        self.counters: tuple[int, int, int, int] | None = None
        self.wiring = SenderWiring(
            codec=VP8, ssrc=0x11111111, rtx_ssrc=0x22222222,
            rtx_payload_type=97 if rtx else None, mid="0", mid_id=1, abs_send_time_id=3,
            protect=lambda packet: packet, send=self._send, sender=None)  # type: ignore[arg-type]
        self.wiring.connected = lambda: True  # type: ignore[method-assign]
        self.wiring.report_counters = self._counters  # type: ignore[method-assign]

    def _send(self, datagram: bytes) -> bool:
        self.sent.append(datagram)
        return True

    def _counters(self, *values: int) -> None:
        self.counters = values  # type: ignore[assignment]

    def parsed(self) -> list[RtpPacket]:
        return [RtpPacket.parse(d, EXTENSIONS) for d in self.sent]


EXTENSIONS = HeaderExtensionsMap()
EXTENSIONS.configure(RTCRtpParameters(headerExtensions=[
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(
        id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))

BIG_KEY = VP8_KEY + bytes(range(256)) * 12  # ~3 kB: several packets


async def wait_sent(wire: Wire, count: int) -> None:
    for _ in range(100):
        if len(wire.sent) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(wire.sent)} packets sent, wanted {count}")


async def test_a_frame_is_packetized_once_and_each_viewer_gets_its_own_header() -> None:
    fanout = Fanout("video", Requests())
    fanout.attach(VP8)
    wires = [Wire(), Wire()]
    for wire in wires:
        fanout.subscribe().attach(wire.wiring)
    fanout.push(VP8, JitterFrame(BIG_KEY, 9000))
    await wait_sent(wires[1], 2)
    first, second = wires[0].parsed(), wires[1].parsed()
    assert len(first) == len(second) > 1
    # the same payload objects' bytes (cut once), behind different headers
    assert [p.payload for p in first] == [p.payload for p in second]
    depacketized = b"".join(vp8_depayload(p.payload) for p in first)
    assert depacketized == BIG_KEY
    for packets in (first, second):
        seqs = [p.sequence_number for p in packets]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
        assert [p.marker for p in packets] == [0] * (len(packets) - 1) + [1]
        assert {p.ssrc for p in packets} == {0x11111111}
        assert {p.payload_type for p in packets} == {96}
        assert all(p.extensions.mid == "0" and p.extensions.abs_send_time is not None
                   for p in packets)
    # each viewer has its own random timestamp origin, the step is the stream's
    assert wires[0].counters is not None and wires[0].counters[2] == len(first)
    fanout.close()


async def test_sequence_numbers_stay_contiguous_across_a_drop_to_keyframe() -> None:
    fanout = Fanout("video", Requests())
    fanout.attach(VP8)
    wire = Wire()
    track = fanout.subscribe()
    fanout.push(VP8, JitterFrame(VP8_KEY, 0))
    track.attach(wire.wiring)
    await wait_sent(wire, 1)
    track.waiting_for_keyframe = True  # as after a fall-back
    fanout.push(VP8, JitterFrame(VP8_DELTA, 3000))  # skipped by this viewer
    fanout.push(VP8, JitterFrame(VP8_KEY, 6000))
    await wait_sent(wire, 2)
    seqs = [p.sequence_number for p in wire.parsed()]
    assert seqs[1] == (seqs[0] + 1) & 0xFFFF
    timestamps = [p.timestamp for p in wire.parsed()]
    assert (timestamps[1] - timestamps[0]) & 0xFFFFFFFF == 6000
    fanout.close()


async def test_nack_is_answered_from_the_stream_history_with_rtx() -> None:
    fanout = Fanout("video", Requests())
    fanout.attach(VP8)
    wire = Wire(rtx=True)
    track = fanout.subscribe()
    track.attach(wire.wiring)
    fanout.push(VP8, JitterFrame(BIG_KEY, 0))
    fanout.push(VP8, JitterFrame(VP8_DELTA, 3000))
    await wait_sent(wire, 3)
    original = wire.parsed()
    lost = original[1]
    wire.sent.clear()
    track.nack([lost.sequence_number, (original[-1].sequence_number + 50) & 0xFFFF])
    [rtx] = wire.parsed()  # the unknown (never sent) one is not answered
    assert rtx.ssrc == 0x22222222 and rtx.payload_type == 97
    assert unpack("!H", rtx.payload[:2])[0] == lost.sequence_number
    assert rtx.payload[2:] == lost.payload and rtx.timestamp == lost.timestamp
    assert track.retransmitted == 1

    plain = Wire(rtx=False)
    other = fanout.subscribe()
    other.attach(plain.wiring)
    fanout.push(VP8, JitterFrame(VP8_KEY, 6000))
    await wait_sent(plain, 1)
    sent = plain.parsed()[0]
    plain.sent.clear()
    other.nack([sent.sequence_number])
    [again] = plain.parsed()
    assert again.ssrc == sent.ssrc and again.sequence_number == sent.sequence_number
    assert again.payload == sent.payload
    fanout.close()


async def test_the_pump_yields_to_the_loop_between_slices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(relay, "PUMP_SLICE_PACKETS", 3)
    fanout = Fanout("audio", Requests())
    fanout.attach(OPUS)
    wires = [Wire() for _ in range(6)]
    for wire in wires:
        fanout.subscribe().attach(wire.wiring)
    fanout.push(OPUS, JitterFrame(b"\xfc", 960))
    await asyncio.sleep(0)
    assert sum(len(w.sent) for w in wires) == 3  # one slice per loop iteration
    await asyncio.sleep(0)
    assert sum(len(w.sent) for w in wires) == 6
    fanout.close()


async def test_a_backlog_from_before_the_connection_starts_at_the_newest_keyframe() -> None:
    fanout = Fanout("video", Requests())
    fanout.attach(VP8)
    fanout.push(VP8, JitterFrame(VP8_KEY, 0))
    track = fanout.subscribe()
    for n, data in enumerate([VP8_DELTA, VP8_KEY, VP8_DELTA], start=1):
        fanout.push(VP8, JitterFrame(data, n * 3000))
    assert len(track.queued) == 4
    track._trim_backlog()
    assert [f.timestamp for f in track.queued] == [6000, 9000]


def test_extension_block_layout() -> None:
    both = Extensions(mid_id=1, mid="0", abs_send_time_id=3).block(b"\x01\x02\x03")
    assert both == b"\xbe\xde\x00\x02" + b"\x10" + b"0" + b"\x32\x01\x02\x03" + b"\x00\x00"
    assert Extensions(mid_id=1, mid="1").block(b"") == b"\xbe\xde\x00\x01\x101\x00\x00"
    assert Extensions().block(b"\x00\x00\x00") == b""


def test_stream_index_maps_only_what_this_viewer_was_sent() -> None:
    writer = RtpWriter(ssrc=1, payload_type=96, next_seq=65534)
    frame = PacketizedFrame([b"a", b"b", b"c"], 0, True, 100, 3)
    writer.frame(frame, b"\x00\x00\x00")  # seqs 65534, 65535, 0: across the wrap
    assert [writer.stream_index(s) for s in (65534, 65535, 0)] == [100, 101, 102]
    assert writer.stream_index(1) is None  # not sent yet
    assert writer.stream_index(65533) is None  # before this viewer's first packet


@pytest.mark.parametrize("gso", [True, False])
async def test_a_batch_arrives_as_the_same_datagrams_with_gso_or_without(
        gso: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc_hooks, "GSO_WORKS", gso)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    pair = SimpleNamespace(protocol=SimpleNamespace(transport=transport),
                           remote_addr=receiver.getsockname())
    one_by_one: list[bytes] = []

    def send_one(datagram: bytes) -> bool:
        one_by_one.append(datagram)
        transport.sendto(datagram, pair.remote_addr)
        return True

    batch = aiortc_hooks.BatchSender({1: pair}, send_one)
    datagrams = [bytes([n]) * 1200 for n in range(40)] + [b"\xff" * 300]  # > MAX_SEGMENTS
    assert batch.send(datagrams)
    got = [receiver.recv(2000) for _ in datagrams]
    assert got == datagrams
    assert (one_by_one == []) is gso  # GSO: no datagram went the one-by-one way
    batch.close()
    transport.close()
    receiver.close()
    assert not aiortc_hooks.BatchSender({}, send_one).send(datagrams)  # no pair: gone


TWCC_EXTENSIONS = HeaderExtensionsMap()
TWCC_EXTENSIONS.configure(RTCRtpParameters(headerExtensions=[
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(
        id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    RTCRtpHeaderExtensionParameters(id=5, uri=twcc.URI)]))


def test_extension_block_with_a_transport_wide_sequence_number() -> None:
    block = Extensions(mid_id=1, mid="0", abs_send_time_id=3, transport_cc_id=5).block(
        b"\x01\x02\x03", 0xABCD)
    # 2 + 4 + 3 bytes of elements, padded to three words
    assert block == (b"\xbe\xde\x00\x03" + b"\x10" + b"0" + b"\x32\x01\x02\x03"
                     + b"\x51\xab\xcd" + b"\x00\x00\x00")


async def test_one_transport_wide_counter_across_a_viewers_audio_and_video() -> None:
    video, audio = Fanout("video", Requests()), Fanout("audio", Requests())
    video.attach(VP8)
    audio.attach(OPUS)
    state = ViewerTransport("peer")
    wires = []
    for fanout in (video, audio):
        wire = Wire()
        wire.wiring.transport_cc_id = 5
        track = fanout.subscribe()
        track.transport_cc = state
        track.attach(wire.wiring)
        wires.append(wire)
    video.push(VP8, JitterFrame(BIG_KEY, 0))
    await wait_sent(wires[0], 2)
    audio.push(OPUS, JitterFrame(b"\xfc" + b"\x00" * 40, 0))
    await wait_sent(wires[1], 1)
    video.push(VP8, JitterFrame(VP8_DELTA, 3000))
    await wait_sent(wires[0], len(wires[0].sent) + 1)
    seqs = [RtpPacket.parse(d, TWCC_EXTENSIONS).extensions.transport_sequence_number
            for d in wires[0].sent[:-1] + wires[1].sent + wires[0].sent[-1:]]
    assert seqs == list(range(1, len(seqs) + 1))  # in send order, across both kinds
    assert all(state.sequencer.sent_at(s) is not None for s in seqs)
    video.close()
    audio.close()


async def test_feedback_saying_the_viewer_fell_behind_skips_to_the_next_keyframe() -> None:
    fanout = Fanout("video", Requests())
    fanout.attach(VP8)
    state = ViewerTransport("peer", monitor=twcc.CongestionMonitor(behind_us=200_000))
    wire = Wire()
    wire.wiring.transport_cc_id = 5
    track = fanout.subscribe()
    track.transport_cc = state
    state.skip_to_keyframe.append(track.skip_to_keyframe)
    track.attach(wire.wiring)
    fanout.push(VP8, JitterFrame(VP8_KEY, 0))
    await wait_sent(wire, 1)
    sent_us = state.sequencer.sent_at(1)
    assert sent_us is not None
    # the viewer says packet 1 took 10 ms; then packets 2.. arrive ever later
    state.on_rtcp(twcc.encode_feedback(9, 0x11111111, 1, 0, [sent_us + 10_000]))
    assert not track.waiting_for_keyframe
    for n in range(2, 8):
        fanout.push(VP8, JitterFrame(VP8_DELTA, 3000 * n))
        await wait_sent(wire, n)
        sent = state.sequencer.sent_at(n)
        assert sent is not None
        state.on_rtcp(twcc.encode_feedback(9, 0x11111111, n, n - 1,
                                           [sent + 10_000 + 150_000 * n]))
        if track.waiting_for_keyframe:
            break
    # smoothed: 90 ms, 198 ms, then 318 ms of queuing > 200 ms at the 4th packet
    assert n == 4 and state.skips == 1 and track.waiting_for_keyframe
    sent_before = len(wire.sent)
    fanout.push(VP8, JitterFrame(VP8_DELTA, 30_000))  # skipped: not a keyframe
    fanout.push(VP8, JitterFrame(VP8_KEY, 33_000))
    await wait_sent(wire, sent_before + 1)
    assert len(wire.sent) == sent_before + 1 and not track.waiting_for_keyframe
    assert state.info()["received"] == 4 and state.info()["lost"] == 0
    fanout.close()
