-- 0003_bigint_tick_counters.sql
--
-- WHY: a tick is one viewer-second. The document stores tick totals as INTEGER, whose maximum is
-- 2^31 - 1 = 2,147,483,647. A stream with 100,000 concurrent viewers adds 100,000 ticks a second
-- and passes that limit after about 6 hours (21,475 s) -- the tick flush would then fail with
-- "integer out of range" and billing would stop. BIGINT (2^63 - 1) cannot overflow in practice.
--
-- Widened: streams.total_ticks and stream_sessions.total_ticks (aggregates over all viewers),
-- and also stream_viewers.total_ticks. A single viewer session cannot overflow INTEGER (that
-- would take 68 years of watching), but we make it BIGINT anyway so that every tick counter has
-- one type: the flush adds per-viewer deltas into the stream/session totals, and sums, casts and
-- application code never have to reason about which counter is the narrow one. The cost is
-- 4 bytes per viewer-session row. Defaults (0) are kept.

ALTER TABLE streams         ALTER COLUMN total_ticks TYPE BIGINT;
ALTER TABLE stream_sessions ALTER COLUMN total_ticks TYPE BIGINT;
ALTER TABLE stream_viewers  ALTER COLUMN total_ticks TYPE BIGINT;
