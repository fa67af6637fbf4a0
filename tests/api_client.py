"""How tests talk to the real signaling app: dev-mode settings, the app
served on its configured port, dev logins, bearer headers and the one error
shape. Shared by the API, page and protocol tests (and conftest's `client`)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from signaling.app import create_app
from vilokanam.config import Settings

SECRET = "x" * 40
# //Alice and //Bob: the same keys in SS58 prefix 42 (generic) and 2 (the dev chain's).
ALICE_42 = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
ALICE_2 = "HNZata7iMYWmk5RvZRTiAsSDhV8366zq2YGb3tLH5Upf74F"
BOB_42 = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


def dev_settings(settings: Settings, **overrides: Any) -> Settings:
    return dataclasses.replace(settings, **{"dev_mode": True, "token_secret": SECRET,
                                            **overrides})


@asynccontextmanager
async def serve(settings: Settings,
                prepare: Any = None) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The real signaling app on settings.http_port (so base_url is its true
    address); `prepare(app)` may add test-only routes before it starts."""
    app = create_app(settings)
    if prepare is not None:
        prepare(app)
    server = TestServer(app, host=settings.http_host, port=settings.http_port)
    async with TestClient(server) as client:
        yield client


Client = TestClient[web.Request, web.Application]


async def error_of(response: Any, status: int) -> str:
    """Assert the one error shape and status; return the code."""
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["code"])


async def login(client: Client, account: str = ALICE_42) -> dict[str, str]:
    response = await client.post("/api/dev/token", json={"account": account})
    assert response.status == 200, await response.text()
    return dict(await response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_stream(client: Client, token: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/streams", json={"title": "Live", **body},
                                 headers=bearer(token))
    assert response.status == 201, await response.text()
    return dict(await response.json())
