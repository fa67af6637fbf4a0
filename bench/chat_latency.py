"""Chat latency: a `chat` sent on one signaling server to its `chat_message`
at every chatter, on both servers.

Runs Postgres, Redis and TWO signaling servers as real processes (chat needs
no SFU worker). `--chatters` websockets sign in (dev tokens) and join one
stream's chat, alternating between the servers; `--senders` of them send
`--messages` lines each, one a second (the flood limit is 1/s, bursts of 5),
staggered so lines go out all the time. Each line carries its send time;
every chatter notes when it arrives. The latency of one delivery is arrival
minus send, measured in this one process (one clock). It checks that every
chatter got every line and that every line is a `comments` row. A benchmark,
not a test: it prints percentiles.

    .venv/bin/python bench/chat_latency.py --chatters 200 --senders 20 --messages 5
    .venv/bin/python bench/chat_latency.py --fast      # 40 chatters, 8 senders, 3 lines
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_description, utc_now  # noqa: E402
from tests.processes import start_role, wait_healthy  # noqa: E402
from vilokanam.config import Settings  # noqa: E402
from vilokanam.migrations import migrate  # noqa: E402
from vilokanam.services.net import free_port  # noqa: E402
from vilokanam.services.postgres import PostgresServer  # noqa: E402
from vilokanam.services.redis import RedisServer  # noqa: E402

SEND_EVERY_S = 1.05  # just over the flood limit's 1/s
TIMEOUT_S = 30.0


def random_account() -> str:
    from scalecodec.utils.ss58 import ss58_encode

    return str(ss58_encode(os.urandom(32), ss58_format=42))


@dataclasses.dataclass
class Chatter:
    ws: aiohttp.ClientWebSocketResponse
    token: str
    arrivals: dict[str, float] = dataclasses.field(default_factory=dict)  # ref -> time


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as resp:
        if resp.status not in (200, 201):
            raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
        return dict(await resp.json())


async def _join(http: aiohttp.ClientSession, base: str, stream_id: str) -> Chatter:
    token = (await _post(http, f"{base}/api/dev/token", {"account": random_account()}))["token"]
    ws = await http.ws_connect(f"{base}/ws", max_msg_size=0)
    await ws.receive_json()  # hello
    await ws.send_json({"type": "auth", "token": token})
    await ws.send_json({"type": "chat_join", "stream_id": stream_id})
    while (await ws.receive_json())["type"] != "chat_history":
        pass
    return Chatter(ws, token)


async def _listen(chatter: Chatter, sent: dict[str, float], expected: int,
                  done: asyncio.Event) -> None:
    while len(chatter.arrivals) < expected:
        message = await chatter.ws.receive_json()
        if message["type"] == "chat_message":
            ref = message["message"]["content"]
            chatter.arrivals[ref] = time.perf_counter()
        elif message["type"] == "error":
            raise RuntimeError(f"chat error: {message}")
    done.set()


async def _send(chatter: Chatter, stream_id: str, index: int, senders: int, messages: int,
                sent: dict[str, float]) -> None:
    await asyncio.sleep(SEND_EVERY_S * index / senders)  # staggered over one period
    for n in range(messages):
        ref = f"s{index}-m{n}"
        sent[ref] = time.perf_counter()
        await chatter.ws.send_json({"type": "chat", "stream_id": stream_id, "content": ref,
                                    "ref": ref})
        await asyncio.sleep(SEND_EVERY_S)


async def measure(bases: list[str], database_url: str, chatters: int, senders: int,
                  messages: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        creator = (await _post(http, f"{bases[0]}/api/dev/token",
                               {"account": random_account()}))["token"]
        stream_id = (await _post(http, f"{bases[0]}/api/streams", {"title": "chat bench"},
                                 creator))["id"]
        joined: list[Chatter] = []
        for start in range(0, chatters, 50):  # 50 at a time: do not flood the accept queue
            joined += await asyncio.gather(*[
                _join(http, bases[i % len(bases)], stream_id)
                for i in range(start, min(chatters, start + 50))])
        sent: dict[str, float] = {}
        expected = senders * messages
        events = [asyncio.Event() for _ in joined]
        listeners = [asyncio.create_task(_listen(c, sent, expected, e))
                     for c, e in zip(joined, events, strict=True)]
        started = time.perf_counter()
        await asyncio.gather(*[_send(joined[i], stream_id, i, senders, messages, sent)
                               for i in range(senders)])
        await asyncio.wait_for(asyncio.gather(*listeners), TIMEOUT_S)
        elapsed = time.perf_counter() - started
        for chatter in joined:
            await chatter.ws.close()
    latencies = sorted((arrival - sent[ref]) * 1000 for c in joined
                       for ref, arrival in c.arrivals.items())
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM comments WHERE stream_id = $1::uuid",
                                   stream_id)
    finally:
        await conn.close()
    if rows != expected or len(latencies) != expected * chatters:
        raise RuntimeError(f"lost lines: {rows} rows, {len(latencies)} deliveries, "
                           f"expected {expected} and {expected * chatters}")

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {"deliveries": len(latencies), "lines": expected, "seconds": elapsed,
            "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": latencies[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chatters", type=int, default=200)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5, help="lines per sender")
    parser.add_argument("--fast", action="store_true", help="a quick, small run")
    args = parser.parse_args()
    if args.fast:
        args.chatters, args.senders, args.messages = 40, 8, 3
    args.senders = min(args.senders, args.chatters)
    with tempfile.TemporaryDirectory(prefix="vk-chat-") as tmp:
        root = Path(tmp)
        postgres = PostgresServer(root / "pg", free_port(), fast=True)
        redis = RedisServer(root / "redis", free_port())
        postgres.start()
        redis.start()
        roles = []
        try:
            asyncio.run(migrate(postgres.url))
            base = dataclasses.replace(
                Settings.from_env({}, database_url=postgres.url, redis_url=redis.url),
                dev_mode=True, token_secret="chat-latency-" + "x" * 40)
            servers = [dataclasses.replace(base, http_port=free_port()) for _ in range(2)]
            roles = [start_role(s, "signaling", root / f"signaling{n}")
                     for n, s in enumerate(servers)]
            for role, settings in zip(roles, servers, strict=True):
                wait_healthy(role, settings.http_port)
            result = asyncio.run(measure([s.base_url for s in servers], postgres.url,
                                         args.chatters, args.senders, args.messages))
        finally:
            for role in roles:
                role.stop()
            redis.stop()
            postgres.stop()
    print(f"{utc_now()} on {machine_description()}")
    print(f"chatters: {args.chatters} on 2 signaling servers  lines: {result['lines']} "
          f"({args.senders} senders x {args.messages})  deliveries: {result['deliveries']} "
          f"in {result['seconds']:.1f} s")
    print(f"latency p50: {result['p50']:.1f} ms  p90: {result['p90']:.1f} ms  "
          f"p99: {result['p99']:.1f} ms  max: {result['max']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
