-- 0004_money_precision.sql
--
-- WHY: the document stores money as DECIMAL(15, 8) / DECIMAL(20, 8): 8 fractional digits. Chain
-- amounts are integer planck, and the dev chain has 12 decimals (1 planck = 10^-12 token), so a
-- price or balance that is not a multiple of 10^4 planck would be silently ROUNDED by Postgres --
-- money created or destroyed. DECIMAL(15, 8) also tops out below 10^7 tokens, which a busy
-- creator's lifetime earnings can pass.
--
-- Chosen type: NUMERIC(38, 18).
--   * scale 18: every planck is exact on the 12-decimal dev chain (and on Polkadot's 10, Kusama's
--     12) and also on chains with 18 decimals (EVM-style tokens), so switching chains never
--     needs a migration that could round;
--   * precision 38 leaves 20 integer digits: up to 10^20 - 1 tokens, far above the total
--     issuance of any real chain (DOT ~1.5e9, KSM ~1.7e7), so sums fit. A value that does not
--     fit raises "numeric field overflow" instead of being rounded.
--   * Postgres NUMERIC is variable-length: the declared precision costs no storage.
-- The same type is used for streams.price_per_second (0005).
--
-- Columns: stream_viewers.paid_amount, payments.amount, creator_earnings.total_earnings,
-- creator_earnings.pending_payout (defaults and NOT NULL are kept).
--
-- The view creator_dashboard reads creator_earnings.total_earnings, and Postgres cannot change
-- the type of a column a view uses; so the view is dropped and recreated from its own current
-- definition (pg_get_viewdef) around the ALTERs -- whatever definition is in force is preserved
-- unchanged (0006 replaces it with a corrected one).

DO $$
DECLARE
    dashboard_sql text := pg_get_viewdef('creator_dashboard'::regclass);
BEGIN
    DROP VIEW creator_dashboard;

    ALTER TABLE stream_viewers   ALTER COLUMN paid_amount    TYPE NUMERIC(38, 18);
    ALTER TABLE payments         ALTER COLUMN amount         TYPE NUMERIC(38, 18);
    ALTER TABLE creator_earnings ALTER COLUMN total_earnings TYPE NUMERIC(38, 18);
    ALTER TABLE creator_earnings ALTER COLUMN pending_payout TYPE NUMERIC(38, 18);

    EXECUTE 'CREATE VIEW creator_dashboard AS ' || dashboard_sql;
END
$$;
