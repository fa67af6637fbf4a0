"""Ticks between the SFU workers (writers) and billing (reader), in Redis.

A worker writes the ticks of one second as ONE batch with ONE command (a Lua
script), whatever its number of viewers:

- `vk:ticks:batch:<worker id>:<second>` holds the batch (JSON), written with
  SET NX, so a retried write of the same batch changes nothing;
- the batch key joins the sorted set `vk:ticks:pending` (score: the second);
- each ticked viewer's live balance `vk:bal:<user id>` (integer planck) is
  decreased once by the sum of its ticks' prices (vilokanam/balances.py's
  charge, inside this script: one MGET and one MSET per 1000 viewers, no
  command per viewer), and the script returns the sessions whose viewer cannot
  pay for the next second — the worker cuts them off in this second;
- one message on `vk:ticks:live` tells signaling each session's seconds and
  cost so far, for the watch page.

In a Redis Cluster the batch is written as one part per shard of its viewers
(vilokanam/keyspace.py): each part, its shard's pending index and its viewers'
live balances share one hash slot.

Billing applies pending batches to Postgres exactly once (billing/flush.py)
and then deletes them. The live balance is a fast copy; Postgres holds the
truth: balance = credits - stream_view payments (sql/0007)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from vilokanam.balances import CHARGE_TICKS_LUA, charge_groups
from vilokanam.keyspace import STANDALONE, tick_keys
from vilokanam.keyspace import batch_id_of as batch_id_of  # the batch key's names, re-exported
from vilokanam.keyspace import batch_key as batch_key

PENDING_KEY = STANDALONE.pending(None)  # a standalone Redis's one pending index
# A video view's ticks (signaling/playback.py) are batches of the "worker"
# `vod:<view id>`, labelled with the media second delivered: a second re-fetched
# (seek back, rendition switch) is the same batch, so it is never billed twice.
VIDEO_VIEW_BATCH_PREFIX = "vod:"
LIVE_CHANNEL = "vk:ticks:live"


@dataclass(frozen=True)
class Tick:
    """One viewer session's second: who pays, how much (planck)."""

    viewer_session_id: str
    user_id: str
    price_planck: int


@dataclass(frozen=True)
class TickBatch:
    worker_id: str
    second: int  # unix time of the second the ticks are for
    ticks: tuple[Tick, ...]

    @property
    def batch_id(self) -> str:
        return f"{self.worker_id}:{self.second}"

    def encode(self) -> str:
        """The stored batch, as columns (BatchColumns): the sessions, the
        viewers, and the prices run-length coded -- a batch is mostly one
        price, and columns are what the flush needs."""
        prices: list[list[int]] = []
        for tick in self.ticks:
            if prices and prices[-1][0] == tick.price_planck:
                prices[-1][1] += 1
            else:
                prices.append([tick.price_planck, 1])
        return json.dumps({"second": self.second,
                           "sessions": [t.viewer_session_id for t in self.ticks],
                           "users": [t.user_id for t in self.ticks],
                           "prices": prices}, separators=(",", ":"))

    @classmethod
    def decode(cls, batch_id: str, raw: str | bytes) -> TickBatch:
        columns = BatchColumns.decode(raw)
        worker_id = batch_id.rsplit(":", 1)[0]
        return cls(worker_id, columns.second, tuple(
            Tick(s, u, p) for s, u, p in zip(columns.sessions, columns.users, columns.prices,
                                             strict=True)))


@dataclass(frozen=True)
class BatchColumns:
    """A stored batch decoded into its columns, with no object per tick: what
    the flush journals. Reads both shapes: `{"second", "sessions", "users",
    "prices": [[price, count], ...]}` (TickBatch.encode) and the older
    `{"second", "ticks": [[session, user, price], ...]}`, which batches
    written before an upgrade still have while they wait in Redis."""

    second: int
    sessions: list[str]
    users: list[str]
    prices: list[int]

    @classmethod
    def decode(cls, raw: str | bytes) -> BatchColumns:
        data = json.loads(raw)
        second = int(data["second"])
        if "ticks" in data:  # the older shape
            ticks = data["ticks"]
            return cls(second, [str(t[0]) for t in ticks], [str(t[1]) for t in ticks],
                       [int(t[2]) for t in ticks])
        prices: list[int] = []
        for price, count in data["prices"]:
            prices += [int(price)] * int(count)
        sessions, users = data["sessions"], data["users"]
        if not len(sessions) == len(users) == len(prices):
            raise ValueError(f"a tick batch's columns differ in length: {len(sessions)} "
                             f"sessions, {len(users)} users, {len(prices)} prices")
        return cls(second, sessions, users, prices)


# KEYS: batch key, pending set, then the live balance of each viewer in the
# batch (once each). ARGV: second, batch JSON, live JSON (may be ""), then
# the viewers' charges (planck, the sum of each one's ticks' prices) as
# (charge, count) pairs: vilokanam/balances.py charge_groups. The batch JSON
# is opaque here (stored, never decoded: the flush decodes it). Returns the
# positions (1-based, in the live balance keys) of the viewers whose balance
# is below their charge after it -- they cannot pay for the next second -- or
# who have no live balance at all; the charge is vilokanam/balances.py's.
_WRITE_TICKS = CHARGE_TICKS_LUA + """
if not redis.call('SET', KEYS[1], ARGV[2], 'NX') then
  return {}
end
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
local broke = charge_live(3, 4, #KEYS - 2)
if ARGV[3] ~= '' then redis.call('PUBLISH', 'vk:ticks:live', ARGV[3]) end
return broke
"""


@dataclass(frozen=True)
class Charges:
    """A batch's ticks per viewer, as the script charges them: each live
    balance once, by the sum of the viewer's ticks (a viewer may watch in two
    sessions on one worker), and which sessions to cut when it is short."""

    users: list[str]
    planck: list[int]
    sessions: list[list[str]]

    @classmethod
    def of(cls, ticks: tuple[Tick, ...]) -> Charges:
        """Viewers in the order of their charges (equal charges together, for
        the script's (charge, count) pairs), otherwise as they come."""
        users = [tick.user_id for tick in ticks]
        if len(set(users)) == len(users):  # the usual batch: each viewer once
            planck = [tick.price_planck for tick in ticks]
            sessions = [[tick.viewer_session_id] for tick in ticks]
        else:
            position: dict[str, int] = {}
            users, planck, sessions = [], [], []
            for tick in ticks:
                at = position.setdefault(tick.user_id, len(users))
                if at == len(users):
                    users.append(tick.user_id)
                    planck.append(0)
                    sessions.append([])
                planck[at] += tick.price_planck
                sessions[at].append(tick.viewer_session_id)
        if len(set(planck)) > 1:
            order = sorted(range(len(users)), key=planck.__getitem__)  # stable
            users = [users[k] for k in order]
            planck = [planck[k] for k in order]
            sessions = [sessions[k] for k in order]
        return cls(users, planck, sessions)

    def cut(self, positions: list[int]) -> list[str]:
        """The sessions of the viewers at the script's (1-based) positions."""
        return [session for at in positions for session in self.sessions[int(at) - 1]]


@dataclass(frozen=True)
class BatchPart:
    """What one script writes: a batch, or its part of one shard (a cluster)."""

    shard: int | None
    batch_id: str
    batch: TickBatch


class TickWriter:
    """Writes one batch per call, in one Redis command (EVALSHA) -- in a
    cluster one per shard the batch has viewers in (vilokanam/keyspace.py),
    each atomic and idempotent on its own."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(_WRITE_TICKS)
        self._keys = tick_keys(redis)

    async def write(self, batch: TickBatch, live: str = "") -> list[str]:
        """Idempotent: writing the same batch again charges nothing twice and
        returns no sessions to cut."""
        message = live  # vilokanam/live_ticks.py's message, "" = none
        writes, charges = [], []
        for part in self.parts(batch):
            charged = Charges.of(part.batch.ticks)
            charges.append(charged)
            prefix = self._keys.balance_prefix(part.shard)  # a part's viewers share a shard
            writes.append(self._script(
                keys=[batch_key(part.batch_id), self._keys.pending(part.shard),
                      *(prefix + user for user in charged.users)],
                args=[batch.second, part.batch.encode(), message,
                      *charge_groups(charged.planck)]))
            message = ""  # the watch pages' message goes out once, with the first part
        # The parts are independent (each atomic and idempotent on its own) and
        # live on different nodes: written at once, not one round trip after another.
        # A failed part fails the write; the retry finds the written parts (SET NX).
        results = await asyncio.gather(*writes, return_exceptions=True)
        for failed in results:
            if isinstance(failed, BaseException):
                raise failed
        return [session for charged, positions in zip(charges, results, strict=True)
                if not isinstance(positions, BaseException)
                for session in charged.cut(positions)]

    def parts(self, batch: TickBatch) -> list[BatchPart]:
        """The batch as written: itself on a standalone Redis; in a cluster one
        part per shard its viewers are in."""
        if not self._keys.cluster:
            return [BatchPart(None, batch.batch_id, batch)]
        by_shard: dict[int | None, list[Tick]] = {}
        for tick in batch.ticks:
            by_shard.setdefault(self._keys.shard(tick.user_id), []).append(tick)
        return [BatchPart(shard, self._keys.batch_id(batch.batch_id, shard),
                          TickBatch(batch.worker_id, batch.second, tuple(ticks)))
                for shard, ticks in by_shard.items()]
