"""`/healthz`, `/readyz` and `/metrics`, the same on every role's HTTP port,
and the request-duration histogram every role's app records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import PurePath

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import MatchInfoError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, Histogram, generate_latest

from vilokanam.backends import BACKENDS

HTTP_DURATION = Histogram(
    "vilokanam_http_request_duration_seconds",
    "HTTP request durations by role, route template, method and status (a websocket's "
    "is its whole connection).", ["role", "route", "method", "status"])
# Label values must stay a small fixed set: any method aiohttp accepts but
# these, and any path no route matches, share one value.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Read when /metrics is served, on the event loop: a count that only grows is
# a leak (the soak benchmark watches it next to RSS and open files).
ASYNCIO_TASKS = Gauge("vilokanam_asyncio_tasks",
                      "asyncio tasks alive in this role's event loop.")
# The same count by what the tasks run, so a count that grew names its cause.
# Labels are code names (bounded by the code base), never task names, which
# may carry ids.
ASYNCIO_TASKS_BY_COROUTINE = Gauge(
    "vilokanam_asyncio_tasks_by_coroutine",
    "asyncio tasks alive in this role's event loop, by the qualified name of their coroutine.",
    ["coroutine"])


def coroutine_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    # the file's last two path parts: "aioice/ice", "sfu/streams", "asyncio/tasks"
    where = ".".join(PurePath(getattr(code, "co_filename", "?")).with_suffix("").parts[-2:])
    qualname = getattr(coro, "__qualname__", None) or type(coro).__qualname__
    return f"{where}:{qualname}"


def count_tasks() -> None:
    """Set both task gauges from the running loop (read when /metrics is served)."""
    tasks = asyncio.all_tasks()
    ASYNCIO_TASKS.set(len(tasks))
    by_name: dict[str, int] = {}
    for task in tasks:
        name = coroutine_name(task)
        by_name[name] = by_name.get(name, 0) + 1
    ASYNCIO_TASKS_BY_COROUTINE.clear()
    for name, count in by_name.items():
        ASYNCIO_TASKS_BY_COROUTINE.labels(name).set(count)


def route_label(request: web.Request) -> str:
    """The matched route's template (`/api/streams/{stream_id}`), never the
    raw path, whose values are unbounded."""
    match_info = request.match_info
    if isinstance(match_info, MatchInfoError):
        return UNMATCHED
    return match_info.route.resource.canonical if match_info.route.resource else UNMATCHED


def duration_middleware(role: str) -> Middleware:
    @web.middleware
    async def record_duration(request: web.Request, handler: Handler) -> web.StreamResponse:
        started, status = time.perf_counter(), 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # roles without an error middleware raise these
            status = exc.status
            raise
        finally:
            method = request.method if request.method in _METHODS else "other"
            HTTP_DURATION.labels(role, route_label(request), method, str(status)).observe(
                time.perf_counter() - started)

    return record_duration

ReadinessCheck = Callable[[web.Application], Awaitable[dict[str, bool]]]


async def _backends_ready(app: web.Application) -> dict[str, bool]:
    return await app[BACKENDS].readiness()


READINESS_CHECKS = web.AppKey("readiness_checks", list[ReadinessCheck])


def add_health_routes(app: web.Application, role: str) -> None:
    """Liveness says the process serves; readiness that its stores answer;
    every request's duration is recorded (HTTP_DURATION).
    A role adds its own checks (e.g. billing: the chain) to READINESS_CHECKS."""
    checks: list[ReadinessCheck] = [_backends_ready]
    app[READINESS_CHECKS] = checks
    # Outermost, so it times the other middlewares too and sees the status
    # they answer with (signaling's error_middleware turns exceptions into one).
    app.middlewares.insert(0, duration_middleware(role))

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": role})

    async def readyz(request: web.Request) -> web.Response:
        checks: dict[str, bool] = {}
        for check in request.app[READINESS_CHECKS]:
            checks.update(await check(request.app))
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks, "role": role},
                                 status=200 if ready else 503)

    async def metrics(_request: web.Request) -> web.Response:
        count_tasks()
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
