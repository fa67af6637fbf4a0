-- 0031_tips_subscriptions.sql
--
-- WHY: the schema's payment_type has 'tip' and 'subscription' besides 'stream_view', and both
-- must move money as exactly as a tick does.
--
-- 1. subscription_offers: a creator's 30-day subscription price (one offer per creator; no row:
--    no subscription on offer). A price change applies to the next purchase only.
-- 2. subscriptions: every purchased period, with the payment that paid it. A purchase while a
--    period runs starts where the last one ends: bought twice extends, and no two periods of the
--    same subscriber and creator ever overlap (so nobody pays twice for the same days).
--    While a period runs, the subscriber's viewing sessions of that creator are priced 0 (ticks
--    are still counted).
-- 3. tips: a tip's message; the money is its payments row (payment_type 'tip').
-- 4. settlement_items: a batch now also settles tips and subscriptions, which have no viewing
--    session: stream_viewer_id becomes optional and payment_type says which kind of line it is.
--
-- Every movement is a payments row (from the payer to the creator): the payer's balance is
-- ledger credits - payments, and the creator's pending payout grows by the amount.

CREATE TABLE subscription_offers (
    creator_id UUID PRIMARY KEY REFERENCES users(id),
    price NUMERIC(38, 18) NOT NULL CHECK (price > 0),
    period_days INTEGER NOT NULL DEFAULT 30 CHECK (period_days > 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE subscriptions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    subscriber_id UUID NOT NULL REFERENCES users(id),
    creator_id UUID NOT NULL REFERENCES users(id),
    payment_id UUID NOT NULL UNIQUE REFERENCES payments(id),
    price NUMERIC(38, 18) NOT NULL CHECK (price > 0),
    starts_at TIMESTAMPTZ NOT NULL,
    ends_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CHECK (ends_at > starts_at),
    CHECK (subscriber_id <> creator_id)
);

CREATE INDEX idx_subscriptions_pair ON subscriptions(subscriber_id, creator_id, ends_at);

CREATE TABLE tips (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id UUID NOT NULL UNIQUE REFERENCES payments(id),
    message TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

ALTER TABLE settlement_items
    ALTER COLUMN stream_viewer_id DROP NOT NULL,
    ADD COLUMN payment_type VARCHAR(50) NOT NULL DEFAULT 'stream_view',
    ADD CHECK ((payment_type = 'stream_view') = (stream_viewer_id IS NOT NULL));
