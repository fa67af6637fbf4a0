"""The cascade, worker to worker (docs/architecture.md, "One stream across
many workers"): an edge receives a stream from its origin — or from another
edge — over ONE aiortc peer connection, the relay, however many viewers it
serves, and feeds its own Fanouts from it as if it were the publisher.
Encoded media only: the relay's receivers are tapped like a publisher's,
the parent sends to the relay like to a viewer (sfu/relay.py), so keyframe
requests (PLI), NACKs and receiver reports flow upstream through the same
code. A relay is never metered: only viewers are billed, by the worker that
serves them.

The edge is the offerer: it asks its parent `POST /control/streams/{id}/relay`
`{"sdp", "worker_id", "control_url"}` and gets `{"peer_id", "sdp",
"session_id", "chain"}` back; `chain` is the parent's path from the origin,
so a worker never relays a stream from one of its own descendants."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from sfu import aiortc_hooks as hooks
from sfu.codecs import CodecMismatch, choose_codec
from sfu.peers import PUBLISHER_RECEIVE_BUFFER, Peer, PeerError, make_peer_connection
from sfu.relay import Fanout
from sfu.udp_mux import UdpMux
from vilokanam.logs import log_event, ms_since

log = logging.getLogger(__name__)

RELAY_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=3)


class RelayLoop(PeerError):
    status = 409
    code = "relay_loop"


class RelayFailed(PeerError):
    """The parent refused the relay or could not be reached; `parent_code` is
    its error code (e.g. `at_capacity`, `stream_not_live`), '' if unreachable."""

    status = 502
    code = "relay_failed"

    def __init__(self, message: str, parent_code: str = "") -> None:
        super().__init__(message)
        self.parent_code = parent_code


@dataclass
class RelaySource:
    """An edge's feed of one stream: its relay peer connection to the parent."""

    peer: Peer  # role "relay_in"; the worker's own id for it
    parent_url: str
    parent_peer_id: str
    chain: list[str]  # worker ids from the origin to the parent


@dataclass(frozen=True)
class Relayed:
    source: RelaySource
    session_id: str


async def call_parent(http: aiohttp.ClientSession, method: str, url: str,
                      body: dict[str, Any] | None = None) -> Any:
    """One control call to another worker; its refusal is RelayFailed."""
    try:
        async with http.request(method, url, json=body, timeout=RELAY_TIMEOUT) as resp:
            if resp.status == 204:
                return None
            payload = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise RelayFailed(f"the parent worker is unreachable: {exc!r}") from None
    if resp.status >= 400:
        error = payload.get("error") if isinstance(payload, dict) else None
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
        raise RelayFailed(f"the parent worker refused the relay ({resp.status} {code})", code)
    return payload


def _answer_fields(body: Any) -> tuple[str, str, str, list[str]]:
    if not isinstance(body, dict):
        raise RelayFailed("the parent's answer is not a JSON object")
    peer_id, sdp, session_id, chain = (body.get(k) for k in
                                       ("peer_id", "sdp", "session_id", "chain"))
    if not (isinstance(peer_id, str) and isinstance(sdp, str) and isinstance(session_id, str)
            and isinstance(chain, list) and all(isinstance(w, str) for w in chain)):
        raise RelayFailed("the parent's answer lacks peer_id, sdp, session_id or chain")
    return peer_id, sdp, session_id, chain


async def open_relay(http: aiohttp.ClientSession, peer: Peer, fanouts: dict[str, Fanout], *,
                     parent_url: str, worker_id: str, control_url: str,
                     mux: UdpMux | None = None) -> Relayed:
    """Offer the parent a receive-only connection for the stream, tap it into
    `fanouts` and attach them to the codecs the parent answered with. On any
    failure the peer connection is closed and RelayFailed (or the parent's
    refusal) raised."""
    pc = peer.pc
    started = time.monotonic()
    try:
        transceivers = [pc.addTransceiver(kind, direction="recvonly")
                        for kind in ("video", "audio")]
        for transceiver in transceivers:
            hooks.tap_receiver(transceiver.receiver, fanouts[transceiver.kind].push)
        if mux is not None:
            hooks.share_udp_port(transceivers, mux.host_candidates)
        await pc.setLocalDescription(await pc.createOffer())
        body = await call_parent(
            http, "POST", f"{parent_url}/control/streams/{peer.stream_id}/relay",
            {"sdp": pc.localDescription.sdp, "worker_id": worker_id,
             "control_url": control_url})
        parent_peer_id, sdp, session_id, chain = _answer_fields(body)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        for transceiver in pc.getTransceivers():
            codecs = hooks.negotiated_codecs(transceiver)
            if transceiver.kind in fanouts and codecs:
                try:
                    fanouts[transceiver.kind].attach(choose_codec(transceiver.kind, codecs))
                except CodecMismatch:
                    continue  # the parent has no such track: the section is inactive
        hooks.enlarge_receive_buffers(transceivers, PUBLISHER_RECEIVE_BUFFER)
    except BaseException:
        await pc.close()
        raise
    log_event(log, "edge.relay_opened", stream_id=peer.stream_id, parent_url=parent_url,
              parent_peer_id=parent_peer_id, session_id=session_id, depth=len(chain),
              ms=ms_since(started))  # the offer/answer round
    return Relayed(RelaySource(peer, parent_url, parent_peer_id, chain), session_id)


def relay_peer(peer_id: str, stream_id: str, ice_servers: list[dict[str, Any]]) -> Peer:
    return Peer(peer_id, stream_id, make_peer_connection(ice_servers), "relay_in")
