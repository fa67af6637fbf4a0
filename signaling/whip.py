"""WHIP ingest (RFC 9725) and WHEP playback (draft-ietf-wish-whep), the HTTP
fronts for OBS, GStreamer, ffmpeg and players (docs/whip-whep.md).

One `SessionFront` class serves both: an endpoint `/{kind}/{stream_id}`
(POST an offer, get a session resource) and its session resources
(`http_sessions.py`: PATCH trickle candidates, DELETE). The two differ only in
how a POST is admitted and which worker call starts the peer: `admit_publisher`
(the stream key) and `admit_viewer` (the viewer token and balance), both made
of the same checks as the websocket's (`admission.py`).

Errors are the project's JSON shape `{"error": {"code", "message"}}`, with the
websocket protocol's codes; clients go by the status (RFC 9725 section 4.1)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from signaling.admission import (
    check_stream_key,
    ensure_not_suspended,
    ensure_viewer_can_pay,
    place_publisher,
    place_viewer_of,
    start_publisher,
    start_viewer,
    verify_viewer_token,
)
from signaling.api import stream_id_or_none
from signaling.errors import ApiError
from signaling.http_sessions import KEEPER, HttpSession, Kind, SessionKeeper, sessions_ctx
from signaling.protocol import ErrorCode, ProtocolError
from signaling.rate_limit import STREAM_KEY_LIMIT
from signaling.sdpfrag import MalformedFragment, offer_credentials, parse_trickle_fragment
from signaling.sfu_client import SFU_CLIENT, PeerGone, PeerRef, SfuClient, SfuError
from signaling.state import SETTINGS
from signaling.tokens import bearer_credential
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
MAX_BODY_BYTES = 64 * 1024  # an offer is a few KiB; also the app's client_max_size
ENDPOINT_METHODS = "POST, OPTIONS, GET, HEAD"
SESSION_METHODS = "PATCH, DELETE, OPTIONS, GET, HEAD"
RETRY_NOT_LIVE_S = 5  # WHEP before the publisher is live: try again in this long
RETRY_BUSY_S = 5  # no worker has room

# The websocket protocol's codes as HTTP: (status, Retry-After seconds or None).
_HTTP_STATUS: dict[ErrorCode, tuple[int, int | None]] = {
    ErrorCode.BAD_REQUEST: (400, None),
    ErrorCode.BAD_SDP: (400, None),
    ErrorCode.BAD_CANDIDATE: (400, None),
    ErrorCode.UNAUTHORIZED: (401, None),
    ErrorCode.INSUFFICIENT_FUNDS: (402, None),
    ErrorCode.SUSPENDED: (403, None),
    ErrorCode.STREAM_NOT_FOUND: (404, None),
    ErrorCode.ALREADY_LIVE: (409, None),
    ErrorCode.STREAM_NOT_LIVE: (409, RETRY_NOT_LIVE_S),
    ErrorCode.NO_SUPPORTED_CODEC: (422, None),
    ErrorCode.TOO_MANY_TRACKS: (422, None),
    ErrorCode.RATE_LIMITED: (429, STREAM_KEY_LIMIT.window_s),
    ErrorCode.NO_CAPACITY: (503, RETRY_BUSY_S),
    ErrorCode.SFU_UNAVAILABLE: (503, 2),
}
# What a browser page on another origin may send and read.
_CORS = {"Access-Control-Allow-Origin": "*",
         "Access-Control-Expose-Headers":
             "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After, WWW-Authenticate"}


@dataclass(frozen=True)
class Started:
    """A peer a worker accepted: where it lives and the answer for the client."""

    peer: PeerRef
    worker_id: str
    answer: str
    user_id: str  # the viewer, or the stream's creator


Start = Callable[[str], Awaitable[Started]]  # the offer -> the started peer
# Checks the request's credentials for a stream; returns how to start its peer.
Admit = Callable[[web.Request, str], Awaitable[Start]]


# --- HTTP details ----------------------------------------------------------------------

def http_error(err: ProtocolError) -> ApiError:
    status, retry_after = _HTTP_STATUS.get(err.code, (500, None))
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return ApiError(status, err.code.value, err.message, headers)


def bearer_token(request: web.Request) -> str:
    return bearer_credential(request.headers.get("Authorization", ""))


async def read_body(request: web.Request, media_type: str, accept_header: str) -> str:
    if request.content_type != media_type:
        raise ApiError(415, "unsupported_media_type", f"the body must be {media_type}",
                       {accept_header: media_type})
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
    raw = await request.read()  # beyond client_max_size aiohttp raises 413 itself
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the body is not UTF-8") from None
    if not text.strip():
        raise ApiError(400, "bad_request", "the body is empty")
    return text


def require_if_match(request: web.Request, etag: str) -> None:
    """RFC 9725 section 4.3.1: 428 without If-Match, 412 when it names
    another ICE session. `*` matches (an ICE restart must send it)."""
    header = request.headers.get("If-Match")
    if header is None:
        raise ApiError(428, "precondition_required",
                       "a PATCH needs If-Match with the session's ETag")
    tags = {tag.strip() for tag in header.split(",")}
    if "*" not in tags and etag not in tags:  # strong comparison: W/ tags never match
        raise ApiError(412, "precondition_failed", "If-Match does not name this ICE session")


def _quoted(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(servers: list[dict[str, Any]]) -> list[str]:
    """One `Link: <url>; rel="ice-server"` per configured URL, with the TURN
    credentials as target attributes (RFC 9725 section 4.6)."""
    links = []
    for server in servers:
        urls = server.get("urls")
        for url in [urls] if isinstance(urls, str) else list(urls or []):
            link = f'<{url}>; rel="ice-server"'
            if str(url).startswith(("turn:", "turns:")) and "username" in server:
                link += (f"; username={_quoted(server['username'])}"
                         f"; credential={_quoted(server.get('credential', ''))}"
                         '; credential-type="password"')
            links.append(link)
    return links


def _preflight(request: web.Request, methods: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(Allow=methods)
    if "Access-Control-Request-Method" in request.headers:
        headers["Access-Control-Allow-Methods"] = methods
        headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
        headers["Access-Control-Max-Age"] = "86400"
    return headers


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer on these paths, errors included, is readable cross-origin
    (browser players; the Bearer travels in a header, never as a cookie)."""
    if request.path.startswith(("/whip/", "/whep/")):
        for name, value in _CORS.items():
            response.headers.setdefault(name, value)


# --- the endpoint and its session resources ------------------------------------------

class SessionFront:
    def __init__(self, kind: Kind, admit: Admit) -> None:
        self.kind = kind
        self._admit = admit

    def add_routes(self, app: web.Application) -> None:
        endpoint = f"/{self.kind}/{{stream_id}}"
        app.router.add_post(endpoint, self.create)
        app.router.add_get(endpoint, self.describe_endpoint)  # and HEAD
        app.router.add_route("OPTIONS", endpoint, self.endpoint_options)
        session = f"{endpoint}/sessions/{{resource_id}}"
        app.router.add_patch(session, self.patch)
        app.router.add_delete(session, self.delete)
        app.router.add_get(session, self.describe_session)  # and HEAD
        app.router.add_route("OPTIONS", session, self.session_options)

    async def create(self, request: web.Request) -> web.Response:
        stream_id = _stream_id(request)
        try:
            start = await self._admit(request, stream_id)
            offer = await read_body(request, SDP, "Accept-Post")
            started = await start(offer)
        except ProtocolError as err:
            raise http_error(err) from None
        session = HttpSession.new(self.kind, stream_id, started.worker_id, started.peer,
                                  offer_credentials(offer), started.user_id)
        try:
            await request.app[KEEPER].open(session)
        except BaseException:
            # Nobody could ever end this peer through us: end it now.
            await _close_quietly(request.app[SFU_CLIENT], started.peer)
            raise
        log_event(log, "http_session.created", kind=self.kind.value, stream_id=stream_id,
                  peer_id=started.peer.peer_id, remote=request.remote)
        headers: CIMultiDict[str] = CIMultiDict(
            {"Location": session.path, "ETag": session.etag, "Accept-Patch": TRICKLE})
        for link in ice_server_links(request.app[SETTINGS].ice_servers):
            headers.add("Link", link)
        return web.Response(status=201, body=started.answer.encode(), content_type=SDP,
                            headers=headers)

    async def patch(self, request: web.Request) -> web.Response:
        """Trickle ICE: the fragment's candidates go to the worker, 204. An
        ICE restart is refused with 422 (RFC 9725 section 4.3.1: a session
        that supports trickle but not restarts); the session goes on."""
        session = await self._session(request)
        text = await read_body(request, TRICKLE, "Accept-Patch")
        require_if_match(request, session.etag)
        try:
            fragment = parse_trickle_fragment(text)
        except MalformedFragment as exc:
            raise ApiError(400, "bad_sdpfrag", str(exc)) from None
        if fragment.restarts(session.credentials):
            raise ApiError(422, "ice_restart_unsupported",
                           "this server cannot restart ICE; the session goes on as it was. "
                           "To reconnect, DELETE it and POST a new offer")
        sfu = request.app[SFU_CLIENT]
        try:
            for candidate in fragment.candidates:
                try:
                    await sfu.add_candidate(session.peer, candidate)
                except SfuError as err:
                    if err.code is not ErrorCode.BAD_CANDIDATE:
                        raise
                    # RFC 9725 section 4.3.2: a candidate we cannot use is discarded silently.
            if fragment.end_of_candidates:
                await sfu.add_candidate(session.peer, None)
        except PeerGone:
            await request.app[KEEPER].drop(session, "peer_gone")
            raise _no_session() from None
        except SfuError as err:
            raise http_error(err) from None
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        """End the session: a publisher's stream ends at once, a viewer leaves.
        If-Match is ignored here (RFC 9725 section 4.3.1)."""
        session = await self._session(request)
        keeper = request.app[KEEPER]
        if not await keeper.drop(session, "deleted"):
            raise _no_session()  # a concurrent DELETE got there first
        await _close_quietly(request.app[SFU_CLIENT], session.peer)
        return web.Response(status=200)

    async def describe_endpoint(self, request: web.Request) -> web.Response:
        """GET: no representation (RFC 9725 section 4.1); HEAD tells players
        this URL takes SDP offers (WHEP draft, endpoint discoverability)."""
        return web.Response(status=200, content_type=SDP)

    async def describe_session(self, request: web.Request) -> web.Response:
        await self._session(request)
        return web.Response(status=204)

    async def endpoint_options(self, request: web.Request) -> web.Response:
        headers = _preflight(request, ENDPOINT_METHODS)
        headers["Accept-Post"] = SDP
        # RFC 9725 section 4.6: ICE servers on OPTIONS too, but not on a CORS preflight.
        if "Access-Control-Request-Method" not in request.headers:
            for link in ice_server_links(request.app[SETTINGS].ice_servers):
                headers.add("Link", link)
        return web.Response(status=200, headers=headers)

    async def session_options(self, request: web.Request) -> web.Response:
        headers = _preflight(request, SESSION_METHODS)
        headers["Accept-Patch"] = TRICKLE
        return web.Response(status=200, headers=headers)

    async def _session(self, request: web.Request) -> HttpSession:
        """The session the URL names, or 404 (also for a URL of the other kind
        or another stream: the id alone is not enough)."""
        keeper: SessionKeeper = request.app[KEEPER]
        session = await keeper.store.load(request.match_info["resource_id"])
        if (session is None or session.kind is not self.kind
                or session.stream_id != stream_id_or_none(request.match_info["stream_id"])):
            raise _no_session()
        return session


def _stream_id(request: web.Request) -> str:
    stream_id = stream_id_or_none(request.match_info["stream_id"])
    if stream_id is None:
        raise ApiError(404, ErrorCode.STREAM_NOT_FOUND.value, "no such stream")
    return stream_id


def _no_session() -> ApiError:
    return ApiError(404, "session_not_found", "no such session (it ended, or never existed)")


async def _close_quietly(sfu: SfuClient, peer: PeerRef) -> None:
    try:
        await sfu.close_peer(peer)
    except PeerGone:
        pass  # the worker closed it already
    except SfuError as err:
        # The worker's ICE consent check ends it once the client is gone.
        log_event(log, "http_session.close_failed", logging.WARNING, peer_id=peer.peer_id,
                  error=err.message)


# --- WHIP and WHEP ---------------------------------------------------------------------

async def admit_publisher(request: web.Request, stream_id: str) -> Start:
    """WHIP: the Bearer is the stream key, checked (and rate limited) as the
    websocket's `publish` checks it; the stream is placed once the offer is read."""
    app = request.app
    backends, sfu, settings = app[BACKENDS], app[SFU_CLIENT], app[SETTINGS]
    creator_id = await check_stream_key(backends, request.remote or "unknown", stream_id,
                                        bearer_token(request))

    async def start(offer: str) -> Started:
        placement = await place_publisher(backends.redis, stream_id)
        answer = await start_publisher(sfu, backends.redis, placement, stream_id, sdp=offer,
                                       signaling_url=settings.base_url)
        return Started(answer.peer, placement.worker.worker_id, answer.sdp, creator_id)

    return start


async def admit_viewer(request: web.Request, stream_id: str) -> Start:
    """WHEP: the Bearer is a viewer token; the balance must cover the start,
    exactly as for the websocket's `watch`. The worker meters the peer."""
    app = request.app
    claims = verify_viewer_token(app[SETTINGS], bearer_token(request))
    await ensure_not_suspended(app[BACKENDS], claims.user_id)
    await ensure_viewer_can_pay(app, claims, stream_id)
    redis = app[BACKENDS].redis
    placement = await place_viewer_of(redis, stream_id)

    async def start(offer: str) -> Started:
        answer = await start_viewer(app[SFU_CLIENT], redis, placement, stream_id, sdp=offer,
                                    viewer_user_id=claims.user_id)
        return Started(answer.peer, placement.worker.worker_id, answer.sdp, claims.user_id)

    return start


def add_whip_whep_routes(app: web.Application) -> None:
    """Call after `events_ctx` is in the app's cleanup contexts (the session
    keeper listens through the EventHub)."""
    SessionFront(Kind.WHIP, admit_publisher).add_routes(app)
    SessionFront(Kind.WHEP, admit_viewer).add_routes(app)
    app.cleanup_ctx.append(sessions_ctx)
    app.on_response_prepare.append(_cors)
