"""`vilokanam verify-receipt` as a user runs it, against receipts served by
the real signaling app and the real chain (chopsticks): a true receipt holds
(exit 0, from a file or stdin), an old digest-style one too, a tip's and a
subscription's (GET /api/receipts/payments/{id}) too; a tampered one —
its amount, its proof, its root, its block — does not (exit 1); input that is
no receipt is a usage error (2), a chain that does not answer is 3."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.test_receipts import (
    Client,
    digest_settler,
    get_json,
    settled_show,
    viewer_bearer,
)
from tests.test_settlement import (
    PRICE,
    make_show,
    new_settler,
    tip_and_subscribe,
    watch,
)
from vilokanam.services.chain import ChainNode
from vilokanam.services.net import free_port

pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("pristine_chain_afterwards")]


def flip(hex_hash: str) -> str:
    return ("1" if hex_hash[0] == "0" else "0") + hex_hash[1:]


async def verify_receipt(receipt: Any, url: str, tmp_path: Path | None = None,
                         raw: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command (a subprocess): from a file when tmp_path is given,
    else on stdin."""
    text = raw if raw is not None else json.dumps(receipt)
    args = [sys.executable, "-m", "vilokanam", "verify-receipt"]
    if tmp_path is not None:
        path = tmp_path / "receipt.json"
        path.write_text(text)
        args.append(str(path))
    env = {**os.environ, "SUBSTRATE_URL": url}
    return await asyncio.to_thread(subprocess.run, args, input=text if tmp_path is None else None,
                                   capture_output=True, text=True, timeout=60, env=env)


async def test_a_true_receipt_holds_and_a_tampered_one_does_not(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, chain_client: Client, tmp_path: Path) -> None:
    show = await settled_show(db, redis, pool, chain, viewers=3)
    receipt = await get_json(chain_client, f"/api/receipts/{show.viewers[1][0]}",
                             headers=viewer_bearer(show, 1))

    from_file = await verify_receipt(receipt, chain.url, tmp_path)
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    assert f"ok: settlement {receipt['settlements'][0]['settlement_id']}" in from_file.stdout
    from_stdin = await verify_receipt(receipt, chain.url)
    assert from_stdin.returncode == 0, from_stdin.stdout + from_stdin.stderr

    def tampered(change: Any) -> dict[str, Any]:
        forged = copy.deepcopy(receipt)
        change(forged["settlements"][0])
        change(forged)
        return forged

    session = receipt["stream_viewer_id"]
    bigger = str(5 * PRICE)
    forgeries = {
        "a larger amount": lambda r: r.update(line=f"{session}:{bigger}", amount=bigger),
        "another session's line": lambda r: r.update(
            line=f"{show.viewers[0][0]}:{4 * PRICE}"),
        "a changed proof": lambda r: r.update(proof=[flip(r["proof"][0]), *r["proof"][1:]]),
        "a shorter proof": lambda r: r.update(proof=r["proof"][1:]),
        "another leaf position": lambda r: r.update(leaf_index=(r["leaf_index"] + 1) % 3),
        "a made-up root": lambda r: r.update(
            root="00" * 32, remark="vilokanam:settlement:v2:" + "00" * 32),
        "another block": lambda r: r.update(block_number=r["block_number"] - 1),
        "another extrinsic": lambda r: r.update(extrinsic_index=0),
    }
    for what, change in forgeries.items():
        result = await verify_receipt(tampered(change), chain.url)
        assert result.returncode == 1, f"{what}: {result.stdout}{result.stderr}"
        assert "FAILED" in result.stdout, what


async def test_an_old_digest_receipt_holds(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, chain_client: Client) -> None:
    show = await settled_show(db, redis, pool, chain, viewers=2,
                              settler=digest_settler(pool, chain))
    receipt = await get_json(chain_client, f"/api/receipts/{show.viewers[0][0]}",
                             headers=viewer_bearer(show, 0))
    assert receipt["commitment"] == "digest-v1"
    result = await verify_receipt(receipt, chain.url)
    assert result.returncode == 0, result.stdout + result.stderr
    forged = copy.deepcopy(receipt)
    forged["settlements"][0]["lines"][0] = forged["settlements"][0]["lines"][0] + "1"
    assert (await verify_receipt(forged, chain.url)).returncode == 1


async def test_an_unsettled_receipt_bad_input_and_a_silent_chain(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, chain_client: Client) -> None:
    show = await settled_show(db, redis, pool, chain, viewers=1)
    receipt = await get_json(chain_client, f"/api/receipts/{show.viewers[0][0]}",
                             headers=viewer_bearer(show, 0))
    nothing_settled = {**receipt, "settlements": []}
    result = await verify_receipt(nothing_settled, chain.url)
    assert result.returncode == 1 and "no completed settlement" in result.stdout

    for raw in ("not json", "[1, 2]", '{"settlements": []}'):
        result = await verify_receipt(None, chain.url, raw=raw)
        assert result.returncode == 2, raw
        assert "cannot read the receipt" in result.stderr and "Traceback" not in result.stderr

    silent = await verify_receipt(receipt, f"ws://127.0.0.1:{free_port()}")
    assert silent.returncode == 3, silent.stdout + silent.stderr
    assert "does not answer" in silent.stderr and "Traceback" not in silent.stderr


async def test_a_tip_and_a_subscription_have_receipts_with_only_their_own_line(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, chain_client: Client) -> None:
    show = await make_show(db, redis, viewers=2)
    await watch(pool, redis, show, seconds=3)  # the same batch settles viewing sessions too
    _, payer, _ = show.viewers[0]
    tip, period = await tip_and_subscribe(pool, redis, show, payer)
    mine = viewer_bearer(show, 0)
    before = await get_json(chain_client, f"/api/receipts/payments/{tip.payment_id}", headers=mine)
    assert (before["status"], before["settlements"], before["line"]) == ("pending", [], None)
    assert await new_settler(pool, chain).settle_once() == "completed"

    for payment_id, kind, amount in ((tip.payment_id, "tip", "1.000000000007"),
                                     (period.payment_id, "subscription", "2.5")):
        receipt = await get_json(chain_client, f"/api/receipts/payments/{payment_id}", headers=mine)
        assert (receipt["payment_type"], receipt["charge"], receipt["settled"]) == (
            kind, amount, amount)
        assert receipt["status"] == "completed" and receipt["unsettled"] == "0"
        assert receipt["line"] == f"{kind}:{payment_id}:{amount}"
        # Four lines in the batch (two sessions, the tip, the subscription):
        # the receipt shows its own, and a path instead of the others.
        assert receipt["leaf_count"] == 4 and receipt["lines"] == []
        text = json.dumps(receipt)
        assert all(session not in text for session, _, _ in show.viewers)
        holds = await verify_receipt(receipt, chain.url)
        assert holds.returncode == 0, holds.stdout + holds.stderr
        forged = copy.deepcopy(receipt)
        forged["settlements"][0].update(line=f"{kind}:{payment_id}:9", amount="9")
        assert (await verify_receipt(forged, chain.url)).returncode == 1

    # Someone else's payment is unknown to them; a bad id is 400; no token 401.
    await get_json(chain_client, f"/api/receipts/payments/{tip.payment_id}", 404,
                   viewer_bearer(show, 1))
    assert (await get_json(chain_client, "/api/receipts/payments/not-a-uuid", 400, mine))["error"][
        "code"] == "invalid_payment_id"
    await get_json(chain_client, f"/api/receipts/payments/{tip.payment_id}", 401)
    # A viewing session's payment has its receipt by session, not here.
    stream_view = await db.fetchval("SELECT id::text FROM payments WHERE from_user_id = $1 "
                                    "AND payment_type = 'stream_view'", payer)
    await get_json(chain_client, f"/api/receipts/payments/{stream_view}", 404, mine)
