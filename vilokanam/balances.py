"""Prepaid viewer balances: Postgres holds the truth (viewer_balances, the
balance_ledger of credits, the stream_view payments of charges); Redis holds a
live copy in integer planck (`vk:bal:<user id>`) that the SFU workers charge
every second and check before every second.

Credits (deposits, operator adjustments) commit in Postgres first, then move
the live copy. A missing live copy is rebuilt from Postgres.

This module is the only writer of `vk:bal:*`: credit, first load, rebuild,
and the per-second charge — which runs inside the metering script (so a
batch and its charges are one atomic step) but is written here, as a Lua
function taking this module's key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import ROUND_FLOOR, Decimal

import asyncpg
import redis.asyncio as aioredis

from vilokanam.keyspace import STANDALONE, TickKeys, tick_keys
from vilokanam.money import shift
from vilokanam.subscriptions import price_for


def balance_key(user_id: str, keys: TickKeys = STANDALONE) -> str:
    """`vk:bal:<user id>`; in a cluster the user's shard tag comes first."""
    return keys.balance(user_id)


# Lua: charge each tick {viewer_session_id, user_id, price_planck} of `ticks` to
# its viewer's live balance (keys `prefix .. user_id`); returns the sessions
# whose viewer cannot pay the next second, or has no live balance at all.
# Metering embeds it in the script that writes a batch (vilokanam/metering.py).
CHARGE_TICKS_LUA = """
local function charge_ticks(ticks, prefix)
  local broke = {}
  for _, t in ipairs(ticks) do
    local key = prefix .. t[2]
    if redis.call('EXISTS', key) == 1 then
      local left = redis.call('DECRBY', key, t[3])
      if left < t[3] then table.insert(broke, t[1]) end
    else
      table.insert(broke, t[1])
    end
  end
  return broke
end
"""

# KEYS: the live balance. ARGV: the credit, the full balance after it (planck).
# An existing copy moves by the credit (it already reflects unflushed ticks);
# a missing one starts from Postgres's balance.
_CREDIT_LIVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2])
return tonumber(ARGV[2])
"""


def planck_floor(amount: Decimal, decimals: int) -> int:
    """Whole planck, rounded down: a live balance never shows more than is there."""
    return int(shift(amount, decimals).to_integral_value(rounding=ROUND_FLOOR))


@asynccontextmanager
async def _connection(pg: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(pg, asyncpg.Pool):
        async with pg.acquire() as conn:
            yield conn
    else:
        yield pg


async def credit(pg: asyncpg.Pool | asyncpg.Connection, redis: aioredis.Redis, user_id: str,
                 amount: Decimal, kind: str, reference: str | None, decimals: int) -> bool:
    """Credit a viewer. A deposit's `reference` (block hash + event index) is
    credited once: the second time returns False and changes nothing."""
    async with _connection(pg) as conn, conn.transaction():
        entry = await conn.fetchval(
            "INSERT INTO balance_ledger (user_id, amount, kind, reference) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (reference) WHERE kind = 'deposit' DO NOTHING RETURNING id",
            user_id, amount, kind, reference)
        if entry is None:
            return False
        balance = await conn.fetchval(
            "INSERT INTO viewer_balances (user_id, balance) VALUES ($1, $2) "
            "ON CONFLICT (user_id) DO UPDATE SET balance = viewer_balances.balance + $2, "
            "updated_at = now() RETURNING balance", user_id, amount)
    script = redis.register_script(_CREDIT_LIVE)
    await script(keys=[balance_key(user_id, tick_keys(redis))],
                 args=[planck_floor(amount, decimals), planck_floor(balance, decimals)])
    return True


async def balance_of(pg: asyncpg.Pool | asyncpg.Connection, user_id: str) -> Decimal:
    value = await pg.fetchval("SELECT balance FROM viewer_balances WHERE user_id = $1", user_id)
    return Decimal(0) if value is None else Decimal(value)


async def live_balance(pg: asyncpg.Pool, redis: aioredis.Redis, user_id: str,
                       decimals: int) -> int:
    """The live copy in planck, rebuilt from Postgres when missing."""
    key = balance_key(user_id, tick_keys(redis))
    raw = await redis.get(key)
    if raw is not None:
        return int(raw)
    planck = planck_floor(await balance_of(pg, user_id), decimals)
    await redis.set(key, planck, nx=True)
    return int(await redis.get(key) or planck)


async def rebuild_live_balances(pg: asyncpg.Pool, redis: aioredis.Redis, decimals: int) -> int:
    """At billing start: every balance Redis lost comes back from Postgres.
    Existing copies are kept — they already count ticks not yet flushed."""
    rows = await pg.fetch("SELECT user_id::text AS user_id, balance FROM viewer_balances")
    keys = tick_keys(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for row in rows:
            planck = planck_floor(row["balance"], decimals)
            pipe.set(balance_key(row["user_id"], keys), planck, nx=True)
        results = await pipe.execute()
    return sum(1 for r in results if r)


MIN_START_SECONDS = 10  # starting to watch needs this many seconds of the price


class StreamPriceUnknown(LookupError):
    pass


async def can_start_watching(pg: asyncpg.Pool, redis: aioredis.Redis, user_id: str,
                             stream_id: str, decimals: int) -> bool:
    """Whether the viewer's live balance covers MIN_START_SECONDS of the stream
    at the viewer's price (0 for a subscriber of its creator)."""
    price = await price_for(pg, user_id, stream_id)
    if price is None:
        raise StreamPriceUnknown(stream_id)
    needed = planck_floor(Decimal(price) * MIN_START_SECONDS, decimals)
    return await live_balance(pg, redis, user_id, decimals) >= needed


# KEYS: live balances. ARGV: one signed planck delta per key. Each existing
# copy moves by its delta; a missing one is left missing (it is rebuilt from
# Postgres when needed, and a delta on nothing would invent a balance).
# Returns the balances after the move (false for a missing copy).
_ADJUST_LIVE = """
local after = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    after[i] = redis.call('INCRBY', key, ARGV[i])
  else
    after[i] = false
  end
end
return after
"""


async def adjust_live(redis: aioredis.Redis, deltas: dict[str, int]) -> dict[str, int | None]:
    """Move existing live copies by a delta each (planck), atomically: a
    refund of ticks the flush dropped, a repair of a drift. A delta, not a SET,
    so ticks and credits landing meanwhile are kept."""
    moved = {user: delta for user, delta in deltas.items() if delta}
    keys = tick_keys(redis)
    script = redis.register_script(_ADJUST_LIVE)
    result: dict[str, int | None] = {}
    for users in keys.group(moved).values():  # one script per shard (one hash slot)
        after = await script(keys=[balance_key(u, keys) for u in users],
                             args=[moved[u] for u in users])
        result.update({user: (None if value is None else int(value))
                       for user, value in zip(users, after, strict=True)})
    return result


# KEYS: the live balance. ARGV: planck. Takes them only if they are there.
_DEBIT_LIVE = """
local have = tonumber(redis.call('GET', KEYS[1]))
if have == nil or have < tonumber(ARGV[1]) then
  return false
end
return redis.call('DECRBY', KEYS[1], ARGV[1])
"""


async def debit_live(pg: asyncpg.Pool, redis: aioredis.Redis, user_id: str, planck: int,
                     decimals: int) -> int | None:
    """Take `planck` from the live balance at once if it holds them (a tip, a
    subscription): check and take in one script, so two payments at once
    cannot both spend the same money. Returns the balance left, or None when it
    is short (nothing taken). The Postgres side (a payments row) follows; if it
    fails, `adjust_live` gives the planck back."""
    await live_balance(pg, redis, user_id, decimals)  # a missing copy comes from Postgres
    script = redis.register_script(_DEBIT_LIVE)
    left = await script(keys=[balance_key(user_id, tick_keys(redis))], args=[planck])
    return None if left is None else int(left)
