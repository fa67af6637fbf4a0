"""The OpenAPI document matches the app's routes both ways, is valid 3.1, and
the error shape it promises holds for the errors aiohttp raises itself."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from signaling.app import create_app
from signaling.openapi import openapi_document
from tests.api_client import Client, bearer, error_of
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


# -- every status a handler answers is documented ------------------------------------

_JSON_BODY = (b'{"title": "t", "account": "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", '
              b'"price_per_second": "0.002"}', "application/json")
_FIXED_BODIES: list[tuple[bytes, str] | None] = [
    None,
    (b"{", "application/json"),
    _JSON_BODY,
    (b"v=0\r\n", "application/sdp"),
    (b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n", "application/trickle-ice-sdpfrag"),
    (b"a=ice-ufrag:new\r\na=ice-pwd:newnewnewnewnewnewnewnew\r\n",
     "application/trickle-ice-sdpfrag"),

]
# Over every body limit: tried once per operation and ids (the limit comes first).
_BIG_BODIES = [(b"a=x\r\n" * 20_000, "application/trickle-ice-sdpfrag"),
               (b"a=x\r\n" * 20_000, "application/sdp"),
               (b'{"title": "' + b"x" * 70_000 + b'"}', "application/json")]
# Operations that end what the others need (a session, the stream, its key): tried
# last, in this order (a viewer's session before the publisher's, which ends it).
_LAST = [("delete", "/whep/{stream_id}/sessions/{resource_id}"),
         ("delete", "/whip/{stream_id}/sessions/{resource_id}"),
         ("post", "/api/streams/{stream_id}/key"), ("post", "/api/streams/{stream_id}/end")]


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    found = [(method, path, set(operation["responses"]))
             for path, item in doc["paths"].items()
             for method, operation in item.items() if method in _METHODS]
    def rank(op: tuple[str, str, set[str]]) -> int:
        return _LAST.index(op[:2]) + 1 if op[:2] in _LAST else 0

    return sorted(found, key=rank)


async def _offer(direction: str) -> bytes:
    from tests.media_clients import client_pc

    pc = client_pc()
    for kind in ("video", "audio"):
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp.encode()


async def test_every_status_a_handler_answers_is_documented(
        client: Client, worker_on_settings_port: None, db: Any, redis: Any) -> None:
    """Each operation is tried with bad and real ids (streams, WHIP and WHEP
    sessions), no/bad/good credentials and bodies of every kind, against a real
    worker; whatever it answers must be a status the document lists for it."""
    from tests.api_client import create_stream, login
    from tests.media_clients import Publisher, Viewer
    from vilokanam.balances import credit

    login_body = await login(client)
    token = login_body["token"]
    await credit(db, redis, login_body["user_id"], Decimal(100), "adjustment", "probe", 12)
    stream = await create_stream(client, token)
    idle = await create_stream(client, token)  # never published: its offers are parsed
    publisher = Publisher()

    async def whip(offer: str) -> str:
        response = await client.post(f"/whip/{stream['id']}", data=offer, headers={
            **bearer(stream["stream_key"]), "Content-Type": "application/sdp"})
        assert response.status == 201, await response.text()
        sessions.append(response.headers["Location"].rsplit("/", 1)[1])
        return await response.text()

    sessions: list[str] = []
    await publisher.start(whip)
    async def whep(offer: str) -> str:
        response = await client.post(f"/whep/{stream['id']}", data=offer, headers={
            **bearer(token), "Content-Type": "application/sdp"})
        assert response.status == 201, await response.text()
        sessions.append(response.headers["Location"].rsplit("/", 1)[1])
        return await response.text()

    # A viewer that connects: an offer left unanswered fails ICE and its
    # resource is gone before a slow machine's probes reach its DELETE.
    viewer = Viewer()
    await viewer.start(whep)

    bodies = [*_FIXED_BODIES, (await _offer("sendonly"), "application/sdp"),
              (await _offer("recvonly"), "application/sdp")]
    ids = {"stream_id": ["not-a-uuid", "00000000-0000-0000-0000-000000000000", stream["id"],
                         idle["id"]],
           "stream_viewer_id": ["not-a-uuid", "00000000-0000-0000-0000-000000000000"],
           "payment_id": ["not-a-uuid", "00000000-0000-0000-0000-000000000000"],
           "filename": ["nope.js", "vilokanam.js"],
           # community and VOD ids: malformed, unknown, and (accounts) real ones
           "account": ["not-an-account", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
                       login_body["account"]],
           "video_id": ["not-a-uuid", "00000000-0000-0000-0000-000000000000"],
           "comment_id": ["not-a-uuid", "00000000-0000-0000-0000-000000000000"],
           "report_id": ["not-a-uuid", "00000000-0000-0000-0000-000000000000"],
           "category_id": ["not-a-uuid", "00000000-0000-0000-0000-000000000000"]}
    unknown_video = "00000000-0000-0000-0000-000000000000"
    ids["video_id,view_id"] = [("not-a-uuid", "nope"), (unknown_video, unknown_video)]
    ids["video_id,resolution"] = [("not-a-uuid", "240p"), (unknown_video, "240p")]
    ids["video_id,resolution,segment"] = [("not-a-uuid", "240p", "seg_00000.ts"),
                                          (unknown_video, "240p", "seg_00000.ts")]
    # a session resource: under a bad stream id, unknown, and the two real ones
    ids["stream_id,resource_id"] = [("not-a-uuid", "nope"), (stream["id"], "nope"),
                                    *((stream["id"], session) for session in sessions)]
    credentials = [{}, bearer("garbage"), bearer(token), bearer(stream["stream_key"]),
                   bearer(idle["stream_key"])]
    answers: dict[tuple[str, str], set[int]] = {}
    try:
        for method, path, _ in _operations(openapi_document()):
            names = re.findall(r"\{(\w+)\}", path)
            combos = (ids[",".join(names)] if len(names) > 1
                      else [(value,) for value in ids[names[0]]] if names else [()])
            for values in combos:
                url = path
                for name, value in zip(names, values, strict=True):
                    url = url.replace(f"{{{name}}}", value)
                # a PATCH also without If-Match, and with another session's ETag
                if_matches = [None, '"nope"', "*"] if method == "patch" else ["*"]
                probes = [*itertools.product(credentials, bodies, if_matches),
                          *((bearer(token), big, "*") for big in _BIG_BODIES)]
                for headers, body, if_match in probes:
                    data, content_type = body or (None, None)
                    sent = {**headers, **({"If-Match": if_match} if if_match else {}),
                            **({"Content-Type": content_type} if content_type else {})}
                    response = await client.request(method.upper(), url, data=data,
                                                    headers=sent)
                    response.release()
                    answers.setdefault((method, path), set()).add(response.status)
                    if response.status == 429:  # let the next probes past the rate limit
                        await redis.delete(*await redis.keys("vk:ratelimit:*"))
    finally:
        await viewer.close()
        await publisher.close()
    undocumented_answers = {(method, path, status)
                            for method, path, statuses in _operations(openapi_document())
                            for status in answers[(method, path)]
                            if str(status) not in statuses}
    assert undocumented_answers == set()
    # the probes reached past the front door: sessions, SDP and candidates were handled
    assert {201, 400} <= answers[("post", "/whip/{stream_id}")]
    assert {204, 412, 428} <= answers[("patch", "/whip/{stream_id}/sessions/{resource_id}")]
    assert 200 in answers[("delete", "/whep/{stream_id}/sessions/{resource_id}")]
    assert 200 in answers[("delete", "/whip/{stream_id}/sessions/{resource_id}")]
