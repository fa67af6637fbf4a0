"""Cross-site requests, for every route of the router (the authorization
matrix's world and bodies, tests/test_authz_matrix.py):

- CSRF: the pages keep their token in sessionStorage and send it as an
  `Authorization: Bearer` header (signaling/static/js/core.js); no response
  sets a cookie and no handler reads one. So a cross-site POST/PUT/PATCH/
  DELETE that carries the owner's valid token in cookies — under any name —
  is anonymous: every credentialed route answers 401, and no table changes.
  The same request with the token in the header does change them (the
  control: the fault would land if cookies counted).
- CORS: `Access-Control-Allow-Origin` is sent on WHIP/WHEP answers (browser
  players on other origins) and on no other route."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.test_authz_matrix import (
    EXPECTED,
    Call,
    World,
    calls,
    client,
    world,
)

__all__ = ["client", "world"]

Client = TestClient[web.Request, web.Application]
EVIL = "https://evil.example"
WRITES = {"post", "put", "patch", "delete"}


async def snapshot(db: asyncpg.Connection) -> dict[str, str | None]:
    """A digest of every row of every table (migrations' bookkeeping aside)."""
    tables = [r["tablename"] for r in await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    return {table: await db.fetchval(
        f'SELECT md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) '
        f'FROM "{table}" t') for table in tables}


def credentialed(route: tuple[str, str]) -> bool:
    """Some caller is treated differently from another: credentials count."""
    return len(set(EXPECTED[route].values())) > 1


async def send(client: Client, world: World, route: tuple[str, str], params: dict[str, str],
               headers: dict[str, str]) -> int:
    method, template = route
    if template.endswith("/upload"):
        params = {**params, "video_id": params["upload_id"]}
    call = calls(world, params).get(route, Call())
    async with client.request(method.upper(), template.format(**params), json=call.json,
                              data=call.data, params=call.query,
                              headers={**call.headers, **headers}) as response:
        await response.read()
        assert "Set-Cookie" not in response.headers, f"{route} sets a cookie"
        return response.status


async def test_a_cross_site_write_carrying_only_cookies_changes_nothing(
        client: Client, world: World) -> None:
    token = world.callers["owner"].token
    cookies = "; ".join(f"{name}={token}" for name in (
        "token", "vk_token", "viewer_token", "session", "authorization", "Authorization"))
    cross_site = {"Origin": EVIL, "Referer": f"{EVIL}/attack", "Cookie": cookies,
                  "Sec-Fetch-Site": "cross-site"}
    writes = sorted(route for route in EXPECTED if route[0] in WRITES)
    assert len(writes) > 30  # the router's writes, not a handful
    params = {route: await world.resources() for route in writes}
    before = await snapshot(world.db)
    refused = {}
    for route in writes:
        await world.redis.delete(*await world.redis.keys("vk:ratelimit:*") or ["-"])
        status = await send(client, world, route, params[route], cross_site)
        if credentialed(route):
            refused[route] = status
    assert {route: s for route, s in refused.items() if s != 401} == {}
    assert await snapshot(world.db) == before, "a cookie-only cross-site request changed state"

    # The control: the owner's own requests (token in the header) do change them.
    for route in (("patch", "/api/me"), ("patch", "/api/streams/{stream_id}")):
        status = await send(client, world, route, params[route],
                            {"Authorization": f"Bearer {token}"})
        assert status == 200, route
    assert await snapshot(world.db) != before


async def test_cors_headers_only_on_whip_and_whep(client: Client, world: World) -> None:
    token = world.callers["owner"].token
    with_cors = set()
    for route in sorted(EXPECTED):
        method, template = route
        params = await world.resources()
        if template.endswith("/upload"):
            params = {**params, "video_id": params["upload_id"]}
        call = calls(world, params).get(route, Call())
        headers = {**call.headers, "Origin": EVIL, "Authorization": f"Bearer {token}"}
        if method == "options":
            headers["Access-Control-Request-Method"] = "POST"
        await world.redis.delete(*await world.redis.keys("vk:ratelimit:*") or ["-"])
        async with client.request(method.upper(), template.format(**params), json=call.json,
                                  data=call.data, params=call.query, headers=headers,
                                  allow_redirects=False) as response:
            await response.read()
            if any(h.lower().startswith("access-control-") for h in response.headers):
                with_cors.add(template)
    cors_paths = {t for _, t in EXPECTED if t.startswith(("/whip/", "/whep/"))}
    assert with_cors == cors_paths
