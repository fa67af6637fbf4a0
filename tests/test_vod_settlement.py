"""Video views are settled on chain like live views: their `video_view`
payments (grown by the same flush) join the next batch, and the creator is
paid from the escrow. Real Postgres, Redis and the chopsticks chain."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from substrateinterface import SubstrateInterface

from billing.flush import Flusher
from tests.conftest import api_of
from tests.flushing import drain
from tests.test_settlement import (
    DECIMALS,
    FEE,
    PRICE,
    SHARE_PLANCK,
    free_of,
    fresh_key,
    make_show,
    new_settler,
)
from vilokanam.accounts import canonical_account
from vilokanam.balances import credit
from vilokanam.metering import VIDEO_VIEW_BATCH_PREFIX, Tick, TickBatch, TickWriter
from vilokanam.services.chain import ChainNode

pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("pristine_chain_afterwards")]




async def test_video_view_payments_are_settled_on_chain(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode) -> None:
    show = await make_show(db, redis, viewers=0)  # a creator with a chain account key
    video_id = await db.fetchval(
        "INSERT INTO videos (creator_id, title, status, price_per_second, duration) "
        "VALUES ($1, 'replay', 'ready', $2, 10) RETURNING id::text", show.creator_id, PRICE)
    key = fresh_key("VodViewer")
    viewer = str(await db.fetchval("INSERT INTO users (account_id) VALUES ($1) RETURNING id",
                                   canonical_account(key.ss58_address, 42)))
    await credit(db, redis, viewer, Decimal(100), "adjustment", "test funds", DECIMALS)
    view_id = str(await db.fetchval(
        "INSERT INTO video_views (video_id, viewer_id, price_per_second, view_duration) "
        "VALUES ($1::uuid, $2, $3, 0) RETURNING id", video_id, viewer, PRICE))
    writer = TickWriter(redis)
    price_planck = int(PRICE.scaleb(DECIMALS))
    for second in range(6):
        await writer.write(TickBatch(f"{VIDEO_VIEW_BATCH_PREFIX}{view_id}", second,
                                     (Tick(view_id, viewer, price_planck),)))
    flusher = Flusher(pool, redis, FEE)
    await drain(flusher)
    assert await db.fetchval("SELECT amount FROM payments WHERE payment_type = 'video_view'"
                             ) == 6 * PRICE

    assert await new_settler(pool, chain).settle_once() == "completed"
    api: SubstrateInterface = api_of(chain)
    try:
        assert free_of(api, show.creator.ss58_address) == int(6 * SHARE_PLANCK)
    finally:
        api.close()
    row = await db.fetchrow("SELECT status, settled_amount FROM payments "
                            "WHERE payment_type = 'video_view'")
    assert (row["status"], row["settled_amount"]) == ("completed", 6 * PRICE)
    # A video view's line is a payment line (like a tip's): the kind and the payment.
    assert await db.fetchval(
        "SELECT count(*) FROM settlement_items i JOIN payments p ON p.id = i.payment_id "
        "WHERE i.payment_type = 'video_view' AND i.stream_viewer_id IS NULL "
        "AND p.reference_id = $1::uuid", view_id) == 1
