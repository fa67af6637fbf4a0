"""Peer connections of the two kinds a worker holds: a publisher's (media in,
tapped as encoded frames) and a viewer's (media out: packets the SFU writes
itself, sfu/relay.py).

Each answer lists exactly one codec per kind (publisher: our preference among
what it offers; viewer: the publisher's), takes the DTLS server role when the
offer allows, and uses only the configured ICE servers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidStateError, OperationError
from aiortc.sdp import SessionDescription, candidate_from_sdp

from sfu import aiortc_hooks as hooks
from sfu import metrics
from sfu.codecs import CodecMismatch, choose_codec, match_codec, pin
from sfu.congestion import PublisherFeedback, ViewerTransport
from sfu.metering import ViewerMeter
from sfu.relay import Fanout, ForwardedTrack
from sfu.udp_mux import UdpMux
from vilokanam.tasks import TaskOwner

# The kernel's receive buffer for a publisher's sockets (it caps it at
# net.core.rmem_max; bench/sfu_fanout.py saw ingest drops with the default).
PUBLISHER_RECEIVE_BUFFER = 4 * 1024 * 1024


class PeerError(Exception):
    """A request the worker refuses; `code` is the control API's error code."""

    status = 400
    code = "bad_request"


class BadSdp(PeerError):
    code = "bad_sdp"


class NoSupportedCodec(PeerError):
    status = 422
    code = "no_supported_codec"


class TooManyTracks(PeerError):
    status = 422
    code = "too_many_tracks"


class BadCandidate(PeerError):
    code = "bad_candidate"


def make_peer_connection(ice_servers: list[dict[str, Any]]) -> RTCPeerConnection:
    """Always an explicit list: with none, aiortc would use a public STUN host."""
    servers = [RTCIceServer(**server) for server in ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def _parsed(sdp: str) -> SessionDescription:
    """The offer as aiortc reads it, or BadSdp. Its parser has no error of
    its own: a malformed line raises AssertionError, AttributeError,
    StopIteration, ... (found by tests/test_fuzz_sdp.py), so any exception of
    this pure step means the text is not SDP it can take."""
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:
        raise BadSdp(f"the offer could not be parsed: {type(exc).__name__} {exc}") from None


def _check_bundle(description: SessionDescription) -> None:
    """A BUNDLE group names only sections the offer has (RFC 8843 section 7).
    aiortc takes a missing first mid's transport as None, and its close() then
    raises half way, leaving the other transports open (tests/test_fuzz_sdp.py)."""
    mids = {media.rtp.muxId for media in description.media}
    for group in description.group:
        if group.semantic == "BUNDLE" and not set(map(str, group.items)) <= mids:
            raise BadSdp("the BUNDLE group names a section the offer does not have")


async def _apply_offer(pc: RTCPeerConnection, sdp: str) -> SessionDescription:
    """The offer applied; returns it as parsed (what each section offered)."""
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or "\nm=" not in sdp:
        raise BadSdp("the offer is not an SDP session description")
    description = _parsed(sdp)
    _check_bundle(description)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except (OperationError, InternalError) as exc:
        # aiortc raises these when no codec of a section is one it knows.
        raise NoSupportedCodec(str(exc)) from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, InvalidStateError,
            # a StopIteration inside aiortc's coroutine is a RuntimeError (PEP 479)
            RuntimeError) as exc:
        raise BadSdp(f"the offer could not be used: {exc}") from None
    return description


def _offered(description: SessionDescription, transceiver: RTCRtpTransceiver) -> Any:
    """The offer's section this transceiver answers."""
    return next((m for m in description.media if m.rtp.muxId == transceiver.mid),
                description.media[transceiver._get_mline_index() or 0])


async def _answer(pc: RTCPeerConnection, mux: UdpMux | None) -> str:
    for transceiver in pc.getTransceivers():
        hooks.take_dtls_server_role(transceiver)
    if mux is not None:
        hooks.share_udp_port(pc.getTransceivers(), mux.host_candidates)
    await pc.setLocalDescription(await pc.createAnswer())
    return str(pc.localDescription.sdp)


def _media_transceivers(pc: RTCPeerConnection) -> list[RTCRtpTransceiver]:
    transceivers = [t for t in pc.getTransceivers() if t.kind in ("audio", "video")]
    kinds = [t.kind for t in transceivers]
    if kinds.count("video") > 1 or kinds.count("audio") > 1:
        raise TooManyTracks("at most one audio and one video track per stream")
    return transceivers


@dataclass
class Peer:
    """One peer connection and what the worker knows of it."""

    peer_id: str
    stream_id: str
    pc: RTCPeerConnection
    role: str  # "publisher" | "viewer" | "relay" (to an edge) | "relay_in" (an edge's feed)
    user_id: str | None = None
    remote_url: str | None = None  # a relay's edge: its control URL
    viewer_session_id: str | None = None
    tracks: list[tuple[Fanout, ForwardedTrack]] = field(default_factory=list)
    # TWCC, per DTLS transport (one when the peer bundles): a viewer's
    # sequence numbers and congestion, a publisher's feedback to send
    viewer_transports: dict[int, ViewerTransport] = field(default_factory=dict)
    publisher_feedback: dict[int, PublisherFeedback] = field(default_factory=dict)
    meter: ViewerMeter = field(default_factory=lambda: ViewerMeter())

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        text = candidate.get("candidate")
        if not text:  # end of candidates: aiortc needs no signal
            return
        if not isinstance(text, str):
            raise BadCandidate("candidate must be a string")
        try:
            # aiortc's parser asserts on malformed input rather than raising ValueError.
            parsed = candidate_from_sdp(text.removeprefix("candidate:"))
        except (AssertionError, ValueError, IndexError) as exc:
            raise BadCandidate(f"not an ICE candidate: {exc or 'malformed'}") from None
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        try:
            await self.pc.addIceCandidate(parsed)
        except ValueError as exc:  # e.g. an sdpMid no section has
            raise BadCandidate(str(exc)) from None

    async def close(self) -> None:
        for fanout, track in self.tracks:
            fanout.unsubscribe(track)
        self.tracks.clear()
        await self.pc.close()


async def accept_publisher(peer: Peer, offer: str, fanouts: dict[str, Fanout],
                           mux: UdpMux | None = None) -> str:
    """Answer a publisher: pin one codec per kind, tap its receivers into the
    fanouts. Returns the answer SDP."""
    description = await _apply_offer(peer.pc, offer)
    transceivers = _media_transceivers(peer.pc)
    if not transceivers:
        raise NoSupportedCodec("the offer has no audio or video")
    feedback_taps: list[tuple[RTCRtpTransceiver, PublisherFeedback]] = []
    for transceiver in transceivers:
        codecs = hooks.negotiated_codecs(transceiver)
        try:
            codec = choose_codec(transceiver.kind, codecs)
        except CodecMismatch as exc:
            raise NoSupportedCodec(str(exc)) from None
        hooks.narrow_codecs(transceiver, pin(codecs, codec))
        transport_cc = hooks.negotiate_transport_cc(transceiver, _offered(description, transceiver))
        fanout = fanouts[transceiver.kind]
        fanout.attach(codec)
        hooks.tap_receiver(transceiver.receiver, fanout.push, fanout.sender_report)
        if transport_cc is not None:
            feedback = _publisher_feedback(peer, transceiver, transport_cc)
            if feedback is not None:
                feedback_taps.append((transceiver, feedback))
    answer = await _answer(peer.pc, mux)  # gathers candidates: the sockets exist now
    hooks.enlarge_receive_buffers(transceivers, PUBLISHER_RECEIVE_BUFFER)
    for transceiver, feedback in feedback_taps:
        hooks.tap_datagrams(transceiver, feedback.datagram)
    return answer


async def accept_viewer(peer: Peer, offer: str, fanouts: dict[str, Fanout],
                        mux: UdpMux | None = None,
                        accepted: Callable[[], None] | None = None) -> str:
    """Answer a viewer with the stream's codecs and subscribe it to the fanouts.
    `accepted` is called once the offer is taken (what is left, the answer and
    its candidates, seldom fails), so the caller can start what it needs then."""
    description = await _apply_offer(peer.pc, offer)
    for transceiver in _media_transceivers(peer.pc):
        fanout = fanouts.get(transceiver.kind)
        if fanout is None or fanout.codec is None:
            continue  # the stream has no such track: that section goes inactive
        codecs = hooks.negotiated_codecs(transceiver)
        try:
            codec = match_codec(fanout.codec, codecs)
        except CodecMismatch as exc:
            raise NoSupportedCodec(str(exc)) from None
        hooks.narrow_codecs(transceiver, pin(codecs, codec))
        track = fanout.subscribe()
        track.log_ids = {"stream_id": peer.stream_id, "peer_id": peer.peer_id, "role": peer.role}
        if hooks.negotiate_transport_cc(transceiver, _offered(description, transceiver)):
            track.transport_cc = _viewer_transport(peer, transceiver)
            if track.kind == "video":
                track.transport_cc.skip_to_keyframe.append(track.skip_to_keyframe)
        peer.tracks.append((fanout, track))
        sender = peer.pc.addTrack(track)
        hooks.take_over_sender(sender, track.attach, track.detach, hooks.SenderRtcp(
            keyframe=fanout.request_keyframe, nack=track.nack,
            report=peer.meter.report_received))
    if not peer.tracks:
        raise NoSupportedCodec("the offer receives none of this stream's tracks")
    if accepted is not None:
        accepted()
    return await _answer(peer.pc, mux)


def _viewer_transport(peer: Peer, transceiver: RTCRtpTransceiver) -> ViewerTransport:
    """The viewer's TWCC state for this transceiver's transport: one sequence
    counter across the transport's audio and video."""
    dtls = hooks.transport_of(transceiver)
    state = peer.viewer_transports.get(id(dtls))
    if state is None:
        state = peer.viewer_transports[id(dtls)] = ViewerTransport(peer.peer_id)
        hooks.tap_rtcp(dtls, state.on_rtcp)
    return state


def _publisher_feedback(peer: Peer, transceiver: RTCRtpTransceiver,
                        extension_id: int) -> PublisherFeedback | None:
    """The publisher's TWCC feedback for this transceiver's transport (one
    for audio and video when it bundles); None when it exists already (its
    datagrams are tapped once)."""
    dtls = hooks.transport_of(transceiver)
    if id(dtls) in peer.publisher_feedback:
        return None
    receiver = transceiver.receiver
    feedback = peer.publisher_feedback[id(dtls)] = PublisherFeedback(
        extension_id, send=lambda packet: hooks.send_rtcp(dtls, packet),
        sender_ssrc=lambda: hooks.receiver_rtcp_ssrc(receiver))
    return feedback


def upstream_keyframe_requester(get_pc: Callable[[], RTCPeerConnection | None], kind: str,
                                tasks: TaskOwner) -> Callable[[], None]:
    """A callback for a Fanout: PLI to whichever publisher feeds it now."""
    def request() -> None:
        pc = get_pc()
        if pc is None:
            return
        for transceiver in pc.getTransceivers():
            if transceiver.kind == kind:
                metrics.KEYFRAME_REQUESTS_SENT.inc()
                tasks.spawn(hooks.request_keyframe_upstream(transceiver.receiver), "pli")

    return request
