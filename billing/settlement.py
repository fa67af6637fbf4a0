"""Settlement: creators are paid from the escrow in batches on chain.

One settlement = ONE extrinsic: `Utility.batch_all` of one
`Balances.transfer_keep_alive` per creator (whole planck: the floor of the
creator's pending payout; the sub-planck rest stays pending) plus a
`System.remark` carrying the Merkle root of the batch's charge lines (v2,
vilokanam/receipts.py). batch_all is all or nothing.

The flow (docs/settlement.md has the why):

1. prepare — under a Postgres advisory lock, with no other settlement open:
   snapshot, in ONE statement, the unsettled part of every stream_view payment
   (amount - settled_amount) and its creator's pending_payout; sign the batch;
   record the settlement (signed bytes, hash, nonce, era), its payouts and its
   items (the snapshot), and commit — all BEFORE anything is submitted.
2. resolve — scan each newly finalized block for the recorded bytes, and
   (re)submit the SAME bytes while they are in none. Found: ExtrinsicSuccess
   -> `completed`: payments' settled_amount grows by the item, status
   `completed` (or `pending` if the session grew since the snapshot),
   transaction_hash; creator_earnings.pending_payout drops by what was paid and
   last_payout_at is set — one transaction. ExtrinsicFailed -> `failed`:
   the payments are marked `failed`, nothing is paid, a later period retries.
   Never found and never can be (the escrow's finalized nonce moved past it,
   its mortal era ended, the chain it was signed for is gone, or the node
   refused it before ever accepting it) -> `dropped`, as failed.
3. on start (and before every new batch) an open settlement is resolved
   first, the same way: a crash between submitting and recording never pays
   twice, because the recorded bytes are found on chain (or resubmitted: one
   nonce is included at most once) before anything new is signed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
from prometheus_client import Counter as PromCounter

from billing.chain import ERA_PERIOD, AsyncChain, BlockRef, Outcome, SignedExtrinsic, Submitted
from vilokanam.accounts import InvalidAccount, public_key_of
from vilokanam.balances import planck_floor
from vilokanam.logs import log_event
from vilokanam.money import from_planck
from vilokanam.receipts import MERKLE_V2, MerkleTree, item_line, merkle_remark_of
from vilokanam.tasks import run_forever

log = logging.getLogger(__name__)

# Serializes "prepare" and "record the outcome" across billing workers.
ADVISORY_LOCK_ID = 0x56534554  # "VSET"
OPEN = ("prepared", "submitted")
POLL_INTERVAL = 1.0
RESUBMIT_EVERY = 30.0
MAX_BACKOFF = 30.0
THRESHOLD_GAP = 10.0  # at most one threshold-triggered batch per this many seconds
# One extrinsic must fit a block: creators beyond this (the smallest payouts)
# wait for the next batch, which then follows at once.
MAX_PAYOUTS = 200

SETTLEMENTS = PromCounter("vilokanam_settlements_total",
                          "Payout batches that reached an end, by final status.", ["status"])
PAID_PLANCK = PromCounter("vilokanam_settlement_paid_planck_total",
                          "Planck paid out to creators by completed batches.")


# What a batch settles: per-second viewing, tips and subscriptions.
SETTLED_TYPES = ("stream_view", "tip", "subscription")

# One statement, so one snapshot: the flush changes payments and
# creator_earnings in one transaction, so they agree with each other here.
_SNAPSHOT = f"""
SELECT p.id::text AS payment_id, p.payment_type,
       CASE WHEN p.payment_type = 'stream_view' THEN p.reference_id::text END
           AS stream_viewer_id,
       p.to_user_id::text AS creator_id, p.amount - p.settled_amount AS delta,
       ce.pending_payout, u.account_id
  FROM payments p
  JOIN creator_earnings ce ON ce.creator_id = p.to_user_id
  JOIN users u ON u.id = p.to_user_id
 WHERE p.payment_type IN {SETTLED_TYPES} AND p.status IN ('pending', 'failed')
   AND p.reference_id IS NOT NULL AND p.amount > p.settled_amount
 ORDER BY p.to_user_id, p.reference_id
"""

_CANDIDATES = f"""
SELECT DISTINCT u.account_id
  FROM payments p JOIN users u ON u.id = p.to_user_id
 WHERE p.payment_type IN {SETTLED_TYPES} AND p.status IN ('pending', 'failed')
   AND p.amount > p.settled_amount
"""

_OPEN_SETTLEMENT = f"""
SELECT id::text AS id, status, nonce, extrinsic_hash, extrinsic, signed_at, signed_at_hash,
       era_death
  FROM settlements WHERE status IN {OPEN} ORDER BY created_at LIMIT 1
"""


@dataclass(frozen=True)
class Item:
    payment_id: str
    payment_type: str
    stream_viewer_id: str | None  # a viewing session's charge; None for a tip/subscription
    creator_id: str
    amount: Decimal

    @property
    def line(self) -> str:
        return item_line(self.payment_type, self.stream_viewer_id, self.payment_id,
                         self.amount)


@dataclass(frozen=True)
class Payout:
    creator_id: str
    public_key: str
    planck: int


@dataclass
class Plan:
    payouts: list[Payout] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    more: bool = False  # creators were left for the next batch (MAX_PAYOUTS)

    @property
    def lines(self) -> list[str]:
        return sorted(item.line for item in self.items)



@dataclass(frozen=True)
class OpenSettlement:
    id: str
    status: str
    nonce: int
    extrinsic_hash: str
    extrinsic: str
    signed_at: int
    signed_at_hash: str
    era_death: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> OpenSettlement:
        return cls(row["id"], row["status"], row["nonce"], row["extrinsic_hash"],
                   row["extrinsic"], row["signed_at"], row["signed_at_hash"], row["era_death"])


class Settler:
    """Pays creators. One settlement is in flight at a time; `run()` settles
    every `period_s`, or sooner when a creator's pending payout passes
    `threshold` (tokens)."""

    def __init__(self, pg: asyncpg.Pool, chain: AsyncChain, *, decimals: int,
                 period_s: float, threshold: Decimal, poll_interval: float = POLL_INTERVAL,
                 era_period: int = ERA_PERIOD, resubmit_every: float = RESUBMIT_EVERY,
                 threshold_gap: float = THRESHOLD_GAP, max_backoff: float = MAX_BACKOFF) -> None:
        self.pg = pg
        self.chain = chain
        self.escrow = chain.escrow_public_key
        self.decimals = decimals
        self.period_s = period_s
        self.threshold = threshold
        self.poll_interval = poll_interval
        self.era_period = era_period
        self.resubmit_every = resubmit_every
        self.threshold_gap = threshold_gap
        self.max_backoff = max_backoff
        self._last_round: float | None = None  # monotonic time of the last settle_once
        self._more = False  # the last batch left creators out: the next one is due now
        # A seam for the crash tests: called at "recorded" (committed, not
        # submitted) and "submitted" (the node took it, nothing recorded yet).
        self.checkpoint: Callable[[str], Awaitable[None]] | None = None

    async def _checkpoint(self, name: str) -> None:
        if self.checkpoint is not None:
            await self.checkpoint(name)

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        await run_forever("settlement", self._settle_if_due, every=self.poll_interval,
                          max_backoff=self.max_backoff, failure_event="settlement.waiting")

    async def _settle_if_due(self) -> None:
        if await self.due():
            await self.settle_once()

    async def due(self) -> bool:
        """An open settlement (resolve it now), a period since the last batch or
        the last look, or a creator past the threshold (unless the last batch
        failed less than a period ago: a failing escrow is retried per period)."""
        row = await self.pg.fetchrow(
            f"""SELECT EXISTS (SELECT 1 FROM settlements WHERE status IN {OPEN}) AS open,
                       extract(epoch FROM now() - (SELECT max(created_at) FROM settlements))
                           AS since_last,
                       (SELECT status FROM settlements ORDER BY created_at DESC LIMIT 1)
                           AS last_status,
                       EXISTS (SELECT 1 FROM creator_earnings WHERE pending_payout > $1)
                           AS over_threshold""", self.threshold)
        assert row is not None
        if row["open"] or self._more:
            return True
        since_last = float(row["since_last"]) if row["since_last"] is not None else None
        since_round = (time.monotonic() - self._last_round
                       if self._last_round is not None else None)
        waited = [s for s in (since_last, since_round) if s is not None]
        if not waited or min(waited) >= self.period_s:
            return True
        if not row["over_threshold"] or (since_round is not None
                                         and since_round < self.threshold_gap):
            return False
        recently_failed = (row["last_status"] in ("failed", "dropped")
                           and since_last is not None and since_last < self.period_s)
        return not recently_failed

    async def settle_once(self) -> str | None:
        """Resolve the open settlement if any, else make one batch and see it to
        its end. Returns the final status of the batch made, or None."""
        self._last_round = time.monotonic()
        open_one = await self._open_settlement()
        if open_one is not None:
            return await self.resolve(open_one)
        prepared = await self.prepare()
        if prepared is None:
            return None
        await self._checkpoint("recorded")
        return await self.resolve(prepared)

    async def recover(self) -> str | None:
        """On start: see a settlement left open by a crash to its end."""
        open_one = await self._open_settlement()
        return None if open_one is None else await self.resolve(open_one)

    async def _open_settlement(self) -> OpenSettlement | None:
        row = await self.pg.fetchrow(_OPEN_SETTLEMENT)
        return None if row is None else OpenSettlement.from_row(row)

    # -- 1. prepare ----------------------------------------------------------------

    async def prepare(self) -> OpenSettlement | None:
        existing = await self._account_existence()
        minimum = await self.chain.existential_deposit()
        async with self.pg.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
            if await conn.fetchval(f"SELECT 1 FROM settlements WHERE status IN {OPEN}"):
                return None  # another worker's batch: it resolves it
            plan = self._plan(await conn.fetch(_SNAPSHOT), existing, minimum)
            self._more = plan.more
            if not plan.payouts:
                return None
            # Hashing every line is CPU work: off the loop for a large batch.
            commitment, digest, remark = await asyncio.to_thread(self.commit, plan.lines)
            signed = await self.chain.sign_payout_batch(
                [(p.public_key, p.planck) for p in plan.payouts], remark.encode(),
                self.era_period)
            settlement = await self._record(conn, plan, signed, commitment, digest, remark)
        log_event(log, "settlement.recorded", settlement_id=settlement.id,
                  extrinsic_hash=signed.extrinsic_hash, nonce=signed.nonce,
                  creators=len(plan.payouts), charges=len(plan.items),
                  planck=sum(p.planck for p in plan.payouts), root=digest)
        return settlement

    @staticmethod
    def commit(lines: list[str]) -> tuple[str, str, str]:
        """What the batch's remark commits to: (scheme, value, remark). v2: the
        Merkle root of the lines (a receipt proves one line, shows no other)."""
        root = MerkleTree.of(lines).root
        return MERKLE_V2, root, merkle_remark_of(root)

    async def _account_existence(self) -> dict[str, bool]:
        keys = []
        for row in await self.pg.fetch(_CANDIDATES):
            try:
                keys.append("0x" + public_key_of(row["account_id"]).hex())
            except InvalidAccount:
                continue
        return await self.chain.accounts_exist(keys) if keys else {}

    def _plan(self, rows: list[asyncpg.Record], existing: dict[str, bool],
              minimum: int) -> Plan:
        """Per creator: the floor of the pending payout in planck, and every
        unsettled charge of theirs in the snapshot. A creator is left for later
        (charges and all) when that is 0 planck, when their account id is not an
        SS58 address, or when their account does not exist on chain yet and the
        payout is below the existential deposit (the transfer would fail, and
        batch_all would fail every creator with it)."""
        plan = Plan()
        by_creator: dict[str, list[asyncpg.Record]] = {}
        for row in rows:
            by_creator.setdefault(row["creator_id"], []).append(row)
        payable: list[tuple[Payout, list[asyncpg.Record]]] = []
        for creator_id, charges in by_creator.items():
            planck = planck_floor(Decimal(charges[0]["pending_payout"]), self.decimals)
            try:
                key = "0x" + public_key_of(charges[0]["account_id"]).hex()
            except InvalidAccount:
                log_event(log, "settlement.creator_skipped", logging.WARNING,
                          creator_id=creator_id, reason="account id is not an SS58 address")
                continue
            if planck <= 0 or (not existing.get(key, False) and planck < minimum):
                continue
            payable.append((Payout(creator_id, key, planck), charges))
        payable.sort(key=lambda p: (-p[0].planck, p[0].creator_id))  # the largest first
        plan.more = len(payable) > MAX_PAYOUTS
        for payout, charges in payable[:MAX_PAYOUTS]:
            plan.payouts.append(payout)
            plan.items.extend(Item(r["payment_id"], r["payment_type"], r["stream_viewer_id"],
                                   payout.creator_id, Decimal(r["delta"])) for r in charges)
        return plan

    async def _record(self, conn: asyncpg.Connection, plan: Plan, signed: SignedExtrinsic,
                      commitment: str, digest: str, remark: str) -> OpenSettlement:
        settlement_id = await conn.fetchval(
            """INSERT INTO settlements (signer, nonce, extrinsic_hash, extrinsic, genesis_hash,
                                        signed_at, signed_at_hash, era_death, digest, remark,
                                        total_planck, commitment)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id::text""",
            self.escrow, signed.nonce, signed.extrinsic_hash, signed.extrinsic,
            signed.genesis_hash, signed.signed_at, signed.signed_at_hash, signed.era_death,
            digest, remark, Decimal(sum(p.planck for p in plan.payouts)), commitment)
        await conn.executemany(
            "INSERT INTO settlement_payouts (settlement_id, creator_id, public_key, "
            "amount_planck, amount) VALUES ($1, $2, $3, $4, $5)",
            [(settlement_id, p.creator_id, p.public_key, Decimal(p.planck),
              from_planck(p.planck, self.decimals)) for p in plan.payouts])
        await conn.executemany(
            "INSERT INTO settlement_items (settlement_id, payment_id, stream_viewer_id, "
            "creator_id, amount, payment_type) VALUES ($1, $2, $3, $4, $5, $6)",
            [(settlement_id, i.payment_id, i.stream_viewer_id, i.creator_id, i.amount,
              i.payment_type) for i in plan.items])
        return OpenSettlement(settlement_id, "prepared", signed.nonce, signed.extrinsic_hash,
                              signed.extrinsic, signed.signed_at, signed.signed_at_hash,
                              signed.era_death)

    # -- 2. resolve ------------------------------------------------------------------

    async def resolve(self, settlement: OpenSettlement) -> str:
        """Wait until the settlement is final one way or the other, and record it."""
        next_block = settlement.signed_at + 1  # it did not exist before
        last_submit: float | None = None
        status = settlement.status
        refused = False
        while True:
            head = await self.chain.finalized_head()
            while next_block <= head.number:
                block_hash = await self.chain.block_hash(next_block)
                if block_hash is None:
                    break  # the chain was replaced under us: the checks below decide
                extrinsics = await self.chain.block_extrinsics(block_hash)
                if settlement.extrinsic in extrinsics:
                    block = BlockRef(next_block, block_hash)
                    outcome = await self.chain.outcome(block_hash, settlement.extrinsic_hash)
                    return await self._record_outcome(
                        settlement, block, extrinsics.index(settlement.extrinsic), outcome)
                next_block += 1
            # Not in any finalized block so far. Can it still be included?
            if await self.chain.block_hash(settlement.signed_at) != settlement.signed_at_hash:
                return await self._record_dropped(
                    settlement, f"the chain it was signed for is gone (block "
                                f"{settlement.signed_at} is not {settlement.signed_at_hash})")
            nonce = await self.chain.account_nonce_at(self.escrow, head.hash)
            if nonce > settlement.nonce and next_block > head.number:
                return await self._record_dropped(
                    settlement, f"escrow nonce {settlement.nonce} was used by another "
                                f"extrinsic (finalized nonce {nonce})")
            if head.number >= settlement.era_death:
                return await self._record_dropped(
                    settlement, f"mortal era ended at block {settlement.era_death}")
            now = time.monotonic()
            if last_submit is None or now - last_submit >= self.resubmit_every:
                last_submit = now
                result = await self.chain.submit(settlement.extrinsic)
                if result.status is Submitted.REJECTED:
                    if status == "prepared":
                        # Never accepted by the node, so in no pool: it cannot land.
                        return await self._record_dropped(
                            settlement, f"the node refused it: {result.reason}")
                    if not refused:  # it was in the pool once: let the era decide
                        refused = True
                        log_event(log, "settlement.refused_on_resubmit", logging.WARNING,
                                  settlement_id=settlement.id, reason=result.reason,
                                  waiting_until_block=settlement.era_death)
                elif result.status in (Submitted.ACCEPTED, Submitted.ALREADY_KNOWN):
                    if status == "prepared":
                        await self.pg.execute(
                            "UPDATE settlements SET status = 'submitted', updated_at = now() "
                            "WHERE id = $1 AND status = 'prepared'", settlement.id)
                        status = "submitted"
                        log_event(log, "settlement.submitted", settlement_id=settlement.id,
                                  extrinsic_hash=settlement.extrinsic_hash)
                    await self._checkpoint("submitted")
            await asyncio.sleep(self.poll_interval)

    async def _record_outcome(self, settlement: OpenSettlement, block: BlockRef, index: int,
                              outcome: Outcome) -> str:
        if not outcome.success:
            return await self._record_failed(settlement, "failed",
                                             outcome.error or "ExtrinsicFailed", block, index,
                                             outcome.fee)
        async with self.pg.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
            done = await conn.fetchval(
                f"""UPDATE settlements SET status = 'completed', block_hash = $2,
                           block_number = $3, extrinsic_index = $4, fee_planck = $5,
                           finalized_at = now(), updated_at = now()
                     WHERE id = $1 AND status IN {OPEN} RETURNING id""",
                settlement.id, block.hash, block.number, index, Decimal(outcome.fee))
            if done is None:
                return await self._status_of(conn, settlement.id)  # recorded by another worker
            await conn.execute(
                """UPDATE payments p
                      SET settled_amount = p.settled_amount + i.amount,
                          settlement_id = i.settlement_id, transaction_hash = $2,
                          status = CASE WHEN p.amount <= p.settled_amount + i.amount
                                        THEN 'completed' ELSE 'pending' END,
                          completed_at = now()
                     FROM settlement_items i
                    WHERE i.settlement_id = $1 AND p.id = i.payment_id""",
                settlement.id, settlement.extrinsic_hash)
            await conn.execute(
                """UPDATE creator_earnings ce
                      SET pending_payout = ce.pending_payout - o.amount,
                          last_payout_at = now(), updated_at = now()
                     FROM settlement_payouts o
                    WHERE o.settlement_id = $1 AND ce.creator_id = o.creator_id""",
                settlement.id)
        SETTLEMENTS.labels("completed").inc()
        PAID_PLANCK.inc(await self._paid_planck(settlement.id))
        log_event(log, "settlement.completed", settlement_id=settlement.id,
                  extrinsic_hash=settlement.extrinsic_hash, block=block.number,
                  block_hash=block.hash, fee_planck=outcome.fee)
        return "completed"

    async def _record_dropped(self, settlement: OpenSettlement, reason: str) -> str:
        return await self._record_failed(settlement, "dropped", reason, None, None, None)

    async def _record_failed(self, settlement: OpenSettlement, status: str, error: str,
                             block: BlockRef | None, index: int | None,
                             fee: int | None) -> str:
        async with self.pg.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
            done = await conn.fetchval(
                f"""UPDATE settlements SET status = $2, error = $3, block_hash = $4,
                           block_number = $5, extrinsic_index = $6, fee_planck = $7,
                           finalized_at = now(), updated_at = now()
                     WHERE id = $1 AND status IN {OPEN} RETURNING id""",
                settlement.id, status, error, block.hash if block else None,
                block.number if block else None, index,
                Decimal(fee) if fee is not None else None)
            if done is None:
                return await self._status_of(conn, settlement.id)
            await conn.execute(
                """UPDATE payments p SET status = 'failed'
                     FROM settlement_items i
                    WHERE i.settlement_id = $1 AND p.id = i.payment_id
                      AND p.status <> 'completed'""", settlement.id)
        SETTLEMENTS.labels(status).inc()
        log_event(log, f"settlement.{status}", logging.WARNING, settlement_id=settlement.id,
                  extrinsic_hash=settlement.extrinsic_hash, error=error,
                  block=block.number if block else None)
        return status

    async def _paid_planck(self, settlement_id: str) -> int:
        return int(await self.pg.fetchval(
            "SELECT total_planck FROM settlements WHERE id = $1", settlement_id))

    @staticmethod
    async def _status_of(conn: asyncpg.Connection, settlement_id: str) -> str:
        return str(await conn.fetchval("SELECT status FROM settlements WHERE id = $1",
                                       settlement_id))
