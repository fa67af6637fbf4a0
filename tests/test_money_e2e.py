"""The whole money story on real parts: a viewer deposits on chain, the
deposit is credited, the viewer watches a stream through a real SFU worker and
is billed per second, the creator is paid on chain, and the viewer's receipt
proves its charge against the Merkle root the settlement carried on chain (the
`vilokanam verify-receipt` command agrees)."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import ROUND_FLOOR, Decimal

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from substrateinterface import Keypair, SubstrateInterface

from billing.chain import AsyncChain, ChainClient
from billing.deposits import DepositWatcher
from billing.flush import Flusher
from sfu.app import create_app as create_worker
from sfu.control import MANAGER
from signaling.app import create_app as create_signaling
from signaling.tokens import issue_token
from tests.conftest import ESCROW_URI
from tests.flushing import drain
from tests.media_clients import Publisher, Viewer
from tests.test_receipt_check import verify_receipt
from tests.test_settlement import (
    ESCROW,
    batch_calls,
    free_of,
    new_settler,
    remark_text,
)
from tests.waiting import wait_until
from vilokanam.accounts import address_of, canonical_account
from vilokanam.config import Settings
from vilokanam.receipts import verify_inclusion
from vilokanam.services.chain import CHAIN_SS58_PREFIX, ChainNode

pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("pristine_chain_afterwards")]

PRICE = Decimal("0.001")
FEE = Decimal("0.1")
DEPOSIT = 2 * 10**12  # 2 tokens, in planck
SECRET = "m" * 40


def transfer(node: SubstrateInterface, sender: Keypair, dest: str, planck: int) -> None:
    call = node.compose_call("Balances", "transfer_keep_alive", {"dest": dest, "value": planck})
    receipt = node.submit_extrinsic(node.create_signed_extrinsic(call=call, keypair=sender),
                                    wait_for_inclusion=True)
    assert receipt.is_success, receipt.error_message


async def test_deposit_watch_bill_pay_and_verify(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface, settings: Settings) -> None:
    viewer_key = Keypair.create_from_uri("//Dave", ss58_format=CHAIN_SS58_PREFIX)
    creator_key = Keypair.create_from_uri("//Charlie", ss58_format=CHAIN_SS58_PREFIX)
    chain_client = AsyncChain(ChainClient(chain.url, ESCROW))
    watcher = DepositWatcher(pool, redis, chain_client, ss58_prefix=42, decimals=12)

    # 1. The viewer deposits 2 tokens into escrow; the watcher credits them once.
    await watcher.catch_up()  # its first start begins after the current head
    await asyncio.to_thread(transfer, api, viewer_key, ESCROW.ss58_address, DEPOSIT)
    assert await watcher.catch_up() == 1
    assert await watcher.catch_up() == 0
    viewer = str(await db.fetchval("SELECT id FROM users WHERE account_id = $1",
                                   canonical_account(viewer_key.ss58_address, 42)))
    assert await db.fetchval("SELECT balance FROM viewer_balances WHERE user_id = $1",
                             viewer) == Decimal(2)

    # 2. The creator's stream goes live on a real worker; the viewer watches.
    creator = str(await db.fetchval(
        "INSERT INTO users (account_id, is_creator) VALUES ($1, TRUE) RETURNING id",
        canonical_account(creator_key.ss58_address, 42)))
    stream = str(await db.fetchval(
        "INSERT INTO streams (creator_id, title, stream_key_hash, price_per_second) "
        "VALUES ($1, 'show', sha256('k'::bytea), $2) RETURNING id", creator, PRICE))
    worker = TestServer(create_worker(settings))
    await worker.start_server()
    publisher, watcher_peer = Publisher(), Viewer()
    try:
        async with aiohttp.ClientSession() as http:
            async def post(path: str, body: dict[str, str]) -> dict[str, str]:
                async with http.post(worker.make_url(path), json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    return dict(await resp.json())

            async def publish(offer: str) -> str:
                return (await post(f"/control/streams/{stream}/publisher", {"sdp": offer}))["sdp"]

            watched: dict[str, str] = {}

            async def watch(offer: str) -> str:
                watched.update(await post(f"/control/streams/{stream}/viewers",
                                          {"sdp": offer, "viewer_user_id": viewer}))
                return watched["sdp"]

            await publisher.start(publish)
            await watcher_peer.start(watch)
            await watcher_peer.wait_for_frames("video", 30)

            def ticked() -> int:
                return next(p.meter.ticks for p in worker.app[MANAGER].peers.values()
                            if p.role == "viewer")

            await wait_until(lambda: ticked() >= 2, "two billed seconds", timeout=3)
            billed = ticked()  # the worker's count as the viewer leaves
    finally:
        await watcher_peer.close()
        await publisher.close()
        await worker.close()
    session = watched["viewer_session_id"]

    # 3. Billed per second, exactly: what the worker ticked is what Postgres holds.
    flusher = Flusher(pool, redis, FEE)
    await drain(flusher)
    seconds = await db.fetchval("SELECT total_ticks FROM stream_viewers WHERE id = $1", session)
    assert seconds >= billed
    charge = PRICE * seconds
    assert await db.fetchval("SELECT paid_amount FROM stream_viewers WHERE id = $1",
                             session) == charge
    assert await db.fetchval("SELECT balance FROM viewer_balances WHERE user_id = $1",
                             viewer) == Decimal(2) - charge

    # 4. The creator is paid on chain: exactly the planck of its 90 % share.
    before = free_of(api, creator_key.ss58_address)
    assert await new_settler(pool, chain).settle_once() == "completed"
    share = (charge * (1 - FEE)).scaleb(12).to_integral_value(rounding=ROUND_FLOOR)
    assert free_of(api, creator_key.ss58_address) - before == int(share)
    assert await db.fetchval("SELECT status FROM payments WHERE reference_id = $1",
                             session) == "completed"

    # 5. The viewer's receipt proves its line with a Merkle path to the root the
    #    settlement carried on chain, and the standalone verifier agrees.
    signaling = dataclasses.replace(settings, token_secret=SECRET,
                                    escrow_account=address_of(ESCROW_URI),
                                    substrate_url=chain.url)
    async with TestClient(TestServer(create_signaling(signaling))) as client:
        token = issue_token(SECRET, viewer, canonical_account(viewer_key.ss58_address, 42))
        response = await client.get(f"/api/receipts/{session}",
                                    headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
        receipt = await response.json()
    assert receipt["status"] == "completed" and receipt["charge"] == str(charge)
    assert receipt["line"] == f"{session}:{charge}"
    assert verify_inclusion(receipt["line"], receipt["leaf_index"], receipt["leaf_count"],
                            receipt["proof"], receipt["root"])
    on_chain = api.retrieve_extrinsic_by_hash(receipt["block_hash"], receipt["extrinsic_hash"])
    assert on_chain.is_success
    calls = batch_calls(api, receipt["block_hash"], on_chain.extrinsic_idx)
    assert remark_text(calls) == receipt["remark"] == "vilokanam:settlement:v2:" + receipt["root"]
    verified = await verify_receipt(receipt, chain.url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
