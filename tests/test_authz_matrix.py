"""The authorization matrix: every route of the signaling app (walked from
`app.router`, so a new route fails here until it has a row) x six callers —
anonymous, a viewer, the creator who owns the resource, another creator, a
moderator, a suspended user — answers the status in MATRIX, and every status
in MATRIX is one the OpenAPI document lists for that operation.

Each cell runs against fresh resources (a stream, a video, a comment, a report,
a viewing session and a video view, all the owner's; the session and the view
are the viewer's), so one caller's DELETE never decides the next caller's
answer. The app runs in production mode (no dev routes); tokens are issued as
`/api/auth/verify` issues them. Real Postgres and Redis; no SFU worker runs, so
WHIP/WHEP answer as they do when no worker carries the stream.

Reading MATRIX: one row per route; `-` = the route takes no credentials (a
page, a capability URL, a login step): every caller gets the first cell's
status. For `/api/receipts/{stream_viewer_id}` and `/api/videos/{video_id}/
views/{view_id}` the resource is the *viewer's* (their own viewing session),
so the viewer column is the owner's.

A new route fails `test_every_route_has_a_row_and_every_row_a_route` by name
until its row is added: decide each caller's status, then add the row."""

from __future__ import annotations

import dataclasses
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from signaling.app import create_app
from signaling.openapi import openapi_document
from signaling.tokens import issue_token
from tests.test_community_api import _image
from tests.test_openapi import app_routes
from vilokanam.accounts import address_of
from vilokanam.balances import credit
from vilokanam.config import Settings

SECRET = "m" * 40
ROLES = ("anonymous", "viewer", "owner", "other", "moderator", "suspended")

# method, path, then one status per role in ROLES (anonymous viewer owner other
# moderator suspended). 401: no credentials; 403: credentials, but not yours /
# not a moderator / suspended; 404 where a resource that is not the caller's is
# not revealed; 4xx beyond those: the caller passed authorization and the
# request itself decided (the last column says why).
MATRIX = """
method  path                                     anon view own  othr mod  susp why
GET     /                                        200  -    -    -    -    -    page
POST    /api/auth/challenge                      200  -    -    -    -    -    login step
POST    /api/auth/verify                         401  -    -    -    -    -    a bad signature
GET     /api/billing/info                        200  -    -    -    -    -
GET     /api/categories                          200  -    -    -    -    -
POST    /api/categories                          401  403  403  403  201  403  moderators only
DELETE  /api/comments/{comment_id}               401  403  200  403  200  403  author/creator/mod
POST    /api/comments/{comment_id}/like          401  200  200  200  200  403
DELETE  /api/comments/{comment_id}/like          401  200  200  200  200  403
POST    /api/dev/token                           404  -    -    -    -    -    dev mode only
GET     /api/me                                  401  200  200  200  200  403
PATCH   /api/me                                  401  200  200  200  200  403
GET     /api/me/dashboard                        401  403  200  200  403  403  creators only
GET     /api/me/earnings                         401  200  200  200  200  403
GET     /api/me/feed                             401  200  200  200  200  403
GET     /api/me/following                        401  200  200  200  200  403
GET     /api/me/payouts                          401  200  200  200  200  403
PUT     /api/me/profile-image                    401  200  200  200  200  403
DELETE  /api/me/profile-image                    401  200  200  200  200  403
GET     /api/me/sessions                         401  200  200  200  200  403
GET     /api/me/stream-sessions                  401  200  200  200  200  403
GET     /api/me/streams                          401  200  200  200  200  403
PUT     /api/me/subscription-offer               401  200  200  200  200  403
DELETE  /api/me/subscription-offer               401  200  200  200  200  403
GET     /api/me/subscriptions                    401  200  200  200  200  403
GET     /api/me/videos                           401  200  200  200  200  403
GET     /api/moderation/reports                  401  403  403  403  200  403  moderators only
POST    /api/moderation/reports/{report_id}      401  403  403  403  200  403  moderators only
GET     /api/openapi.json                        200  -    -    -    -    -
GET     /api/receipts/{stream_viewer_id}         401  200  404  404  404  403  the viewer's own
GET     /api/receipts/payments/{payment_id}  401  200  404  404  404  403  the payer's own
POST    /api/reports                             401  201  201  201  201  403
GET     /api/streams                             200  -    -    -    -    -
POST    /api/streams                             401  201  201  201  201  403  makes a creator
GET     /api/streams/{stream_id}                 200  -    -    -    -    -
PATCH   /api/streams/{stream_id}                 401  403  200  403  403  403  the creator only
GET     /api/streams/{stream_id}/comments        200  -    -    -    -    -
POST    /api/streams/{stream_id}/comments        401  201  201  201  201  403
POST    /api/streams/{stream_id}/end             401  403  200  403  403  403  the creator only
POST    /api/streams/{stream_id}/key             401  403  200  403  403  403  the creator only
GET     /api/streams/{stream_id}/thumbnail.jpg   404  -    -    -    -    -    none made
GET     /api/users/{account}                     200  -    -    -    -    -
POST    /api/users/{account}/follow              401  200  400  200  200  403  400: not yourself
DELETE  /api/users/{account}/follow              401  200  400  200  200  403  400: not yourself
GET     /api/users/{account}/followers           200  -    -    -    -    -
GET     /api/users/{account}/following           200  -    -    -    -    -
GET     /api/users/{account}/profile-image       404  -    -    -    -    -    none uploaded
POST    /api/users/{account}/subscription        401  201  400  201  201  403  400: not to yourself
GET     /api/users/{account}/subscription-offer  200  -    -    -    -    -
POST    /api/users/{account}/tips                401  201  400  201  201  403  400: not to yourself
GET     /api/videos                              200  -    -    -    -    -
OPTIONS /api/videos                              204  -    -    -    -    -    tus discovery
POST    /api/videos                              401  201  201  201  201  403  makes a creator
GET     /api/videos/{video_id}                   200  -    -    -    -    -
PATCH   /api/videos/{video_id}                   401  403  200  403  403  403  the creator only
GET     /api/videos/{video_id}/analytics         401  403  200  403  403  403  the creator only
PUT     /api/videos/{video_id}/categories        401  403  200  403  403  403  the creator only
GET     /api/videos/{video_id}/comments          200  -    -    -    -    -
GET     /api/videos/{video_id}/comment-likes     401  200  200  200  200  403
GET     /api/videos/{video_id}/like          401  200  200  200  200  403
POST    /api/videos/{video_id}/comments          401  201  201  201  201  403
POST    /api/videos/{video_id}/like              401  200  200  200  200  403
DELETE  /api/videos/{video_id}/like              401  200  200  200  200  403
GET     /api/videos/{video_id}/thumbnail.jpg     404  -    -    -    -    -    none made
HEAD    /api/videos/{video_id}/upload            401  403  200  403  403  403  the uploader only
PATCH   /api/videos/{video_id}/upload            401  403  204  403  403  403  the uploader only
POST    /api/videos/{video_id}/views             401  201  201  201  201  403
GET     /api/videos/{video_id}/views/{view_id}   401  200  404  404  404  403  the viewer's own
GET     /c/{account}                             200  -    -    -    -    -    page
GET     /category/{category_id}                  200  -    -    -    -    -    page
GET     /healthz                                 200  -    -    -    -    -
GET     /metrics                                 200  -    -    -    -    -
GET     /moderation                              200  -    -    -    -    -    page (JS signs in)
GET     /publish/{stream_id}                     200  -    -    -    -    -    page (JS signs in)
GET     /readyz                                  200  -    -    -    -    -
GET     /static/{filename}                       200  -    -    -    -    -
GET     /studio                                  200  -    -    -    -    -    page (JS signs in)
GET     /video/{video_id}                        200  -    -    -    -    -    page
GET     /vod/{video_id}/master.m3u8              403  -    -    -    -    -    unsigned URL
GET     /vod/{video_id}/{resolution}/index.m3u8  403  -    -    -    -    -    unsigned URL
GET     /vod/{video_id}/{resolution}/{segment}   403  -    -    -    -    -    unsigned URL
GET     /wallet                                  200  -    -    -    -    -    page (JS signs in)
GET     /watch/{stream_id}                       200  -    -    -    -    -    page
GET     /whep/{stream_id}                        200  -    -    -    -    -    what it accepts
OPTIONS /whep/{stream_id}                        200  -    -    -    -    -    CORS preflight
POST    /whep/{stream_id}                        401  409  409  409  409  403  409: not live
GET     /whep/{stream_id}/sessions/{resource_id} 404  -    -    -    -    -    a capability URL
OPTIONS /whep/{stream_id}/sessions/{resource_id} 200  -    -    -    -    -    CORS preflight
PATCH   /whep/{stream_id}/sessions/{resource_id} 404  -    -    -    -    -    a capability URL
DELETE  /whep/{stream_id}/sessions/{resource_id} 404  -    -    -    -    -    a capability URL
GET     /whip/{stream_id}                        200  -    -    -    -    -    what it accepts
OPTIONS /whip/{stream_id}                        200  -    -    -    -    -    CORS preflight
POST    /whip/{stream_id}                        401  401  401  401  401  401  needs the stream key
GET     /whip/{stream_id}/sessions/{resource_id} 404  -    -    -    -    -    a capability URL
OPTIONS /whip/{stream_id}/sessions/{resource_id} 200  -    -    -    -    -    CORS preflight
PATCH   /whip/{stream_id}/sessions/{resource_id} 404  -    -    -    -    -    a capability URL
DELETE  /whip/{stream_id}/sessions/{resource_id} 404  -    -    -    -    -    a capability URL
GET     /ws                                      400  -    -    -    -    -    auth in the protocol
"""

Route = tuple[str, str]


def parse_matrix(text: str) -> dict[Route, dict[str, int]]:
    rows: dict[Route, dict[str, int]] = {}
    for line in text.strip().splitlines()[1:]:  # the first line is the heading
        method, path, first, *rest = line.split(maxsplit=2 + len(ROLES))[:2 + len(ROLES)]
        statuses = [int(first)] + [int(first) if c == "-" else int(c) for c in rest]
        assert (method.lower(), path) not in rows, f"{method} {path} is in MATRIX twice"
        rows[(method.lower(), path)] = dict(zip(ROLES, statuses, strict=True))
    return rows


EXPECTED = parse_matrix(MATRIX)


def every_route(app: web.Application) -> set[Route]:
    """What the app serves: test_openapi's walk of the router, plus a HEAD
    added on its own (not the one aiohttp adds beside every GET)."""
    routes = app_routes(app)
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" and resource is not None and not any(
                r.method == "GET" for r in resource):
            routes.add(("head", re.sub(r"\{(\w+):[^}]*\}", r"{\1}", resource.canonical)))
    return routes


# -- the callers and the resources ----------------------------------------------------

@dataclass
class Caller:
    user_id: str
    account: str
    token: str


@dataclass
class World:
    """The callers (made once) and each cell's fresh resources."""

    db: asyncpg.Connection
    redis: aioredis.Redis
    callers: dict[str, Caller] = field(default_factory=dict)

    async def caller(self, role: str, *, creator: bool = False, moderator: bool = False,
                     suspended: bool = False) -> None:
        account = address_of(f"//Authz{role.title()}{uuid.uuid4().hex[:8]}")
        user_id = str(await self.db.fetchval(
            "INSERT INTO users (account_id, is_creator, role, suspended_at) "
            "VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END) RETURNING id",
            account, creator, "moderator" if moderator else "user", suspended))
        await credit(self.db, self.redis, user_id, Decimal(100), "adjustment", "authz", 12)
        self.callers[role] = Caller(user_id, account, issue_token(SECRET, user_id, account))

    async def resources(self) -> dict[str, str]:
        """Path parameters naming fresh resources of the owner (and the viewer)."""
        owner, viewer = self.callers["owner"], self.callers["viewer"]
        stream = str(await self.db.fetchval(
            "INSERT INTO streams (creator_id, title, stream_key_hash, price_per_second) "
            "VALUES ($1, 'authz', sha256(gen_random_uuid()::text::bytea), 0.001) "
            "RETURNING id", owner.user_id))
        video = str(await self.db.fetchval(
            "INSERT INTO videos (creator_id, title, status, published_at, price_per_second) "
            "VALUES ($1, 'authz', 'ready', now(), 0.001) RETURNING id", owner.user_id))
        upload = str(await self.db.fetchval(  # a tus upload, its 4 bytes still to come
            "INSERT INTO videos (creator_id, title, status, price_per_second, upload_length, "
            "upload_offset) VALUES ($1, 'authz', 'uploading', 0.001, 4, 0) RETURNING id",
            owner.user_id))
        await self.db.execute(  # a PUT/DELETE /api/me/subscription-offer may have changed it
            "INSERT INTO subscription_offers (creator_id, price, period_days) VALUES ($1, 1, 30) "
            "ON CONFLICT (creator_id) DO UPDATE SET price = 1", owner.user_id)
        comment = str(await self.db.fetchval(
            "INSERT INTO comments (id, video_id, author_id, content) "
            "VALUES (gen_random_uuid(), $1, $2, 'mine') RETURNING id", video, owner.user_id))
        report = str(await self.db.fetchval(
            "INSERT INTO reports (id, reporter_id, target_type, target_id, reason) "
            "VALUES (gen_random_uuid(), $1, 'video', $2, 'spam') RETURNING id",
            self.callers["reporter"].user_id, video))
        session = str(await self.db.fetchval(
            "INSERT INTO stream_sessions (stream_id) VALUES ($1) RETURNING id", stream))
        stream_viewer = str(await self.db.fetchval(
            "INSERT INTO stream_viewers (stream_id, viewer_id, session_id, price_per_second) "
            "VALUES ($1, $2, $3, 0.001) RETURNING id", stream, viewer.user_id, session))
        view = str(await self.db.fetchval(
            "INSERT INTO video_views (id, video_id, viewer_id, view_duration, "
            "watch_completion, price_per_second) VALUES (gen_random_uuid(), $1, $2, 0, 0, "
            "0.001) RETURNING id", video, viewer.user_id))
        payment = str(await self.db.fetchval(  # the viewer's tip to the owner
            "INSERT INTO payments (from_user_id, to_user_id, amount, payment_type, "
            "reference_id, status) VALUES ($1, $2, 1, 'tip', gen_random_uuid(), 'pending') "
            "RETURNING id", viewer.user_id, owner.user_id))
        category = str(await self.db.fetchval(  # the tests empty the seeded ones
            "INSERT INTO categories (name) VALUES ('authz-' || gen_random_uuid()) RETURNING id"))
        return {"stream_id": stream, "video_id": video, "upload_id": upload, "comment_id": comment,
                "payment_id": payment, "category_id": category,
                "report_id": report, "stream_viewer_id": stream_viewer, "view_id": view,
                "account": owner.account, "resource_id": "x" * 32, "filename": "css/app.css",
                "resolution": "720p", "segment": "segment0.ts"}


@dataclass(frozen=True)
class Call:
    """What a cell sends besides the path and the caller's Bearer."""

    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)


def _tus(**headers: str) -> dict[str, str]:
    return {"Tus-Resumable": "1.0.0", **headers}


def calls(world: World, params: dict[str, str]) -> dict[Route, Call]:
    """The request body each route needs to get past its validation, so that
    authorization (and nothing else) decides the cell."""
    unique = uuid.uuid4().hex[:10]
    return {
        ("post", "/api/auth/challenge"): Call({"account": world.callers["viewer"].account}),
        ("post", "/api/auth/verify"): Call({"account": world.callers["viewer"].account,
                                            "signature": "0x" + "00" * 64}),
        ("post", "/api/categories"): Call({"name": f"authz-{unique}"}),
        ("post", "/api/dev/token"): Call({"account": world.callers["viewer"].account}),
        ("patch", "/api/me"): Call({"bio": "authz"}),
        ("put", "/api/me/profile-image"): Call(data=_image("png", "rgb24"),
                                               headers={"Content-Type": "image/png"}),
        ("put", "/api/me/subscription-offer"): Call({"price": "1"}),
        ("post", "/api/moderation/reports/{report_id}"): Call({"action": "dismiss"}),
        ("post", "/api/reports"): Call({"target_type": "video", "target_id": params["video_id"],
                                        "reason": "spam"}),
        ("post", "/api/streams"): Call({"title": "authz"}),
        ("patch", "/api/streams/{stream_id}"): Call({"title": "renamed"}),
        ("post", "/api/streams/{stream_id}/comments"): Call({"content": "hello"}),
        ("post", "/api/users/{account}/subscription"): Call({}),
        ("post", "/api/users/{account}/tips"): Call({"amount": "0.01"}),
        ("post", "/api/videos"): Call(data=b"not a video", query={"title": "authz"},
                                      headers={"Content-Type": "video/mp4"}),
        ("patch", "/api/videos/{video_id}"): Call({"title": "renamed"}),
        ("put", "/api/videos/{video_id}/categories"): Call({"categories": []}),
        ("post", "/api/videos/{video_id}/comments"): Call({"content": "hello"}),
        ("head", "/api/videos/{video_id}/upload"): Call(headers=_tus()),
        ("patch", "/api/videos/{video_id}/upload"): Call(data=b"abcd", headers=_tus(**{
            "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})),
        ("post", "/whep/{stream_id}"): Call(data=OFFER, headers={"Content-Type":
                                                                 "application/sdp"}),
        ("post", "/whip/{stream_id}"): Call(data=OFFER, headers={"Content-Type":
                                                                 "application/sdp"}),
        ("patch", "/whep/{stream_id}/sessions/{resource_id}"): Call(
            data=b"a=end-of-candidates\r\n",
            headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}),
        ("patch", "/whip/{stream_id}/sessions/{resource_id}"): Call(
            data=b"a=end-of-candidates\r\n",
            headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}),
    }


OFFER = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
         b"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
         b"m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
         b"a=rtpmap:96 VP8/90000\r\na=setup:actpass\r\n"
         b"a=fingerprint:sha-256 " + b":".join([b"AB"] * 32) + b"\r\n")

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def world(db: asyncpg.Connection, redis: aioredis.Redis) -> World:
    world = World(db, redis)
    await world.caller("viewer")
    await world.caller("owner", creator=True)
    await world.caller("other", creator=True)
    await world.caller("moderator", moderator=True)
    await world.caller("suspended", suspended=True)
    await world.caller("reporter")  # files the reports moderators act on; no column
    return world


@pytest.fixture
async def client(settings: Settings, world: World) -> AsyncIterator[Client]:
    app = create_app(dataclasses.replace(settings, dev_mode=False, token_secret=SECRET))
    async with TestClient(TestServer(app, host=settings.http_host,
                                     port=settings.http_port)) as client:
        yield client


async def ask(client: Client, world: World, route: Route, role: str) -> int:
    method, template = route
    params = await world.resources()
    call = calls(world, params).get(route, Call())
    if template.endswith("/upload"):  # the tus routes act on an upload in progress
        params = {**params, "video_id": params["upload_id"]}
    path = template.format(**params)
    headers = dict(call.headers)
    if role != "anonymous":
        headers["Authorization"] = f"Bearer {world.callers[role].token}"
    async with client.request(method.upper(), path, json=call.json, data=call.data,
                              params=call.query, headers=headers,
                              allow_redirects=False) as response:
        await response.read()
        return response.status


def documented_statuses(doc: dict[str, Any], route: Route) -> set[int]:
    method, path = route
    operation = doc["paths"][path][method]
    return {int(code) for code in operation.get("responses", {}) if code.isdigit()}


# -- the tests ----------------------------------------------------------------------

def test_every_route_has_a_row_and_every_row_a_route(settings: Settings) -> None:
    served = every_route(create_app(settings))
    assert sorted(served - EXPECTED.keys()) == [], "routes missing from MATRIX"
    assert sorted(EXPECTED.keys() - served) == [], "MATRIX rows of no route"


def test_every_expected_status_is_documented() -> None:
    doc = openapi_document()
    undocumented = {
        f"{method.upper()} {path} {status}"
        for (method, path), row in EXPECTED.items() if method != "head"
        for status in set(row.values()) - documented_statuses(doc, (method, path))
        if status not in (404, 405)}  # aiohttp's own answers for no such route / method
    assert not undocumented, "\n".join(sorted(undocumented))


async def test_every_route_answers_every_caller_as_the_matrix_says(
        client: Client, world: World) -> None:
    wrong = []
    for route, role in itertools.product(sorted(EXPECTED), ROLES):
        # The limit on failed credentials (a token is a wrong stream key) is
        # not authorization: every cell starts below it.
        await world.redis.delete(*await world.redis.keys("vk:ratelimit:*") or ["-"])
        status = await ask(client, world, route, role)
        if status != EXPECTED[route][role]:
            wrong.append(f"{route[0].upper()} {route[1]} as {role}: {status}, "
                         f"MATRIX says {EXPECTED[route][role]}")
    assert not wrong, "\n".join(wrong)


