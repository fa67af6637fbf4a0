"""Tips and subscriptions through the real signaling app, Postgres and Redis:
exact amounts out of the live balance at once, one payments row per movement,
every bad input refused with its code (zero, sub-planck, above the balance,
to a non-creator, to yourself, no offer, twice = extended, never double
charged), and a subscriber watching the creator's streams at price 0 with
their ticks still counted."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from substrateinterface import Keypair

from billing.flush import Flusher
from billing.reconcile import Reconciler
from sfu.lifecycle import Lifecycle
from tests.api_client import Client, bearer, error_of, login
from tests.flushing import drain
from vilokanam.balances import balance_key, can_start_watching, credit
from vilokanam.metering import Tick, TickBatch, TickWriter

DECIMALS = 12


def new_account() -> str:
    return str(Keypair.create_from_uri(f"//Someone{uuid.uuid4().hex}", ss58_format=42)
               .ss58_address)


async def funded_login(client: Client, db: asyncpg.Connection, redis: aioredis.Redis,
                       tokens: Decimal) -> dict[str, str]:
    who = await login(client, new_account())
    await credit(db, redis, who["user_id"], tokens, "adjustment", "test funds", DECIMALS)
    return who


async def make_creator(client: Client, price: Decimal = Decimal("0.001")) -> dict[str, str]:
    creator = await login(client, new_account())
    response = await client.post("/api/streams", json={"title": "show",
                                                       "price_per_second": str(price)},
                                 headers=bearer(creator["token"]))
    assert response.status == 201, await response.text()
    creator["stream_id"] = (await response.json())["id"]
    return creator


async def live_planck(redis: aioredis.Redis, user_id: str) -> int:
    return int(await redis.get(balance_key(user_id)))


async def me_balance(client: Client, who: dict[str, str]) -> str:
    response = await client.get("/api/me", headers=bearer(who["token"]))
    return str((await response.json())["balance"])


async def post(client: Client, path: str, who: dict[str, str] | None,
               body: Any = None, raw: bytes | None = None) -> Any:
    headers = bearer(who["token"]) if who else {}
    if raw is not None:
        return await client.post(path, data=raw, headers=headers)
    return await client.post(path, json=body, headers=headers)


async def test_a_tip_moves_exactly_its_amount_at_once_with_a_ledger_row(
        client: Client, db: asyncpg.Connection, redis: aioredis.Redis,
        pool: asyncpg.Pool) -> None:
    viewer = await funded_login(client, db, redis, Decimal(5))
    creator = await make_creator(client)
    response = await post(client, f"/api/users/{creator['account']}/tips", viewer,
                          {"amount": "1.000000000007", "message": " great show "})
    assert response.status == 201, await response.text()
    tip = await response.json()
    assert tip["amount"] == "1.000000000007" and tip["message"] == "great show"
    assert tip["status"] == "pending" and tip["balance"] == "3.999999999993"
    # Instant in the live balance, exactly:
    assert await live_planck(redis, viewer["user_id"]) == 3_999_999_999_993
    assert await me_balance(client, viewer) == "3.999999999993"
    payment = await db.fetchrow("SELECT * FROM payments WHERE id = $1", tip["payment_id"])
    assert payment["payment_type"] == "tip" and payment["amount"] == Decimal("1.000000000007")
    assert str(payment["from_user_id"]) == viewer["user_id"]
    assert str(payment["to_user_id"]) == creator["user_id"]
    assert str(payment["reference_id"]) == tip["id"] and payment["status"] == "pending"
    assert await db.fetchval("SELECT message FROM tips WHERE id = $1", tip["id"]) == "great show"
    assert await db.fetchval("SELECT balance FROM viewer_balances WHERE user_id = $1",
                             viewer["user_id"]) == Decimal("3.999999999993")
    earnings = await db.fetchrow("SELECT * FROM creator_earnings WHERE creator_id = $1",
                                 creator["user_id"])
    assert earnings["pending_payout"] == earnings["total_earnings"] == Decimal("1.000000000007")
    # A number in JSON is parsed exactly (never a float), and the books still prove.
    response = await post(client, f"/api/users/{creator['account']}/tips", viewer,
                          raw=b'{"amount": 0.000000000001}')
    assert response.status == 201, await response.text()
    assert await live_planck(redis, viewer["user_id"]) == 3_999_999_999_992
    checker = Reconciler(pool, redis, DECIMALS)
    assert (await checker.reconcile_once()).drifted == {}


async def test_bad_tips_are_refused_with_their_code_and_move_nothing(
        client: Client, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    viewer = await funded_login(client, db, redis, Decimal(2))
    creator = await make_creator(client)
    not_creator = await login(client, new_account())
    path = f"/api/users/{creator['account']}/tips"
    for amount in (0, "0", "-1", "0.0000000000001", "1e-13", "abc", True, None, "1e30",
                   [1], {"v": 1}):
        code = await error_of(await post(client, path, viewer, {"amount": amount}), 400)
        assert code == "invalid_amount", amount
    assert await error_of(await post(client, path, viewer, {"amount": "2.000000000001"}),
                          402) == "insufficient_funds"
    assert await error_of(await post(
        client, f"/api/users/{not_creator['account']}/tips", viewer, {"amount": "1"}),
        404) == "creator_not_found"
    assert await error_of(await post(
        client, f"/api/users/{new_account()}/tips", viewer, {"amount": "1"}),
        404) == "creator_not_found"
    assert await error_of(await post(client, "/api/users/nobody/tips", viewer,
                                     {"amount": "1"}), 400) == "invalid_account"
    assert await error_of(await post(client, path, creator, {"amount": "1"}),
                          400) == "invalid_recipient"
    assert await error_of(await post(client, path, viewer, {"amount": "1", "message": 5}),
                          400) == "invalid_message"
    assert await error_of(await post(client, path, viewer,
                                     {"amount": "1", "message": "x" * 501}),
                          400) == "invalid_message"
    assert await error_of(await post(client, path, viewer, raw=b"{not json"), 400) == "bad_json"
    assert await error_of(await post(client, path, None, {"amount": "1"}), 401) == "unauthorized"
    assert await live_planck(redis, viewer["user_id"]) == 2 * 10**12
    assert await db.fetchval("SELECT count(*) FROM payments WHERE payment_type = 'tip'") == 0


async def test_two_tips_at_once_cannot_spend_the_same_money(
        client: Client, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    viewer = await funded_login(client, db, redis, Decimal(1))
    creator = await make_creator(client)
    path = f"/api/users/{creator['account']}/tips"
    answers = await asyncio.gather(*(post(client, path, viewer, {"amount": "0.6"})
                                     for _ in range(4)))
    assert sorted(r.status for r in answers) == [201, 402, 402, 402]
    assert await live_planck(redis, viewer["user_id"]) == 400_000_000_000
    assert await db.fetchval("SELECT sum(amount) FROM payments") == Decimal("0.6")


async def test_a_subscription_is_bought_extended_and_never_double_charged(
        client: Client, db: asyncpg.Connection, redis: aioredis.Redis,
        pool: asyncpg.Pool) -> None:
    viewer = await funded_login(client, db, redis, Decimal(10))
    creator = await make_creator(client)
    subscribe = f"/api/users/{creator['account']}/subscription"
    offer_path = f"/api/users/{creator['account']}/subscription-offer"
    assert await error_of(await post(client, subscribe, viewer), 404) == "no_subscription_offer"
    assert await error_of(await client.get(offer_path), 404) == "no_subscription_offer"

    # Only a creator offers; the price is exact money.
    put = "/api/me/subscription-offer"
    response = await client.put(put, json={"price": "3"}, headers=bearer(viewer["token"]))
    assert await error_of(response, 403) == "not_a_creator"
    for price in ("0", "0.0000000000001", "x"):
        response = await client.put(put, json={"price": price}, headers=bearer(creator["token"]))
        assert await error_of(response, 400) == "invalid_amount"
    response = await client.put(put, json={"price": "2.5"}, headers=bearer(creator["token"]))
    assert response.status == 200, await response.text()
    assert await (await client.get(offer_path)).json() == {
        "account": creator["account"], "price": "2.5", "period_days": 30}

    first = await (await post(client, subscribe, viewer)).json()
    assert first["price"] == "2.5" and await live_planck(redis, viewer["user_id"]) == 75 * 10**11
    starts, ends = datetime.fromisoformat(first["starts_at"]), datetime.fromisoformat(
        first["ends_at"])
    assert ends - starts == timedelta(days=30)
    # Bought again while it runs: the next period follows the first, no overlap.
    second = await (await post(client, subscribe, viewer)).json()
    assert datetime.fromisoformat(second["starts_at"]) == ends
    assert datetime.fromisoformat(second["ends_at"]) == ends + timedelta(days=30)
    assert await live_planck(redis, viewer["user_id"]) == 5 * 10**12
    rows = await db.fetch("SELECT * FROM payments WHERE payment_type = 'subscription'")
    assert sorted(r["amount"] for r in rows) == [Decimal("2.5"), Decimal("2.5")]
    assert await db.fetchval("SELECT pending_payout FROM creator_earnings") == Decimal(5)
    listed = await (await client.get("/api/me/subscriptions",
                                     headers=bearer(viewer["token"]))).json()
    assert [s["current"] for s in listed["subscriptions"]] == [False, True]

    # Two at once from a viewer who can pay for two: consecutive, never overlapping.
    answers = await asyncio.gather(post(client, subscribe, viewer), post(client, subscribe,
                                                                          viewer))
    assert [r.status for r in answers] == [201, 201]
    periods = await db.fetch("SELECT starts_at, ends_at FROM subscriptions ORDER BY starts_at")
    assert len(periods) == 4
    for earlier, later in zip(periods, periods[1:], strict=False):
        assert later["starts_at"] == earlier["ends_at"]
    assert await error_of(await post(client, subscribe, viewer), 402) == "insufficient_funds"
    assert await error_of(await post(client, subscribe, creator), 400) == "invalid_recipient"
    assert (await Reconciler(pool, redis, DECIMALS).reconcile_once()).drifted == {}

    response = await client.delete(put, headers=bearer(creator["token"]))
    assert response.status == 200
    assert await error_of(await post(client, subscribe, viewer), 404) == "no_subscription_offer"


async def test_a_subscriber_watches_at_price_zero_and_is_still_ticked(
        client: Client, db: asyncpg.Connection, redis: aioredis.Redis,
        pool: asyncpg.Pool) -> None:
    subscriber = await funded_login(client, db, redis, Decimal(1))
    other = await funded_login(client, db, redis, Decimal(1))
    creator = await make_creator(client, price=Decimal("0.2"))
    await client.put("/api/me/subscription-offer", json={"price": "1"},
                     headers=bearer(creator["token"]))
    stream = creator["stream_id"]
    assert await can_start_watching(pool, redis, subscriber["user_id"], stream, DECIMALS) is False
    response = await post(client, f"/api/users/{creator['account']}/subscription", subscriber)
    assert response.status == 201, await response.text()
    assert await live_planck(redis, subscriber["user_id"]) == 0  # all spent on the subscription
    assert await can_start_watching(pool, redis, subscriber["user_id"], stream, DECIMALS)

    lifecycle = Lifecycle(pool)
    session = await lifecycle.stream_started(stream, "http://sfu", "http://signaling")
    sub_session, sub_price, _ = await lifecycle.viewer_joined(stream, session,
                                                              subscriber["user_id"], "w1")
    other_session, other_price, _ = await lifecycle.viewer_joined(stream, session,
                                                                  other["user_id"], "w1")
    assert (sub_price, other_price) == (Decimal(0), Decimal("0.2"))
    writer, flusher = TickWriter(redis), Flusher(pool, redis, Decimal("0.1"))
    for second in range(10_000, 10_003):
        cut = await writer.write(TickBatch("w1", second, (
            Tick(sub_session, subscriber["user_id"], 0),
            Tick(other_session, other["user_id"], 2 * 10**11))))
        assert cut == []  # a subscriber with nothing left is not cut off
    await drain(flusher)
    rows = {r["id"]: r for r in await db.fetch(
        "SELECT id::text, total_ticks, paid_amount FROM stream_viewers")}
    assert (rows[sub_session]["total_ticks"], rows[sub_session]["paid_amount"]) == (3, 0)
    assert (rows[other_session]["total_ticks"],
            rows[other_session]["paid_amount"]) == (3, Decimal("0.6"))
    assert await db.fetchval("SELECT total_ticks FROM streams WHERE id = $1", stream) == 6
    assert await live_planck(redis, subscriber["user_id"]) == 0
    assert (await Reconciler(pool, redis, DECIMALS).reconcile_once()).drifted == {}
    # After the period it is the stream's price again.
    await db.execute("UPDATE subscriptions SET starts_at = starts_at - interval '31 days', "
                     "ends_at = ends_at - interval '31 days'")
    _, later_price, _ = await lifecycle.viewer_joined(stream, session, subscriber["user_id"],
                                                      "w1")
    assert later_price == Decimal("0.2")


@pytest.mark.parametrize("path", ["tips", "subscription"])
async def test_an_unknown_or_malformed_creator_is_refused(
        client: Client, db: asyncpg.Connection, redis: aioredis.Redis, path: str) -> None:
    viewer = await funded_login(client, db, redis, Decimal(1))
    response = await post(client, f"/api/users/{'x' * 300}/{path}", viewer, {"amount": "1"})
    assert await error_of(response, 400) == "invalid_account"
