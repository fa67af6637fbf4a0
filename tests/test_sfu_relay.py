"""Units of the forwarding path, without a network: keyframe detection, the
per-viewer queue's fall-back to a keyframe, the GOP cache for new viewers,
timestamps across a publisher reconnect, and the keyframe request throttle."""

from __future__ import annotations

import asyncio

from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu import relay
from sfu.codecs import is_keyframe
from sfu.relay import Fanout, KeyframeThrottle
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
    assert track._queue.qsize() == 2  # keyframe + delta, no wait for the publisher
    assert (await track.recv()).pts == 0
    assert upstream.count == 0
    fanout.close()


async def test_viewer_without_cache_waits_for_keyframe_and_asks_for_one() -> None:
    upstream = Requests()
    fanout = Fanout("video", upstream)
    fanout.attach(VP8)
    track = fanout.subscribe()
    await wait_until(lambda: upstream.count, "a keyframe request upstream", timeout=1)
    assert upstream.count == 1
    fanout.push(VP8, JitterFrame(VP8_DELTA, 0))
    assert track._queue.qsize() == 0  # a delta alone cannot start a decoder
    fanout.push(VP8, JitterFrame(VP8_KEY, 3000))
    assert track._queue.qsize() == 1
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
    assert track._queue.qsize() < relay.VIDEO_QUEUE_FRAMES
    await wait_until(lambda: upstream.count, "a keyframe request upstream", timeout=1)
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
    first, second = await track.recv(), await track.recv()
    assert second.pts == first.pts + relay.FRAME_STEP["audio"]
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


async def test_stopped_track_wakes_its_sender() -> None:
    fanout = Fanout("video", Requests())
    fanout.attach(VP8)
    track = fanout.subscribe()
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)  # one turn of the loop: recv() starts waiting (no timing involved)
    fanout.unsubscribe(track)
    from aiortc.mediastreams import MediaStreamError
    try:
        await asyncio.wait_for(waiting, 1)
    except MediaStreamError:
        pass
    else:
        raise AssertionError("recv() should end with MediaStreamError")
