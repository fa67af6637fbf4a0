-- 0090_tick_journal.sql
--
-- WHY: the tick flush wrote three rows per viewer per second (stream_viewers, payments,
-- viewer_balances): at 100,000 viewers 300,000 row updates a second, which one Postgres on two
-- cores could not keep up with (bench/ticks.py: flush lag p99 21.8 s).
--
-- Now a flush round commits each tick batch as it came from Redis: one tick_batches row (the
-- exactly-once ledger, as before) and one tick_journal row holding the batch's ticks, in one
-- transaction -- two rows per batch, whatever its number of viewers. That commit is when a tick
-- is safe in Postgres. A separate sync, every few seconds, applies every journal row at once to
-- the totals (stream_viewers, payments, creator_earnings, viewer_balances, streams,
-- stream_sessions, video_views) and deletes those journal rows IN THE SAME TRANSACTION: a tick
-- is applied exactly once, and one sync of N seconds writes each viewer's rows once, not N times.
--
-- A journal row holds the batch's ticks as three parallel arrays (viewer session or video view
-- id, the viewer who pays, the price in planck: vilokanam/metering.py's Tick), decoded once by the
-- flush from the worker's JSON -- unnest reads them back with no parsing. Stored uncompressed
-- (EXTERNAL): uuids barely compress, and compressing them cost CPU on every round.
--
-- While a batch is in the journal its charges are not yet in payments, so
--     live balance = sum(ledger) - sum(payments) - (planck of the viewer's journal ticks)
--                    - (planck of the viewer's ticks still pending in Redis)
-- is what the live balance in Redis must equal (billing/reconcile.py).
CREATE TABLE tick_journal (
    batch_id TEXT PRIMARY KEY,
    second BIGINT NOT NULL,                 -- the batch's second (a video view's: its media second)
    sessions UUID[] NOT NULL,
    users UUID[] NOT NULL,
    prices BIGINT[] NOT NULL,               -- planck per second of each tick
    recorded_at TIMESTAMP NOT NULL DEFAULT NOW(),
    CHECK (cardinality(sessions) = cardinality(users) AND cardinality(users) = cardinality(prices))
);
ALTER TABLE tick_journal ALTER COLUMN sessions SET STORAGE EXTERNAL;
ALTER TABLE tick_journal ALTER COLUMN users SET STORAGE EXTERNAL;
ALTER TABLE tick_journal ALTER COLUMN prices SET STORAGE EXTERNAL;
