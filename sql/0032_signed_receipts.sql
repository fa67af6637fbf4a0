-- 0032_signed_receipts.sql
--
-- WHY: a viewer should not have to trust the server's count of seconds. A browser viewer's wallet
-- signs once a delegation to a session key made in the page (stream, price cap, expiry); the page
-- then signs every 10 s a cumulative receipt (seconds of media it received, their amount). Such a
-- session is billed at most its latest signed seconds plus a grace (docs/metering.md), and each
-- charge is then provable by the viewer's own signature.
--
-- 1. stream_viewers.billing_rule says which rule billed a session: 'meter' (the server's meter:
--    WHEP players, OBS-style tools, pages that cannot sign) or 'signed'; signed_seconds is the
--    latest accepted receipt's seconds (the flush caps the session at it + the grace).
-- 2. streams.require_signed_receipts: a stream may refuse viewers that do not sign.
-- 3. viewer_delegations: the wallet-signed delegation of a signed session (its exact text, kept
--    so the signature can be checked again by anyone).
-- 4. delivery_receipts: every accepted receipt, kept (cumulative: the latest one proves the bill).

ALTER TABLE streams ADD COLUMN require_signed_receipts BOOLEAN NOT NULL DEFAULT FALSE;

ALTER TABLE stream_viewers
    ADD COLUMN billing_rule VARCHAR(10) NOT NULL DEFAULT 'meter'
        CHECK (billing_rule IN ('meter', 'signed')),
    ADD COLUMN signed_seconds INTEGER CHECK (signed_seconds >= 0);

CREATE TABLE viewer_delegations (
    stream_viewer_id UUID PRIMARY KEY REFERENCES stream_viewers(id) ON DELETE CASCADE,
    session_key TEXT NOT NULL,                  -- the page's Ed25519 public key (0x hex)
    price_cap NUMERIC(38, 18) NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    message TEXT NOT NULL,                      -- what the wallet signed
    signature TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE delivery_receipts (
    stream_viewer_id UUID NOT NULL REFERENCES stream_viewers(id) ON DELETE CASCADE,
    seconds INTEGER NOT NULL CHECK (seconds > 0),
    amount NUMERIC(38, 18) NOT NULL,
    signature TEXT NOT NULL,                    -- the session key's Ed25519 signature
    received_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (stream_viewer_id, seconds)
);
