"""Receipts and billing info through the real signaling app: a viewer's
receipt recomputes to the digest carried on chain by the batch's
System.remark; only the viewer sees it; /api/billing/info tells a viewer where
to deposit and never shows the escrow's secret."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from substrateinterface import SubstrateInterface

from signaling.app import create_app
from signaling.tokens import issue_token
from tests.conftest import ESCROW_URI
from tests.test_settlement import (
    DECIMALS,
    ESCROW,
    PRICE,
    add_viewer,
    api,  # noqa: F401 - a fixture
    batch_calls,
    make_show,
    new_settler,
    pool,  # noqa: F401 - a fixture
    pristine_chain_afterwards,  # noqa: F401 - a fixture
    remark_text,
    watch,
)
from vilokanam.accounts import address_of, canonical_account
from vilokanam.config import Settings
from vilokanam.services.chain import ChainNode

pytestmark = pytest.mark.chain

SECRET = "r" * 40
RECEIPT_FIELDS = {
    "stream_viewer_id", "stream_id", "creator_account", "seconds", "price_per_second", "charge",
    "settled", "unsettled", "status", "active", "extrinsic_hash", "block_hash", "block_number",
    "line", "lines", "digest", "remark", "digest_algorithm", "settlements"}

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(db: asyncpg.Connection, redis: aioredis.Redis, settings: Settings,
                 chain: ChainNode) -> AsyncIterator[Client]:
    signaling = dataclasses.replace(settings, token_secret=SECRET,
                                    escrow_account=address_of(ESCROW_URI),
                                    substrate_url=chain.url)
    async with TestClient(TestServer(create_app(signaling))) as client:
        yield client


def bearer(user_id: str, account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, user_id, account)}"}


async def get_json(client: Client, path: str, status: int = 200,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    return dict(await response.json())


async def test_a_receipt_recomputes_to_the_digest_on_chain(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,  # noqa: F811
        chain: ChainNode, api: SubstrateInterface, client: Client) -> None:  # noqa: F811
    show = await make_show(db, redis, viewers=2)
    await watch(pool, redis, show, seconds=4)
    assert await new_settler(pool, chain).settle_once() == "completed"
    viewer_session, user, key = show.viewers[0]
    mine = bearer(user, canonical_account(key.ss58_address, 42))

    receipt = await get_json(client, f"/api/receipts/{viewer_session}", headers=mine)
    assert set(receipt) == RECEIPT_FIELDS
    assert receipt["seconds"] == 4 and receipt["charge"] == str(4 * PRICE)
    assert receipt["settled"] == receipt["charge"] and receipt["unsettled"] == "0"
    assert receipt["status"] == "completed"
    assert receipt["creator_account"] == canonical_account(show.creator.ss58_address, 42)
    [batch] = receipt["settlements"]
    assert batch["status"] == "completed" and batch["extrinsic_hash"] == receipt["extrinsic_hash"]

    # Recompute the digest from what the receipt says, as a viewer would.
    assert receipt["line"] == f"{viewer_session}:{4 * PRICE}"
    assert receipt["line"] in receipt["lines"]
    assert len(receipt["lines"]) == 2
    digest = hashlib.sha256("\n".join(sorted(receipt["lines"])).encode()).hexdigest()
    assert digest == receipt["digest"]
    # ... and find it on chain, in the block and extrinsic the receipt names.
    assert api.get_block_number(receipt["block_hash"]) == receipt["block_number"]
    on_chain = api.retrieve_extrinsic_by_hash(receipt["block_hash"], receipt["extrinsic_hash"])
    assert on_chain.is_success
    calls = batch_calls(api, receipt["block_hash"], on_chain.extrinsic_idx)
    assert remark_text(calls) == receipt["remark"] == "vilokanam:settlement:v1:" + digest

    # Nobody else sees it: another viewer, no token, an unknown or malformed id.
    other_session, other_user, other_key = show.viewers[1]
    theirs = bearer(other_user, canonical_account(other_key.ss58_address, 42))
    await get_json(client, f"/api/receipts/{viewer_session}", 404, theirs)
    await get_json(client, f"/api/receipts/{viewer_session}", 401)
    await get_json(client, "/api/receipts/00000000-0000-4000-8000-000000000000", 404, mine)
    await get_json(client, "/api/receipts/not-a-uuid", 400, mine)
    assert (await get_json(client, f"/api/receipts/{other_session}", headers=theirs))[
        "digest"] == digest  # one batch, one digest


async def test_a_receipt_follows_a_charge_through_partial_settlements(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,  # noqa: F811
        chain: ChainNode, client: Client) -> None:
    show = await make_show(db, redis, viewers=1)
    viewer_session, user, key = show.viewers[0]
    mine = bearer(user, canonical_account(key.ss58_address, 42))
    late_session = await add_viewer(db, redis, show)
    await watch(pool, redis, show, seconds=2, only=[viewer_session])

    before = await get_json(client, f"/api/receipts/{viewer_session}", headers=mine)
    assert before["status"] == "pending" and before["settlements"] == []
    assert before["extrinsic_hash"] is None and before["charge"] == str(2 * PRICE)

    settler = new_settler(pool, chain)
    assert await settler.settle_once() == "completed"
    await watch(pool, redis, show, seconds=1)  # still watching; the late viewer starts
    partial = await get_json(client, f"/api/receipts/{viewer_session}", headers=mine)
    assert partial["status"] == "pending" and partial["charge"] == str(3 * PRICE)
    assert partial["settled"] == str(2 * PRICE) and partial["unsettled"] == str(PRICE)
    assert len(partial["settlements"]) == 1

    assert await settler.settle_once() == "completed"
    after = await get_json(client, f"/api/receipts/{viewer_session}", headers=mine)
    assert after["status"] == "completed" and after["unsettled"] == "0"
    first, second = after["settlements"]
    assert (first["amount"], second["amount"]) == (str(2 * PRICE), str(PRICE))
    assert after["extrinsic_hash"] == second["extrinsic_hash"] != first["extrinsic_hash"]
    assert second["line"] in second["lines"] and len(second["lines"]) == 2  # the late viewer
    assert f"{late_session}:{PRICE}" in second["lines"]
    for batch in (first, second):
        lines = "\n".join(sorted(batch["lines"])).encode()
        assert hashlib.sha256(lines).hexdigest() == batch["digest"]


async def test_billing_info_says_where_to_deposit(client: Client, chain: ChainNode) -> None:
    response = await client.get("/api/billing/info")
    assert response.status == 200
    text = await response.text()
    info = await response.json()
    assert info == {
        "escrow_account": canonical_account(ESCROW.ss58_address, 42),
        "chain_rpc": chain.url,
        "token_symbol": "ROC",
        "token_decimals": DECIMALS,
        "price_default": "0.001",
        "platform_fee": "0.1",
    }
    assert ESCROW_URI not in text and ESCROW.private_key.hex() not in text
    assert Decimal(info["price_default"]) > 0
