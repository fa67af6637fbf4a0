"""Deposits: viewers prepay by transferring tokens to the escrow account.

The watcher follows FINALIZED blocks only (a finalized block never goes away,
so a credit never has to be taken back). Each round it reads the finalized
head and processes every block from its cursor + 1 up to it, one by one: the
`Balances.Transfer` events whose `to` is the escrow credit the sender (its
canonical account; the users row is created on first sight) through
`vilokanam.balances.credit(kind="deposit", reference="<block hash>:<event
index>")`, then the cursor moves to that block.

Exactly once: the reference is unique in balance_ledger, so crediting a
transfer a second time changes nothing. That is why the cursor does not need
to move in the credits' transaction (credit() commits each credit, then moves
the live balance in Redis — it must not run inside a larger transaction, or
Redis could move for a credit Postgres then rolls back): a crash after some
credits of a block but before the cursor moved replays the block, and the
replay credits nothing twice.

Nothing missed: the cursor only moves past a block once all of its transfers
are credited; a chain or Postgres that is down is waited out (exponential
backoff) and the watcher then resumes at its cursor.

A chain that is not the one the cursor was on (the local dev chain lives in
memory and restarts from genesis; or SUBSTRATE_URL now points elsewhere): the
cursor's block number is beyond the finalized head, or the block at that number
has another hash, or the genesis hash differs. The watcher logs it and starts
over at block 1 of the chain it now sees (references carry block hashes, so
nothing on the new chain collides with the old). On the very first start (no
cursor) it starts AFTER the current finalized head, which it records at once:
transfers made before the platform ever watched the chain are not deposits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge
from scalecodec.utils.ss58 import ss58_encode

from billing.chain import AsyncChain, BlockRef, Transfer
from vilokanam.balances import credit
from vilokanam.logs import log_event
from vilokanam.money import from_planck
from vilokanam.tasks import run_forever
from vilokanam.users import get_or_create_user

log = logging.getLogger(__name__)

CURSOR = "deposits"
POLL_INTERVAL = 1.0
MAX_BACKOFF = 30.0


DEPOSITS = PromCounter("vilokanam_deposits_credited_total",
                       "Transfers to the escrow credited to a viewer (each once).")
FINALIZED_BLOCK = Gauge("vilokanam_deposits_block",
                        "The last finalized block the deposit watcher processed.")


class ChainReplaced(RuntimeError):
    """The chain changed under the watcher mid-round (a block it expected is gone)."""


@dataclass(frozen=True)
class Cursor:
    genesis_hash: str
    number: int
    hash: str


async def load_cursor(pg: asyncpg.Pool | asyncpg.Connection, name: str = CURSOR) -> Cursor | None:
    row = await pg.fetchrow(
        "SELECT genesis_hash, block_number, block_hash FROM chain_cursor WHERE name = $1", name)
    return None if row is None else Cursor(row["genesis_hash"], row["block_number"],
                                           row["block_hash"])


async def save_cursor(pg: asyncpg.Pool | asyncpg.Connection, cursor: Cursor,
                      name: str = CURSOR) -> None:
    await pg.execute(
        "INSERT INTO chain_cursor (name, genesis_hash, block_number, block_hash) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET "
        "genesis_hash = EXCLUDED.genesis_hash, block_number = EXCLUDED.block_number, "
        "block_hash = EXCLUDED.block_hash, updated_at = now()",
        name, cursor.genesis_hash, cursor.number, cursor.hash)


class DepositWatcher:
    def __init__(self, pg: asyncpg.Pool, redis: aioredis.Redis, chain: AsyncChain, *,
                 ss58_prefix: int, decimals: int, poll_interval: float = POLL_INTERVAL,
                 max_backoff: float = MAX_BACKOFF) -> None:
        self.pg = pg
        self.redis = redis
        self.chain = chain
        self.escrow = chain.escrow_public_key
        self.ss58_prefix = ss58_prefix
        self.decimals = decimals
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff

    async def catch_up(self) -> int:
        """Process every finalized block after the cursor; return how many
        transfers were newly credited."""
        head = await self.chain.finalized_head()
        genesis = await self.chain.genesis_hash()
        start = await self._first_block(head, genesis)
        credited = 0
        for number in range(start, head.number + 1):
            block_hash = await self.chain.block_hash(number)
            if block_hash is None:
                raise ChainReplaced(f"block {number} vanished below the finalized head")
            for transfer in await self.chain.transfers_to(block_hash, self.escrow):
                credited += await self._credit(block_hash, number, transfer)
            await save_cursor(self.pg, Cursor(genesis, number, block_hash))
            FINALIZED_BLOCK.set(number)
        return credited

    async def _first_block(self, head: BlockRef, genesis: str) -> int:
        cursor = await load_cursor(self.pg)
        if cursor is None:
            # The very first start: what is final already predates the platform.
            await save_cursor(self.pg, Cursor(genesis, head.number, head.hash))
            log_event(log, "deposits.first_start", after_block=head.number)
            return head.number + 1
        if cursor.genesis_hash == genesis and cursor.number <= head.number:
            if cursor.number == head.number and cursor.hash == head.hash:
                return head.number + 1  # up to date: nothing to ask the chain
            if await self.chain.block_hash(cursor.number) == cursor.hash:
                return cursor.number + 1
        log_event(log, "deposits.chain_replaced", logging.WARNING,
                  cursor_block=cursor.number, cursor_hash=cursor.hash,
                  finalized_block=head.number, genesis_changed=cursor.genesis_hash != genesis,
                  action="starting over at block 1 of the chain now served")
        return 1

    async def _credit(self, block_hash: str, number: int, transfer: Transfer) -> int:
        if transfer.sender == self.escrow:
            return 0  # the escrow paying itself is not a deposit
        account = str(ss58_encode(transfer.sender, ss58_format=self.ss58_prefix))
        user = await get_or_create_user(self.pg, account)
        reference = f"{block_hash}:{transfer.event_index}"
        amount = from_planck(transfer.amount, self.decimals)
        if not await credit(self.pg, self.redis, user.id, amount, "deposit", reference,
                            self.decimals):
            return 0
        DEPOSITS.inc()
        log_event(log, "deposit.credited", account=account, user_id=user.id,
                  planck=transfer.amount, block=number, reference=reference)
        return 1

    async def run(self) -> None:
        """Follow the chain until cancelled; wait out anything that is down."""
        await run_forever("deposits", self.catch_up, every=self.poll_interval,
                          max_backoff=self.max_backoff, failure_event="deposits.waiting")
