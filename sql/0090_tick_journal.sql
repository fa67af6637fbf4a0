-- 0090_tick_journal.sql
--
-- WHY: the tick flush wrote three rows per viewer per second (stream_viewers, payments,
-- viewer_balances): at 100,000 viewers 300,000 row updates a second, which one Postgres on two
-- cores could not keep up with (bench/ticks.py: flush lag p99 21.8 s).
--
-- Now a flush round commits each tick batch as it came from Redis: one tick_batches row (the
-- exactly-once ledger, as before) and one tick_journal row holding the batch's payload, in one
-- transaction -- two rows per batch, whatever its number of viewers. That commit is when a tick
-- is safe in Postgres. A separate sync, every few seconds, applies every journal row at once to
-- the totals (stream_viewers, payments, creator_earnings, viewer_balances, streams,
-- stream_sessions, video_views) and deletes those journal rows IN THE SAME TRANSACTION: a tick
-- is applied exactly once, and one sync of N seconds writes each viewer's rows once, not N times.
--
-- The payload is the batch's JSON exactly as the SFU worker wrote it
-- ({"second": s, "ticks": [[viewer_session_id, user_id, price_planck], ...]}, see
-- vilokanam/metering.py), so the flush parses nothing. It is stored uncompressed (EXTERNAL): the
-- uuids in it barely compress and compressing them cost CPU on every round.
--
-- While a batch is in the journal its charges are not yet in payments, so
--     balance = sum(ledger) - sum(payments) - (planck of the viewer's journal ticks)
-- is what the live balance in Redis must equal (billing/reconcile.py).
CREATE TABLE tick_journal (
    batch_id TEXT PRIMARY KEY,
    payload JSON NOT NULL,
    recorded_at TIMESTAMP NOT NULL DEFAULT NOW()
);
ALTER TABLE tick_journal ALTER COLUMN payload SET STORAGE EXTERNAL;
