"""Deposits on the real runtime: a transfer to the escrow credits its sender
exactly once — also when the watcher replays blocks after a restart — every
block from the cursor to the finalized head is processed, a chain that goes
away is waited out and a chain that comes back from genesis (the in-memory dev
chain) is followed from its block 1; the billing worker runs the watcher as an
owned task and reports the chain in /readyz."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from substrateinterface import Keypair, SubstrateInterface

from billing.app import create_app
from billing.chain import AsyncChain, ChainClient, load_escrow
from billing.deposits import DepositWatcher, load_cursor, save_cursor
from tests.conftest import ESCROW_URI
from tests.test_settlement import assert_no_secret_logged
from tests.waiting import wait_for_value, wait_until
from vilokanam.accounts import canonical_account
from vilokanam.balances import balance_key, balance_of
from vilokanam.config import Settings
from vilokanam.services.chain import CHAIN_SS58_PREFIX, ChainNode
from vilokanam.tasks import TaskOwner
from vilokanam.users import find_user

pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("pristine_chain_afterwards")]

DECIMALS = 12
ESCROW = load_escrow(ESCROW_URI)
ALICE = Keypair.create_from_uri("//Alice", ss58_format=CHAIN_SS58_PREFIX)
DAVE = Keypair.create_from_uri("//Dave", ss58_format=CHAIN_SS58_PREFIX)
EVE = Keypair.create_from_uri("//Eve", ss58_format=CHAIN_SS58_PREFIX)
BOB = Keypair.create_from_uri("//Bob", ss58_format=CHAIN_SS58_PREFIX)


def transfer(chain: ChainNode, sender: Keypair, dest: str, planck: int) -> tuple[str, int]:
    """A signed transfer_keep_alive, included (and, in Instant mode, finalized);
    returns its block hash and number."""
    api = SubstrateInterface(url=chain.url, ss58_format=CHAIN_SS58_PREFIX)
    try:
        call = api.compose_call("Balances", "transfer_keep_alive", {"dest": dest, "value": planck})
        receipt = api.submit_extrinsic(api.create_signed_extrinsic(call=call, keypair=sender),
                                       wait_for_inclusion=True)
        assert receipt.is_success, receipt.error_message
        return str(receipt.block_hash), int(api.get_block_number(receipt.block_hash))
    finally:
        api.close()


async def deposit(chain: ChainNode, sender: Keypair, planck: int) -> tuple[str, int]:
    return await asyncio.to_thread(transfer, chain, sender, ESCROW.ss58_address, planck)


def watcher_for(pool: asyncpg.Pool, redis: aioredis.Redis, chain: ChainNode,
                **options: Any) -> DepositWatcher:
    return DepositWatcher(pool, redis, AsyncChain(ChainClient(chain.url, ESCROW)),
                          ss58_prefix=42, decimals=DECIMALS, **options)


async def balance_of_key(pool: asyncpg.Pool, key: Keypair) -> Decimal:
    user = await find_user(pool, canonical_account(key.ss58_address, 42))
    return Decimal(0) if user is None else await balance_of(pool, user.id)


async def ledger(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT u.account_id, l.amount, l.kind, l.reference FROM balance_ledger l"
                          " JOIN users u ON u.id = l.user_id ORDER BY l.created_at")


async def test_a_deposit_is_credited_once_even_when_its_blocks_are_replayed(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    watcher = watcher_for(pool, redis, chain)
    assert await watcher.catch_up() == 0  # first start: from the finalized head on
    start = await load_cursor(pool)
    assert start is not None

    amount = 5 * 10**DECIMALS + 123
    block_hash, number = await deposit(chain, ALICE, amount)
    # A transfer between others in the next block is no deposit.
    await asyncio.to_thread(transfer, chain, BOB, DAVE.ss58_address, 10**DECIMALS)
    assert await watcher.catch_up() == 1

    [entry] = await ledger(db)
    assert entry["account_id"] == canonical_account(ALICE.ss58_address, 42)
    assert entry["kind"] == "deposit" and entry["amount"] == Decimal(amount).scaleb(-DECIMALS)
    event_index = int(entry["reference"].split(":")[1])
    assert entry["reference"] == f"{block_hash}:{event_index}"
    assert await balance_of_key(pool, ALICE) == Decimal(amount).scaleb(-DECIMALS)
    user = await find_user(pool, canonical_account(ALICE.ss58_address, 42))
    assert user is not None and int(await redis.get(balance_key(user.id))) == amount
    cursor = await load_cursor(pool)
    assert cursor is not None and cursor.number >= number

    # A crash after crediting but before the cursor moved: a restarted watcher
    # replays the deposit's block (and all after it) and credits nothing twice.
    previous_hash = await asyncio.to_thread(ChainClient(chain.url).block_hash, number - 1)
    assert previous_hash is not None
    await save_cursor(pool, dataclasses.replace(cursor, number=number - 1, hash=previous_hash))
    assert await watcher_for(pool, redis, chain).catch_up() == 0
    assert len(await ledger(db)) == 1
    assert await balance_of_key(pool, ALICE) == Decimal(amount).scaleb(-DECIMALS)
    assert int(await redis.get(balance_key(user.id))) == amount
    assert_no_secret_logged(caplog)


async def test_every_block_since_the_cursor_is_processed(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode) -> None:
    watcher = watcher_for(pool, redis, chain)
    await watcher.catch_up()
    # The watcher is down while three deposits land in three blocks.
    amounts = {ALICE: 10**DECIMALS, DAVE: 2 * 10**DECIMALS + 1, EVE: 3 * 10**DECIMALS + 2}
    for key, amount in amounts.items():
        await deposit(chain, key, amount)
    assert await watcher_for(pool, redis, chain).catch_up() == 3
    for key, amount in amounts.items():
        assert await balance_of_key(pool, key) == Decimal(amount).scaleb(-DECIMALS)
    assert len({row["reference"] for row in await ledger(db)}) == 3


async def test_the_watcher_waits_out_a_chain_that_went_away_and_follows_a_new_genesis(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tasks = TaskOwner("test")
    task = tasks.spawn(watcher_for(pool, redis, chain, poll_interval=0.05,
                                   max_backoff=0.2).run(), "deposits")
    assert task is not None
    try:
        await chain_value(lambda: load_cursor(pool), lambda c: c is not None)
        first = 10**DECIMALS
        await deposit(chain, ALICE, first)
        await chain_value(lambda: balance_of_key(pool, ALICE),
                         lambda b: b == Decimal(first).scaleb(-DECIMALS))
        old = await load_cursor(pool)
        assert old is not None

        chain.kill()  # the in-memory chain is gone, its blocks with it
        await wait_until(lambda: "deposits.waiting" in [r.getMessage() for r in caplog.records],
                       "the watcher waiting for the chain")
        assert not task.done()
        await asyncio.to_thread(chain.start)  # a fresh genesis, re-funded

        second = 2 * 10**DECIMALS
        await deposit(chain, ALICE, second)
        await chain_value(lambda: balance_of_key(pool, ALICE),
                         lambda b: b == Decimal(first + second).scaleb(-DECIMALS))
        assert "deposits.chain_replaced" in [r.getMessage() for r in caplog.records]
        new = await load_cursor(pool)
        assert new is not None and new.hash != old.hash
        assert len(await ledger(db)) == 2
    finally:
        await tasks.close()
    assert task.cancelled()


async def test_the_billing_worker_owns_the_chain_tasks_and_reports_the_chain(
        db: asyncpg.Connection, redis: aioredis.Redis, chain: ChainNode, settings: Settings,
        pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    billing = dataclasses.replace(settings, substrate_url=chain.url, escrow_uri=ESCROW_URI)
    app = create_app(billing)
    async with TestClient(TestServer(app)) as client:
        async def ready() -> dict[str, Any]:
            response = await client.get("/readyz")
            return dict(await response.json())

        body = await chain_value(ready, lambda b: b["ready"] is True)
        assert body["checks"]["chain"] is True
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {"billing-chain:deposits", "billing-chain:settlement"} <= names
        await chain_value(lambda: load_cursor(pool), lambda c: c is not None)
        amount = 3 * 10**DECIMALS
        await deposit(chain, EVE, amount)
        await chain_value(lambda: balance_of_key(pool, EVE),
                         lambda b: b == Decimal(amount).scaleb(-DECIMALS))
    await wait_until(lambda: not any(t.get_name().startswith("billing")
                                   for t in asyncio.all_tasks()), "the billing tasks ending")
    assert_no_secret_logged(caplog)


async def chain_value(read: Any, ok: Any) -> Any:
    """The first value of `read()` that is `ok`: a chain's effect, given 30 s."""
    return await wait_for_value(read, ok, "the chain's effect", timeout=30.0)
