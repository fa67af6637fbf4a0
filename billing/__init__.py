"""Billing worker: flushes ticks from Redis to Postgres exactly once, keeps
balances, watches the chain for deposits and settles creator payouts."""
