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


# The live balances a tick write charges are read and written CHARGE_CHUNK at a
# time (one MGET, one MSET each): Lua's C stack bounds `unpack`.
CHARGE_CHUNK = 1000

# Lua: charge the live balances `keys[1 .. n]` (a table of key names, one per
# viewer, each once). ARGV[args_from ..] are pairs (charge in planck, count):
# the first `count` balances are charged `charge` each, the next pair's count
# the next charge, and so on -- most viewers of a batch pay the same, so the
# charges are a few pairs, parsed once each, not a number per viewer
# (`charge_groups` builds them). Returns the 1-based positions of the viewers
# who cannot pay as much again (balance left below their charge) or have no
# live balance at all (nothing charged). Metering embeds it in the script that
# writes a batch (vilokanam/metering.py), which builds `keys` from one
# argument of joined user ids.
#
# Per chunk of viewers ONE MGET reads the balances and ONE MSET writes them
# back: two Redis commands (and one AOF entry) per 1000 viewers instead of an
# EXISTS and a DECRBY per viewer -- the per-viewer commands were most of
# Redis's time at 100k viewers (docs/metering.md). A missing balance is a nil
# in the MGET, so it is never created. Lua numbers are doubles, exact for
# integers below 2^53 planck (~9,007 tokens at 12 decimals): a balance or a
# charge at or past that is charged with DECRBY (Redis's exact 64-bit
# arithmetic) instead, so the money stays exact at any size.
CHARGE_TICKS_LUA = f"local CHUNK = {CHARGE_CHUNK}\n" + """
local EXACT = 9007199254740992
local function charge_live(keys, args_from, n)
  local broke, nbroke = {}, 0
  local arg, remaining, charge, text, exact_charge = args_from, 0, 0, '0', true
  for first = 0, n - 1, CHUNK do
    local last = math.min(first + CHUNK, n) - 1
    local values = redis.call('MGET', unpack(keys, first + 1, last + 1))
    local out, nout = {}, 0
    for j = 1, last - first + 1 do
      if remaining == 0 then  -- the next (charge, count) pair
        text = ARGV[arg]
        charge, remaining = tonumber(text), tonumber(ARGV[arg + 1])
        exact_charge = charge < EXACT and charge > -EXACT
        arg = arg + 2
      end
      remaining = remaining - 1
      local raw = values[j]
      if raw then
        local key = keys[first + j]
        local have = tonumber(raw)
        local left = have - charge
        if charge == 0 then
          left = have
        elseif exact_charge and have < EXACT and have > -EXACT
           and left < EXACT and left > -EXACT then
          out[nout + 1] = key
          -- tostring prints an integer below 10^14 exactly (14 digits) and
          -- is cheaper than string.format; beyond, it would print 1e+14.
          out[nout + 2] = (left < 1e14 and left > -1e14) and tostring(left)
                          or string.format('%d', left)
          nout = nout + 2
        else
          left = redis.call('DECRBY', key, text)
        end
        if left < charge then
          nbroke = nbroke + 1
          broke[nbroke] = first + j
        end
      else
        nbroke = nbroke + 1
        broke[nbroke] = first + j
      end
    end
    if nout > 0 then redis.call('MSET', unpack(out)) end
  end
  return broke
end
"""


def charge_groups(planck: list[int]) -> list[int]:
    """The script's (charge, count) pairs, flattened, for charges already
    ordered so that equal charges are next to each other."""
    groups: list[int] = []
    for charge in planck:
        if groups and groups[-2] == charge:
            groups[-1] += 1
        else:
            groups += [charge, 1]
    return groups


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
