"""Postgres CPU per tick of the flush's two steps, without the rest of the bench.

A private Postgres (vilokanam.services, fsync on, as bench/ticks.py) is
migrated and given V viewers (bench.ticks.insert_rows); then the real
`Flusher.record` is fed JournalRows of B batches x (V / B) ticks per
simulated second for S seconds, and the real `Flusher.sync_once` applies the
journal every `--sync-every` seconds. No Redis traffic, no simulated workers,
no billing process: what is measured is the CPU the Postgres processes burn,
read from /proc (utime + stime), not wall-clock, so a busy machine barely
distorts it:

- record: the record connection's backend;
- sync: the sync connection's backend;
- other: every other Postgres process (checkpointer, walwriter, autovacuum
  workers -- counted when they exit through the postmaster's cutime/cstime --,
  background writer, the stats).

    .venv/bin/python bench/pg_ticks.py                       # 100k viewers, 40 s, sync every 10 s
    .venv/bin/python bench/pg_ticks.py --viewers 2000 --seconds 6 --sync-every 3  # the test's form
    .venv/bin/python bench/pg_ticks.py --explain   # + EXPLAIN (ANALYZE, BUFFERS) of a sync

Every total is checked at the end (each viewer's ticks, paid amount and
balance), so a faster statement that bills wrong fails the run (exit 1)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg

if __package__ in (None, ""):  # run as a script: the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ticks import CREDIT, PRICE, insert_rows, user_id, viewer_session_id
from billing.flush import _SYNC, Flusher, JournalRow
from vilokanam.delivery import GRACE_SECONDS
from vilokanam.migrations import migrate
from vilokanam.money import to_planck
from vilokanam.redis_client import redis_from_url
from vilokanam.services.net import free_port
from vilokanam.services.postgres import PostgresServer
from vilokanam.services.redis import RedisServer

DECIMALS = 12
FEE = Decimal("0.1")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (+ its reaped children's), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime is field 14, so index 11.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / CLOCK_TICKS


def postgres_pids(postmaster: int) -> list[int]:
    """The postmaster's live children."""
    with open(f"/proc/{postmaster}/task/{postmaster}/children") as f:
        return [int(p) for p in f.read().split()]


def process_cpu(postmaster: int) -> dict[str, float]:
    """Every Postgres process's CPU by its title ("checkpointer", "walwriter",
    ...; a backend's is "backend <pid>"); "exited" is what the postmaster's
    reaped children used: the autovacuum workers, which come and go."""
    used = {"postmaster": cpu_seconds(postmaster),
            "exited": cpu_seconds(postmaster, children=True) - cpu_seconds(postmaster)}
    for pid in postgres_pids(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
            name = title.removeprefix("postgres: ").split(" ")[0] if ":" in title else title
            if "127.0.0.1" in title or "postgres vilokanam" in title:
                name = f"backend {pid}"
            used[name] = used.get(name, 0.0) + cpu_seconds(pid)
        except FileNotFoundError:  # exited meanwhile (then in "exited" next read)
            pass
    return used


@dataclass
class Cpu:
    record: float
    sync: float
    processes: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.processes.values())


def read_cpu(postmaster: int, record_pid: int, sync_pid: int) -> Cpu:
    return Cpu(cpu_seconds(record_pid), cpu_seconds(sync_pid), process_cpu(postmaster))


def rows_of(second: int, viewers: int, batches: int, price: int) -> list[JournalRow]:
    """One simulated second: every viewer one tick, in `batches` batches."""
    size = -(-viewers // batches)
    rows = []
    for b in range(batches):
        share = range(b * size, min(viewers, (b + 1) * size))
        rows.append(JournalRow(
            f"pg{b}:{second}", second, [str(viewer_session_id(i)) for i in share],
            [str(user_id(i)) for i in share], [price] * len(share)))
    return rows


async def explain_sync(pool: asyncpg.Pool, bound: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the sync statement, rolled back."""
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute("SET LOCAL work_mem = '256MB'")
            plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + _SYNC, 5000,
                                    GRACE_SECONDS, FEE, bound)
        finally:
            await tr.rollback()
    return "\n".join(r[0] for r in plan)


async def check_totals(pool: asyncpg.Pool, viewers: int, ticks_each: int, price: int) -> list[str]:
    """Every viewer billed exactly its ticks: stream_viewers, payments, balance."""
    cost = Decimal(price * ticks_each) / 10**DECIMALS
    wrong = await pool.fetchval(
        """SELECT count(*) FROM stream_viewers v
             LEFT JOIN payments p ON p.reference_id = v.id AND p.payment_type = 'stream_view'
             LEFT JOIN viewer_balances b ON b.user_id = v.viewer_id
            WHERE v.total_ticks <> $1 OR v.paid_amount <> $2 OR p.amount IS DISTINCT FROM $2
               OR b.balance <> $3 - $2""", ticks_each, cost, CREDIT)
    problems = [f"{wrong} viewers billed wrong"] if wrong else []
    stream = await pool.fetchval("SELECT total_ticks FROM streams")
    if stream != viewers * ticks_each:
        problems.append(f"streams.total_ticks {stream} != {viewers * ticks_each}")
    earned = await pool.fetchval("SELECT total_earnings FROM creator_earnings")
    if earned != viewers * (cost * (1 - FEE)):
        problems.append(f"creator earnings {earned} != {viewers * cost * (1 - FEE)}")
    if await pool.fetchval("SELECT count(*) FROM tick_journal"):
        problems.append("journal not drained")
    return problems


async def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="vk-pg-ticks-"))
    pg = PostgresServer(root / "pg", free_port(), fast=args.pg_fast)
    redis = RedisServer(root / "redis", free_port())
    pg.start()
    redis.start()
    try:
        return await measure(args, pg, redis)
    finally:
        redis.stop()
        pg.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


async def measure(args: argparse.Namespace, pg: PostgresServer, redis_server: RedisServer) -> int:
    await migrate(pg.url)
    price = to_planck(PRICE, DECIMALS)
    await insert_rows(pg.url, args.viewers, to_planck(CREDIT, DECIMALS), redis_server.url)
    redis = redis_from_url(redis_server.url)
    # One connection each, so each step's backend is known.
    record_pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=1)
    sync_pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=1)
    assert record_pool is not None and sync_pool is not None
    try:
        record_pid = await record_pool.fetchval("SELECT pg_backend_pid()")
        sync_pid = await sync_pool.fetchval("SELECT pg_backend_pid()")
        postmaster = pg.process.pid
        assert postmaster is not None
        recorder = Flusher(record_pool, redis, FEE)
        syncer = Flusher(sync_pool, redis, FEE)
        warmup = 2 * args.sync_every
        base = int(time.time()) - args.seconds - warmup - 5
        # Two syncs' worth, not measured: the first makes every viewer's
        # payment, the EXPLAIN (rolled back) is run on the second (the usual
        # case: every payment exists).
        explained = ""
        for s in range(warmup):
            await recorder.record(rows_of(base + s, args.viewers, args.batches, price))
            if (s + 1) % args.sync_every == 0:
                if args.explain and s + 1 == warmup:
                    explained = await explain_sync(sync_pool, syncer.max_sync_ticks)
                await syncer.sync_once()
        base += warmup
        await asyncio.sleep(1.0)  # the setup's autovacuum/checkpoint settle a little
        before = read_cpu(postmaster, record_pid, sync_pid)
        syncs, sync_ticks = 0, 0
        for s in range(args.seconds):
            await recorder.record(rows_of(base + s, args.viewers, args.batches, price))
            if (s + 1) % args.sync_every == 0:
                result = await syncer.sync_once()
                syncs, sync_ticks = syncs + 1, sync_ticks + result.ticks
        while True:  # the rest of the journal
            result = await syncer.sync_once()
            if not result.synced:
                break
            syncs, sync_ticks = syncs + 1, sync_ticks + result.ticks
        after = read_cpu(postmaster, record_pid, sync_pid)
        ticks = args.seconds * args.viewers
        problems = await check_totals(sync_pool, args.viewers, args.seconds + warmup, price)
    finally:
        await record_pool.close()
        await sync_pool.close()
        await redis.aclose()
    record, sync = after.record - before.record, after.sync - before.sync
    other = (after.total - before.total) - record - sync
    report = {
        "viewers": args.viewers, "seconds": args.seconds, "batches_per_second": args.batches,
        "syncs": syncs, "ticks": ticks, "ticks_synced": sync_ticks,
        "us_per_tick": {"record": round(1e6 * record / ticks, 2),
                        "sync": round(1e6 * sync / ticks, 2),
                        "other": round(1e6 * other / ticks, 2),
                        "total": round(1e6 * (after.total - before.total) / ticks, 2)},
        "cpu_s": {"record": round(record, 2), "sync": round(sync, 2), "other": round(other, 2)},
        # "other" by process (backends of neither step excluded: the harness's own checks)
        "other_s": {name: round(after.processes[name] - before.processes.get(name, 0.0), 2)
                    for name in after.processes if not name.startswith("backend")},
        "problems": problems,
    }
    if explained:
        print(explained)
    print(json.dumps(report))
    return 1 if problems or sync_ticks != ticks else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--batches", type=int, default=20, help="batches per second")
    parser.add_argument("--sync-every", type=int, default=10, help="seconds between syncs")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN (ANALYZE, BUFFERS) of the first sync (rolled back)")
    parser.add_argument("--pg-fast", action="store_true", help="Postgres with fsync off")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
