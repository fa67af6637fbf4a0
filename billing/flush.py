"""Ticks from Redis to Postgres, exactly once, in two steps.

Record (every second): read up to `max_batches` pending batch keys and their
payloads (two Redis commands; per shard, all shards at once, in a Redis
Cluster: vilokanam/keyspace.py), then in ONE Postgres statement give each new
batch its `tick_batches` row (a batch already there is skipped: recorded
before a crash, or written twice) and its `tick_journal` row (its ticks as
three arrays: one row per batch, nothing per tick); commit; only then forget the
batches in Redis (their keys stay a while as tombstones, so a late retry of a
worker's write charges nothing twice). Two rows per batch, whatever its
number of viewers.

Sync (every few seconds, resting twice its duration after each): in ONE
transaction, delete the oldest journal rows (bounded in rows and in ticks)
and apply their ticks to the totals with one set-based statement. A viewer's
rows are written once per sync, however many seconds it holds.

A crash anywhere leaves each batch in Redis only (recorded next round), in
the journal (synced next time), or applied and out of the journal: nothing
is lost, and nothing is counted twice."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from billing.journal_copy import as_source, journal_payload
from vilokanam.balances import adjust_live
from vilokanam.delivery import GRACE_SECONDS
from vilokanam.keyspace import tick_keys
from vilokanam.logs import log_event
from vilokanam.metering import (
    VIDEO_VIEW_BATCH_PREFIX,
    BatchColumns,
    TickBatch,
    batch_id_of,
)
from vilokanam.redis_client import REDIS_ERRORS
from vilokanam.tasks import run_forever

log = logging.getLogger(__name__)

TICKS_FLUSHED = PromCounter("vilokanam_ticks_flushed_total", "Ticks committed to Postgres.")
TICKS_DROPPED = PromCounter(
    "vilokanam_ticks_dropped_total",
    "Ticks not billed: their viewer session is unknown, or had ended.", ["reason"])
TICKS_REFUNDED = PromCounter(
    "vilokanam_ticks_refunded_total",
    "Dropped ticks given back to the viewer's live balance (charged there when written).")
REFUNDS_OWED = Gauge(
    "vilokanam_ticks_refunds_owed_planck",
    "Refunds of dropped ticks committed in Postgres, not yet given back to the live balances "
    "(Redis did not answer): retried every sync.")
BATCHES_SKIPPED = PromCounter(
    "vilokanam_tick_batches_skipped_total", "Batches seen again and skipped (already applied).")
FLUSH_LAG = Histogram(
    "vilokanam_flush_lag_seconds",
    "From the end of a tick's second to its commit in Postgres (tick_batches + tick_journal).",
    buckets=(0.5, 1, 1.5, 2, 3, 5, 10, 30))
SYNC_LAG = Histogram(
    "vilokanam_tick_sync_lag_seconds",
    "From the end of a tick's second to its sync into the totals (payments, balances, ...).",
    buckets=(0.5, 1, 2, 3, 5, 10, 30, 60))

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

# The sync: ONE statement deletes the oldest journal rows -- at most $1 of them,
# and only while the ticks before a row are fewer than $4 (a row is never
# split; the first is always taken), so a backed-up sync of big batches stays
# one bounded statement -- and applies their ticks to every table a tick
# touches, set-based; $2 the grace a signed
# session may run past its signed seconds (the ticks beyond are dropped, and
# refunded to the live balance); $3 the platform fee. A live tick grows its
# stream_viewers row and `stream_view` payment; a video view's tick (a media
# second delivered, signaling/playback.py) its video_views row (view_duration,
# watch_completion) and `video_view` payment; both the creator's earnings and
# the viewer's balance. N seconds of a viewer's ticks make ONE update of each
# of its rows. Ticks of unknown sessions, and of sessions that had ended (an
# ended session's updated_at is its end), are filtered out here, tick by tick.
# Timestamps are the schema's TIMESTAMP, i.e. local time in the session's
# TimeZone, like now().
_SYNC = """
WITH oldest AS (
    -- tick_batches.ticks is the row's number of ticks: counting them in the
    -- journal's arrays would read every array.
    SELECT j.batch_id, sum(COALESCE(b.ticks, 0)) OVER w - COALESCE(b.ticks, 0) AS before
      FROM tick_journal j LEFT JOIN tick_batches b USING (batch_id)
    WINDOW w AS (ORDER BY j.recorded_at, j.batch_id)
     ORDER BY j.recorded_at, j.batch_id LIMIT $1
), journal AS (
    DELETE FROM tick_journal
     WHERE batch_id IN (SELECT batch_id FROM oldest WHERE before < $4::bigint)
    RETURNING batch_id, second, sessions, users, prices
), per_session AS (
    -- The ticks counted per session straight from the journal's session
    -- arrays (the other arrays are not read, and no row per tick is kept):
    -- every lookup below is one per session, not one per tick (a sync holds
    -- many seconds of each session).
    SELECT r.id, count(*)::int AS n, max(j.second) AS last_second
      FROM journal j, unnest(j.sessions) AS r(id) GROUP BY r.id
), sv_active AS (
    -- The usual case: an active, priced session billed by the server's meter
    -- keeps every tick, applied by the UPDATE that finds its row: one look-up
    -- per session. (A signed session's cap needs its row's old total, which
    -- RETURNING cannot give: it goes through `rest` below.)
    UPDATE stream_viewers sv
       SET total_ticks = sv.total_ticks + p.n,
           last_tick_time = GREATEST(sv.last_tick_time, to_timestamp(p.last_second + 1)
                                                        AT TIME ZONE current_setting('TimeZone')),
           paid_amount = sv.paid_amount + p.n * sv.price_per_second
      FROM per_session p
     WHERE sv.id = p.id AND sv.price_per_second IS NOT NULL AND sv.is_active IS TRUE
       AND sv.billing_rule <> 'signed'
    RETURNING sv.id, sv.stream_id, sv.session_id, sv.viewer_id, p.n,
              p.n * sv.price_per_second AS cost
), rest AS (
    -- The other sessions: signed, ended, unknown or unpriced (dropped), or
    -- ended while this statement ran (the UPDATE above skipped its row: billed
    -- below as this statement's snapshot saw it, as before that UPDATE).
    SELECT p.id, p.n, p.last_second, v.billing_rule, v.signed_seconds, v.total_ticks,
           v.is_active, v.updated_at
      FROM per_session p JOIN stream_viewers v ON v.id = p.id
     WHERE v.price_per_second IS NOT NULL AND p.id NOT IN (SELECT id FROM sv_active)
), kept AS (
    -- An ended session (its updated_at is its end) keeps only the ticks up to
    -- 2 s after it, tick by tick: the journal is read tick by tick again only
    -- then (the EXISTS skips the branch otherwise).
    SELECT id, n, last_second, billing_rule, signed_seconds, total_ticks
      FROM rest WHERE is_active IS TRUE
    UNION ALL
    SELECT s.id, count(*)::int, max(r.second), s.billing_rule, s.signed_seconds, s.total_ticks
      FROM rest s
      JOIN (SELECT j.second, u.id FROM journal j, unnest(j.sessions) AS u(id)) r ON r.id = s.id
     WHERE EXISTS (SELECT 1 FROM rest WHERE is_active IS NOT TRUE)
       AND s.is_active IS NOT TRUE
       AND to_timestamp(r.second) AT TIME ZONE current_setting('TimeZone')
           <= s.updated_at + interval '2 seconds'
     GROUP BY s.id, s.billing_rule, s.signed_seconds, s.total_ticks
), counted AS (
    SELECT id, n, billing_rule,
           -- A signed session is billed at most its signed seconds + the grace.
           GREATEST(COALESCE(signed_seconds, 0) + $2::int - total_ticks, 0) AS allowed,
           to_timestamp(last_second + 1) AT TIME ZONE current_setting('TimeZone') AS last_tick
      FROM kept
), t AS (
    SELECT id, last_tick,
           CASE WHEN billing_rule = 'signed' THEN LEAST(n, allowed) ELSE n END AS n
      FROM counted
     WHERE billing_rule <> 'signed' OR allowed > 0
), vt AS (
    -- Ticks of video views (signaling/playback.py): one per media second
    -- delivered. A session just billed above is no video view: not looked up.
    SELECT p.id, p.n
      FROM per_session p JOIN video_views v ON v.id = p.id
     WHERE v.price_per_second IS NOT NULL AND p.id NOT IN (SELECT id FROM sv_active)
), vv AS (
    UPDATE video_views vv
       SET view_duration = COALESCE(vv.view_duration, 0) + vt.n,
           watch_completion = LEAST(100, round(100.0 * (COALESCE(vv.view_duration, 0) + vt.n)
                                               / GREATEST(COALESCE(vid.duration, 1), 1), 2))
      FROM vt, videos vid
     WHERE vv.id = vt.id AND vid.id = vv.video_id
    RETURNING vv.id, vv.viewer_id, vid.creator_id, vt.n, vt.n * vv.price_per_second AS cost,
              trunc(vt.n * vv.price_per_second * (1 - $3::numeric), 18) AS creator_share
), sv_rest AS (
    UPDATE stream_viewers sv
       SET total_ticks = sv.total_ticks + t.n,
           last_tick_time = GREATEST(sv.last_tick_time, t.last_tick),
           paid_amount = sv.paid_amount + t.n * sv.price_per_second
      FROM t
     WHERE sv.id = t.id
    RETURNING sv.id, sv.stream_id, sv.session_id, sv.viewer_id, t.n,
              t.n * sv.price_per_second AS cost
), sv AS (
    SELECT * FROM sv_active UNION ALL SELECT * FROM sv_rest
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
SELECT (SELECT count(*) FROM journal) AS batches,
       (SELECT COALESCE(sum(n), 0) FROM per_session) AS given,
       (SELECT COALESCE(sum(n), 0) FROM sv) + (SELECT COALESCE(sum(n), 0) FROM vv) AS ticks,
       -- The wall seconds of the live batches applied (a video view's batch is
       -- labelled with its media second): the lag from a second to its totals.
       ARRAY(SELECT second FROM journal WHERE batch_id NOT LIKE 'vod:%') AS seconds,
       -- Only when some tick was filtered out: per viewer, the planck of the
       -- ticks dropped, given back to their live balance (charged there when
       -- the worker wrote them).
       CASE WHEN (SELECT COALESCE(sum(n), 0) FROM sv) + (SELECT COALESCE(sum(n), 0) FROM vv)
                 < (SELECT COALESCE(sum(n), 0) FROM per_session) THEN (
           SELECT json_agg(json_build_array(d.user_id::text, d.planck::text)) FROM (
               SELECT user_id, sum(n * price) AS planck FROM (
                   SELECT r.user_id, max(r.price_planck) AS price,
                          count(*) - COALESCE(min(sv.n), min(vv.n), 0) AS n
                     FROM journal j,
                          unnest(j.sessions, j.users, j.prices) AS r(id, user_id, price_planck)
                     LEFT JOIN sv ON sv.id = r.id LEFT JOIN vv ON vv.id = r.id
                    GROUP BY r.id, r.user_id) per_session
                WHERE n > 0 GROUP BY user_id) d)
       END AS dropped
"""

# The record step: a new batch gets its tick_batches row (a batch already
# there, recorded before, is skipped) ...
_RECORD_BATCHES = """
INSERT INTO tick_batches (batch_id, ticks)
SELECT * FROM unnest($1::text[], $2::int[]) ON CONFLICT DO NOTHING RETURNING batch_id
"""
# ... and its journal row, in the same transaction: every new batch of the
# round in one COPY (binary; no statement per row).
_JOURNAL_COLUMNS = ("batch_id", "second", "sessions", "users", "prices")


@dataclass(frozen=True)
class JournalRow:
    """One batch's ticks as columns, decoded once from the worker's JSON: the
    ids as lists, or joined by commas as the batch stores them (decode keeps
    them so: billing/journal_copy.py turns a joined column into its uuid[]
    without a Python object per id)."""

    batch_id: str
    second: int
    sessions: list[str] | str
    users: list[str] | str
    prices: list[int]

    @classmethod
    def decode(cls, batch_id: str, raw: str | bytes) -> JournalRow:
        columns = BatchColumns.decode_joined(raw)  # no object per tick
        return cls(batch_id, columns.second, columns.sessions, columns.users, columns.prices)

    @property
    def ticks(self) -> int:
        return len(self.prices)

    @classmethod
    def of(cls, batch: TickBatch, batch_id: str | None = None) -> JournalRow:
        """A batch's row; `batch_id` names a cluster part (TickWriter.parts)."""
        return cls.decode(batch_id or batch.batch_id, batch.encode())


# A sync statement that meets its timeout is rolled back, and tried again the
# same size it would time out again, forever: its bound is halved then. It is
# never cut for being slow -- a sync's cost is mostly per viewer (its rows),
# not per tick, so a smaller sync writes more rows per tick and falls further
# behind (a 100k run on an overloaded machine cut to 70k ticks never drained).
SYNC_TIMEOUT_S = 60.0
SYNC_MIN_TICKS = 250_000  # the smallest bound after timeouts (a sync always takes one row)


def bound_after_sync(given: int, bound: int) -> int:
    """The next sync's bound in ticks: doubled after a sync that filled its
    bound (a backlog: back towards max_sync_ticks after a timeout), else kept."""
    return 2 * bound if given >= bound else bound


def bound_after_timeout(bound: int) -> int:
    """A sync that timed out (rolled back) is tried again with half the ticks."""
    return max(SYNC_MIN_TICKS, bound // 2)


@dataclass
class FlushResult:
    batches: int = 0
    skipped: int = 0
    # What the sync applied (journal rows of this round and of earlier ones).
    synced: int = 0
    ticks: int = 0
    dropped: int = 0
    lags: list[float] = field(default_factory=list)
    # Planck to give back to each viewer's live balance: the ticks the flush
    # dropped were charged there when the worker wrote them.
    refunds: dict[str, int] = field(default_factory=dict)
    # A round left batches pending (a shard had more than max_batches), or a
    # sync left journal rows (it took as many as its bounds allow).
    backlog: bool = False


@dataclass
class Flusher:
    """Two steps, each exactly once: `record` moves pending batches from Redis
    into Postgres's journal (every second: the flush lag), `sync` applies the
    journal to the totals (every few seconds: each viewer's rows written once
    per sync, not once per second). `flush_once` does both."""

    pg: asyncpg.Pool
    redis: aioredis.Redis
    platform_fee: Decimal
    # A round takes every batch pending up to this (per shard, in a cluster,
    # whose parts are ~1/16 of a batch): 100k viewers on workers of 300 make
    # ~330 batches a second.
    max_batches: int = 2000
    # A sync applies at most this many journal rows (the oldest) ...
    max_sync_batches: int = 5000
    # ... and at most this many ticks (a row is never split): ~20 s of 100k
    # viewers, so a backed-up sync of big batches is one bounded statement
    # (its ticks, ~70 bytes each, fit the sync's work_mem).
    max_sync_ticks: int = 2_000_000

    def __post_init__(self) -> None:
        # The ticks the next sync may take, learnt from the last (None: up to
        # max_sync_ticks): bound_after_sync, bound_after_timeout.
        self._sync_bound: int | None = None
        self._forget_script = self.redis.register_script(_FORGET)
        self._keys = tick_keys(self.redis)
        # Refunds committed in Postgres but not yet given back live: Redis was
        # down when their sync ended. Retried every sync round (a death of
        # this process leaves them to the reconciliation).
        self.owed: dict[str, int] = {}

    async def flush_once(self) -> FlushResult:
        result = await self.record_once()
        synced = await self.sync_once()
        result.synced, result.ticks, result.dropped = synced.synced, synced.ticks, synced.dropped
        result.refunds = synced.refunds
        return result

    async def record_once(self) -> FlushResult:
        """Every shard's pending batches (one shard on a standalone Redis; two
        commands each, the shards read at once), recorded in ONE transaction,
        then forgotten (one script per shard, at once)."""
        shards = self._keys.shards
        reads = await asyncio.gather(*(self._read_pending(s, self.max_batches) for s in shards))
        taken = {shard: keys for shard, (keys, _) in zip(shards, reads, strict=True) if keys}
        if not taken:
            return FlushResult()
        result = await self.record([row for _, rows in reads for row in rows])
        result.backlog = any(len(keys) >= self.max_batches for keys in taken.values())
        await self._checkpoint("committed")
        await asyncio.gather(*(self._forget(shard, keys) for shard, keys in taken.items()))
        return result

    async def _read_pending(self, shard: int | None,
                            limit: int) -> tuple[list[bytes], list[JournalRow]]:
        keys: list[bytes] = await self.redis.zrange(  # type: ignore[assignment]
            self._keys.pending(shard), 0, limit - 1)
        if not keys:
            return [], []
        payloads = await self.redis.mget(keys)
        return keys, [JournalRow.decode(batch_id_of(k), raw)
                      for k, raw in zip(keys, payloads, strict=True) if raw is not None]

    async def record(self, pending: list[JournalRow]) -> FlushResult:
        """Commit batches to tick_batches + the journal (those not recorded before)."""
        result = FlushResult(batches=len(pending))
        async with self.pg.acquire() as conn, conn.transaction():
            new = {r["batch_id"] for r in await conn.fetch(
                _RECORD_BATCHES, [b.batch_id for b in pending], [b.ticks for b in pending])}
            fresh = [b for b in pending if b.batch_id in new]
            if fresh:
                await conn.copy_to_table(
                    "tick_journal", columns=_JOURNAL_COLUMNS, format="binary",
                    source=as_source(journal_payload(
                        (b.batch_id, b.second, b.sessions, b.users, b.prices) for b in fresh)))
            await self._checkpoint("recorded")
        committed = time.time()
        result.skipped = len(pending) - len(fresh)
        BATCHES_SKIPPED.inc(result.skipped)
        # A video view's batch is labelled with its media second, not a wall second.
        for b in fresh:
            if not b.batch_id.startswith(VIDEO_VIEW_BATCH_PREFIX):
                FLUSH_LAG.observe(committed - (b.second + 1))
        return result

    async def sync_once(self) -> FlushResult:
        """Apply the journal to the totals, and refund the ticks it dropped."""
        result = FlushResult()
        bound = min(self.max_sync_ticks, self._sync_bound or self.max_sync_ticks)
        try:
            async with self.pg.acquire() as conn, conn.transaction():
                # The ticks of a sync (up to max_sync_ticks) and their aggregate
                # must not spill to disk.
                await conn.execute("SET LOCAL work_mem = '256MB'")
                row = await conn.fetchrow(_SYNC, self.max_sync_batches, GRACE_SECONDS,
                                          self.platform_fee, bound, timeout=SYNC_TIMEOUT_S)
                await self._checkpoint("applied")
        except (TimeoutError, asyncpg.QueryCanceledError):
            # Rolled back: the same sync again would time out again, forever.
            self._sync_bound = bound_after_timeout(bound)
            log_event(log, "tick_sync.timed_out", logging.WARNING, ticks_bound=bound,
                      next_bound=self._sync_bound)
            raise
        applied = time.time()
        given = int(row["given"])
        self._sync_bound = bound_after_sync(given, bound)
        result.synced = int(row["batches"])
        result.backlog = result.synced >= self.max_sync_batches or given >= bound
        result.ticks = int(row["ticks"])
        result.dropped = int(row["given"]) - result.ticks
        if row["dropped"] is not None:
            result.refunds = {str(user): int(planck)
                              for user, planck in json.loads(row["dropped"])}
        result.lags = [applied - (second + 1) for second in row["seconds"]]
        self._observe(result)
        await self._checkpoint("synced")
        await self._refund(result)
        return result

    async def _refund(self, result: FlushResult) -> None:
        """A dropped tick is refunded to the live balance at once, or as soon
        as Redis answers again: the sync that dropped it is committed, so a
        refund that fails now is owed, never forgotten. (A crash before it is
        given leaves the live copy low: reconciliation repairs it.)"""
        if result.refunds:
            TICKS_REFUNDED.inc(result.dropped)
            log_event(log, "ticks.refunded", viewers=len(result.refunds), ticks=result.dropped,
                      planck=sum(result.refunds.values()))
        for user, planck in result.refunds.items():
            self.owed[user] = self.owed.get(user, 0) + planck
        # One script per shard, each atomic: a shard given back leaves the
        # owed set at once, so a failure in another never gives it twice.
        for users in self._keys.group(list(self.owed)).values():
            try:
                await adjust_live(self.redis, {user: self.owed[user] for user in users})
            except REDIS_ERRORS as exc:
                REFUNDS_OWED.set(sum(self.owed.values()))
                log_event(log, "ticks.refund_deferred", logging.WARNING,
                          viewers=len(self.owed), planck=sum(self.owed.values()),
                          error=repr(exc))
                return
            for user in users:
                del self.owed[user]
        REFUNDS_OWED.set(0)

    async def _checkpoint(self, name: str) -> None:
        """A named point of a flush ("recorded", "committed": the record step;
        "applied", "synced": the sync): a seam for the crash tests, which stop
        a flusher exactly there."""

    async def _forget(self, shard: int | None, keys: list[bytes]) -> None:
        """Out of the pending set; each batch key left as an empty tombstone
        for FORGOTTEN_TTL_MS, not deleted: the worker's write is SET NX, so a
        retry arriving after this (its first write landed unheard) finds the
        key and charges nothing — deleted, it would charge the live balance
        again for a batch the flush then skips as applied."""
        await self._forget_script(keys=[self._keys.pending(shard), *keys],
                                  args=[FORGOTTEN_TTL_MS])

    @staticmethod
    def _observe(result: FlushResult) -> None:
        TICKS_FLUSHED.inc(result.ticks)
        if result.dropped:
            TICKS_DROPPED.labels("unknown_or_ended_session").inc(result.dropped)
            log_event(log, "ticks.dropped", logging.WARNING, ticks=result.dropped)
        for lag in result.lags:
            SYNC_LAG.observe(lag)


async def prune_applied(pg: asyncpg.Pool, older_than_s: int = 86400) -> int:
    """A batch cannot come back a day later: forget its id."""
    status = await pg.execute(
        "DELETE FROM tick_batches WHERE applied_at < now() - make_interval(secs => $1)",
        older_than_s)
    return int(status.split()[-1])


# Half a second, not one: a tick waits for the next round after its write,
# and at 100k viewers that wait was a third of the flush lag's p99.
FLUSH_INTERVAL = 0.5
SYNC_INTERVAL = 2.0
PRUNE_EVERY = 7200  # flush rounds between prunes of old batch ids (an hour at 0.5 s)


async def run_flusher(flusher: Flusher, interval: float = FLUSH_INTERVAL) -> None:
    """A record round every `interval`, paced by start times (a slow round is
    not followed by a full extra wait), at once again while a backlog remains;
    a store that is down is waited out -- its ticks stay in Redis meanwhile."""
    rounds = 0

    async def step() -> bool:
        nonlocal rounds
        result = await flusher.record_once()
        if rounds % PRUNE_EVERY == 0:
            await prune_applied(flusher.pg)
        rounds += 1
        return result.backlog  # go again at once

    await run_forever("flush", step, every=interval, max_backoff=5 * interval)


# After a sync that took T seconds the syncer rests SYNC_REST_RATIO * T before
# the next: the sync is at most a third of one Postgres backend's time, however
# far behind it is, and the record step (the flush lag) keeps the rest. A sync
# writes each viewer's rows once whatever the seconds it holds (its cost is
# ~a x viewers + b x ticks, bench/pg_ticks.py), so this ratio, not the
# statement, sets the Postgres CPU per tick at scale: at 100k ticks/s a rest
# of T made syncs of ~1M ticks (5 us a tick), a rest of 2T makes them ~1.9M
# (3.4 us). A sync that left a backlog (it filled its bound) rests only
# SYNC_CATCHUP_REST_RATIO * T, so a loaded machine still catches up as it did.
SYNC_REST_RATIO = 2.0
SYNC_CATCHUP_REST_RATIO = 1.0


def rest_after_sync(took_s: float, backlog: bool) -> float:
    """The syncer's rest after a sync that took `took_s` seconds."""
    return (SYNC_CATCHUP_REST_RATIO if backlog else SYNC_REST_RATIO) * took_s


async def run_syncer(flusher: Flusher, interval: float = SYNC_INTERVAL) -> None:
    """A sync every `interval` (paced by start times), or rest_after_sync of
    its own duration after it when that is longer: each takes every journal
    row recorded since the last (up to its bounds), so a slow sync is followed
    by a bigger one, and rows per viewer fall as the load rises."""
    clock = asyncio.get_running_loop()

    async def step() -> bool:
        began = clock.time()
        result = await flusher.sync_once()
        await asyncio.sleep(rest_after_sync(clock.time() - began, result.backlog))
        return result.backlog  # go again at once (after the rest)

    await run_forever("tick_sync", step, every=interval, max_backoff=5 * interval)
