"""Ticks into Redis and exactly once into Postgres, with real servers: exact
sums in every table, retried writes, unknown sessions, and the money."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from billing.flush import FORGOTTEN_TTL_MS, Flusher
from tests.flushing import drain
from tests.waiting import wait_until
from vilokanam.balances import balance_key, balance_of, credit
from vilokanam.keyspace import pending_count, tick_keys
from vilokanam.metering import BatchColumns, Tick, TickBatch, TickWriter, batch_key
from vilokanam.services.redis import RedisServer

# Every test here runs on a standalone Redis and on a 3-node Redis Cluster.
pytestmark = pytest.mark.redis_modes

PRICE = Decimal("0.001")
PRICE_PLANCK = 10**9
FEE = Decimal("0.1")
FUNDS = Decimal(100)


async def live(redis: aioredis.Redis, user: str) -> int:
    """The viewer's live balance (planck), wherever the mode keeps it."""
    return int(await redis.get(balance_key(user, tick_keys(redis))))


def parts_of(redis: aioredis.Redis, audience: Audience) -> int:
    """Batches one second of the audience makes: 1, or its shards in a cluster."""
    return len(tick_keys(redis).group(user for _, user in audience.viewers))


@dataclass
class Audience:
    stream_id: str
    session_id: str
    creator_id: str
    viewers: list[tuple[str, str]]  # (viewer_session_id, user_id)


async def make_audience(db: asyncpg.Connection, redis: aioredis.Redis, viewers: int,
                        price: Decimal = PRICE, funds: Decimal = FUNDS) -> Audience:
    creator = str(await db.fetchval(
        "INSERT INTO users (account_id, is_creator) VALUES ($1, TRUE) RETURNING id",
        f"creator-{uuid.uuid4()}"))
    stream = str(await db.fetchval(
        "INSERT INTO streams (creator_id, title, stream_key_hash, price_per_second, status) "
        "VALUES ($1, 't', sha256(gen_random_uuid()::text::bytea), $2, 'live') RETURNING id",
        creator, price))
    session = str(await db.fetchval(
        "INSERT INTO stream_sessions (stream_id) VALUES ($1) RETURNING id", stream))
    audience = Audience(stream, session, creator, [])
    for n in range(viewers):
        user = str(await db.fetchval("INSERT INTO users (account_id) VALUES ($1) RETURNING id",
                                     f"viewer-{n}-{uuid.uuid4()}"))
        await credit(db, redis, user, funds, "adjustment", "test funds", 12)
        row = str(await db.fetchval(
            "INSERT INTO stream_viewers (stream_id, viewer_id, session_id, price_per_second) "
            "VALUES ($1, $2, $3, $4) RETURNING id", stream, user, session, price))
        audience.viewers.append((row, user))
    return audience


def batch(worker: str, second: int, audience: Audience,
          price_planck: int = PRICE_PLANCK) -> TickBatch:
    return TickBatch(worker, second, tuple(Tick(s, u, price_planck)
                                           for s, u in audience.viewers))


async def assert_books_balance(db: asyncpg.Connection, audience: Audience, seconds: int,
                               funds: Decimal = FUNDS) -> None:
    """Every table agrees with `seconds` ticks per viewer, to the last digit."""
    n = len(audience.viewers)
    cost = PRICE * seconds
    for session, user in audience.viewers:
        row = await db.fetchrow("SELECT total_ticks, paid_amount, last_tick_time "
                                "FROM stream_viewers WHERE id = $1", session)
        assert (row["total_ticks"], row["paid_amount"]) == (seconds, cost)
        assert await db.fetchval("SELECT amount FROM payments WHERE reference_id = $1 AND "
                                 "payment_type = 'stream_view' AND status = 'pending'",
                                 session) == cost
        assert await balance_of(db, user) == funds - cost
        credits = await db.fetchval("SELECT sum(amount) FROM balance_ledger WHERE user_id = $1",
                                    user)
        charges = await db.fetchval("SELECT sum(amount) FROM payments WHERE from_user_id = $1",
                                    user)
        assert await balance_of(db, user) == credits - charges
    assert await db.fetchval("SELECT total_ticks FROM streams WHERE id = $1",
                             audience.stream_id) == n * seconds
    assert await db.fetchval("SELECT total_ticks FROM stream_sessions WHERE id = $1",
                             audience.session_id) == n * seconds
    earnings = await db.fetchrow("SELECT total_earnings, pending_payout FROM creator_earnings "
                                 "WHERE creator_id = $1", audience.creator_id)
    expected = n * cost * (1 - FEE)
    assert (earnings["total_earnings"], earnings["pending_payout"]) == (expected, expected)


async def test_n_viewers_for_s_seconds_is_exactly_n_times_s(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=7)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE, max_batches=3)
    for second in range(1000, 1013):
        assert await writer.write(batch("w1", second, audience)) == []
        if second % 4 == 0:
            await flusher.flush_once()
    await drain(flusher)
    await assert_books_balance(db, audience, seconds=13)
    assert await pending_count(redis) == 0
    for _, user in audience.viewers:  # the live copy was charged exactly as Postgres
        assert await live(redis, user) == (FUNDS - 13 * PRICE) * 10**12


async def test_a_retried_write_counts_once(db: asyncpg.Connection, redis: aioredis.Redis,
                                           pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=2)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    twice = batch("w1", 2000, audience)
    await writer.write(twice)
    await writer.write(twice)  # the worker did not hear the first answer
    await drain(flusher)
    await writer.write(twice)  # ... and retried after billing had already applied it
    await drain(flusher)
    await assert_books_balance(db, audience, seconds=1)


class BillingDied(Exception):
    pass


class DiesAfterCommit(Flusher):
    async def _checkpoint(self, name: str) -> None:
        if name == "committed":
            raise BillingDied(name)


async def test_a_batch_applied_before_a_crash_is_skipped(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """Billing committed, then died before Redis forgot the batch."""
    audience = await make_audience(db, redis, viewers=3)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    one = batch("w1", 3000, audience)
    await writer.write(one)
    parts = await pending_count(redis)  # 1; in a cluster one per shard of its viewers
    with pytest.raises(BillingDied):
        await DiesAfterCommit(pool, redis, FEE).record_once()  # committed in Postgres ...
    assert await pending_count(redis) == parts  # ... still pending in Redis
    result = await flusher.flush_once()
    assert (result.batches, result.skipped, result.synced, result.ticks) == (parts, parts, parts, 3)
    await assert_books_balance(db, audience, seconds=1)
    assert (await flusher.flush_once()).ticks == 0


async def test_a_sync_applies_many_seconds_with_one_update_per_row(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """Recorded every second, synced once: six seconds in one update of each row."""
    audience = await make_audience(db, redis, viewers=4)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    parts = parts_of(redis, audience)  # a batch per second (per shard, in a cluster)
    for second in range(3100, 3106):
        await writer.write(batch("w1", second, audience))
        assert (await flusher.record_once()).batches == parts
    assert await db.fetchval("SELECT count(*) FROM tick_journal") == 6 * parts
    assert await db.fetchval("SELECT sum(total_ticks) FROM stream_viewers "
                             "WHERE stream_id = $1", audience.stream_id) == 0
    synced = await flusher.sync_once()
    assert (synced.synced, synced.ticks, synced.dropped) == (6 * parts, 24, 0)
    await assert_books_balance(db, audience, seconds=6)
    assert await db.fetchval("SELECT count(*) FROM tick_journal") == 0
    assert await db.fetchval(
        "SELECT count(*) FROM tick_batches WHERE batch_id LIKE 'w1:31%'") == 6 * parts


async def test_a_sync_is_bounded_in_ticks_and_takes_the_oldest_rows_first(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """A backed-up journal is applied in bounded statements, oldest first; a row
    bigger than the bound is still taken whole (never split, never stuck)."""
    audience = await make_audience(db, redis, viewers=4)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    parts = parts_of(redis, audience)
    for second in range(3200, 3204):
        await writer.write(batch("w1", second, audience))
        await flusher.record_once()
    flusher.max_sync_ticks = 1  # every row holds more: one row per sync
    rounds = 0
    while True:
        oldest = await db.fetchval("SELECT min(second) FROM tick_journal")
        rows = "SELECT count(*) FROM tick_journal WHERE second = $1"
        left = await db.fetchval(rows, oldest)
        synced = await flusher.sync_once()
        if not synced.backlog:
            break
        assert synced.synced == 1
        assert await db.fetchval(rows, oldest) == left - 1  # a row of the oldest second
        rounds += 1
    assert synced.synced == 0 and rounds == 4 * parts
    await assert_books_balance(db, audience, seconds=4)
    # A bound of 5 ticks: rows are taken while fewer than 5 ticks come before them.
    for second in range(3204, 3208):
        await writer.write(batch("w1", second, audience))
        await flusher.record_once()
    flusher = Flusher(pool, redis, FEE, max_sync_ticks=5)  # nothing learnt from the above
    first = await flusher.sync_once()
    assert first.backlog and 5 <= first.ticks < 5 + 4 and first.ticks < 16
    while (await flusher.sync_once()).backlog:
        pass
    await assert_books_balance(db, audience, seconds=8)
    assert await db.fetchval("SELECT count(*) FROM tick_journal") == 0


def test_the_sync_bound_is_halved_after_a_timeout_and_regrows_with_a_backlog() -> None:
    from billing.flush import SYNC_MIN_TICKS, bound_after_sync, bound_after_timeout

    assert bound_after_timeout(2_000_000) == 1_000_000  # rolled back: half next time
    assert bound_after_timeout(SYNC_MIN_TICKS) == SYNC_MIN_TICKS  # never below the floor
    assert bound_after_sync(1_000_000, 1_000_000) == 2_000_000  # filled: a backlog, regrow
    assert bound_after_sync(1_000, 1_000_000) == 1_000_000  # not filled: kept (never cut)


def test_the_syncer_rests_twice_a_sync_and_only_once_while_catching_up() -> None:
    from billing.flush import rest_after_sync

    assert rest_after_sync(3.0, backlog=False) == 6.0  # a third of a backend at most
    assert rest_after_sync(3.0, backlog=True) == 3.0  # behind: catch up as fast as before


async def test_ticks_of_unknown_sessions_are_dropped_not_billed(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    from billing.flush import TICKS_DROPPED

    audience = await make_audience(db, redis, viewers=1)
    ghost = str(uuid.uuid4())
    await redis.set(balance_key(ghost, tick_keys(redis)), 10**15)
    mixed = TickBatch("w1", 4000, (Tick(audience.viewers[0][0], audience.viewers[0][1],
                                        PRICE_PLANCK), Tick(ghost, ghost, PRICE_PLANCK)))
    before = TICKS_DROPPED.labels("unknown_or_ended_session")._value.get()
    await TickWriter(redis).write(mixed)
    result = await Flusher(pool, redis, FEE).flush_once()
    assert (result.ticks, result.dropped) == (1, 1)
    assert TICKS_DROPPED.labels("unknown_or_ended_session")._value.get() == before + 1
    await assert_books_balance(db, audience, seconds=1)
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    # Charged in Redis when written, the dropped tick is given back at once.
    assert result.refunds == {ghost: PRICE_PLANCK}
    assert await live(redis, ghost) == 10**15


async def test_the_write_names_the_viewers_who_cannot_pay_on(
        db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    audience = await make_audience(db, redis, viewers=2, funds=Decimal("0.003"))
    poor, rich = audience.viewers
    await credit(db, redis, rich[1], Decimal(1), "adjustment", "more", 12)
    writer = TickWriter(redis)
    assert await writer.write(batch("w1", 5000, audience)) == []  # 0.002 left
    assert await writer.write(batch("w1", 5001, audience)) == []  # 0.001: one more second
    assert await writer.write(batch("w1", 5002, audience)) == [poor[0]]  # spent: cut now
    assert await live(redis, poor[1]) == 0
    missing = TickBatch("w1", 5003, (Tick(str(uuid.uuid4()), str(uuid.uuid4()), 1),))
    assert await writer.write(missing) == [missing.ticks[0].viewer_session_id]


async def test_the_charge_is_exact_per_viewer_at_any_size(redis: aioredis.Redis) -> None:
    """The script charges each live balance once per batch (one MGET + one
    MSET per 1000 viewers): a viewer in two sessions pays both, differing
    prices each their own, a balance past 2^53 planck (Lua's doubles stop
    being exact there) is charged exactly, a price-0 second charges nothing,
    a missing balance is not created -- over more viewers than one chunk."""
    keys = tick_keys(redis)
    users = [str(uuid.uuid4()) for _ in range(2503)]
    big, twice, dear, free, broke, gone = users[:6]
    start = {u: 10**15 for u in users if u != gone}
    start[big] = 2**60 + 7
    start[broke] = 2 * PRICE_PLANCK - 1  # pays this second, not the next
    # Either side of 10^14, where the script stops printing a balance with
    # tostring (14 digits) and uses string.format: both exact.
    start[users[6]], start[users[7]] = 10**14 + PRICE_PLANCK - 1, 10**14 + PRICE_PLANCK
    for group in keys.group(start).values():
        await redis.mset({balance_key(u, keys): start[u] for u in group})
    price = {dear: 5 * PRICE_PLANCK + 3, free: 0}
    ticks = [Tick(f"s-{u}", u, price.get(u, PRICE_PLANCK)) for u in users]
    ticks.append(Tick(f"s2-{twice}", twice, 2 * PRICE_PLANCK))
    written = TickBatch("w-charge", 7000, tuple(ticks))
    cut = await TickWriter(redis).write(written)
    assert sorted(cut) == sorted([f"s-{broke}", f"s-{gone}"])
    charged = {u: start[u] - price.get(u, PRICE_PLANCK) for u in start}
    charged[twice] -= 2 * PRICE_PLANCK
    assert {u: await live(redis, u) for u in start} == charged
    assert charged[big] == 2**60 + 7 - PRICE_PLANCK  # exact past 2^53
    assert await redis.get(balance_key(gone, keys)) is None  # not invented
    # Written again: nothing charged twice, nobody cut.
    assert await TickWriter(redis).write(written) == []
    assert {u: await live(redis, u) for u in start} == charged


def test_batch_encoding_round_trips() -> None:
    original = TickBatch("host-1-abc", 1700000000, (
        Tick("s1", "u1", 5), Tick("s2", "u2", 5), Tick("s3", "u3", 7), Tick("s4", "u1", 5)))
    assert TickBatch.decode(original.batch_id, original.encode()) == original
    assert original.batch_id == "host-1-abc:1700000000"
    # Columns: the ids joined (one string each), the prices run-length coded
    # (a batch is mostly one price).
    assert json.loads(original.encode()) == {
        "second": 1700000000, "sessions": "s1,s2,s3,s4",
        "users": "u1,u2,u3,u1", "prices": [[5, 2], [7, 1], [5, 1]]}
    assert TickBatch.decode("w:1", TickBatch("w", 1, ()).encode()).ticks == ()
    one = TickBatch("w", 2, (Tick("s1", "u1", 5),))
    assert TickBatch.decode(one.batch_id, one.encode()) == one


@pytest.mark.parametrize("tick", [Tick("s,1", "u1", 5), Tick("s1", "u,1", 5),
                                  Tick("", "u1", 5), Tick("s1", "", 5)])
def test_an_id_that_would_shift_the_joined_columns_is_refused(tick: Tick) -> None:
    """Split again, an id holding the separator (or an empty one) would move
    every tick after it to another session or viewer: refused at the writer."""
    with pytest.raises(ValueError, match="empty or holds"):
        TickBatch("w", 1, (Tick("s0", "u0", 5), tick)).encode()


def test_a_batch_with_its_ids_as_lists_still_decodes() -> None:
    """The shape written before the ids were joined: JSON lists."""
    listed = '{"second":1700000000,"sessions":["s1","s2"],"users":["u1","u2"],"prices":[[5,2]]}'
    assert BatchColumns.decode(listed) == BatchColumns(1700000000, ["s1", "s2"], ["u1", "u2"],
                                                       [5, 5])


def test_a_batch_of_the_older_shape_still_decodes() -> None:
    """Batches written before an upgrade wait in Redis in the older shape."""
    older = '{"second":1700000000,"ticks":[["s1","u1",5],["s2","u2",7]]}'
    assert TickBatch.decode("w:1700000000", older) == TickBatch(
        "w", 1700000000, (Tick("s1", "u1", 5), Tick("s2", "u2", 7)))
    assert BatchColumns.decode(older) == BatchColumns(1700000000, ["s1", "s2"], ["u1", "u2"],
                                                      [5, 7])


def test_a_batch_whose_columns_differ_in_length_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        BatchColumns.decode('{"second":1,"sessions":["s1","s2"],"users":["u1","u2"],'
                            '"prices":[[5,1]]}')


async def test_a_pending_batch_of_the_older_shape_is_flushed_exactly(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """A batch a worker wrote before the upgrade (its charge already taken
    then) is journaled and synced like any other."""
    audience = await make_audience(db, redis, viewers=2)
    keys = tick_keys(redis)
    for shard, users in keys.group(user for _, user in audience.viewers).items():
        ticks = [[s, u, PRICE_PLANCK] for s, u in audience.viewers if u in users]
        name = batch_key(keys.batch_id("w-old:6000", shard))
        await redis.set(name, json.dumps({"second": 6000, "ticks": ticks}))
        await redis.zadd(keys.pending(shard), {name: 6000})
    await drain(Flusher(pool, redis, FEE))
    await assert_books_balance(db, audience, seconds=1)


async def test_ticks_after_a_session_ended_are_dropped(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=1)
    session, _ = audience.viewers[0]
    ended_at = await db.fetchval(
        "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() "
        "WHERE id = $1 RETURNING extract(epoch FROM updated_at)::bigint", session)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    await writer.write(batch("w1", int(ended_at) - 3, audience))   # while watching: billed
    await writer.write(batch("w1", int(ended_at) + 30, audience))  # long after: dropped
    result = await flusher.flush_once()
    assert (result.ticks, result.dropped) == (1, 1)
    assert await db.fetchval("SELECT total_ticks FROM stream_viewers WHERE id = $1",
                             session) == 1
    # The live balance paid for one second only: the dropped one came back.
    user = audience.viewers[0][1]
    assert await live(redis, user) == (FUNDS - PRICE) * 10**12
    assert await balance_of(db, user) == FUNDS - PRICE


async def test_one_sync_applies_every_rule_to_its_own_sessions_only(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """The sync bills an active metered session in the UPDATE that finds its
    row and every other kind (signed, ended, unpriced, unknown) apart: in one
    sync holding all of them each session gets exactly its own rule."""
    from billing.flush import GRACE_SECONDS

    audience = await make_audience(db, redis, viewers=4)
    (metered, m_user), (signed, s_user), (ended, e_user), (unpriced, u_user) = audience.viewers
    await db.execute("UPDATE stream_viewers SET billing_rule = 'signed', signed_seconds = 2 "
                     "WHERE id = $1", signed)
    ended_at = int(await db.fetchval(
        "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() "
        "WHERE id = $1 RETURNING floor(extract(epoch FROM updated_at))::bigint", ended))
    await db.execute("UPDATE stream_viewers SET price_per_second = NULL WHERE id = $1", unpriced)
    ghost = (str(uuid.uuid4()), m_user)  # an unknown session, paid by the metered viewer
    seconds = GRACE_SECONDS + 6
    first = ended_at - 3  # the ended session keeps the ticks up to 2 s after its end: 6
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    for second in range(first, first + seconds):
        await writer.write(TickBatch("w-mix", second, tuple(
            Tick(s, u, PRICE_PLANCK) for s, u in [*audience.viewers, ghost])))
    flushed = await flusher.flush_once()
    want = {metered: seconds, signed: 2 + GRACE_SECONDS, ended: 6, unpriced: 0}
    assert flushed.ticks == sum(want.values())
    assert flushed.dropped == 5 * seconds - flushed.ticks
    for session, ticks in want.items():
        row = await db.fetchrow("SELECT total_ticks, paid_amount FROM stream_viewers "
                                "WHERE id = $1", session)
        assert (row["total_ticks"], row["paid_amount"] or 0) == (ticks, ticks * PRICE), session
        paid = await db.fetchval("SELECT amount FROM payments WHERE reference_id = $1",
                                 session)
        assert (paid or 0) == ticks * PRICE, session
    assert await db.fetchval("SELECT total_ticks FROM streams WHERE id = $1",
                             audience.stream_id) == sum(want.values())
    assert await db.fetchval("SELECT total_earnings FROM creator_earnings WHERE creator_id = $1",
                             audience.creator_id) == sum(want.values()) * PRICE * (1 - FEE)
    for user in (m_user, s_user, e_user, u_user):  # the dropped ticks came back live
        await _live_agrees_with_the_books(db, redis, user)


# -- every way a charged tick can fail to be billed gives the charge back --------------
# The worker's write charges the live balance (Redis) at once; the flush then
# bills the tick in Postgres or drops it. Whatever it does, the live copy must
# end where Postgres is: each drop path below, one at a time, then the
# live balance in planck against the balance the books hold.

async def _live_agrees_with_the_books(db: asyncpg.Connection, redis: aioredis.Redis,
                                      user: str) -> None:
    books = await balance_of(db, user)
    assert await live(redis, user) == books * 10**12, \
        "the live balance is not the books' balance"


async def _drop_unknown_session(db: asyncpg.Connection, audience: Audience) -> None:
    await db.execute("DELETE FROM stream_viewers WHERE id = $1", audience.viewers[0][0])


async def _drop_ended_session(db: asyncpg.Connection, audience: Audience) -> None:
    await db.execute("UPDATE stream_viewers SET is_active = FALSE, "
                     "updated_at = now() - interval '1 hour' WHERE id = $1",
                     audience.viewers[0][0])


async def _drop_unpriced_session(db: asyncpg.Connection, audience: Audience) -> None:
    await db.execute("UPDATE stream_viewers SET price_per_second = NULL WHERE id = $1",
                     audience.viewers[0][0])


async def _drop_past_the_signed_seconds(db: asyncpg.Connection, audience: Audience) -> None:
    # A signed session that signed nothing: only the grace is billed.
    await db.execute("UPDATE stream_viewers SET billing_rule = 'signed', signed_seconds = 0 "
                     "WHERE id = $1", audience.viewers[0][0])


@pytest.mark.parametrize("drop", [_drop_unknown_session, _drop_ended_session,
                                  _drop_unpriced_session, _drop_past_the_signed_seconds],
                         ids=["unknown", "ended", "unpriced", "past_signed"])
async def test_every_dropped_tick_is_refunded_to_the_live_balance(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, drop: Any) -> None:
    from billing.flush import GRACE_SECONDS

    audience = await make_audience(db, redis, viewers=1)
    user = audience.viewers[0][1]
    await drop(db, audience)
    seconds = GRACE_SECONDS + 5  # more than the grace: some dropped on every path
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    now = int(time.time())  # the seconds just watched (after the session's end, if it ended)
    for second in range(seconds):
        await writer.write(batch("w-drop", now - seconds + second, audience))
    # The fault landed: the writes charged the live balance for every second.
    assert await live(redis, user) == FUNDS * 10**12 - seconds * PRICE_PLANCK
    flushed = await flusher.flush_once()
    assert flushed.dropped > 0 and flushed.ticks + flushed.dropped == seconds
    await _live_agrees_with_the_books(db, redis, user)


async def test_a_write_retried_after_its_batch_was_flushed_charges_nothing(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """The worker did not hear its write land, billing applied and forgot the
    batch, then the retry came: the flush skips the batch (already applied),
    so the retry must not have charged the live balance either."""
    audience = await make_audience(db, redis, viewers=1)
    user = audience.viewers[0][1]
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    once = batch("w-retry", 7000, audience)
    await writer.write(once)
    await drain(flusher)
    assert await pending_count(redis) == 0  # applied and forgotten
    await writer.write(once)  # the retry
    assert (await flusher.flush_once()).ticks == 0
    await _live_agrees_with_the_books(db, redis, user)
    await assert_books_balance(db, audience, seconds=1)


async def test_a_round_of_more_batches_than_one_lua_unpack_forgets_them_all(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    audience = await make_audience(db, redis, viewers=1)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE, max_batches=2500)
    for second in range(2100):
        await writer.write(batch("w-many", 10_000 + second, audience))
    assert (await flusher.flush_once()).ticks == 2100
    assert await pending_count(redis) == 0
    keys = tick_keys(redis)
    shard = keys.shard(audience.viewers[0][1])
    assert await redis.get(batch_key(keys.batch_id("w-many:10000", shard))) == b""  # a tombstone
    assert 0 < await redis.pttl(batch_key(keys.batch_id("w-many:12099", shard))) \
        <= FORGOTTEN_TTL_MS


def redis_servers(request: pytest.FixtureRequest, redis_mode: str) -> list[RedisServer]:
    """The processes behind the Redis under test, to stop and start."""
    if redis_mode == "cluster":
        return list(request.getfixturevalue("redis_cluster").nodes)
    return [request.getfixturevalue("stores").owned_redis()]


async def test_a_refund_redis_did_not_take_is_given_once_it_answers(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        request: pytest.FixtureRequest, redis_mode: str) -> None:
    """The sync commits its drops in Postgres, then Redis is down for the
    refund: the refund is owed, and given (once) when Redis is back."""
    servers = redis_servers(request, redis_mode)
    audience = await make_audience(db, redis, viewers=1)
    user = audience.viewers[0][1]
    await _drop_unknown_session(db, audience)
    writer, flusher = TickWriter(redis), Flusher(pool, redis, FEE)
    now = int(time.time())
    for second in range(3):
        await writer.write(batch("w-owed", now - 3 + second, audience))
    await flusher.record_once()
    for server in servers:
        server.stop()  # a clean stop: the append-only file keeps every write
    synced = await flusher.sync_once()  # Postgres commits; the refund finds no Redis
    assert synced.dropped == 3 and flusher.owed == {user: 3 * PRICE_PLANCK}  # the fault landed
    for server in servers:
        server.start()
    await wait_until(lambda: _answers(redis, user), "Redis answering again")
    await flusher.sync_once()  # nothing new to sync: the owed refund goes
    assert flusher.owed == {}
    await _live_agrees_with_the_books(db, redis, user)
    await flusher.sync_once()  # and only once
    await _live_agrees_with_the_books(db, redis, user)


async def _answers(redis: aioredis.Redis, user: str) -> bool:
    try:  # the shard of the user's live balance (every node's, standalone)
        return await redis.exists(balance_key(user, tick_keys(redis))) == 1
    except (OSError, aioredis.RedisError):
        return False
