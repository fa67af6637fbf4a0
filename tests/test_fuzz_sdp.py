"""Property tests of everything that parses SDP (hypothesis): signaling's
trickle fragments and offer credentials (signaling/sdpfrag.py), and the SFU
worker's offer and candidate handling (sfu/peers.py) on real aiortc peer
connections. Any text, and real offers cut and mutated line by line, end in a
result or in the documented refusal (MalformedFragment; the worker's BadSdp,
NoSupportedCodec, TooManyTracks, BadCandidate), never in another exception;
and every peer connection made is closed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.peers import Peer as WorkerPeer
from sfu.peers import PeerError, _apply_offer, make_peer_connection
from signaling.sdpfrag import (
    IceCredentials,
    MalformedFragment,
    offer_credentials,
    parse_trickle_fragment,
)

PURE = settings(max_examples=300, deadline=None)
# aiortc peer connections are slow to make: fewer examples.
LIVE = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

sdp_line = st.one_of(
    st.builds("{}={}".format, st.sampled_from("vosctmab"), st.text(max_size=40)),
    st.sampled_from(["a=end-of-candidates", "a=mid:0", "a=mid:1", "m=video 9 UDP 0",
                     "a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdef012345", "a=candidate:",
                     "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"]),
    st.text(max_size=40))
fragment_text = st.one_of(
    st.text(max_size=300),
    st.lists(sdp_line, max_size=12).flatmap(
        lambda lines: st.sampled_from(["\r\n", "\n", "\r"]).map(lambda nl: nl.join(lines))))


@PURE
@given(fragment_text)
def test_any_fragment_parses_or_is_malformed(text: str) -> None:
    try:
        fragment = parse_trickle_fragment(text)
    except MalformedFragment as exc:
        assert str(exc)
        return
    assert fragment.candidates or fragment.end_of_candidates or (
        fragment.credentials != IceCredentials(None, None))
    for candidate in fragment.candidates:
        assert candidate.candidate.startswith("candidate:") and candidate.candidate != "candidate:"
        # a section is named by its mid, else by its position: never by neither
        assert (candidate.sdp_mid is None) != (candidate.sdp_mline_index is None)


candidate_body = st.builds(
    "{} 1 udp {} 127.0.0.1 {} typ host".format,
    st.integers(1, 2**32), st.integers(1, 2**31), st.integers(1, 65535))


@PURE
@given(st.lists(st.tuples(st.sampled_from([None, "0", "1", "audio"]),
                          st.lists(candidate_body, min_size=1, max_size=3)),
                min_size=1, max_size=3),
       st.booleans(), st.sampled_from(["\r\n", "\n"]))
def test_a_built_fragment_gives_back_its_candidates_and_their_sections(
        sections: list[tuple[str | None, list[str]]], end: bool, nl: str) -> None:
    lines: list[str] = []
    expected: list[tuple[str, str | None, int | None]] = []
    for index, (mid, bodies) in enumerate(sections):
        lines.append("m=video 9 UDP/TLS/RTP/SAVPF 96")
        if mid is not None:
            lines.append(f"a=mid:{mid}")
        for body in bodies:
            lines.append(f"a=candidate:{body}")
            expected.append((f"candidate:{body}", mid, None if mid is not None else index))
    if end:
        lines.append("a=end-of-candidates")
    fragment = parse_trickle_fragment(nl.join(lines) + nl)
    assert [(c.candidate, c.sdp_mid, c.sdp_mline_index) for c in fragment.candidates] == expected
    assert fragment.end_of_candidates is end


@PURE
@given(fragment_text)
def test_offer_credentials_never_raise(text: str) -> None:
    credentials = offer_credentials(text)
    for value in (credentials.ufrag, credentials.pwd):
        assert value is None or isinstance(value, str)


# -- the worker's SDP: real aiortc peer connections ----------------------------

@pytest.fixture(scope="module")
def offers() -> list[str]:
    """Real offers (publish and watch), made once."""
    import asyncio

    from tests.media_clients import client_pc

    async def make() -> list[str]:
        made = []
        for direction in ("sendonly", "recvonly"):
            pc = client_pc()
            for kind in ("video", "audio"):
                pc.addTransceiver(kind, direction=direction)
            await pc.setLocalDescription(await pc.createOffer())
            made.append(str(pc.localDescription.sdp))
            await pc.close()
        return made

    return asyncio.run(make())


def mutated(offer_lines: list[str], data: st.DataObject) -> str:
    """An offer with lines dropped, doubled, swapped in or cut short."""
    lines = list(offer_lines)
    for _ in range(data.draw(st.integers(0, 4))):
        if not lines:
            break
        at = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "double", "replace", "cut", "truncate"]))
        if action == "drop":
            del lines[at]
        elif action == "double":
            lines.insert(at, lines[at])
        elif action == "replace":
            lines[at] = data.draw(sdp_line)
        elif action == "cut":
            lines = lines[:at]
        else:
            lines[at] = lines[at][: data.draw(st.integers(0, len(lines[at])))]
    return "\r\n".join(lines) + "\r\n"


@LIVE
@given(data=st.data())
async def test_a_mutated_offer_is_answered_or_refused_with_a_documented_code(
        offers: list[str], data: st.DataObject) -> None:
    offer = mutated(data.draw(st.sampled_from(offers)).splitlines(), data)
    pc = make_peer_connection([])
    try:
        await _apply_offer(pc, offer)
    except PeerError as exc:
        assert exc.code in ("bad_sdp", "no_supported_codec", "too_many_tracks")
        assert exc.status in (400, 422)
    finally:
        await pc.close()
    assert pc.connectionState == "closed"


candidate_init = st.fixed_dictionaries(
    {"candidate": st.one_of(st.text(max_size=80), candidate_body.map("candidate:{}".format),
                            st.none(), st.integers())},
    optional={"sdpMid": st.one_of(st.none(), st.sampled_from(["0", "1", "9"])),
              "sdpMLineIndex": st.one_of(st.none(), st.integers(0, 3))})


@LIVE
@given(candidates=st.lists(candidate_init, max_size=4))
async def test_any_candidate_is_added_or_bad_candidate(
        offers: list[str], candidates: list[dict[str, Any]]) -> None:
    pc = make_peer_connection([])
    peer = WorkerPeer("peer", "stream", pc, "viewer")
    try:
        await _apply_offer(pc, offers[1])
        for candidate in candidates:
            try:
                await peer.add_candidate(candidate)
            except PeerError as exc:
                assert exc.code == "bad_candidate" and exc.status == 400
    finally:
        await peer.close()
    assert pc.connectionState == "closed"
