"""The OpenAPI document matches the app's routes both ways, is valid 3.1, and
the error shape it promises holds for the errors aiohttp raises itself."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from signaling.app import create_app
from signaling.openapi import openapi_document
from tests.test_api import Client, bearer, dev_settings, error_of, serve
from vilokanam.config import Settings

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, paths in OpenAPI's `{var}` form. HEAD is
    skipped: aiohttp adds it to every add_get by itself."""
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        resource = route.resource
        assert resource is not None
        if isinstance(resource, web.StaticResource):
            path = resource.canonical.rstrip("/") + "/{filename}"
        else:
            # `{name:regex}` would be a different spelling of the same variable.
            path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", resource.canonical)
        found.add((route.method.lower(), path))
    return found


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items()
            for method in item if method in _METHODS - {"head"}}


def undocumented(app: web.Application, doc: dict[str, Any]) -> set[tuple[str, str]]:
    return app_routes(app) - documented_routes(doc)


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings)


def test_every_route_is_documented_and_every_documented_route_exists(
        app: web.Application) -> None:
    doc = openapi_document()
    assert undocumented(app, doc) == set()
    assert documented_routes(doc) - app_routes(app) == set()


def test_an_added_route_without_documentation_is_caught(settings: Settings) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response()

    app = create_app(settings)
    app.router.add_put("/api/streams/{stream_id}", handler)
    app.router.add_get("/api/new-thing", handler)
    assert undocumented(app, openapi_document()) == {
        ("put", "/api/streams/{stream_id}"), ("get", "/api/new-thing")}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # openapi-spec-validator: the 3.1 meta-schema
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for ref in _refs(doc):
        assert _resolve(doc, ref) is not None, ref


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/")
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# -- the served document and the error shape -----------------------------------

@pytest.fixture
async def client(db: Any, redis: Any, settings: Settings) -> AsyncIterator[Client]:
    async with serve(dev_settings(settings)) as client:
        yield client


async def test_the_document_is_served(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert await response.json() == openapi_document()


async def test_an_unknown_api_route_is_404_in_the_error_shape(client: Client) -> None:
    assert await error_of(await client.get("/api/nope"), 404) == "not_found"


async def test_a_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.delete("/api/streams")
    assert await error_of(response, 405) == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}


async def test_an_oversized_body_is_413(client: Client) -> None:
    body = b'{"account": "' + b"x" * 70_000 + b'"}'
    response = await client.post("/api/dev/token", data=body,
                                  headers={"Content-Type": "application/json"})
    assert await error_of(response, 413) == "payload_too_large"


@pytest.mark.parametrize("body", [b"{", b"", b"[1]", b'{"a": NaN}'])
async def test_bad_json_is_400_bad_json(client: Client, body: bytes) -> None:
    response = await client.post("/api/dev/token", data=body,
                                 headers={"Content-Type": "application/json"})
    assert await error_of(response, 400) == "bad_json"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/me"), ("GET", "/api/me/sessions"), ("GET", "/api/me/earnings"),
    ("POST", "/api/streams"), ("GET", "/api/receipts/00000000-0000-0000-0000-000000000000")])
async def test_unauthenticated_is_401(client: Client, method: str, path: str) -> None:
    for headers in ({}, bearer("not-a-token")):
        response = await client.request(method, path, json={"title": "x"}, headers=headers)
        assert await error_of(response, 401) == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
