"""The checks every front (the websocket, WHIP, WHEP) makes before a worker
is asked for an answer, written once so the fronts cannot drift apart: the
stream key (constant time, failures rate limited and counted), the viewer
token, the viewer's balance, and where the stream lives. Each raises
`ProtocolError` with the protocol's code; a front turns that into its own
wire form (an `error` message, an HTTP status)."""

from __future__ import annotations

import logging
import uuid

import redis.asyncio as aioredis
from aiohttp import web

from routing.placement import (
    NoCapacity,
    Placement,
    StreamNotPlaced,
    ViewerPlacement,
    drop_edge,
    place_stream,
    place_viewer,
    unpin_stream,
)
from signaling.protocol import ErrorCode, ProtocolError
from signaling.rate_limit import AUTH_FAILURES, STREAM_KEY_LIMIT, FailureLimiter
from signaling.sfu_client import PublisherAnswer, SfuClient, SfuError, ViewerAnswer
from signaling.state import SETTINGS
from signaling.stream_keys import key_matches
from signaling.tokens import InvalidToken, TokenClaims, verify_token
from vilokanam.backends import BACKENDS, Backends
from vilokanam.balances import MIN_START_SECONDS, StreamPriceUnknown, can_start_watching
from vilokanam.config import Settings
from vilokanam.logs import log_event
from vilokanam.users import standing_of

log = logging.getLogger(__name__)


async def check_stream_key(backends: Backends, remote: str, stream_id: str,
                           stream_key: str) -> str:
    """The publisher's key for `stream_id`; returns the creator's user id. A
    wrong (or missing) key is one failure for `remote`; `STREAM_KEY_LIMIT`
    failures lock it out. A suspended creator may not publish (`suspended`)."""
    limiter = FailureLimiter(backends.redis, STREAM_KEY_LIMIT)
    # Before the comparison: a limited address learns nothing, even with the right key.
    if await limiter.is_limited(remote):
        raise ProtocolError(ErrorCode.RATE_LIMITED,
                            "too many wrong stream keys from this address; try again later")
    row = await backends.pg.fetchrow(
        "SELECT s.stream_key_hash, s.creator_id::text AS creator_id, "
        "u.suspended_at IS NOT NULL AS suspended "
        "FROM streams s JOIN users u ON u.id = s.creator_id WHERE s.id = $1",
        uuid.UUID(stream_id))
    if row is None or row["stream_key_hash"] is None:
        raise ProtocolError(ErrorCode.STREAM_NOT_FOUND, "no such stream")
    if not key_matches(stream_key, row["stream_key_hash"]):
        failures = await limiter.record_failure(remote)
        log_event(log, "admission.stream_key_refused", logging.WARNING, remote=remote,
                  stream_id=stream_id, failures=failures)
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "wrong stream key")
    if row["suspended"]:
        log_event(log, "admission.suspended_publisher", logging.WARNING, stream_id=stream_id,
                  user_id=row["creator_id"])
        raise ProtocolError(ErrorCode.SUSPENDED, "this account is suspended")
    return str(row["creator_id"])


async def ensure_not_suspended(backends: Backends, user_id: str) -> None:
    """A suspended user may not watch (nor chat): tokens outlive a suspension."""
    if (await standing_of(backends.pg, user_id)).suspended:
        raise ProtocolError(ErrorCode.SUSPENDED, "this account is suspended")


def verify_viewer_token(settings: Settings, token: str) -> TokenClaims:
    """The claims of a viewer's Bearer token; a refused one is counted."""
    secret = settings.token_secret
    if not secret:
        log_event(log, "admission.no_token_secret", logging.ERROR)
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "this server cannot check viewer tokens")
    try:
        return verify_token(secret, token)
    except InvalidToken as exc:
        AUTH_FAILURES.labels(kind="token").inc()
        raise ProtocolError(ErrorCode.UNAUTHORIZED, str(exc)) from None


async def ensure_viewer_can_pay(app: web.Application, claims: TokenClaims,
                                stream_id: str) -> None:
    """Starting to watch needs MIN_START_SECONDS of the stream's price."""
    backends, settings = app[BACKENDS], app[SETTINGS]
    try:
        affordable = await can_start_watching(backends.pg, backends.redis, claims.user_id,
                                              stream_id, settings.token_decimals)
    except (StreamPriceUnknown, ValueError):  # ValueError: not a UUID
        raise ProtocolError(ErrorCode.STREAM_NOT_LIVE, "the stream is not live") from None
    if not affordable:
        raise ProtocolError(ErrorCode.INSUFFICIENT_FUNDS,
                            f"your balance must cover {MIN_START_SECONDS} s of this stream")


async def place_publisher(redis: aioredis.Redis, stream_id: str) -> Placement:
    """The worker a publisher of `stream_id` goes to (docs/protocol.md, publish step 5)."""
    try:
        return await place_stream(redis, stream_id)
    except NoCapacity as exc:
        raise ProtocolError(ErrorCode.NO_CAPACITY, str(exc)) from None


async def start_publisher(sfu: SfuClient, redis: aioredis.Redis, placement: Placement,
                          stream_id: str, *, sdp: str, signaling_url: str) -> PublisherAnswer:
    """Ask the placed worker for the publisher's answer. A fresh pin to a
    worker that said no is undone, so a retry may choose another worker; one
    it could not be asked (or that has a publisher) stays."""
    try:
        return await sfu.add_publisher(placement.worker.control_url, stream_id, sdp=sdp,
                                       signaling_url=signaling_url)
    except SfuError as err:
        if err.refused and not placement.sticky and err.code is not ErrorCode.ALREADY_LIVE:
            await unpin_stream(redis, stream_id, placement.worker.worker_id)
        raise


async def place_viewer_of(redis: aioredis.Redis, stream_id: str) -> ViewerPlacement:
    """The worker a viewer of `stream_id` goes to: the stream's origin while
    it has room, else one of its edges (routing/placement.py, the cascade)."""
    try:
        return await place_viewer(redis, stream_id)
    except StreamNotPlaced:
        raise ProtocolError(ErrorCode.STREAM_NOT_LIVE, "the stream is not live") from None
    except NoCapacity as exc:
        raise ProtocolError(ErrorCode.NO_CAPACITY, str(exc)) from None


async def start_viewer(sfu: SfuClient, redis: aioredis.Redis, placement: ViewerPlacement,
                       stream_id: str, *, sdp: str, viewer_user_id: str) -> ViewerAnswer:
    """Ask the placed worker for the viewer's answer (an edge relays the
    stream first if it does not carry it). A new edge that said no is
    dropped from the stream's edges, so the next viewer is placed anew."""
    relay_from = placement.relay_from.control_url if placement.relay_from else None
    try:
        return await sfu.add_viewer(placement.worker.control_url, stream_id, sdp=sdp,
                                    viewer_user_id=viewer_user_id, relay_from=relay_from)
    except SfuError:
        if placement.new_edge:
            await drop_edge(redis, stream_id, placement.worker.worker_id)
        raise
