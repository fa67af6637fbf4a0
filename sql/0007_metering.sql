-- 0007_metering.sql
--
-- WHY: per-second billing needs four things the schema document lacks.
--
-- 1. stream_viewers.session_id and stream_viewers.price_per_second. A tick must add to the
--    stream_sessions row the viewer watched in, and be charged at the price the viewer agreed
--    to when joining (a later price change must not re-price seconds already watched). The SFU
--    worker writes both when the viewer joins.
--
-- 2. tick_batches: the ledger of tick batches already applied. A worker writes the ticks of one
--    second as one batch, named <worker id>:<unix second>; the billing worker applies a batch and
--    inserts its name here IN THE SAME TRANSACTION. A batch seen again -- a crash after commit but
--    before Redis forgot it, a worker's retried write, a second billing worker -- conflicts on
--    the primary key and is skipped: every tick is counted exactly once. A viewer session lives on
--    one worker and gets at most one tick per batch, so exactly-once per batch is exactly-once per
--    (viewer session, second). Old rows are pruned after a day (a batch cannot come back later).
--
-- 3. viewer_balances + balance_ledger: what each viewer has prepaid. The ledger holds every
--    credit (an on-chain deposit, once per block hash + event index; an operator adjustment); the
--    charges are the viewer's 'stream_view' payments rows. So, always:
--        balance = sum(ledger amounts) - sum(stream_view payments from the viewer)
--    and a balance can be explained line by line. It may dip below zero by at most one second's
--    price (the cut-off acts within the second the money runs out), so there is no CHECK >= 0.
--
-- 4. One payments row per viewer session (payment_type 'stream_view', reference_id = the
--    stream_viewers id): a partial unique index lets the flush grow it with ON CONFLICT.

ALTER TABLE stream_viewers
    ADD COLUMN session_id UUID REFERENCES stream_sessions(id),
    ADD COLUMN price_per_second NUMERIC(38, 18);

CREATE INDEX idx_stream_viewers_session ON stream_viewers(session_id);

CREATE TABLE tick_batches (
    batch_id TEXT PRIMARY KEY,
    ticks INTEGER NOT NULL,
    applied_at TIMESTAMP NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_tick_batches_applied_at ON tick_batches(applied_at);

CREATE TABLE viewer_balances (
    user_id UUID PRIMARY KEY REFERENCES users(id),
    balance NUMERIC(38, 18) NOT NULL DEFAULT 0,
    updated_at TIMESTAMP NOT NULL DEFAULT NOW()
);

CREATE TABLE balance_ledger (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id),
    amount NUMERIC(38, 18) NOT NULL,            -- a credit (an adjustment may be negative)
    kind VARCHAR(50) NOT NULL,                  -- 'deposit' or 'adjustment'
    reference TEXT,                             -- a deposit's block hash + event index; a note
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    CHECK (kind IN ('deposit', 'adjustment'))
);

CREATE INDEX idx_balance_ledger_user ON balance_ledger(user_id, created_at);
CREATE UNIQUE INDEX idx_balance_ledger_deposit_once ON balance_ledger(reference)
    WHERE kind = 'deposit';

CREATE UNIQUE INDEX idx_payments_stream_view_once ON payments(reference_id)
    WHERE payment_type = 'stream_view';
