"""The two API additions the web app needs: `GET /api/streams?q=` (the home
page's search: title, creator username or account; it narrows the category
and creator filters) and `PATCH /api/streams/{id}` (the studio's title and
price), with their refusals."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.api_client import (
    ALICE_2,
    ALICE_42,
    BOB_42,
    Client,
    bearer,
    create_stream,
    error_of,
    login,
)
from tests.test_api import STREAM_FIELDS, make_streams, titles


async def test_search_matches_title_username_or_account(client: Client,
                                                        db: asyncpg.Connection) -> None:
    await make_streams(client, db, [("Morning Jazz", "live", 3, 5),
                                    ("jazz after dark", "live", 9, 5),
                                    ("Chess 100%_fun", "live", 1, 5),
                                    ("Jazz archive", "ended", 0, 50)])
    bob = await login(client, BOB_42)
    await create_stream(client, bob["token"], title="Bob's cooking")
    await db.execute("UPDATE streams SET status = 'live' WHERE title = $1", "Bob's cooking")
    await db.execute("UPDATE users SET username = 'chef_bob' WHERE account_id = $1", BOB_42)

    assert await titles(client, "?status=live&q=JAZZ") == ["jazz after dark", "Morning Jazz"]
    assert await titles(client, "?q=jazz") == ["jazz after dark", "Morning Jazz", "Jazz archive"]
    # Wildcards are literal: "%" and "_" match only themselves.
    assert await titles(client, "?status=live&q=100%25_") == ["Chess 100%_fun"]
    assert await titles(client, "?status=live&q=%25") == ["Chess 100%_fun"]
    assert await titles(client, "?status=live&q=chef") == ["Bob's cooking"]
    # An account in any SS58 prefix names its creator's streams.
    assert await titles(client, f"?status=live&q={ALICE_2}") == [
        "jazz after dark", "Morning Jazz", "Chess 100%_fun"]
    assert await titles(client, "?status=live&q=%20%20") == await titles(client, "?status=live")
    assert await titles(client, "?status=live&q=nothing-like-it") == []


async def test_search_combines_with_the_category_and_creator_filters(
        client: Client, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO categories (name) VALUES ('Music'), ('Gaming')")
    alice = (await login(client))["token"]
    bob = (await login(client, BOB_42))["token"]
    for token, title, category in [(alice, "Jazz piano", "music"), (alice, "Jazz chess", "gaming"),
                                   (bob, "Bob's jazz", "music"), (bob, "Bob's rock", "music")]:
        await create_stream(client, token, title=title, category=category)
    assert sorted(await titles(client, "?q=jazz&category=music")) == ["Bob's jazz", "Jazz piano"]
    assert await titles(client, f"?q=jazz&creator={BOB_42}") == ["Bob's jazz"]
    assert await titles(client, f"?q=jazz&category=gaming&creator={ALICE_2}") == ["Jazz chess"]
    assert await titles(client, f"?q=rock&creator={ALICE_42}") == []
    assert await error_of(await client.get("/api/streams?q=jazz&category=nope"),
                          400) == "unknown_category"


async def test_search_refuses_an_overlong_query(client: Client) -> None:
    assert await error_of(await client.get("/api/streams?q=" + "x" * 101), 400) == "invalid_query"
    assert await error_of(await client.get("/api/streams?q=a%00b"), 400) == "invalid_query"


async def test_the_creator_changes_title_and_price(client: Client,
                                                   db: asyncpg.Connection) -> None:
    user = await login(client)
    stream = await create_stream(client, user["token"], title="Before")
    path = f"/api/streams/{stream['id']}"
    response = await client.patch(path, json={"title": "  After  "}, headers=bearer(user["token"]))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == STREAM_FIELDS
    assert (body["title"], body["price_per_second"]) == ("After", "0.001")
    response = await client.patch(path, json={"price_per_second": "0.000000000007"},
                                  headers=bearer(user["token"]))
    assert (await response.json())["price_per_second"] == "0.000000000007"
    row = await db.fetchrow("SELECT title, price_per_second FROM streams WHERE id = $1",
                            uuid.UUID(stream["id"]))
    assert (row["title"], row["price_per_second"]) == ("After", Decimal("0.000000000007"))
    fetched = await (await client.get(path)).json()
    assert (fetched["title"], fetched["price_per_second"]) == ("After", "0.000000000007")


@pytest.mark.parametrize(("body", "code"), [
    ({"title": ""}, "invalid_title"), ({"title": "x" * 256}, "invalid_title"),
    ({"title": 5}, "invalid_title"), ({"price_per_second": "0"}, "invalid_price"),
    ({"price_per_second": "1e-13"}, "invalid_price"), ({"price_per_second": "abc"},
                                                       "invalid_price"),
    ({}, "nothing_to_update"), ({"stream_key": "sk_mine"}, "nothing_to_update"),
])
async def test_bad_changes_are_400_and_change_nothing(client: Client,
                                                      db: asyncpg.Connection,
                                                      body: dict, code: str) -> None:
    user = await login(client)
    stream = await create_stream(client, user["token"], title="Kept")
    response = await client.patch(f"/api/streams/{stream['id']}", json=body,
                                  headers=bearer(user["token"]))
    assert await error_of(response, 400) == code
    row = await db.fetchrow("SELECT title, price_per_second FROM streams WHERE id = $1",
                            uuid.UUID(stream["id"]))
    assert (row["title"], row["price_per_second"]) == ("Kept", Decimal("0.001"))


async def test_only_the_creator_changes_a_stream(client: Client) -> None:
    owner, other = await login(client, ALICE_42), await login(client, BOB_42)
    stream = await create_stream(client, owner["token"])
    path = f"/api/streams/{stream['id']}"
    assert await error_of(await client.patch(path, json={"title": "mine"},
                                             headers=bearer(other["token"])), 403) == "forbidden"
    assert await error_of(await client.patch(path, json={"title": "mine"}), 401) == "unauthorized"
    assert await error_of(await client.patch(f"/api/streams/{uuid.uuid4()}", json={"title": "t"},
                                             headers=bearer(owner["token"])),
                          404) == "stream_not_found"
    assert await error_of(await client.patch(path, data=b"{", headers={
        **bearer(owner["token"]), "Content-Type": "application/json"}), 400) == "bad_json"
