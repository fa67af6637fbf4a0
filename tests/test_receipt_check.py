"""`vilokanam verify-receipt` as a user runs it, against receipts served by
the real signaling app and the real chain (chopsticks): a true receipt holds
(exit 0, from a file or stdin), an old digest-style one too; a tampered one —
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
    client,  # noqa: F401 - a fixture
    digest_settler,
    get_json,
    settled_show,
    viewer_bearer,
)
from tests.test_settlement import (
    PRICE,
    pool,  # noqa: F401 - a fixture
    pristine_chain_afterwards,  # noqa: F401 - a fixture
)
from vilokanam.services.chain import ChainNode
from vilokanam.services.net import free_port

pytestmark = pytest.mark.chain


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
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,  # noqa: F811
        chain: ChainNode, client: Client, tmp_path: Path) -> None:  # noqa: F811
    show = await settled_show(db, redis, pool, chain, viewers=3)
    receipt = await get_json(client, f"/api/receipts/{show.viewers[1][0]}",
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
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,  # noqa: F811
        chain: ChainNode, client: Client) -> None:  # noqa: F811
    show = await settled_show(db, redis, pool, chain, viewers=2,
                              settler=digest_settler(pool, chain))
    receipt = await get_json(client, f"/api/receipts/{show.viewers[0][0]}",
                             headers=viewer_bearer(show, 0))
    assert receipt["commitment"] == "digest-v1"
    result = await verify_receipt(receipt, chain.url)
    assert result.returncode == 0, result.stdout + result.stderr
    forged = copy.deepcopy(receipt)
    forged["settlements"][0]["lines"][0] = forged["settlements"][0]["lines"][0] + "1"
    assert (await verify_receipt(forged, chain.url)).returncode == 1


async def test_an_unsettled_receipt_bad_input_and_a_silent_chain(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,  # noqa: F811
        chain: ChainNode, client: Client) -> None:  # noqa: F811
    show = await settled_show(db, redis, pool, chain, viewers=1)
    receipt = await get_json(client, f"/api/receipts/{show.viewers[0][0]}",
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
