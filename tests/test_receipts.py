"""Receipts and billing info through the real signaling app: a viewer's
receipt proves its own line with a Merkle path to the root carried on chain by
the batch's System.remark, and shows no other session's line; an old
digest-style settlement still gives a checkable receipt; only the viewer sees
it; /api/billing/info tells a viewer where to deposit and never shows the
escrow's secret."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from substrateinterface import SubstrateInterface

from billing.settlement import Settler
from signaling.tokens import issue_token
from tests.api_client import SECRET, Client
from tests.conftest import ESCROW_URI
from tests.test_settlement import (
    DECIMALS,
    ESCROW,
    PRICE,
    Show,
    add_viewer,
    batch_calls,
    make_show,
    new_settler,
    remark_text,
    watch,
)
from tests.test_vilokanam_receipts import ref_mth, ref_path
from vilokanam.accounts import canonical_account
from vilokanam.receipts import DIGEST_V1, batch_digest, remark_of, verify_inclusion
from vilokanam.services.chain import ChainNode

pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("pristine_chain_afterwards")]

RECEIPT_FIELDS = {
    "stream_viewer_id", "stream_id", "creator_account", "seconds", "price_per_second", "charge",
    "settled", "unsettled", "status", "active", "extrinsic_hash", "block_hash", "block_number",
    "extrinsic_index", "genesis_hash", "commitment", "line", "remark", "root", "proof",
    "leaf_index", "leaf_count", "digest", "lines", "proof_algorithm", "digest_algorithm",
    "settlements"}

def bearer(user_id: str, account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, user_id, account)}"}


async def get_json(client: Client, path: str, status: int = 200,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    return dict(await response.json())


async def settled_show(db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
                       chain: ChainNode, viewers: int, settler: Settler | None = None) -> Show:
    show = await make_show(db, redis, viewers=viewers)
    await watch(pool, redis, show, seconds=4)
    assert await (settler or new_settler(pool, chain)).settle_once() == "completed"
    return show


def viewer_bearer(show: Show, index: int) -> dict[str, str]:
    _, user, key = show.viewers[index]
    return bearer(user, canonical_account(key.ss58_address, 42))


async def test_a_receipt_proves_its_own_line_against_the_root_on_chain_and_no_other(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, api: SubstrateInterface, chain_client: Client) -> None:
    show = await settled_show(db, redis, pool, chain, viewers=3)
    viewer_session = show.viewers[0][0]
    mine = viewer_bearer(show, 0)

    response = await chain_client.get(f"/api/receipts/{viewer_session}", headers=mine)
    assert response.status == 200
    text = await response.text()
    receipt = await response.json()
    assert set(receipt) == RECEIPT_FIELDS
    assert receipt["seconds"] == 4 and receipt["charge"] == str(4 * PRICE)
    assert receipt["settled"] == receipt["charge"] and receipt["unsettled"] == "0"
    assert receipt["status"] == "completed" and receipt["commitment"] == "merkle-v2"
    assert receipt["creator_account"] == canonical_account(show.creator.ss58_address, 42)
    [batch] = receipt["settlements"]
    assert batch["status"] == "completed" and batch["extrinsic_hash"] == receipt["extrinsic_hash"]
    # Only this session's line: no other session of the batch appears anywhere.
    assert receipt["line"] == f"{viewer_session}:{4 * PRICE}"
    assert receipt["lines"] == [] and receipt["digest"] is None
    for other_session, _, _ in show.viewers[1:]:
        assert other_session not in text
    # Three leaves: the path of the odd last one is one hash, the others' two.
    assert receipt["leaf_count"] == 3 and len(receipt["proof"]) in (1, 2)

    # The root is the tree of the batch's lines (computed here, as RFC 9162
    # writes it), and the proof leads from the line to it.
    all_lines = sorted(f"{sv}:{4 * PRICE}" for sv, _, _ in show.viewers)
    assert receipt["root"] == ref_mth([line.encode() for line in all_lines]).hex()
    assert all_lines.index(receipt["line"]) == receipt["leaf_index"]
    assert [bytes.fromhex(p) for p in receipt["proof"]] == ref_path(
        receipt["leaf_index"], [line.encode() for line in all_lines])
    assert verify_inclusion(receipt["line"], receipt["leaf_index"], receipt["leaf_count"],
                            receipt["proof"], receipt["root"])
    # ... and the root is what the batch carries on chain.
    assert api.get_block_number(receipt["block_hash"]) == receipt["block_number"]
    on_chain = api.retrieve_extrinsic_by_hash(receipt["block_hash"], receipt["extrinsic_hash"])
    assert on_chain.is_success and on_chain.extrinsic_idx == receipt["extrinsic_index"]
    calls = batch_calls(api, receipt["block_hash"], on_chain.extrinsic_idx)
    assert remark_text(calls) == receipt["remark"] == "vilokanam:settlement:v2:" + receipt["root"]

    # Nobody else sees it: another viewer, no token, an unknown or malformed id.
    other_session = show.viewers[1][0]
    theirs = viewer_bearer(show, 1)
    await get_json(chain_client, f"/api/receipts/{viewer_session}", 404, theirs)
    await get_json(chain_client, f"/api/receipts/{viewer_session}", 401)
    await get_json(chain_client, "/api/receipts/00000000-0000-4000-8000-000000000000", 404, mine)
    await get_json(chain_client, "/api/receipts/not-a-uuid", 400, mine)
    other = await get_json(chain_client, f"/api/receipts/{other_session}", headers=theirs)
    assert other["root"] == receipt["root"] and other["proof"] != receipt["proof"]
    assert viewer_session not in json.dumps(other)


class DigestSettler(Settler):
    """The settler as it was before Merkle roots (v1: the digest of all lines),
    to make the old kind of settlement on the real chain."""

    @staticmethod
    def commit(lines: list[str]) -> tuple[str, str, str]:
        digest = batch_digest(lines)
        return DIGEST_V1, digest, remark_of(digest)


def digest_settler(pool: asyncpg.Pool, chain: ChainNode) -> Settler:
    plain = new_settler(pool, chain)
    return DigestSettler(plain.pg, plain.chain, decimals=DECIMALS, period_s=3600.0,
                         threshold=Decimal(1_000_000), poll_interval=0.05)


async def test_an_old_digest_settlement_still_gives_a_checkable_receipt(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, api: SubstrateInterface, chain_client: Client) -> None:
    show = await settled_show(db, redis, pool, chain, viewers=2,
                              settler=digest_settler(pool, chain))
    receipt = await get_json(chain_client, f"/api/receipts/{show.viewers[0][0]}",
                             headers=viewer_bearer(show, 0))
    assert receipt["commitment"] == "digest-v1" and receipt["root"] is None
    assert receipt["proof"] == [] and receipt["line"] in receipt["lines"]
    assert len(receipt["lines"]) == 2  # a v1 digest is only checkable with all lines
    digest = hashlib.sha256("\n".join(sorted(receipt["lines"])).encode()).hexdigest()
    assert digest == receipt["digest"]
    on_chain = api.retrieve_extrinsic_by_hash(receipt["block_hash"], receipt["extrinsic_hash"])
    calls = batch_calls(api, receipt["block_hash"], on_chain.extrinsic_idx)
    assert remark_text(calls) == receipt["remark"] == "vilokanam:settlement:v1:" + digest


async def test_a_receipt_follows_a_charge_through_partial_settlements(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, chain_client: Client) -> None:
    show = await make_show(db, redis, viewers=1)
    viewer_session, user, key = show.viewers[0]
    mine = bearer(user, canonical_account(key.ss58_address, 42))
    late_session = await add_viewer(db, redis, show)
    await watch(pool, redis, show, seconds=2, only=[viewer_session])

    before = await get_json(chain_client, f"/api/receipts/{viewer_session}", headers=mine)
    assert before["status"] == "pending" and before["settlements"] == []
    assert before["extrinsic_hash"] is None and before["charge"] == str(2 * PRICE)
    assert before["root"] is None and before["proof"] == []

    settler = new_settler(pool, chain)
    assert await settler.settle_once() == "completed"
    await watch(pool, redis, show, seconds=1)  # still watching; the late viewer starts
    partial = await get_json(chain_client, f"/api/receipts/{viewer_session}", headers=mine)
    assert partial["status"] == "pending" and partial["charge"] == str(3 * PRICE)
    assert partial["settled"] == str(2 * PRICE) and partial["unsettled"] == str(PRICE)
    assert len(partial["settlements"]) == 1

    assert await settler.settle_once() == "completed"
    after = await get_json(chain_client, f"/api/receipts/{viewer_session}", headers=mine)
    assert after["status"] == "completed" and after["unsettled"] == "0"
    first, second = after["settlements"]
    assert (first["amount"], second["amount"]) == (str(2 * PRICE), str(PRICE))
    assert after["extrinsic_hash"] == second["extrinsic_hash"] != first["extrinsic_hash"]
    assert (first["leaf_count"], second["leaf_count"]) == (1, 2)  # the late viewer joined
    assert late_session not in json.dumps(after)
    assert after["root"] == second["root"] != first["root"]
    for batch in (first, second):
        assert verify_inclusion(batch["line"], batch["leaf_index"], batch["leaf_count"],
                                batch["proof"], batch["root"])


async def test_billing_info_says_where_to_deposit(chain_client: Client, chain: ChainNode) -> None:
    response = await chain_client.get("/api/billing/info")
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
