-- 0008_settlement.sql
--
-- WHY: money moves on chain in two directions and both must be exactly-once across crashes.
--
-- 1. chain_cursor: the deposit watcher's last processed FINALIZED block (number + hash) and the
--    genesis hash of the chain it belongs to, so a restart resumes where it stopped and nothing is
--    missed. Credits themselves are exactly-once by balance_ledger's unique deposit reference
--    (<block hash>:<event index>, 0007), so the cursor is a resume point, not a safety device: a
--    crash between crediting a block and moving the cursor replays that block harmlessly. The hash
--    (not only the number) tells the watcher that the chain it followed is gone (the in-memory dev
--    chain restarts from genesis): then it starts over on the new chain.
--
-- 2. settlements: one row per payout batch, written BEFORE the extrinsic is submitted, with
--    everything needed to find it again after a crash without ever paying twice: the signed bytes
--    (resubmitted byte for byte, never re-signed), their hash, the escrow's nonce (one nonce is
--    included at most once), the finalized block it was signed at (its mortal era's birth: it
--    can only be in later blocks of the chain that has that block) and the block its era ends.
--    status: prepared (recorded, maybe submitted) -> submitted (the node took it) -> completed
--    (ExtrinsicSuccess in a finalized block) | failed (ExtrinsicFailed: fees paid, no transfer)
--    | dropped (can never be included: its nonce was used by another extrinsic, its era ended,
--    the chain it was signed for is gone, or the node refused it before ever accepting it). At most one settlement is open (prepared/submitted) at a time: a
--    partial unique index enforces it even with two billing workers.
--    digest: sha256 of the settled charges' lines (settlement_items), carried on chain in the
--    batch's System.remark, so a viewer can check a receipt against the chain.
--
-- 3. settlement_payouts: the batch's transfers, one per creator, in integer planck (NUMERIC(39, 0)
--    holds any u128) and the same amount in tokens (what leaves creator_earnings.pending_payout).
--
-- 4. settlement_items: the charges a settlement covers, as a SNAPSHOT: a viewer session's one
--    stream_view payment keeps growing while the viewer watches, so a settlement records the part
--    it settles (amount = payments.amount - payments.settled_amount when it was prepared) and
--    later growth is settled by a later batch.
--
-- 5. payments.settled_amount (how much of the charge completed settlements have covered) and
--    payments.settlement_id (the latest completed settlement that covered it; its
--    transaction_hash is that settlement's extrinsic hash). A payment is 'completed' only while
--    settled_amount = amount: the trigger below puts a completed payment back to 'pending' when
--    the tick flush grows it, so 'pending'/'failed' always means "something left to settle".

CREATE TABLE chain_cursor (
    name TEXT PRIMARY KEY,                      -- 'deposits'
    genesis_hash TEXT NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE settlements (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    status VARCHAR(20) NOT NULL DEFAULT 'prepared',
    signer TEXT NOT NULL,                       -- the escrow's public key (0x hex)
    nonce BIGINT NOT NULL,
    extrinsic_hash TEXT NOT NULL UNIQUE,
    extrinsic TEXT NOT NULL,                    -- the signed SCALE bytes (0x hex)
    genesis_hash TEXT NOT NULL,
    signed_at BIGINT NOT NULL,                  -- the finalized block its mortal era counts from:
    signed_at_hash TEXT NOT NULL,               --   it can only be in later blocks, only on its chain
    era_death BIGINT NOT NULL,                  -- the first block number it can NOT be in
    digest TEXT NOT NULL,                       -- sha256 hex of the sorted item lines
    remark TEXT NOT NULL,                       -- the System.remark it carries (UTF-8 text)
    total_planck NUMERIC(39, 0) NOT NULL,
    block_hash TEXT,
    block_number BIGINT,
    extrinsic_index INTEGER,
    fee_planck NUMERIC(39, 0),                  -- what the escrow paid in fees (net of refunds)
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    finalized_at TIMESTAMPTZ,
    CHECK (status IN ('prepared', 'submitted', 'completed', 'failed', 'dropped'))
);

CREATE UNIQUE INDEX idx_settlements_one_open ON settlements ((TRUE))
    WHERE status IN ('prepared', 'submitted');
CREATE INDEX idx_settlements_created ON settlements(created_at);

CREATE TABLE settlement_payouts (
    settlement_id UUID NOT NULL REFERENCES settlements(id),
    creator_id UUID NOT NULL REFERENCES users(id),
    public_key TEXT NOT NULL,                   -- the destination account (0x hex)
    amount_planck NUMERIC(39, 0) NOT NULL CHECK (amount_planck > 0),
    amount NUMERIC(38, 18) NOT NULL,            -- the same, in tokens
    PRIMARY KEY (settlement_id, creator_id)
);

CREATE TABLE settlement_items (
    settlement_id UUID NOT NULL REFERENCES settlements(id),
    payment_id UUID NOT NULL REFERENCES payments(id),
    stream_viewer_id UUID NOT NULL,
    creator_id UUID NOT NULL REFERENCES users(id),
    amount NUMERIC(38, 18) NOT NULL CHECK (amount > 0),
    PRIMARY KEY (settlement_id, payment_id)
);

CREATE INDEX idx_settlement_items_viewer ON settlement_items(stream_viewer_id);

ALTER TABLE payments
    ADD COLUMN settled_amount NUMERIC(38, 18) NOT NULL DEFAULT 0,
    ADD COLUMN settlement_id UUID REFERENCES settlements(id);

CREATE OR REPLACE FUNCTION reopen_grown_payment()
RETURNS TRIGGER AS $$
BEGIN
    NEW.status = 'pending';
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- Fires only on the rare growth of a completed payment (WHEN is checked before the call).
CREATE TRIGGER reopen_grown_payment
    BEFORE UPDATE OF amount ON payments
    FOR EACH ROW
    WHEN (OLD.status = 'completed' AND NEW.amount > OLD.settled_amount)
    EXECUTE FUNCTION reopen_grown_payment();
