"""`/healthz`, `/readyz` and `/metrics`, the same on every role's HTTP port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from vilokanam.backends import BACKENDS

ReadinessCheck = Callable[[web.Application], Awaitable[dict[str, bool]]]


async def _backends_ready(app: web.Application) -> dict[str, bool]:
    return await app[BACKENDS].readiness()


READINESS_CHECKS = web.AppKey("readiness_checks", list[ReadinessCheck])


def add_health_routes(app: web.Application, role: str) -> None:
    """Liveness says the process serves; readiness that its stores answer.
    A role adds its own checks (e.g. billing: the chain) to READINESS_CHECKS."""
    checks: list[ReadinessCheck] = [_backends_ready]
    app[READINESS_CHECKS] = checks

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
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
