"""Creator payouts on the real runtime (chopsticks, Asset Hub Rococo): one
batch_all per settlement lands with ExtrinsicSuccess and moves exactly the
expected planck; charges that grow during a settlement are settled later; an
underfunded escrow fails the batch, pays nobody and is retried; a crash after
recording or after submitting never pays twice; the escrow's secret never
reaches a log line."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from substrateinterface import Keypair, SubstrateInterface

from billing.chain import AsyncChain, ChainClient, load_escrow
from billing.flush import Flusher
from billing.settlement import Settler
from tests.conftest import ESCROW_URI, api_of
from tests.flushing import drain
from tests.test_vilokanam_receipts import ref_mth
from tests.waiting import wait_until
from vilokanam.accounts import canonical_account, public_key_of
from vilokanam.balances import credit
from vilokanam.direct_payments import DirectPayment, pay_creator
from vilokanam.logs import _Formatter
from vilokanam.metering import Tick, TickBatch, TickWriter
from vilokanam.services.chain import CHAIN_SS58_PREFIX, ChainNode
from vilokanam.tasks import TaskOwner

# These tests move money on the session's chain.
pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("pristine_chain_afterwards")]

FEE = Decimal("0.1")
DECIMALS = 12
# 10^9 + 7 planck a second: the creator's 90% is 900000006.3 planck, so
# payouts always leave a sub-planck rest pending.
PRICE = Decimal("0.001000000007")
SHARE_PLANCK = Decimal("900000006.3")
ESCROW = load_escrow(ESCROW_URI)


# -- the books: a creator, a stream, viewers watching it ------------------------

@dataclass
class Show:
    creator: Keypair
    creator_id: str
    stream_id: str
    session_id: str
    price: Decimal
    viewers: list[tuple[str, str, Keypair]] = field(default_factory=list)  # (sv id, user, key)
    second: int = 1_000_000


def fresh_key(name: str) -> Keypair:
    """A key nobody used: its account does not exist on chain yet."""
    return Keypair.create_from_uri(f"//{name}{uuid.uuid4().hex}", ss58_format=CHAIN_SS58_PREFIX)


async def make_show(db: asyncpg.Connection, redis: aioredis.Redis, viewers: int,
                    price: Decimal = PRICE) -> Show:
    creator = fresh_key("Creator")
    creator_id = str(await db.fetchval(
        "INSERT INTO users (account_id, is_creator) VALUES ($1, TRUE) RETURNING id",
        canonical_account(creator.ss58_address, 42)))
    stream_id = str(await db.fetchval(
        "INSERT INTO streams (creator_id, title, stream_key_hash, price_per_second, status) "
        "VALUES ($1, 't', sha256(gen_random_uuid()::text::bytea), $2, 'live') RETURNING id",
        creator_id, price))
    session_id = str(await db.fetchval(
        "INSERT INTO stream_sessions (stream_id) VALUES ($1) RETURNING id", stream_id))
    show = Show(creator, creator_id, stream_id, session_id, price)
    for _ in range(viewers):
        await add_viewer(db, redis, show)
    return show


async def add_viewer(db: asyncpg.Connection, redis: aioredis.Redis, show: Show) -> str:
    key = fresh_key("Viewer")
    user = str(await db.fetchval("INSERT INTO users (account_id) VALUES ($1) RETURNING id",
                                 canonical_account(key.ss58_address, 42)))
    await credit(db, redis, user, Decimal(100_000), "adjustment", "test funds", DECIMALS)
    viewer_session = str(await db.fetchval(
        "INSERT INTO stream_viewers (stream_id, viewer_id, session_id, price_per_second) "
        "VALUES ($1, $2, $3, $4) RETURNING id", show.stream_id, user, show.session_id,
        show.price))
    show.viewers.append((viewer_session, user, key))
    return viewer_session


async def watch(pool: asyncpg.Pool, redis: aioredis.Redis, show: Show, seconds: int,
                only: list[str] | None = None) -> None:
    """`seconds` ticks for every viewer (or those in `only`), through the real
    Redis batches and the real flush."""
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    price_planck = int(show.price.scaleb(DECIMALS))
    for _ in range(seconds):
        show.second += 1
        await writer.write(TickBatch(f"w-{show.stream_id}", show.second, tuple(
            Tick(sv, user, price_planck) for sv, user, _ in show.viewers
            if only is None or sv in only)))
    await drain(flusher)


# -- the chain, read independently of the code under test -----------------------

def free_of(api: SubstrateInterface, address: str) -> int:
    return int(api.query("System", "Account", [address]).value["data"]["free"])


def nonce_of(api: SubstrateInterface, address: str) -> int:
    return int(api.query("System", "Account", [address]).value["nonce"])


def set_escrow_free(chain: ChainNode, api: SubstrateInterface, planck: int) -> None:
    """Test only (dev_setStorage): the escrow's free balance, its nonce kept."""
    chain.rpc("dev_setStorage", [{"System": {"Account": [[[ESCROW.ss58_address], {
        "providers": 1, "nonce": nonce_of(api, ESCROW.ss58_address),
        "data": {"free": str(planck)}}]]}}])


def escrow_fee(api: SubstrateInterface, block_hash: str, extrinsic_hash: str) -> int:
    """What the escrow paid for the extrinsic: Withdraw minus refund Deposits."""
    fee = 0
    receipt = api.retrieve_extrinsic_by_hash(block_hash, extrinsic_hash)
    for record in receipt.triggered_events:
        event = record.value
        attributes = event["attributes"]
        if event["module_id"] != "Balances" or not isinstance(attributes, dict):
            continue
        who = attributes.get("who")
        if who is not None and public_key_of(who) == ESCROW.public_key:
            if event["event_id"] == "Withdraw":
                fee += int(attributes["amount"])
            elif event["event_id"] == "Deposit":
                fee -= int(attributes["amount"])
    return fee


def batch_calls(api: SubstrateInterface, block_hash: str, index: int) -> list[dict[str, Any]]:
    """The calls inside the batch_all at `index` of the block, decoded."""
    extrinsic = api.get_block(block_hash)["extrinsics"][index].value
    call = extrinsic["call"]
    assert (call["call_module"], call["call_function"]) == ("Utility", "batch_all")
    return list(call["call_args"][0]["value"])


def remark_text(calls: list[dict[str, Any]]) -> str:
    remarks = [c for c in calls if (c["call_module"], c["call_function"]) == ("System", "remark")]
    assert len(remarks) == 1
    value = remarks[0]["call_args"][0]["value"]
    if isinstance(value, str) and value.startswith("0x"):
        return bytes.fromhex(value[2:]).decode()
    return str(value)


# -- fixtures -------------------------------------------------------------------

def new_settler(pool: asyncpg.Pool, chain: ChainNode, **overrides: Any) -> Settler:
    options: dict[str, Any] = {"decimals": DECIMALS, "period_s": 3600.0,
                               "threshold": Decimal(1_000_000), "poll_interval": 0.05}
    options.update(overrides)
    return Settler(pool, AsyncChain(ChainClient(chain.url, ESCROW)), **options)


async def settlements(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM settlements ORDER BY created_at")


def planck(tokens: Decimal) -> int:
    return int(tokens.scaleb(DECIMALS))


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Every captured record, rendered the way production renders it (fields
    included), and its raw attributes: no trace of the escrow's secret."""
    secrets = [ESCROW_URI, ESCROW_URI.strip("/"), ESCROW.private_key.hex()]
    if ESCROW.seed_hex:
        secrets.append(ESCROW.seed_hex if isinstance(ESCROW.seed_hex, str)
                       else ESCROW.seed_hex.hex())
    formatter = _Formatter(as_json=True)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for record in caplog.records:
        rendered = formatter.format(record) + repr(record.__dict__)
        for secret in secrets:
            assert secret not in rendered, f"the escrow secret leaked into {record.getMessage()}"


# -- the tests ---------------------------------------------------------------------

async def test_one_batch_pays_every_creator_exactly_and_lands_with_success(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    first = await make_show(db, redis, viewers=2)
    second = await make_show(db, redis, viewers=1)
    await watch(pool, redis, first, seconds=3)
    await watch(pool, redis, second, seconds=3)
    escrow_before = free_of(api, ESCROW.ss58_address)
    nonce_before = nonce_of(api, ESCROW.ss58_address)

    assert await new_settler(pool, chain).settle_once() == "completed"

    [settlement] = await settlements(db)
    assert settlement["status"] == "completed" and settlement["nonce"] == nonce_before
    # 6 and 3 viewer-seconds of 900000006.3 planck: the floor is paid.
    paid_first, paid_second = 5_400_000_037, 2_700_000_018
    assert free_of(api, first.creator.ss58_address) == paid_first
    assert free_of(api, second.creator.ss58_address) == paid_second
    fee = escrow_fee(api, settlement["block_hash"], settlement["extrinsic_hash"])
    assert fee > 0 and settlement["fee_planck"] == fee
    assert escrow_before - free_of(api, ESCROW.ss58_address) == paid_first + paid_second + fee
    assert nonce_of(api, ESCROW.ss58_address) == nonce_before + 1

    # On chain: ONE batch_all with ExtrinsicSuccess: two transfers and the remark.
    receipt = api.retrieve_extrinsic_by_hash(settlement["block_hash"],
                                             settlement["extrinsic_hash"])
    assert receipt.is_success
    assert api.get_block_number(settlement["block_hash"]) == settlement["block_number"]
    calls = batch_calls(api, settlement["block_hash"], settlement["extrinsic_index"])
    transfers = sorted((c["call_args"][1]["value"], c["call_args"][0]["value"]) for c in calls
                       if c["call_function"] == "transfer_keep_alive")
    assert [amount for amount, _ in transfers] == [paid_second, paid_first]
    lines = sorted(f"{r['stream_viewer_id']}:{r['amount'].normalize():f}" for r in await db.fetch(
        "SELECT stream_viewer_id::text, amount FROM settlement_items"))
    assert len(lines) == 3
    # The remark carries the Merkle root of the lines (v2), computed here as
    # RFC 9162 writes it, independently of the code under test.
    root = ref_mth([line.encode() for line in lines]).hex()
    assert settlement["commitment"] == "merkle-v2" and settlement["digest"] == root
    assert remark_text(calls) == "vilokanam:settlement:v2:" + root == settlement["remark"]

    # In Postgres: every charge settled, the creators' pending down to the rest.
    for row in await db.fetch("SELECT * FROM payments"):
        assert row["status"] == "completed"
        assert row["settled_amount"] == row["amount"] == 3 * PRICE
        assert row["transaction_hash"] == settlement["extrinsic_hash"]
        assert row["settlement_id"] == settlement["id"] and row["completed_at"] is not None
    for show, rest in ((first, "0.0000000000008"), (second, "0.0000000000009")):
        earnings = await db.fetchrow("SELECT * FROM creator_earnings WHERE creator_id = $1",
                                     show.creator_id)
        assert earnings["pending_payout"] == Decimal(rest)
        assert earnings["last_payout_at"] is not None
    # Nothing left to pay: the next round makes no batch.
    assert await new_settler(pool, chain).settle_once() is None
    assert len(await settlements(db)) == 1
    assert_no_secret_logged(caplog)


async def test_charges_growing_during_a_settlement_are_settled_by_the_next(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface) -> None:
    show = await make_show(db, redis, viewers=1)
    await watch(pool, redis, show, seconds=2)
    settler = new_settler(pool, chain)

    async def viewer_keeps_watching(point: str) -> None:
        if point == "recorded":  # snapshot taken, batch in flight
            await watch(pool, redis, show, seconds=3)

    settler.checkpoint = viewer_keeps_watching
    assert await settler.settle_once() == "completed"
    payment = await db.fetchrow("SELECT * FROM payments")
    assert payment["amount"] == 5 * PRICE and payment["settled_amount"] == 2 * PRICE
    assert payment["status"] == "pending"  # 3 s are still to settle
    assert free_of(api, show.creator.ss58_address) == 1_800_000_012  # floor(2 x 900000006.3)

    settler.checkpoint = None
    assert await settler.settle_once() == "completed"
    [_, later] = await settlements(db)
    assert await db.fetchval("SELECT amount FROM settlement_items WHERE settlement_id = $1",
                             later["id"]) == 3 * PRICE
    payment = await db.fetchrow("SELECT * FROM payments")
    assert payment["settled_amount"] == payment["amount"] and payment["status"] == "completed"
    # Both payouts together are the floor of all 5 s: no planck lost or made.
    assert free_of(api, show.creator.ss58_address) == 4_500_000_031
    assert await db.fetchval("SELECT pending_payout FROM creator_earnings") == Decimal(
        "0.0000000000005")

    # The session goes on: the completed payment is open again.
    await watch(pool, redis, show, seconds=1)
    assert await db.fetchval("SELECT status FROM payments") == "pending"


async def test_an_underfunded_escrow_fails_the_batch_pays_nobody_and_retries(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface) -> None:
    show = await make_show(db, redis, viewers=1, price=Decimal(1))
    await watch(pool, redis, show, seconds=3)  # 2.7 tokens for the creator
    pending = await db.fetchval("SELECT pending_payout FROM creator_earnings")
    assert pending == Decimal("2.7")
    restore = free_of(api, ESCROW.ss58_address)
    set_escrow_free(chain, api, 10**DECIMALS)  # 1 token: the fees, not the payout
    try:
        settler = new_settler(pool, chain, threshold=Decimal("0.5"), threshold_gap=0.0)
        assert await settler.settle_once() == "failed"
        [failed] = await settlements(db)
        assert failed["block_hash"] is not None and failed["error"]
        assert not api.retrieve_extrinsic_by_hash(failed["block_hash"],
                                                  failed["extrinsic_hash"]).is_success
        payment = await db.fetchrow("SELECT * FROM payments")
        assert payment["status"] == "failed" and payment["settled_amount"] == 0
        assert payment["transaction_hash"] is None
        earnings = await db.fetchrow("SELECT * FROM creator_earnings")
        assert earnings["pending_payout"] == pending and earnings["last_payout_at"] is None
        assert free_of(api, show.creator.ss58_address) == 0
        fee = escrow_fee(api, failed["block_hash"], failed["extrinsic_hash"])
        assert free_of(api, ESCROW.ss58_address) == 10**DECIMALS - fee  # only the fee left
        # Over the threshold, but the last batch failed: wait for the period.
        assert await settler.due() is False
    finally:
        set_escrow_free(chain, api, restore)

    assert await settler.settle_once() == "completed"  # the next period, funded
    assert free_of(api, show.creator.ss58_address) == planck(pending)
    payment = await db.fetchrow("SELECT * FROM payments")
    assert payment["status"] == "completed" and payment["settled_amount"] == 3
    assert await db.fetchval("SELECT pending_payout FROM creator_earnings") == 0
    assert [s["status"] for s in await settlements(db)] == ["failed", "completed"]


class Crash(Exception):
    """The billing process dying at a checkpoint."""


def crash_at(wanted: str) -> Any:
    async def checkpoint(point: str) -> None:
        if point == wanted:
            raise Crash(point)
    return checkpoint


@pytest.mark.parametrize("point", ["recorded", "submitted"])
async def test_a_crash_around_submitting_never_pays_twice(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface, point: str) -> None:
    show = await make_show(db, redis, viewers=2)
    await watch(pool, redis, show, seconds=4)
    nonce_before = nonce_of(api, ESCROW.ss58_address)
    crashing = new_settler(pool, chain)
    crashing.checkpoint = crash_at(point)
    with pytest.raises(Crash):
        await crashing.settle_once()
    [open_one] = await settlements(db)
    assert open_one["status"] == ("prepared" if point == "recorded" else "submitted")
    assert await db.fetchval("SELECT count(*) FROM payments WHERE status = 'completed'") == 0
    if point == "submitted":  # it is on chain already; only Postgres does not know
        await wait_for(lambda: nonce_of(api, ESCROW.ss58_address) == nonce_before + 1)

    restarted = new_settler(pool, chain)
    assert await restarted.recover() == "completed"
    [done] = await settlements(db)
    assert done["id"] == open_one["id"] and done["extrinsic_hash"] == open_one["extrinsic_hash"]
    expected = int(8 * SHARE_PLANCK)  # floor(8 viewer-seconds x 900000006.3)
    assert free_of(api, show.creator.ss58_address) == expected  # exactly once
    assert nonce_of(api, ESCROW.ss58_address) == nonce_before + 1  # one extrinsic in all
    assert await db.fetchval("SELECT count(*) FROM payments WHERE status = 'completed'") == 2
    # Nothing is left to settle, so nothing is signed again.
    assert await restarted.settle_once() is None
    assert free_of(api, show.creator.ss58_address) == expected


async def test_a_batch_whose_nonce_was_used_elsewhere_is_dropped_then_paid_once(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface) -> None:
    show = await make_show(db, redis, viewers=1)
    await watch(pool, redis, show, seconds=2)
    crashing = new_settler(pool, chain)
    crashing.checkpoint = crash_at("recorded")
    with pytest.raises(Crash):
        await crashing.settle_once()
    # Meanwhile someone else holding the escrow key spends the same nonce.
    other = api.compose_call("System", "remark", {"remark": b"not a settlement"})
    assert api.submit_extrinsic(api.create_signed_extrinsic(call=other, keypair=ESCROW),
                                wait_for_inclusion=True).is_success

    settler = new_settler(pool, chain)
    assert await settler.recover() == "dropped"
    [dropped] = await settlements(db)
    assert "nonce" in dropped["error"]
    assert await db.fetchval("SELECT status FROM payments") == "failed"
    assert free_of(api, show.creator.ss58_address) == 0
    assert await settler.settle_once() == "completed"
    assert free_of(api, show.creator.ss58_address) == int(2 * SHARE_PLANCK)


async def test_a_batch_the_node_refuses_is_dropped_and_paid_once_funded(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface) -> None:
    show = await make_show(db, redis, viewers=1)
    await watch(pool, redis, show, seconds=2)
    restore = free_of(api, ESCROW.ss58_address)
    set_escrow_free(chain, api, 1000)  # not even the fee: the pool refuses the extrinsic
    try:
        assert await new_settler(pool, chain).settle_once() == "dropped"
    finally:
        set_escrow_free(chain, api, restore)
    [dropped] = await settlements(db)
    assert "refused" in dropped["error"] and dropped["block_hash"] is None
    assert await db.fetchval("SELECT status FROM payments") == "failed"
    assert await new_settler(pool, chain).settle_once() == "completed"
    assert free_of(api, show.creator.ss58_address) == int(2 * SHARE_PLANCK)


async def test_a_batch_signed_for_a_chain_that_restarted_is_dropped_and_paid_on_the_new(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode) -> None:
    show = await make_show(db, redis, viewers=1)
    await watch(pool, redis, show, seconds=2)
    crashing = new_settler(pool, chain)
    crashing.checkpoint = crash_at("recorded")
    with pytest.raises(Crash):
        await crashing.settle_once()
    chain.kill()  # the dev chain lives in memory: it comes back as a fresh genesis
    await asyncio.to_thread(chain.start)

    settler = new_settler(pool, chain)
    assert await settler.recover() == "dropped"
    [dropped] = await settlements(db)
    assert "chain it was signed for is gone" in dropped["error"]
    assert await settler.settle_once() == "completed"
    fresh = api_of(chain)
    try:
        assert free_of(fresh, show.creator.ss58_address) == int(2 * SHARE_PLANCK)
    finally:
        fresh.close()


async def test_the_loop_settles_by_threshold_and_stops_with_its_owner(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface) -> None:
    show = await make_show(db, redis, viewers=1)
    await watch(pool, redis, show, seconds=1)
    settler = new_settler(pool, chain, period_s=3600.0, threshold=Decimal("0.002"),
                          threshold_gap=0.0)
    tasks = TaskOwner("test")
    task = tasks.spawn(settler.run(), "settlement")
    assert task is not None
    try:
        # No batch yet: the first round settles at once.
        await wait_for_async(lambda: completed_count(db), 1)
        await watch(pool, redis, show, seconds=2)  # 0.0018 pending: under the threshold
        await asyncio.sleep(0.5)  # time passing IS the test: no batch while under it
        assert await completed_count(db) == 1
        await watch(pool, redis, show, seconds=1)  # 0.0027 pending: over it, long before 1 h
        await wait_for_async(lambda: completed_count(db), 2)
    finally:
        await tasks.close()
    assert task.cancelled() and len(tasks) == 0
    assert free_of(api, show.creator.ss58_address) == int(4 * SHARE_PLANCK)


async def completed_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM settlements WHERE status = 'completed'"))


async def wait_for(check: Any, timeout: float = 20.0) -> None:
    """`check` is synchronous (substrate-interface): it runs in a thread."""
    await wait_until(lambda: asyncio.to_thread(check), "the chain condition", timeout=timeout)


async def wait_for_async(read: Any, wanted: Any, timeout: float = 20.0) -> None:
    async def reached() -> bool:
        return bool(await read() == wanted)

    await wait_until(reached, f"the value {wanted!r}", timeout=timeout)


async def tip_and_subscribe(pool: asyncpg.Pool, redis: aioredis.Redis, show: Show,
                            payer: str) -> tuple[DirectPayment, DirectPayment]:
    """A tip of 1.000000000007 and a 2.5 subscription period from `payer` to the
    show's creator, recorded as their routes do (what a recorder returns as
    "id" becomes the payment's reference_id)."""

    async def tip_row(conn: asyncpg.Connection, payment_id: str) -> dict[str, Any]:
        return {"id": str(await conn.fetchval(
            "INSERT INTO tips (payment_id, message) VALUES ($1, 'hi') RETURNING id",
            payment_id))}

    async def period_row(conn: asyncpg.Connection, payment_id: str) -> dict[str, Any]:
        return {"id": str(await conn.fetchval(
            "INSERT INTO subscriptions (subscriber_id, creator_id, payment_id, price, "
            "starts_at, ends_at) VALUES ($1, $2, $3, 2.5, now(), now() + interval '30 days') "
            "RETURNING id", payer, show.creator_id, payment_id))}

    tip = await pay_creator(pool, redis, payer_id=payer, creator_id=show.creator_id,
                            amount=Decimal("1.000000000007"), kind="tip", decimals=DECIMALS,
                            record=tip_row)
    subscription = await pay_creator(pool, redis, payer_id=payer, creator_id=show.creator_id,
                                     amount=Decimal("2.5"), kind="subscription",
                                     decimals=DECIMALS, record=period_row)
    return tip, subscription


async def test_a_tip_and_a_subscription_reach_the_creator_exactly_in_the_next_batch(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface) -> None:
    show = await make_show(db, redis, viewers=1)
    _, viewer, _ = show.viewers[0]

    tip, subscription = await tip_and_subscribe(pool, redis, show, viewer)

    assert await new_settler(pool, chain).settle_once() == "completed"
    # Exactly their amounts, to the planck: no fee on what a viewer gives on purpose.
    assert free_of(api, show.creator.ss58_address) == 3_500_000_000_007
    [settlement] = await settlements(db)
    lines = sorted([f"tip:{tip.payment_id}:1.000000000007",
                    f"subscription:{subscription.payment_id}:2.5"])
    assert settlement["digest"] == ref_mth([line.encode() for line in lines]).hex()
    calls = batch_calls(api, settlement["block_hash"], settlement["extrinsic_index"])
    assert remark_text(calls) == "vilokanam:settlement:v2:" + settlement["digest"]
    for payment_id in (tip.payment_id, subscription.payment_id):
        row = await db.fetchrow("SELECT * FROM payments WHERE id = $1", payment_id)
        assert row["status"] == "completed" and row["settled_amount"] == row["amount"]
        assert row["transaction_hash"] == settlement["extrinsic_hash"]
    assert await db.fetchval("SELECT pending_payout FROM creator_earnings") == 0
    assert await new_settler(pool, chain).settle_once() is None  # nothing paid twice
