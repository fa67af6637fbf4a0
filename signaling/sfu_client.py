"""Calls to an SFU worker's private control API (docs/architecture.md, "SFU
control API"). One aiohttp ClientSession per signaling app, owned through
`sfu_client_ctx`. A worker's refusal becomes an `SfuError` carrying the
protocol error code a client sees; a worker we cannot reach, or whose answer
makes no sense, is `sfu_unavailable`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from signaling.protocol import ErrorCode, IceCandidate, ProtocolError
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

# A publisher/viewer POST waits for the worker's ICE gathering (no STUN by
# default, so milliseconds; a slow TURN server can take seconds).
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=3)
# Connections to workers are a keep-alive pool: at most WORKER_POOL_LIMIT at
# once (requests beyond it wait for one), each closed once idle for
# WORKER_KEEPALIVE_S (aiohttp checks every that many seconds: an idle
# connection goes 1-2x this after its last use). Each open one is a socket and
# a request-handler task on the worker too, so a worker's task and file counts
# just after a busy minute include the pool at its working size
# (docs/reliability.md, "Soak"); they are bounded by the concurrency, not by
# how many viewers came and went.
WORKER_POOL_LIMIT = 100
WORKER_KEEPALIVE_S = 15.0

# The worker's refusals a client sees, by the worker's code: most unchanged,
# `at_capacity` as the protocol's `no_capacity`. Anything else is our failure.
_CLIENT_CODE = {code.value: code for code in (
    ErrorCode.BAD_REQUEST, ErrorCode.BAD_SDP, ErrorCode.NO_SUPPORTED_CODEC,
    ErrorCode.TOO_MANY_TRACKS, ErrorCode.BAD_CANDIDATE, ErrorCode.ALREADY_LIVE,
    ErrorCode.STREAM_NOT_LIVE,
)} | {"at_capacity": ErrorCode.NO_CAPACITY}


class SfuError(ProtocolError):
    """`refused` is True when the worker answered with an error (it is up and
    said no), False when it could not be reached or made no sense."""

    def __init__(self, code: ErrorCode, message: str, *, refused: bool) -> None:
        super().__init__(code, message)
        self.refused = refused


class PeerGone(Exception):
    """The worker no longer has this peer (404 unknown_peer): it closed it,
    and its peer_closed event is on the way."""


@dataclass(frozen=True)
class PeerRef:
    """A peer connection on a worker: where to send its candidates and DELETE."""

    control_url: str
    peer_id: str


@dataclass(frozen=True)
class PublisherAnswer:
    peer: PeerRef
    sdp: str
    session_id: str
    resumed: bool


@dataclass(frozen=True)
class ViewerAnswer:
    peer: PeerRef
    sdp: str
    viewer_session_id: str


def _unavailable(message: str) -> SfuError:
    return SfuError(ErrorCode.SFU_UNAVAILABLE, message, refused=False)


def _worker_error(status: int, body: Any) -> Exception:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if code == "unknown_peer":
        return PeerGone(str(message or "unknown peer"))
    mapped = _CLIENT_CODE.get(code) if isinstance(code, str) else None
    if mapped is None:
        return _unavailable(f"the media server failed (HTTP {status})")
    return SfuError(mapped, str(message or mapped.value), refused=True)


def _field(body: Any, name: str, kind: type) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, kind):
        raise _unavailable(f"the media server's answer lacks {name}")
    return value


class SfuClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def add_publisher(self, control_url: str, stream_id: str, *, sdp: str,
                            signaling_url: str) -> PublisherAnswer:
        body = await self._call("POST", f"{control_url}/control/streams/{stream_id}/publisher",
                                {"sdp": sdp, "signaling_url": signaling_url})
        peer = PeerRef(control_url, _field(body, "peer_id", str))
        return PublisherAnswer(peer, _field(body, "sdp", str), _field(body, "session_id", str),
                               _field(body, "resumed", bool))

    async def add_viewer(self, control_url: str, stream_id: str, *, sdp: str,
                         viewer_user_id: str, relay_from: str | None = None) -> ViewerAnswer:
        """`relay_from`: placement made this worker an edge of the stream; it
        relays the stream from that worker first if it does not carry it."""
        request: dict[str, Any] = {"sdp": sdp, "viewer_user_id": viewer_user_id}
        if relay_from is not None:
            request["relay_from"] = relay_from
        body = await self._call("POST", f"{control_url}/control/streams/{stream_id}/viewers",
                                request)
        peer = PeerRef(control_url, _field(body, "peer_id", str))
        return ViewerAnswer(peer, _field(body, "sdp", str),
                            _field(body, "viewer_session_id", str))

    async def add_candidate(self, peer: PeerRef, candidate: IceCandidate | None) -> None:
        body = candidate.to_json() if candidate is not None else {"candidate": None}
        await self._call("POST", f"{peer.control_url}/control/peers/{peer.peer_id}/candidates",
                         body)

    async def close_peer(self, peer: PeerRef, lost: bool = False) -> None:
        """A publisher's DELETE ends its stream at once; with `lost` (its
        websocket died without a leave) the worker waits out the reconnect grace."""
        query = "?reason=lost" if lost else ""
        await self._call("DELETE", f"{peer.control_url}/control/peers/{peer.peer_id}{query}")

    async def end_stream(self, control_url: str, stream_id: str) -> bool:
        """Ask the worker to end the stream; False when it does not carry it."""
        body = await self._call("POST", f"{control_url}/control/streams/{stream_id}/end")
        return bool(_field(body, "ended", bool))

    async def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with self._session.request(method, url, json=body) as resp:
                if resp.status == 204:
                    return None
                payload = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise _worker_error(resp.status, payload)
                return payload
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log_event(log, "sfu.unreachable", logging.WARNING, method=method, url=url,
                      error=repr(exc))
            raise _unavailable("the media server is unreachable") from None


SFU_CLIENT = web.AppKey("sfu_client", SfuClient)


async def sfu_client_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=WORKER_POOL_LIMIT,
                                     keepalive_timeout=WORKER_KEEPALIVE_S)
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT, connector=connector) as session:
        app[SFU_CLIENT] = SfuClient(session)
        yield
