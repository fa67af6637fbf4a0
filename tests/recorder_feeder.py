"""A process that records like an SFU worker does, for the crash test: the
encoded frames of a WebM (VP8/Opus) or MPEG-TS (H.264 Annex B/Opus) file go,
at their real pace, through the same taps (sfu/recorder.py) a Fanout calls.
`python -m tests.recorder_feeder SRC OUT`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import av
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.recorder import Recording

CODECS = {"video": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
          "audio": RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111,
                                         channels=2)}
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


def codec_of(stream: av.stream.Stream) -> RTCRtpCodecParameters:
    """What a publisher sending this file's stream would have negotiated."""
    if stream.type == "video" and stream.codec_context.name == "h264":
        return H264
    return CODECS[stream.type]


def main(source: Path, target: Path) -> None:
    recording = Recording("v", "s", "sess", target)
    taps = {kind: recording.tap_for(kind) for kind in CODECS}
    recording.start()
    started = time.monotonic()
    with av.open(str(source)) as container:
        for packet in container.demux():
            if not packet.size or packet.pts is None or packet.time_base is None:
                continue
            kind = packet.stream.type
            at = float(packet.pts * packet.time_base)
            time.sleep(max(0.0, started + at - time.monotonic()))
            codec = codec_of(packet.stream)
            taps[kind](codec, bytes(packet), int(at * codec.clockRate), bool(packet.is_keyframe))
            print(f"fed {kind} {at:.3f}", flush=True)
    recording.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
