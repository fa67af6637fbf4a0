"""The worker's private HTTP door (docs/architecture.md): thin handlers over
the StreamManager; every refusal is `{"error": {"code", "message"}}`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from routing.channels import CloseReason
from sfu.peers import PeerError
from sfu.streams import StreamManager
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

MANAGER = web.AppKey("stream_manager", StreamManager)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PeerError as exc:
        return error_response(exc.status, exc.code, str(exc) or exc.code)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log_event(log, "control.store_error", logging.ERROR, path=request.path, error=repr(exc))
        return error_response(503, "store_unavailable", "the database did not answer")
    except web.HTTPException:
        raise
    except Exception as exc:  # no exception escapes a handler
        log_event(log, "control.internal_error", logging.ERROR, path=request.path,
                  error=repr(exc))
        return error_response(500, "internal_error", "the worker failed to handle this request")


async def _body(request: web.Request, *required: str) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PeerError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise PeerError("the body must be a JSON object")
    for name in required:
        if not isinstance(body.get(name), str) or not body[name]:
            raise PeerError(f"'{name}' is required and must be a string")
    return body


async def publish(request: web.Request) -> web.Response:
    body = await _body(request, "sdp")
    result = await request.app[MANAGER].publish(
        request.match_info["stream_id"], body["sdp"], str(body.get("signaling_url") or ""))
    return web.json_response(result, status=201)


async def watch(request: web.Request) -> web.Response:
    body = await _body(request, "sdp", "viewer_user_id")
    relay_from = body.get("relay_from")
    if relay_from is not None and not (isinstance(relay_from, str)
                                       and relay_from.startswith(("http://", "https://"))):
        raise PeerError("'relay_from' must be a worker's control URL")
    result = await request.app[MANAGER].watch(
        request.match_info["stream_id"], body["sdp"], body["viewer_user_id"], relay_from)
    return web.json_response(result, status=201)


async def relay(request: web.Request) -> web.Response:
    """Another worker becomes an edge of this stream (sfu/cascade.py)."""
    body = await _body(request, "sdp", "worker_id", "control_url")
    result = await request.app[MANAGER].relay(
        request.match_info["stream_id"], body["sdp"], body["worker_id"], body["control_url"])
    return web.json_response(result, status=201)


async def candidate(request: web.Request) -> web.Response:
    body = await _body(request)
    await request.app[MANAGER].add_candidate(request.match_info["peer_id"], body)
    return web.Response(status=204)


async def leave(request: web.Request) -> web.Response:
    lost = request.query.get("reason") == "lost"
    await request.app[MANAGER].leave(request.match_info["peer_id"], lost=lost)
    return web.Response(status=204)


async def stream_info(request: web.Request) -> web.Response:
    stream = request.app[MANAGER].streams.get(request.match_info["stream_id"])
    return web.json_response({
        "live": stream is not None and stream.publisher is not None,
        "viewers": len(stream.viewers) if stream else 0,
        "session_id": stream.session_id if stream else None,
        "edge": bool(stream and stream.edge),
        "relays": len(stream.relays) if stream else 0,
        "fed": bool(stream and stream.source),  # an edge's relay in is up
        "idle": bool(stream and stream.idle_since is not None),  # an edge keeping its relay
        # per viewer that negotiated TWCC: what its feedback says
        "congestion": request.app[MANAGER].congestion(request.match_info["stream_id"]),
    })


async def end_stream(request: web.Request) -> web.Response:
    """The creator's "end stream" (signaling's POST /api/streams/{id}/end):
    the same end as a publisher's DELETE, with no peer id needed. `ended` is
    false when this worker does not carry the stream, so signaling can end
    its rows itself."""
    manager = request.app[MANAGER]
    stream_id = request.match_info["stream_id"]
    carried = stream_id in manager.streams
    await manager.end_stream(stream_id, CloseReason.STREAM_ENDED)
    return web.json_response({"ended": carried})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANAGER].stats())


def add_control_routes(app: web.Application) -> None:
    app.middlewares.append(control_errors)
    app.router.add_post("/control/streams/{stream_id}/publisher", publish)
    app.router.add_post("/control/streams/{stream_id}/viewers", watch)
    app.router.add_post("/control/streams/{stream_id}/relay", relay)
    app.router.add_post("/control/peers/{peer_id}/candidates", candidate)
    app.router.add_delete("/control/peers/{peer_id}", leave)
    app.router.add_get("/control/streams/{stream_id}", stream_info)
    app.router.add_post("/control/streams/{stream_id}/end", end_stream)
    app.router.add_get("/control/stats", stats)
