"""Which codecs the worker forwards, how one is pinned on a transceiver, and
how to tell a keyframe from an encoded frame's first bytes, and how a frame
is cut into RTP payloads.

We forward, never transcode, so publisher and viewers must use one codec:
the publisher's answer offers exactly one video and one audio codec (plus the
video's RTX), and each viewer's answer offers exactly that one too."""

from __future__ import annotations

import random

from aiortc.codecs import is_rtx
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

# In order of preference. H.264 is kept to what aiortc packetizes (mode 1).
FORWARDABLE = {"video": ("video/vp8", "video/h264"), "audio": ("audio/opus",)}


class CodecMismatch(ValueError):
    """The offer has no codec we can forward (or not the one this stream uses)."""


def choose_codec(kind: str, offered: list[RTCRtpCodecParameters]) -> RTCRtpCodecParameters:
    """The publisher's codec for `kind`: our first preference the offer has."""
    for mime in FORWARDABLE.get(kind, ()):
        for codec in offered:
            if codec.mimeType.lower() == mime:
                return codec
    names = ", ".join(sorted({c.mimeType for c in offered if not is_rtx(c)})) or "none"
    raise CodecMismatch(f"no forwardable {kind} codec in the offer (offered: {names})")


def match_codec(target: RTCRtpCodecParameters,
                offered: list[RTCRtpCodecParameters]) -> RTCRtpCodecParameters:
    """The viewer's codec: the one compatible with the publisher's `target`."""
    for codec in offered:
        if not is_rtx(codec) and is_codec_compatible(codec, target):
            return codec
    raise CodecMismatch(f"the viewer does not accept this stream's codec {target.mimeType}")


def pin(codecs: list[RTCRtpCodecParameters],
        chosen: RTCRtpCodecParameters) -> list[RTCRtpCodecParameters]:
    """`chosen` and its RTX entry, nothing else: what the answer will list."""
    kept = [chosen]
    for codec in codecs:
        if is_rtx(codec) and codec.parameters.get("apt") == chosen.payloadType:
            kept.append(codec)
    return kept


def is_keyframe(mime: str, data: bytes) -> bool:
    """Whether a whole encoded frame starts a picture a decoder can begin at."""
    if not data:
        return False
    mime = mime.lower()
    if mime == "video/vp8":
        # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame.
        return data[0] & 0x01 == 0
    if mime == "video/h264":
        return any(nal_type in (5, 7) for nal_type in _h264_nal_types(data))
    return True  # audio: every frame is a starting point


def _h264_nal_types(data: bytes) -> list[int]:
    """NAL unit types in an Annex B byte stream (what aiortc's depayloader makes)."""
    types = []
    start = data.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(data):
        types.append(data[start + 3] & 0x1F)
        start = data.find(b"\x00\x00\x01", start + 3)
    return types


class Packetizer:
    """Cuts one stream's encoded frames into RTP payloads, once for all its
    viewers (aiortc's own packetizers, called as class methods: no encoder
    object, nothing encoded). VP8 payloads carry the stream's picture id, which
    therefore runs on across a publisher reconnect."""

    def __init__(self, mime: str) -> None:
        self.mime = mime.lower()
        self._picture_id = random.randint(0, (1 << 15) - 1)

    def payloads(self, data: bytes) -> list[bytes]:
        if self.mime == "video/vp8":
            payloads = Vp8Encoder._packetize(data, self._picture_id)
            self._picture_id = (self._picture_id + 1) % (1 << 15)
            return payloads
        if self.mime == "video/h264":
            return H264Encoder._packetize(H264Encoder._split_bitstream(data))
        return [data]  # audio: one frame, one packet
