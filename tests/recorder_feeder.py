"""Feeding a recorder as an SFU worker does: the encoded frames of a WebM
(VP8/Opus) or MPEG-TS (H.264 Annex B/Opus) file go through the same taps
(sfu/recorder.py) a Fanout calls. One piece for the recorder's tests, the crash
test's process and bench/transcode.py.

`python -m tests.recorder_feeder SRC OUT` records SRC at its real pace into OUT
and prints a line per frame fed (the crash test kills it mid-stream)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.recorder import Recording, Tap

CODECS = {"video": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
          "audio": RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111,
                                         channels=2)}
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


def codec_of(stream: av.stream.Stream) -> RTCRtpCodecParameters:
    """What a publisher sending this file's stream would have negotiated."""
    if stream.type == "video" and stream.codec_context.name == "h264":
        return H264
    return CODECS[stream.type]


@dataclass(frozen=True)
class EncodedFrame:
    """One frame as aiortc's depacketizer hands it to a track's taps."""

    kind: str
    codec: RTCRtpCodecParameters
    data: bytes
    time: Fraction  # seconds of media from the file's start (exact: no float drift)
    keyframe: bool

    def feed(self, taps: Mapping[str, Tap], rtp_start: int = 0) -> None:
        """Into its track's tap, its RTP timestamp counted from rtp_start."""
        timestamp = rtp_start + int(self.time * self.codec.clockRate)
        taps[self.kind](self.codec, self.data, timestamp, self.keyframe)


def encoded_frames(source: Path) -> Iterator[EncodedFrame]:
    """The file's frames in demux order; empty and timeless packets (flushes) left out."""
    with av.open(str(source)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.time_base is not None:
                yield EncodedFrame(packet.stream.type, codec_of(packet.stream), bytes(packet),
                                   Fraction(packet.pts * packet.time_base),
                                   bool(packet.is_keyframe))


def recording_taps(recording: Recording) -> dict[str, Tap]:
    return {kind: recording.tap_for(kind) for kind in CODECS}


def main(source: Path, target: Path) -> None:
    recording = Recording("v", "s", "sess", target)
    taps = recording_taps(recording)
    recording.start()
    started = time.monotonic()
    for frame in encoded_frames(source):
        time.sleep(max(0.0, started + float(frame.time) - time.monotonic()))  # real pace
        frame.feed(taps)
        print(f"fed {frame.kind} {float(frame.time):.3f}", flush=True)
    recording.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
