"""Load: `--viewers` websocket viewers joining one live stream within
`--window` seconds across two signaling servers, then `--whep` WHEP offers.

Signaling (two real `vilokanam signaling` processes), Postgres and Redis are
real. The SFU worker is the protocol tests' FAKE worker (tests/fake_worker.py,
kept honest by tests/test_worker_contract.py), in a process of its own: it
answers every offer with a canned SDP and no media, because here real WebRTC
in one process would be the bottleneck, not signaling. The viewers are spread
over `--client-procs` processes. Each viewer: connect, `hello`, `watch` with its own
token, wait for the `answer` (or an error, counted by code); every viewer
stays connected until all have joined. Then the WHEP offers are sent
`--concurrency` at a time; each must be answered 201 or refused with a
documented status. Prints join latency medians and p99, timeouts and codes.

    .venv/bin/python bench/ws_load.py --viewers 5000 --window 60 --whep 1000
    .venv/bin/python bench/ws_load.py --viewers 300 --window 10 --whep 100   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    RELIABILITY_DOC,
    RELIABILITY_TITLE,
    machine_description,
    markdown_table,
    update_doc_section,
    utc_now,
)
from bench.stack import BenchStack  # noqa: E402
from signaling.stream_keys import hash_stream_key, new_stream_key  # noqa: E402
from signaling.tokens import issue_token  # noqa: E402
from tests.fake_worker import FakeWorker  # noqa: E402
from vilokanam.balances import credit  # noqa: E402
from vilokanam.config import Settings  # noqa: E402

SECRET = "ws-load-" + "x" * 40
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"  # the fake never parses it
JOIN_TIMEOUT_S = 30.0
WHEP_DOCUMENTED = {201, 402, 409, 429, 503}  # README's WHEP row


@dataclasses.dataclass
class Joins:
    expected: int
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    codes: Counter[str] = dataclasses.field(default_factory=Counter)
    all_in: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def record(self, outcome: str, latency_ms: float | None = None) -> None:
        self.codes[outcome] += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
        if sum(self.codes.values()) >= self.expected:
            self.all_in.set()


async def make_viewers(pg: asyncpg.Pool, redis: aioredis.Redis, n: int) -> list[str]:
    """n users with a prepaid balance; returns their tokens."""
    rows = await pg.fetch(
        "INSERT INTO users (account_id) SELECT 'load-' || g FROM generate_series(1, $1) g "
        "RETURNING id::text, account_id", n)
    for chunk in range(0, len(rows), 200):
        await asyncio.gather(*(credit(pg, redis, r["id"], Decimal(10), "adjustment", "load", 12)
                               for r in rows[chunk:chunk + 200]))
    return [issue_token(SECRET, r["id"], r["account_id"]) for r in rows]


async def make_stream(pg: asyncpg.Pool) -> tuple[str, str]:
    key = new_stream_key()
    creator = await pg.fetchval(
        "INSERT INTO users (account_id, is_creator) VALUES ('load-creator', TRUE) RETURNING id")
    stream_id = await pg.fetchval(
        "INSERT INTO streams (creator_id, title, stream_key_hash) VALUES ($1, 'load', $2) "
        "RETURNING id::text", creator, hash_stream_key(key))
    return str(stream_id), key


async def publish(http: aiohttp.ClientSession, base: str, stream_id: str, key: str,
                  ) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(base + "/ws")
    await ws.receive_json()  # hello
    await ws.send_json({"type": "publish", "stream_id": stream_id, "stream_key": key,
                        "sdp": OFFER})
    answer = await ws.receive_json(timeout=10)
    assert answer["type"] == "answer", answer
    return ws


async def listen_until(ws: aiohttp.ClientWebSocketResponse, done: asyncio.Event) -> None:
    """Read what the server sends (viewer counts, chat) until `done`: a client
    that stops reading is a slow consumer, and the server rightly drops it."""
    async def read() -> None:
        async for _ in ws:
            pass

    reader = asyncio.create_task(read())
    await done.wait()
    reader.cancel()


async def join(http: aiohttp.ClientSession, base: str, stream_id: str, token: str,
               delay: float, joins: Joins, done: asyncio.Event) -> None:
    await asyncio.sleep(delay)
    started, outcome = time.monotonic(), ""
    try:
        async with http.ws_connect(base + "/ws", heartbeat=None) as ws:
            await ws.receive_json(timeout=JOIN_TIMEOUT_S)  # hello
            await ws.send_json({"type": "watch", "stream_id": stream_id, "token": token,
                                "sdp": OFFER})
            while True:
                reply = await ws.receive_json(timeout=JOIN_TIMEOUT_S)
                if reply["type"] in ("answer", "error"):
                    break
            outcome = "answer" if reply["type"] == "answer" else str(reply["code"])
            joins.record(outcome, (time.monotonic() - started) * 1000
                         if outcome == "answer" else None)
            await listen_until(ws, done)  # a viewer stays until every viewer has joined
    except TimeoutError:
        if not outcome:
            joins.record("timeout")
    except (aiohttp.ClientError, OSError) as exc:
        if not outcome:
            joins.record(f"connection: {type(exc).__name__}")


async def whep_offers(http: aiohttp.ClientSession, bases: list[str], stream_id: str,
                      tokens: list[str], concurrency: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int, token: str) -> None:
        async with gate:
            base = bases[n % len(bases)]
            async with http.post(f"{base}/whep/{stream_id}", data=OFFER, headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {token}"}) as resp:
                statuses[resp.status] += 1
                location = resp.headers.get("Location") if resp.status == 201 else None
            if location:
                async with http.delete(base + location):
                    pass

    await asyncio.gather(*(one(n, t) for n, t in enumerate(tokens)))
    return statuses


def fake_worker_process(redis_url: str, capacity: int, ready: Any) -> None:
    """The fake worker in a process of its own: its registration heartbeat must
    not wait behind thousands of clients (a late beat is a dead worker to the
    reaper, which would end the stream)."""
    async def serve() -> None:
        worker = FakeWorker(aioredis.Redis.from_url(redis_url), capacity=capacity)
        await worker.start()
        ready.set()
        await asyncio.Event().wait()  # until the parent terminates us

    asyncio.run(serve())


def viewers_process(bases: list[str], stream_id: str, tokens: list[str], offset: int,
                    window: float, results: Any, release: Any) -> None:
    """One share of the audience in its own process and event loop (one
    client loop for thousands of sockets would measure the client)."""
    async def watch_all() -> None:
        joins, done = Joins(len(tokens)), asyncio.Event()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            viewers = [asyncio.create_task(join(
                http, bases[(offset + n) % len(bases)], stream_id, token,
                random.uniform(0, window), joins, done)) for n, token in enumerate(tokens)]
            await joins.all_in.wait()
            results.put((dict(joins.codes), joins.latencies_ms))
            await asyncio.to_thread(release.wait)  # every share has joined
            done.set()
            await asyncio.gather(*viewers)

    asyncio.run(watch_all())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace, settings: Settings, bases: list[str],
              ) -> tuple[Joins, Counter[int], float]:
    spawn = multiprocessing.get_context("spawn")
    pg = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=8)
    redis = aioredis.Redis.from_url(settings.redis_url)
    ready = spawn.Event()
    worker = spawn.Process(target=fake_worker_process, daemon=True, args=(
        settings.redis_url, args.viewers + args.whep + 10, ready))
    worker.start()
    children: list[Any] = []
    try:
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("the fake worker did not start")
        stream_id, key = await make_stream(pg)
        tokens = await make_viewers(pg, redis, args.viewers + args.whep)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            publisher = await publish(http, bases[0], stream_id, key)
            finished = asyncio.Event()
            publishing = asyncio.create_task(listen_until(publisher, finished))
            results, release = spawn.Queue(), spawn.Event()
            shares = [list(range(args.viewers))[n::args.client_procs]
                      for n in range(args.client_procs)]
            started = time.monotonic()
            for n, share in enumerate(shares):
                children.append(spawn.Process(target=viewers_process, daemon=True, args=(
                    bases, stream_id, [tokens[i] for i in share], n, args.window, results,
                    release)))
                children[-1].start()
            joins = Joins(args.viewers)
            for _ in shares:
                codes, latencies = await asyncio.to_thread(results.get, True, 600)
                joins.codes.update(codes)
                joins.latencies_ms.extend(latencies)
            elapsed = time.monotonic() - started
            release.set()
            for child in children:
                await asyncio.to_thread(child.join, 60)
            statuses = await whep_offers(http, bases, stream_id, tokens[args.viewers:],
                                         args.concurrency)
            finished.set()
            await publishing
            if publisher.closed:
                raise RuntimeError("the publisher's websocket closed: the stream ended")
            await publisher.close()
    finally:
        for child in (*children, worker):
            if child.is_alive():
                child.terminate()
        await redis.aclose()
        await pg.close()
    return joins, statuses, elapsed


def report(joins: Joins, statuses: Counter[int], elapsed: float,
           args: argparse.Namespace) -> tuple[str, bool]:
    answered = joins.codes["answer"]
    held = answered == args.viewers and set(statuses) <= WHEP_DOCUMENTED
    rows = [("websocket viewers", args.viewers, answered,
             json.dumps({k: v for k, v in joins.codes.items() if k != "answer"}) or "none",
             f"{statistics.median(joins.latencies_ms):.0f}" if joins.latencies_ms else "-",
             f"{percentile(joins.latencies_ms, 0.99):.0f}"),
            ("WHEP offers", args.whep, statuses.get(201, 0),
             json.dumps({str(k): v for k, v in sorted(statuses.items()) if k != 201}), "", "")]
    body = "\n".join([
        f"Measured {utc_now()} on {machine_description()}: {args.viewers} websocket viewers "
        f"joined within {args.window:g} s (all answered after {elapsed:.1f} s) across two "
        f"signaling processes, then {args.whep} WHEP offers {args.concurrency} at a time. The "
        "SFU worker is the FAKE worker of the protocol tests (canned answers, no media).",
        "",
        markdown_table(("what", "sent", "answered", "refused / failed", "join p50 ms",
                        "join p99 ms"), rows),
        "",
        f"Verdict: {'held' if held else 'NOT held'} (every viewer answered, no timeout; every "
        "WHEP offer answered or refused with a documented status).",
        "",
        "    " + " ".join([".venv/bin/python bench/ws_load.py", *sys.argv[1:]]),
    ])
    return body, held


async def load(args: argparse.Namespace) -> tuple[Joins, Counter[int], float]:
    async with BenchStack("vk-load-", signaling=2,
                          overrides={"token_secret": SECRET}) as stack:
        return await run(args, stack.settings, stack.bases())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=5000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds the joins spread over")
    parser.add_argument("--whep", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50, help="WHEP offers in flight")
    parser.add_argument("--client-procs", type=int, default=2,
                        help="processes the websocket viewers are spread over")
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    joins, statuses, elapsed = asyncio.run(load(args))
    body, held = report(joins, statuses, elapsed, args)
    print(body)
    if args.write_doc:
        update_doc_section(RELIABILITY_DOC, "ws-load", body, title=RELIABILITY_TITLE)
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
