"""The forwarder's own SRTP (AES-GCM through `cryptography`) against libsrtp
(pylibsrtp, what aiortc and the viewers use): the same bytes, packet for
packet, across a sequence-number wrap and for retransmissions."""

from __future__ import annotations

import os

import pytest
from pylibsrtp import Policy, Session

from sfu.rtp_out import Extensions, PacketizedFrame, RtpWriter
from sfu.srtp import GcmProtector

PROFILES = [(b"SRTP_AEAD_AES_256_GCM", Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
            (b"SRTP_AEAD_AES_128_GCM", Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28)]


def libsrtp(key: bytes, profile: int, inbound: bool = False) -> Session:
    policy = Policy(key=key, srtp_profile=profile,
                    ssrc_type=Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)


@pytest.mark.parametrize(("name", "profile", "length"), PROFILES)
def test_the_same_bytes_as_libsrtp_across_a_wrap(name: bytes, profile: int,
                                                 length: int) -> None:
    key = os.urandom(length)
    ours = GcmProtector.for_profile(name, key)
    assert ours is not None
    reference = libsrtp(key, profile)
    writer = RtpWriter(ssrc=0xCAFE0001, payload_type=96,
                       extensions=Extensions(1, "0", 3), next_seq=65530)
    packets = []
    for n in range(6):  # 18 packets: the sequence number wraps
        frame = PacketizedFrame([os.urandom(900), os.urandom(900), os.urandom(333)],
                                n * 3000, n == 0, n * 3, 2133)
        packets += writer.frame(frame, b"\x01\x02\x03")
    for packet in packets:
        assert ours.protect(packet) == reference.protect(packet)
    resent = packets[2]  # before the wrap, sent again after it (NACK without RTX)
    assert ours.protect(resent) == reference.protect(resent)
    receiver, fresh = libsrtp(key, profile, inbound=True), GcmProtector.for_profile(name, key)
    assert fresh is not None
    for packet in packets[:8]:  # a viewer's libsrtp takes them, across the wrap
        assert receiver.unprotect(fresh.protect(packet)) == packet


def test_other_profiles_are_left_to_libsrtp() -> None:
    assert GcmProtector.for_profile(b"SRTP_AES128_CM_SHA1_80", os.urandom(30)) is None
