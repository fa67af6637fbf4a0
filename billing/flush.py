"""Ticks from Redis to Postgres, exactly once.

Each round: read up to `max_batches` pending batch keys and their payloads
(two Redis commands), then in ONE Postgres transaction record the batch ids in
`tick_batches` (a batch already there is skipped: applied before a crash, or
written twice) and apply the new ticks with set-based SQL; commit; only then
forget the batches in Redis (their keys stay a while as tombstones, so a late
retry of a write charges nothing twice). A crash anywhere re-reads batches that are either
not committed (applied now) or committed (skipped now): nothing is lost, and
nothing is counted twice."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

from vilokanam.balances import adjust_live
from vilokanam.delivery import GRACE_SECONDS
from vilokanam.logs import log_event
from vilokanam.metering import PENDING_KEY, VIDEO_VIEW_BATCH_PREFIX, TickBatch, batch_id_of
from vilokanam.tasks import run_forever

log = logging.getLogger(__name__)

TICKS_FLUSHED = PromCounter("vilokanam_ticks_flushed_total", "Ticks committed to Postgres.")
TICKS_DROPPED = PromCounter(
    "vilokanam_ticks_dropped_total",
    "Ticks not billed: their viewer session is unknown, or had ended.", ["reason"])
TICKS_REFUNDED = PromCounter(
    "vilokanam_ticks_refunded_total",
    "Dropped ticks given back to the viewer's live balance (charged there when written).")
BATCHES_SKIPPED = PromCounter(
    "vilokanam_tick_batches_skipped_total", "Batches seen again and skipped (already applied).")
FLUSH_LAG = Histogram(
    "vilokanam_flush_lag_seconds", "From the end of a tick's second to its commit in Postgres.",
    buckets=(0.5, 1, 1.5, 2, 3, 5, 10, 30))

# How long a flushed batch's key stays behind as a tombstone (see _forget): a
# worker retries a batch within seconds of its failed write unless Redis stays
# unreachable for it; a retry later than this charges the live balance again
# for nothing, and the reconciliation (billing/reconcile.py) repairs it.
FORGOTTEN_TTL_MS = 600_000

# KEYS: the pending set, then the batch keys; ARGV: the tombstones' TTL (ms).
# One command, atomic, however many batches a round forgets.
_FORGET = """
for i = 2, #KEYS, 1000 do  -- unpack in chunks: Lua's stack is bounded
  redis.call('ZREM', KEYS[1], unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
for i = 2, #KEYS do redis.call('SET', KEYS[i], '', 'PX', ARGV[1]) end
"""

# One statement: every table a tick touches, set-based. $1/$2: one element per
# tick (viewer session id or video view id, its second); $3 the platform fee;
# $4 the number of ticks; $5 the grace a signed session may run past its
# signed seconds (the ticks beyond are dropped, and refunded to the live
# balance). A live tick grows its stream_viewers row and `stream_view`
# payment; a video view's tick (a media second delivered,
# signaling/playback.py) its video_views row (view_duration,
# watch_completion) and `video_view` payment; both the creator's earnings
# and the viewer's balance. Ticks of unknown
# sessions, and of sessions that had ended (an ended session's updated_at is
# its end), are filtered out here, tick by tick. Timestamps are the schema's
# TIMESTAMP, i.e. local time in the session's TimeZone, like now().
_APPLY = """
WITH raw AS NOT MATERIALIZED (
    SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS r(id, second)
), counted AS (
    SELECT r.id, count(*)::int AS n, v.billing_rule,
           -- A signed session is billed at most its signed seconds + the grace.
           GREATEST(COALESCE(v.signed_seconds, 0) + $5::int - v.total_ticks, 0) AS allowed,
           to_timestamp(max(r.second) + 1) AT TIME ZONE current_setting('TimeZone') AS last_tick
      FROM raw r JOIN stream_viewers v ON v.id = r.id
     WHERE v.price_per_second IS NOT NULL
       AND (v.is_active OR to_timestamp(r.second) AT TIME ZONE current_setting('TimeZone')
                           <= v.updated_at + interval '2 seconds')
     GROUP BY r.id, v.billing_rule, v.signed_seconds, v.total_ticks
), t AS (
    SELECT id, last_tick,
           CASE WHEN billing_rule = 'signed' THEN LEAST(n, allowed) ELSE n END AS n
      FROM counted
     WHERE billing_rule <> 'signed' OR allowed > 0
), vt AS (
    -- Ticks of video views (signaling/playback.py): one per media second delivered.
    SELECT r.id, count(*)::int AS n
      FROM raw r JOIN video_views v ON v.id = r.id
     WHERE v.price_per_second IS NOT NULL
     GROUP BY r.id
), vv AS (
    UPDATE video_views vv
       SET view_duration = COALESCE(vv.view_duration, 0) + vt.n,
           watch_completion = LEAST(100, round(100.0 * (COALESCE(vv.view_duration, 0) + vt.n)
                                               / GREATEST(COALESCE(vid.duration, 1), 1), 2))
      FROM vt, videos vid
     WHERE vv.id = vt.id AND vid.id = vv.video_id
    RETURNING vv.id, vv.viewer_id, vid.creator_id, vt.n, vt.n * vv.price_per_second AS cost,
              trunc(vt.n * vv.price_per_second * (1 - $3::numeric), 18) AS creator_share
), sv AS (
    UPDATE stream_viewers sv
       SET total_ticks = sv.total_ticks + t.n,
           last_tick_time = GREATEST(sv.last_tick_time, t.last_tick),
           paid_amount = sv.paid_amount + t.n * sv.price_per_second
      FROM t
     WHERE sv.id = t.id
    RETURNING sv.id, sv.stream_id, sv.session_id, sv.viewer_id, t.n,
              t.n * sv.price_per_second AS cost
), charged AS (
    SELECT sv.*, s.creator_id,
           trunc(sv.cost * (1 - $3::numeric), 18) AS creator_share
      FROM sv JOIN streams s ON s.id = sv.stream_id
), streams_up AS (
    UPDATE streams s SET total_ticks = s.total_ticks + x.n
      FROM (SELECT stream_id, sum(n) AS n FROM sv GROUP BY stream_id) x
     WHERE s.id = x.stream_id
), sessions_up AS (
    UPDATE stream_sessions ss SET total_ticks = ss.total_ticks + x.n
      FROM (SELECT session_id, sum(n) AS n FROM sv GROUP BY session_id) x
     WHERE ss.id = x.session_id
), earnings_up AS (
    INSERT INTO creator_earnings (creator_id, total_earnings, pending_payout)
    SELECT creator_id, sum(creator_share), sum(creator_share)
      FROM (SELECT creator_id, creator_share FROM charged
            UNION ALL SELECT creator_id, creator_share FROM vv) shares
     GROUP BY creator_id
    ON CONFLICT (creator_id) DO UPDATE
       SET total_earnings = creator_earnings.total_earnings + EXCLUDED.total_earnings,
           pending_payout = creator_earnings.pending_payout + EXCLUDED.pending_payout,
           updated_at = now()
), payments_up AS (
    -- A plain UPDATE for the usual case (the session's payment exists); an
    -- upsert only for a session's first charge: cheaper than upserting all.
    UPDATE payments p SET amount = p.amount + c.cost
      FROM charged c
     WHERE p.reference_id = c.id AND p.payment_type = 'stream_view'
    RETURNING p.reference_id
), payments_new AS (
    INSERT INTO payments (from_user_id, to_user_id, amount, payment_type, reference_id, status)
    SELECT viewer_id, creator_id, cost, 'stream_view', id, 'pending' FROM charged
     WHERE id NOT IN (SELECT reference_id FROM payments_up)
    ON CONFLICT (reference_id) WHERE payment_type = 'stream_view' DO UPDATE
       SET amount = payments.amount + EXCLUDED.amount
), vpayments_up AS (
    UPDATE payments p SET amount = p.amount + c.cost
      FROM vv c
     WHERE p.reference_id = c.id AND p.payment_type = 'video_view'
    RETURNING p.reference_id
), vpayments_new AS (
    INSERT INTO payments (from_user_id, to_user_id, amount, payment_type, reference_id, status)
    SELECT viewer_id, creator_id, cost, 'video_view', id, 'pending' FROM vv
     WHERE id NOT IN (SELECT reference_id FROM vpayments_up)
    ON CONFLICT (reference_id) WHERE payment_type = 'video_view' DO UPDATE
       SET amount = payments.amount + EXCLUDED.amount
), spent AS (
    SELECT viewer_id, sum(cost) AS cost
      FROM (SELECT viewer_id, cost FROM sv UNION ALL SELECT viewer_id, cost FROM vv) costs
     GROUP BY viewer_id
), balances_up AS (
    UPDATE viewer_balances b SET balance = b.balance - x.cost, updated_at = now()
      FROM spent x WHERE b.user_id = x.viewer_id
    RETURNING b.user_id
), balances_new AS (
    INSERT INTO viewer_balances (user_id, balance)
    SELECT viewer_id, -cost FROM spent WHERE viewer_id NOT IN (SELECT user_id FROM balances_up)
    ON CONFLICT (user_id) DO UPDATE
       SET balance = viewer_balances.balance + EXCLUDED.balance, updated_at = now()
)
SELECT (SELECT count(*) FROM sv) + (SELECT count(*) FROM vv) AS sessions,
       (SELECT COALESCE(sum(n), 0) FROM sv) + (SELECT COALESCE(sum(n), 0) FROM vv) AS ticks,
       -- Only when some tick was filtered out ($4: the ticks given): which
       -- sessions lost how many, so their live balances get them back.
       CASE WHEN (SELECT COALESCE(sum(n), 0) FROM sv)
                 + (SELECT COALESCE(sum(n), 0) FROM vv) < $4 THEN (
           SELECT json_agg(json_build_array(d.id, d.n)) FROM (
               SELECT r.id::text AS id,
                      count(*) - COALESCE((SELECT t.n FROM t WHERE t.id = r.id),
                                          (SELECT vv.n FROM vv WHERE vv.id = r.id), 0) AS n
                 FROM raw r GROUP BY r.id) d
            WHERE d.n > 0)
       END AS dropped
"""


@dataclass
class FlushResult:
    batches: int = 0
    skipped: int = 0
    ticks: int = 0
    dropped: int = 0
    lags: list[float] = field(default_factory=list)
    # Planck to give back to each viewer's live balance: the ticks the flush
    # dropped were charged there when the worker wrote them.
    refunds: dict[str, int] = field(default_factory=dict)


@dataclass
class Flusher:
    pg: asyncpg.Pool
    redis: aioredis.Redis
    platform_fee: Decimal
    # A round takes every batch pending up to this: 100k viewers on workers of
    # 300 make ~330 batches a second.
    max_batches: int = 2000

    def __post_init__(self) -> None:
        self._forget_script = self.redis.register_script(_FORGET)

    async def flush_once(self) -> FlushResult:
        keys: list[bytes] = await self.redis.zrange(  # type: ignore[assignment]
            PENDING_KEY, 0, self.max_batches - 1)
        if not keys:
            return FlushResult()
        payloads = await self.redis.mget(keys)
        batches = [TickBatch.decode(batch_id_of(k), raw)
                   for k, raw in zip(keys, payloads, strict=True) if raw is not None]
        result = await self._apply(batches)
        await self._checkpoint("committed")
        await self._refund(result)
        await self._forget(keys)
        return result

    async def _refund(self, result: FlushResult) -> None:
        """A dropped tick is refunded to the live balance at once. (A crash
        before this leaves the live copy low: reconciliation repairs it.)"""
        if not result.refunds:
            return
        await adjust_live(self.redis, result.refunds)
        TICKS_REFUNDED.inc(result.dropped)
        log_event(log, "ticks.refunded", viewers=len(result.refunds), ticks=result.dropped,
                  planck=sum(result.refunds.values()))

    async def _checkpoint(self, name: str) -> None:
        """A named point of a flush ("recorded", "applied", "committed"): a
        seam for the crash tests, which stop a flusher exactly there."""

    async def _apply(self, batches: list[TickBatch]) -> FlushResult:
        result = FlushResult(batches=len(batches))
        async with self.pg.acquire() as conn, conn.transaction():
            # The per-round aggregate of 100k+ ticks must not spill to disk.
            await conn.execute("SET LOCAL work_mem = '64MB'")
            new_ids = await _record_new(conn, batches)
            await self._checkpoint("recorded")
            fresh = [b for b in batches if b.batch_id in new_ids]
            result.skipped = len(batches) - len(fresh)
            ids, seconds = _tick_columns(fresh)
            if ids:
                row = await conn.fetchrow(_APPLY, ids, seconds, self.platform_fee, len(ids),
                                          GRACE_SECONDS)
                result.ticks = int(row["ticks"])
                if row["dropped"] is not None:
                    result.refunds = _refunds(fresh, json.loads(row["dropped"]))
            result.dropped = len(ids) - result.ticks
            await self._checkpoint("applied")
        committed = time.time()
        # A video view's batch is labelled with its media second, not a wall second.
        result.lags = [committed - (b.second + 1) for b in fresh if not b.worker_id.startswith(
            VIDEO_VIEW_BATCH_PREFIX)]
        self._observe(result)
        return result

    async def _forget(self, keys: list[bytes]) -> None:
        """Out of the pending set; each batch key left as an empty tombstone
        for FORGOTTEN_TTL_MS, not deleted: the worker's write is SET NX, so a
        retry arriving after this (its first write landed unheard) finds the
        key and charges nothing — deleted, it would charge the live balance
        again for a batch the flush then skips as applied."""
        await self._forget_script(keys=[PENDING_KEY, *keys], args=[FORGOTTEN_TTL_MS])

    @staticmethod
    def _observe(result: FlushResult) -> None:
        TICKS_FLUSHED.inc(result.ticks)
        BATCHES_SKIPPED.inc(result.skipped)
        if result.dropped:
            TICKS_DROPPED.labels("unknown_or_ended_session").inc(result.dropped)
            log_event(log, "ticks.dropped", logging.WARNING, ticks=result.dropped)
        for lag in result.lags:
            FLUSH_LAG.observe(lag)


async def _record_new(conn: asyncpg.Connection, batches: list[TickBatch]) -> set[str]:
    rows = await conn.fetch(
        "INSERT INTO tick_batches (batch_id, ticks) "
        "SELECT * FROM unnest($1::text[], $2::int[]) ON CONFLICT DO NOTHING RETURNING batch_id",
        [b.batch_id for b in batches], [len(b.ticks) for b in batches])
    return {r["batch_id"] for r in rows}


def _refunds(batches: list[TickBatch], dropped: list[list[Any]]) -> dict[str, int]:
    """Per viewer, the planck of the dropped ticks (a session has one viewer
    and one price, both carried by each of its ticks)."""
    lost = {str(session): int(n) for session, n in dropped}
    payer: dict[str, tuple[str, int]] = {}
    for batch in batches:
        for tick in batch.ticks:
            session = tick.viewer_session_id.lower()  # as Postgres spells a uuid
            if session in lost:
                payer[session] = (tick.user_id, tick.price_planck)
    refunds: dict[str, int] = {}
    for session, n in lost.items():
        user, price = payer[session]
        refunds[user] = refunds.get(user, 0) + n * price
    return refunds


def _tick_columns(batches: list[TickBatch]) -> tuple[list[str], list[int]]:
    """One (viewer session, second) pair per tick, as two columns for unnest."""
    ids: list[str] = []
    seconds: list[int] = []
    for batch in batches:
        ids.extend(tick.viewer_session_id for tick in batch.ticks)
        seconds.extend([batch.second] * len(batch.ticks))
    return ids, seconds


async def prune_applied(pg: asyncpg.Pool, older_than_s: int = 86400) -> int:
    """A batch cannot come back a day later: forget its id."""
    status = await pg.execute(
        "DELETE FROM tick_batches WHERE applied_at < now() - make_interval(secs => $1)",
        older_than_s)
    return int(status.split()[-1])


FLUSH_INTERVAL = 1.0
PRUNE_EVERY = 3600  # flush rounds between prunes of old batch ids


async def run_flusher(flusher: Flusher, interval: float = FLUSH_INTERVAL) -> None:
    """A round every `interval`, paced by start times (a slow round is not
    followed by a full extra wait), at once again while a backlog remains; a
    store that is down is waited out — its ticks stay in Redis meanwhile."""
    rounds = 0

    async def step() -> bool:
        nonlocal rounds
        result = await flusher.flush_once()
        if rounds % PRUNE_EVERY == 0:
            await prune_applied(flusher.pg)
        rounds += 1
        return result.batches >= flusher.max_batches  # a backlog: go again at once

    await run_forever("flush", step, every=interval, max_backoff=5 * interval)
