"""The REST API against real Postgres and Redis: every route, every error code,
exact amounts, and the stream key never leaving the creation response."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from signaling.errors import ApiError
from signaling.tokens import issue_token, verify_token
from tests.api_client import (
    ALICE_2,
    ALICE_42,
    BOB_42,
    SECRET,
    Client,
    bearer,
    create_stream,
    dev_settings,
    error_of,
    login,
    serve,
)
from tests.flushing import flush_all
from vilokanam.config import Settings

STREAM_FIELDS = {"id", "title", "status", "creator_account", "price_per_second", "viewer_count",
                 "total_ticks", "start_time", "end_time", "watch_url", "whep_url",
                 "category_id", "category", "require_signed_receipts", "record",
                 "recording_video_id", "thumbnail_url"}


# -- dev tokens and users ------------------------------------------------------

async def test_dev_token_creates_the_user_and_signs_a_token(client: Client,
                                                            db: asyncpg.Connection) -> None:
    body = await login(client, ALICE_42)
    assert set(body) == {"token", "user_id", "account"}
    claims = verify_token(SECRET, body["token"])
    assert (claims.user_id, claims.account) == (body["user_id"], ALICE_42)
    row = await db.fetchrow("SELECT id::text, account_id, is_creator FROM users")
    assert tuple(row) == (body["user_id"], ALICE_42, False)


async def test_one_key_in_two_prefixes_is_one_user(client: Client,
                                                   db: asyncpg.Connection) -> None:
    generic, chain = await login(client, ALICE_42), await login(client, ALICE_2)
    assert generic["user_id"] == chain["user_id"]
    assert generic["account"] == chain["account"] == ALICE_42  # stored in prefix 42
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert (await login(client, BOB_42))["user_id"] != generic["user_id"]


@pytest.mark.parametrize("account", ["nope", "", 42, None, ALICE_42[:-1] + "Z", [ALICE_42]])
async def test_dev_token_refuses_invalid_accounts(client: Client, account: Any) -> None:
    response = await client.post("/api/dev/token", json={"account": account})
    assert await error_of(response, 400) == "invalid_account"


async def test_dev_token_is_off_unless_dev_mode(db: asyncpg.Connection,
                                                settings: Settings) -> None:
    async with serve(dev_settings(settings, dev_mode=False)) as client:
        response = await client.post("/api/dev/token", json={"account": ALICE_42})
        assert await error_of(response, 404) == "not_found"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_without_a_token_secret_no_tokens(db: asyncpg.Connection,
                                                settings: Settings) -> None:
    async with serve(dev_settings(settings, token_secret=None)) as client:
        response = await client.post("/api/dev/token", json={"account": ALICE_42})
        assert await error_of(response, 503) == "tokens_unavailable"
        response = await client.get("/api/me", headers=bearer("v1.a.b"))
        assert await error_of(response, 503) == "tokens_unavailable"


# -- the error shape ------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'"text"', b'{"account": NaN}',
                                 b"\xff\xfe{}"])
async def test_bad_json_is_400(client: Client, raw: bytes) -> None:
    response = await client.post("/api/dev/token", data=raw,
                                 headers={"Content-Type": "application/json"})
    assert await error_of(response, 400) == "bad_json"


async def test_unknown_api_route_is_404(client: Client) -> None:
    for path in ("/api/nope", "/api/streams/a/b", "/api"):
        assert await error_of(await client.get(path), 404) == "not_found"


async def test_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.delete("/api/streams")
    assert await error_of(response, 405) == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
    response = await client.put("/api/me")
    assert await error_of(response, 405) == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


async def test_oversized_body_is_413(client: Client) -> None:
    token = (await login(client))["token"]
    body = b'{"title": "' + b"a" * (65 * 1024) + b'"}'
    response = await client.post("/api/streams", data=body, headers=bearer(token))
    assert await error_of(response, 413) == "payload_too_large"


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer  "},
    {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer v1.e30.forged"},
    {"Authorization": "Bearer " + issue_token("y" * 40, "u", ALICE_42)},  # another secret
    {"Authorization": "Bearer " + issue_token(SECRET, "u", ALICE_42, ttl_s=-1)},  # expired
])
async def test_missing_or_invalid_bearer_is_401(client: Client,
                                                headers: dict[str, str]) -> None:
    for response in (await client.get("/api/me", headers=headers),
                     await client.post("/api/streams", json={"title": "t"}, headers=headers)):
        assert await error_of(response, 401) == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_no_exception_escapes_a_handler(db: asyncpg.Connection,
                                              settings: Settings) -> None:
    def prepare(app: web.Application) -> None:
        async def boom(_request: web.Request) -> web.Response:
            raise RuntimeError("a bug")

        async def store_down(_request: web.Request) -> web.Response:
            raise ConnectionRefusedError("postgres is down")

        async def teapot(_request: web.Request) -> web.Response:
            raise ApiError(418, "teapot", "short and stout")

        app.router.add_get("/api/test/boom", boom)
        app.router.add_get("/api/test/store-down", store_down)
        app.router.add_get("/api/test/teapot", teapot)

    async with serve(dev_settings(settings), prepare) as client:
        assert await error_of(await client.get("/api/test/boom"), 500) == "internal_error"
        response = await client.get("/api/test/store-down")
        assert await error_of(response, 503) == "unavailable"
        assert response.headers["Retry-After"] == "1"
        assert await error_of(await client.get("/api/test/teapot"), 418) == "teapot"


# -- creating streams --------------------------------------------------------------

async def test_create_stream(client: Client, db: asyncpg.Connection,
                             settings: Settings) -> None:
    user = await login(client)
    created = await create_stream(client, user["token"], title="  My show  ")
    assert set(created) >= {"id", "stream_key", "whip_url", "whep_url", "watch_url",
                            "publish_url", "title", "price_per_second", "status"}
    stream_id = created["id"]
    assert str(uuid.UUID(stream_id)) == stream_id
    base = f"http://127.0.0.1:{settings.http_port}"
    assert (created["whip_url"], created["whep_url"], created["watch_url"],
            created["publish_url"]) == (f"{base}/whip/{stream_id}", f"{base}/whep/{stream_id}",
                                        f"{base}/watch/{stream_id}",
                                        f"{base}/publish/{stream_id}")
    assert (created["title"], created["status"], created["price_per_second"],
            created["creator_account"]) == ("My show", "pending", "0.001", ALICE_42)
    assert await db.fetchval("SELECT is_creator FROM users WHERE id = $1::uuid",
                             user["user_id"]) is True
    assert created["require_signed_receipts"] is False


async def test_a_stream_may_require_signed_receipts(client: Client,
                                                    db: asyncpg.Connection) -> None:
    user = await login(client)
    created = await create_stream(client, user["token"], require_signed_receipts=True)
    assert created["require_signed_receipts"] is True
    assert await db.fetchval("SELECT require_signed_receipts FROM streams WHERE id = $1::uuid",
                             created["id"]) is True
    response = await client.post("/api/streams", json={"title": "x",
                                                       "require_signed_receipts": "yes"},
                                 headers=bearer(user["token"]))
    assert await error_of(response, 400) == "invalid_require_signed_receipts"


async def test_public_url_makes_the_urls(db: asyncpg.Connection, settings: Settings) -> None:
    async with serve(dev_settings(settings, public_url="https://live.example/")) as client:
        created = await create_stream(client, (await login(client))["token"])
        assert created["whip_url"] == f"https://live.example/whip/{created['id']}"
        assert created["watch_url"] == f"https://live.example/watch/{created['id']}"


async def test_the_key_is_stored_only_as_its_hash(client: Client,
                                                  db: asyncpg.Connection) -> None:
    created = await create_stream(client, (await login(client))["token"])
    key = created["stream_key"]
    stored = await db.fetchval("SELECT stream_key_hash FROM streams WHERE id = $1::uuid",
                               created["id"])
    assert len(stored) == 32 and bytes(stored) == hashlib.sha256(key.encode()).digest()
    row = await db.fetchrow("SELECT * FROM streams")
    assert all(key not in str(value) for value in dict(row).values())
    for path in (f"/api/streams/{created['id']}", "/api/streams"):
        text = await (await client.get(path)).text()
        assert key not in text and "stream_key" not in text and stored.hex() not in text


async def test_two_streams_get_two_keys(client: Client) -> None:
    token = (await login(client))["token"]
    first, second = await create_stream(client, token), await create_stream(client, token)
    assert first["id"] != second["id"] and first["stream_key"] != second["stream_key"]


@pytest.mark.parametrize(("sent", "returned"), [
    ('"0.000000000001"', "0.000000000001"),
    ("0.000000000001", "0.000000000001"),  # a JSON number, parsed as Decimal, not float
    ('"1.500"', "1.5"),
    ("5", "5"),
    ('"10"', "10"),
    ("1e-3", "0.001"),
    ('"99999999999999999999.999999999999"', "99999999999999999999.999999999999"),
    ('"0.1000000000000000000000"', "0.1"),  # trailing zeros past 12 decimals are fine
])
async def test_price_round_trips_exactly(client: Client, sent: str, returned: str) -> None:
    token = (await login(client))["token"]
    body = f'{{"title": "t", "price_per_second": {sent}}}'.encode()
    response = await client.post("/api/streams", data=body, headers=bearer(token))
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["price_per_second"] == returned
    fetched = await (await client.get(f"/api/streams/{created['id']}")).json()
    assert fetched["price_per_second"] == returned


@pytest.mark.parametrize("price", [
    "0", "0.0", 0, "-1", -0.5, "abc", "", " 1", "1e-3", "NaN", "Infinity", "1_000", True,
    "0.0000000000000000001", "0.0000000000001",  # below one planck (12 decimals)
    "0.000000000000000001", "1e-99999999", 1e20, "100000000000000000000", [1], {"v": 1},
])
async def test_invalid_prices_are_400(client: Client, price: Any) -> None:
    token = (await login(client))["token"]
    response = await client.post("/api/streams", json={"title": "t", "price_per_second": price},
                                 headers=bearer(token))
    assert await error_of(response, 400) == "invalid_price"


async def test_a_huge_exponent_is_refused_quickly(client: Client) -> None:
    token = (await login(client))["token"]
    for raw in (b"1e-999999999", b"1e999999999"):
        body = b'{"title": "t", "price_per_second": ' + raw + b"}"
        response = await client.post("/api/streams", data=body, headers=bearer(token))
        assert await error_of(response, 400) == "invalid_price"


@pytest.mark.parametrize("title", [None, "", "   ", "a" * 256, 123, ["t"], "a\x00b"])
async def test_invalid_titles_are_400(client: Client, title: Any) -> None:
    token = (await login(client))["token"]
    body = {} if title is None else {"title": title}
    response = await client.post("/api/streams", json=body, headers=bearer(token))
    assert await error_of(response, 400) == "invalid_title"


async def test_a_255_character_title_is_fine(client: Client) -> None:
    created = await create_stream(client, (await login(client))["token"], title="é" * 255)
    assert created["title"] == "é" * 255


# -- reading streams ---------------------------------------------------------------

async def test_get_stream(client: Client, db: asyncpg.Connection) -> None:
    created = await create_stream(client, (await login(client))["token"], price_per_second="2")
    await db.execute("UPDATE streams SET status = 'live', start_time = NOW(), viewer_count = 3, "
                     "total_ticks = 9000000000 WHERE id = $1::uuid", created["id"])
    response = await client.get(f"/api/streams/{created['id']}")
    assert response.status == 200
    stream = await response.json()
    assert set(stream) == STREAM_FIELDS
    assert (stream["status"], stream["viewer_count"], stream["total_ticks"],
            stream["price_per_second"], stream["end_time"]) == ("live", 3, 9000000000, "2", None)
    assert stream["watch_url"] == created["watch_url"]
    assert stream["whep_url"] == created["whep_url"]
    started = datetime.fromisoformat(stream["start_time"])
    assert started.tzinfo is not None  # an instant, whatever the database's time zone
    assert abs(datetime.now(UTC) - started) < timedelta(minutes=1)


async def test_get_unknown_or_malformed_stream(client: Client) -> None:
    response = await client.get(f"/api/streams/{uuid.uuid4()}")
    assert await error_of(response, 404) == "stream_not_found"
    response = await client.get("/api/streams/not-a-uuid")
    assert await error_of(response, 400) == "invalid_stream_id"


async def make_streams(client: Client, db: asyncpg.Connection,
                       specs: list[tuple[str, str, int, int | None]]) -> dict[str, str]:
    """Streams named by title with (status, viewers, start minutes ago); returns title → id."""
    token = (await login(client))["token"]
    ids = {}
    for title, status, viewers, minutes_ago in specs:
        stream_id = (await create_stream(client, token, title=title))["id"]
        await db.execute(
            "UPDATE streams SET status = $2, viewer_count = $3, "
            "start_time = NOW() - make_interval(mins => $4) WHERE id = $1::uuid",
            stream_id, status, viewers, minutes_ago)
        ids[title] = stream_id
    return ids


async def titles(client: Client, query: str = "") -> list[str]:
    response = await client.get(f"/api/streams{query}")
    assert response.status == 200, await response.text()
    body = await response.json()
    assert all(set(stream) == STREAM_FIELDS for stream in body["streams"])
    return [stream["title"] for stream in body["streams"]]


async def test_list_filters_orders_and_pages(client: Client, db: asyncpg.Connection) -> None:
    await make_streams(client, db, [
        ("quiet", "live", 1, 5), ("busy", "live", 50, 60), ("new-busy", "live", 50, 1),
        ("done", "ended", 99, 120), ("soon", "pending", 0, None),
    ])
    # Most viewers first; among equals the most recently started.
    assert await titles(client, "?status=live") == ["new-busy", "busy", "quiet"]
    assert await titles(client) == ["done", "new-busy", "busy", "quiet", "soon"]
    assert await titles(client, "?status=live&limit=2") == ["new-busy", "busy"]
    assert await titles(client, "?status=live&limit=2&offset=2") == ["quiet"]
    assert await titles(client, "?status=live&offset=3") == []
    assert await titles(client, "?status=ended") == ["done"]
    body = await (await client.get("/api/streams?limit=200&offset=9223372036854775807")).json()
    assert (body["streams"], body["limit"], body["offset"]) == ([], 200, 2**63 - 1)
    body = await (await client.get("/api/streams")).json()
    assert (body["limit"], body["offset"]) == (50, 0)


async def test_list_pages_past_the_default_size(client: Client, db: asyncpg.Connection) -> None:
    creator = await db.fetchval("INSERT INTO users (account_id) VALUES ('x') RETURNING id")
    await db.execute(
        "INSERT INTO streams (creator_id, title, stream_key_hash, viewer_count) "
        "SELECT $1, 's' || n, sha256(n::text::bytea), n FROM generate_series(1, 120) n",
        creator)
    first = await titles(client)
    assert len(first) == 50 and first[0] == "s120"
    rest = await titles(client, "?limit=200&offset=50")
    assert len(rest) == 70 and rest[-1] == "s1"
    assert not set(first) & set(rest)


@pytest.mark.parametrize(("query", "code"), [
    ("?limit=0", "invalid_paging"), ("?limit=-1", "invalid_paging"),
    ("?limit=x", "invalid_paging"), ("?offset=-5", "invalid_paging"),
    ("?offset=1.5", "invalid_paging"), ("?offset=99999999999999999999", "invalid_paging"),
    # the documented maximum is refused past, not cut to (it was, before fuzzing)
    ("?limit=201", "invalid_paging"), ("?limit=1000", "invalid_paging"),
    ("?offset=9223372036854775808", "invalid_paging"), ("?limit=%D9%A3", "invalid_paging"),
    ("?status=bogus", "invalid_status"), ("?status=", "invalid_status"),
])
async def test_list_refuses_bad_queries(client: Client, query: str, code: str) -> None:
    assert await error_of(await client.get(f"/api/streams{query}"), 400) == code


# -- the current user -------------------------------------------------------------

async def test_me(client: Client) -> None:
    user = await login(client, ALICE_2)
    response = await client.get("/api/me", headers=bearer(user["token"]))
    assert response.status == 200
    assert await response.json() == {"account": ALICE_42, "is_creator": False,
                                     "is_moderator": False, "open_reports": None, "balance": "0"}
    await create_stream(client, user["token"])
    me = await (await client.get("/api/me", headers=bearer(user["token"]))).json()
    assert me["is_creator"] is True and me["balance"] == "0"


async def test_a_token_outlives_its_users_row(client: Client, db: asyncpg.Connection) -> None:
    """Tokens are stateless: a valid token whose row is gone (a reset dev
    database) still works, and creating a stream re-creates the user."""
    user = await login(client)
    await db.execute("DELETE FROM users")
    me = await (await client.get("/api/me", headers=bearer(user["token"]))).json()
    assert me == {"account": ALICE_42, "is_creator": False, "is_moderator": False,
                  "open_reports": None, "balance": "0"}
    created = await create_stream(client, user["token"])
    assert created["creator_account"] == ALICE_42
    assert await db.fetchval("SELECT is_creator FROM users WHERE account_id = $1", ALICE_42)


async def test_balance_sessions_and_earnings_follow_metering(
        client: Client, db: asyncpg.Connection, redis: aioredis.Redis,
        stores: Any) -> None:
    """A viewer credited 1 token watches 3 billed seconds at 0.002/s: the API
    shows the live balance, the session with its cost, and the creator's 90%."""
    from decimal import Decimal

    from vilokanam.balances import credit
    from vilokanam.metering import Tick, TickBatch, TickWriter

    creator = await login(client, ALICE_2)
    stream = await create_stream(client, creator["token"], price_per_second="0.002")
    viewer = await login(client, BOB_42)
    await credit(db, redis, viewer["user_id"], Decimal(1), "adjustment", "test", 12)
    session = str(await db.fetchval(
        "INSERT INTO stream_viewers (stream_id, viewer_id, price_per_second) "
        "SELECT id, $2, price_per_second FROM streams WHERE id = $1 RETURNING id",
        stream["id"], viewer["user_id"]))
    writer = TickWriter(redis)
    for second in range(3):
        await writer.write(TickBatch("w", 7000 + second,
                                     (Tick(session, viewer["user_id"], 2 * 10**9),)))
    me = await (await client.get("/api/me", headers=bearer(viewer["token"]))).json()
    assert me["balance"] == "0.994"  # live: charged before any flush
    await flush_all(stores.database_url, redis)
    sessions = (await (await client.get("/api/me/sessions",
                                        headers=bearer(viewer["token"]))).json())["sessions"]
    assert [(s["id"], s["seconds"], s["cost"], s["price_per_second"], s["payment_status"])
            for s in sessions] == [(session, 3, "0.006", "0.002", "pending")]
    earnings = await (await client.get("/api/me/earnings",
                                       headers=bearer(creator["token"]))).json()
    assert earnings == {"total_earnings": "0.0054", "pending_payout": "0.0054",
                        "last_payout_at": None}
    fetched = await (await client.get(f"/api/streams/{stream['id']}")).json()
    assert fetched["total_ticks"] == 3
    for path in ("/api/me/sessions", "/api/me/earnings"):
        assert await error_of(await client.get(path), 401) == "unauthorized"


# -- creator operations: key rotation, ending, own streams, payouts ----------------

async def stream_key_hash(db: asyncpg.Connection, stream_id: str) -> bytes:
    return bytes(await db.fetchval("SELECT stream_key_hash FROM streams WHERE id = $1",
                                   uuid.UUID(stream_id)))


async def test_rotating_the_key_stores_only_the_new_hash(client: Client,
                                                         db: asyncpg.Connection) -> None:
    user = await login(client)
    stream = await create_stream(client, user["token"])
    response = await client.post(f"/api/streams/{stream['id']}/key", headers=bearer(user["token"]))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"stream_key"} and body["stream_key"] != stream["stream_key"]
    assert await stream_key_hash(db, stream["id"]) == hashlib.sha256(
        body["stream_key"].encode()).digest()
    # The key is never shown again.
    fetched = await (await client.get(f"/api/streams/{stream['id']}")).text()
    assert body["stream_key"] not in fetched


async def test_the_old_key_stops_working_at_once(client: Client) -> None:
    user = await login(client)
    stream = await create_stream(client, user["token"])
    await client.post(f"/api/streams/{stream['id']}/key", headers=bearer(user["token"]))
    response = await client.post(f"/whip/{stream['id']}", data="v=0\r\n",
                                 headers={**bearer(stream["stream_key"]),
                                          "Content-Type": "application/sdp"})
    assert response.status == 401, await response.text()


@pytest.mark.parametrize("action", ["key", "end"])
async def test_another_creators_stream_is_403_and_unknown_404(client: Client,
                                                              action: str) -> None:
    owner, other = await login(client, ALICE_42), await login(client, BOB_42)
    stream = await create_stream(client, owner["token"])
    path = f"/api/streams/{stream['id']}/{action}"
    assert await error_of(await client.post(path, headers=bearer(other["token"])),
                          403) == "forbidden"
    unknown = f"/api/streams/{uuid.uuid4()}/{action}"
    assert await error_of(await client.post(unknown, headers=bearer(owner["token"])),
                          404) == "stream_not_found"
    malformed = f"/api/streams/nope/{action}"
    assert await error_of(await client.post(malformed, headers=bearer(owner["token"])),
                          400) == "invalid_stream_id"
    for headers in ({}, bearer("not-a-token")):
        assert await error_of(await client.post(path, headers=headers), 401) == "unauthorized"


async def test_ending_a_stream_no_worker_carries_ends_its_rows(client: Client,
                                                               db: asyncpg.Connection) -> None:
    """Live in Postgres but its worker is gone: the rows end with the worker's SQL."""
    user = await login(client)
    stream = await create_stream(client, user["token"])
    sid = uuid.UUID(stream["id"])
    await db.execute("UPDATE streams SET status = 'live', start_time = now() WHERE id = $1", sid)
    await db.execute("INSERT INTO stream_sessions (stream_id, start_time) VALUES ($1, now())", sid)
    response = await client.post(f"/api/streams/{sid}/end", headers=bearer(user["token"]))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == STREAM_FIELDS and body["status"] == "ended" and body["end_time"]
    assert await db.fetchval("SELECT count(*) FROM stream_sessions "
                             "WHERE stream_id = $1 AND end_time IS NULL", sid) == 0
    # Again: a no-op, the first end_time stays.
    again = await (await client.post(f"/api/streams/{sid}/end",
                                     headers=bearer(user["token"]))).json()
    assert again["end_time"] == body["end_time"]


async def test_ending_a_live_stream_asks_its_worker(db: asyncpg.Connection,
                                                    redis: aioredis.Redis,
                                                    settings: Settings) -> None:
    """A live worker carrying the stream is asked to end it (here a stand-in
    worker served by the test app itself, recording the call)."""
    from routing.registry import WorkerRecord, stream_worker_key, worker_key

    calls: list[str] = []

    async def worker_end(request: web.Request) -> web.Response:
        calls.append(request.match_info["stream_id"])
        await db.execute("UPDATE streams SET status = 'ended', end_time = now() WHERE id = $1",
                         uuid.UUID(request.match_info["stream_id"]))
        return web.json_response({"ended": True})

    def prepare(app: web.Application) -> None:
        app.router.add_post("/control/streams/{stream_id}/end", worker_end)

    async with serve(dev_settings(settings), prepare) as client:
        user = await login(client)
        stream = await create_stream(client, user["token"])
        record = WorkerRecord("w1", settings.base_url, 10, 1, 1, 0)
        await redis.set(worker_key("w1"), record.to_json())
        await redis.set(stream_worker_key(stream["id"]), "w1")
        await db.execute("UPDATE streams SET status = 'live' WHERE id = $1",
                         uuid.UUID(stream["id"]))
        response = await client.post(f"/api/streams/{stream['id']}/end",
                                     headers=bearer(user["token"]))
        assert response.status == 200, await response.text()
        assert (await response.json())["status"] == "ended"
    assert calls == [stream["id"]]


async def test_my_streams_are_mine_newest_first_and_paged(client: Client) -> None:
    alice, bob = await login(client, ALICE_42), await login(client, BOB_42)
    for title in ("one", "two", "three"):
        await create_stream(client, alice["token"], title=title)
    await create_stream(client, bob["token"], title="bob's")
    response = await client.get("/api/me/streams", headers=bearer(alice["token"]))
    assert response.status == 200
    body = await response.json()
    assert [s["title"] for s in body["streams"]] == ["three", "two", "one"]
    assert all(set(s) == STREAM_FIELDS for s in body["streams"])
    page = await (await client.get("/api/me/streams?limit=1&offset=1",
                                   headers=bearer(alice["token"]))).json()
    assert [s["title"] for s in page["streams"]] == ["two"]
    assert (page["limit"], page["offset"]) == (1, 1)
    bad = await client.get("/api/me/streams?limit=0", headers=bearer(alice["token"]))
    assert await error_of(bad, 400) == "invalid_paging"


async def insert_payout(db: asyncpg.Connection, creator_id: str, n: int, status: str,
                        amount: str) -> str:
    from decimal import Decimal

    settlement = await db.fetchval(
        """INSERT INTO settlements (status, signer, nonce, extrinsic_hash, extrinsic,
               genesis_hash, signed_at, signed_at_hash, era_death, digest, remark,
               total_planck, block_hash, block_number, created_at)
           VALUES ($1, '0x00', $2, $3, '0x00', '0xg', 1, '0xs', 65, 'd', 'r', 1, $4, $5,
                   now() + $2::bigint * interval '1 second')
           RETURNING id::text""", status, n, f"0xext{n}",
        "0xblock" if status == "completed" else None, 7 if status == "completed" else None)
    await db.execute(
        "INSERT INTO settlement_payouts (settlement_id, creator_id, public_key, "
        "amount_planck, amount) VALUES ($1::uuid, $2::uuid, '0xpk', 1, $3)",
        settlement, creator_id, Decimal(amount))
    return str(settlement)


async def test_my_payouts_newest_first_with_chain_proof(client: Client,
                                                        db: asyncpg.Connection) -> None:
    alice, bob = await login(client, ALICE_42), await login(client, BOB_42)
    await create_stream(client, alice["token"])
    first = await insert_payout(db, alice["user_id"], 1, "completed", "0.0054")
    second = await insert_payout(db, alice["user_id"], 2, "failed", "1.5")
    response = await client.get("/api/me/payouts", headers=bearer(alice["token"]))
    assert response.status == 200, await response.text()
    payouts = (await response.json())["payouts"]
    assert [(p["settlement_id"], p["amount"], p["status"], p["extrinsic_hash"],
             p["block_number"]) for p in payouts] == [
        (second, "1.5", "failed", "0xext2", None), (first, "0.0054", "completed", "0xext1", 7)]
    assert payouts[1]["block_hash"] == "0xblock" and payouts[1]["created_at"]
    page = await (await client.get("/api/me/payouts?limit=1&offset=1",
                                   headers=bearer(alice["token"]))).json()
    assert [p["settlement_id"] for p in page["payouts"]] == [first]
    others = await (await client.get("/api/me/payouts", headers=bearer(bob["token"]))).json()
    assert others["payouts"] == []


@pytest.mark.parametrize("path", ["/api/me/streams", "/api/me/payouts"])
async def test_my_lists_need_a_token(client: Client, path: str) -> None:
    for headers in ({}, bearer("not-a-token")):
        assert await error_of(await client.get(path, headers=headers), 401) == "unauthorized"
