"""Soak: one live stream for `--minutes` with `--viewers` WHEP viewers joining
and leaving the whole time; every role's RSS, open files and asyncio tasks and
Redis's key count must stay flat.

Runs Postgres, Redis, one SFU worker, signaling and billing as real processes.
The publisher is an aiortc client over WHIP (it encodes, as OBS would); each
viewer is an aiortc client over WHEP that counts packets without decoding,
watches 10-40 s, leaves with DELETE, and its slot is filled again at once.
Every `--sample` seconds it reads /proc (RSS, file descriptors), each role's
/metrics (`vilokanam_asyncio_tasks`) and Redis DBSIZE. A `--warmup` audience
comes and goes first (pools and caches grow to their working size); then files,
tasks and keys are sampled idle (the publisher live, no viewer), the soak's
audience churns for `--minutes`, and after it left they are sampled idle again.
RSS drift is the soak's last sample against its first.
A benchmark, not a test: it prints the table, and `--write-doc` puts it in
docs/reliability.md.

    .venv/bin/python bench/soak.py --minutes 30 --viewers 20 --write-doc
    .venv/bin/python bench/soak.py --minutes 2 --viewers 5      # the quick form
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from substrateinterface import Keypair

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    RELIABILITY_DOC,
    RELIABILITY_TITLE,
    BenchError,
    machine_description,
    markdown_table,
    scrape,
    update_doc_section,
    utc_now,
)
from bench.sfu_fanout import TappedViewer  # noqa: E402
from bench.stack import BenchStack  # noqa: E402
from tests.media_clients import MovingVideo, client_pc  # noqa: E402
from vilokanam.admin import grant_dev_funds  # noqa: E402
from vilokanam.backends import POSTGRES_POOL_MAX, REDIS_MAX_CONNECTIONS  # noqa: E402
from vilokanam.config import Settings  # noqa: E402
from vilokanam.services.process import ManagedProcess  # noqa: E402

ROLES = ("sfu", "signaling", "billing")
WATCH_S = (10.0, 40.0)  # how long one viewer stays
DRIFT_LIMIT = 10.0  # % (the target for RSS)
# A role's connections to the stores at most: its Postgres pool, its Redis
# pool and a few pub/sub connections (vilokanam/backends.py).
POOL_BOUND = POSTGRES_POOL_MAX + REDIS_MAX_CONNECTIONS + 4
# Before an idle sample, waited for (up to this long): the worker holds only
# the publisher, and signaling's keep-alive pool of connections to the worker
# drained (signaling/sfu_client.py: an idle one closes 15-30 s after its last
# use; each open one is a socket and a request-handler task on the worker —
# the "+18 tasks, +20 files" an earlier 20 s sleep measured).
IDLE_SETTLE_S = 90.0


@dataclass
class Sample:
    t: float
    rss_mib: dict[str, float]
    fds: dict[str, int]
    tasks: dict[str, int]
    redis_keys: int
    viewers: int
    lasting_keys: int  # keys without a TTL: what a leak would leave (the rest expire)
    # what the tasks run and what the files are, per role: what grew names its cause
    coroutines: dict[str, dict[str, int]] = field(default_factory=dict)
    fd_kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    pooled: dict[str, int] = field(default_factory=dict)  # of fds: connections to the stores


@dataclass
class Stats:
    joins: int = 0
    leaves: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    packets: int = 0
    republished: int = 0  # the publisher lost (a starved load generator) and back


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _socket_kinds(pid: int) -> dict[str, str]:
    """Socket inode -> "tcp 127.0.0.1:port>port" / "udp" / "unix", from /proc/<pid>/net."""
    kinds: dict[str, str] = {}
    for proto in ("tcp", "tcp6", "udp", "udp6", "unix"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if proto == "unix":
                kinds[cols[6]] = "unix"
            else:
                local, remote = (int(c.split(":")[1], 16) for c in cols[1:3])
                kinds[cols[9]] = f"{proto.rstrip('6')} :{local}>:{remote}" if remote else \
                    f"{proto.rstrip('6')} :{local} listening/unconnected"
    return kinds


def fd_kinds(pid: int) -> dict[str, int]:
    """Open files by kind: sockets by protocol and port, pipes, anon inodes, paths."""
    sockets = _socket_kinds(pid)
    counts: dict[str, int] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            kind = sockets.get(target[8:-1], "socket")
        elif target.startswith(("pipe:", "anon_inode:")):
            kind = target.split("[")[0]
        else:
            kind = "file"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def store_ports(settings: Settings) -> set[int]:
    """The Postgres and Redis ports: a role's connections to them are its
    pools, which grow to their working size under a burst and are bounded by
    configuration (Postgres `connect_postgres` max_size, Redis
    REDIS_MAX_CONNECTIONS), unlike a leak."""
    return {int(urlsplit(url).port or 0) for url in (settings.database_url, settings.redis_url)}


def pooled(kinds: dict[str, int], stores: set[int]) -> int:
    return sum(n for kind, n in kinds.items()
               if kind.startswith("tcp :") and ">:" in kind
               and int(kind.rsplit(">:", 1)[1]) in stores)


def coroutines(port: int) -> dict[str, int]:
    return {name.split('coroutine="', 1)[1].rstrip('"}'): int(value)
            for name, value in scrape(f"http://127.0.0.1:{port}/metrics").items()
            if name.startswith("vilokanam_asyncio_tasks_by_coroutine{")}


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted({*before, *after})
            if after.get(k, 0) != before.get(k, 0)}


async def lasting_keys(redis: aioredis.Redis) -> int:
    """Keys without a TTL. Keys with one (rate-limit windows, flushed tick
    batches' 10 min tombstones) go by themselves, so DBSIZE after a short run
    counts what is still expiring."""
    keys = [key async for key in redis.scan_iter(count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
        ttls = await pipe.execute()
    return sum(1 for ttl in ttls if ttl == -1)


async def take_sample(started: float, roles: dict[str, tuple[ManagedProcess, int]],
                      redis: aioredis.Redis, viewers: int, stores: set[int]) -> Sample:
    def tasks(port: int) -> int:
        return int(scrape(f"http://127.0.0.1:{port}/metrics")["vilokanam_asyncio_tasks"])

    pids = {name: proc.pid for name, (proc, _) in roles.items()}
    counts = {name: await asyncio.to_thread(tasks, port) for name, (_, port) in roles.items()}
    return Sample(time.monotonic() - started,
                  {n: rss_mib(p) for n, p in pids.items() if p},
                  {n: open_fds(p) for n, p in pids.items() if p},
                  counts, int(await redis.dbsize()), viewers, await lasting_keys(redis),
                  {n: await asyncio.to_thread(coroutines, port) for n, (_, port) in roles.items()},
                  kinds := {n: fd_kinds(p) for n, p in pids.items() if p},
                  {n: pooled(k, stores) for n, k in kinds.items()})


async def settle(roles: dict[str, tuple[ManagedProcess, int]]) -> None:
    """Wait until the stack is idle: the worker's only peer is the publisher,
    and signaling holds no connection to the worker's control port."""
    sfu_port = roles["sfu"][1]
    deadline = time.monotonic() + IDLE_SETTLE_S

    def pool() -> int:
        kinds = fd_kinds(roles["signaling"][0].pid or 0)
        return sum(n for kind, n in kinds.items() if kind.endswith(f">:{sfu_port}"))

    def peers() -> float:
        return scrape(f"http://127.0.0.1:{sfu_port}/metrics")["vilokanam_sfu_peer_connections"]

    while (left := (pool(), await asyncio.to_thread(peers))) != (0, 1.0):
        if time.monotonic() > deadline:
            print(f"not idle after {IDLE_SETTLE_S:g} s: connections to the worker, peers "
                  f"{left}", flush=True)
            return
        await asyncio.sleep(0.5)


async def offer_to(http: aiohttp.ClientSession, pc: RTCPeerConnection, url: str,
                   bearer: str) -> str:
    """RFC 9725 / WHEP: POST the offer, apply the answer; returns the Location."""
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, data=pc.localDescription.sdp, headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {bearer}"}) as resp:
        text = await resp.text()
        if resp.status != 201:
            raise BenchError(f"{url} answered {resp.status}: {text[:200]}")
        location = resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return str(location)


async def viewer_slot(http: aiohttp.ClientSession, base: str, whep_url: str, token: str,
                      stop: asyncio.Event, stats: Stats, live: list[int]) -> None:
    """One seat of the audience: join, watch a while, leave, again."""
    while not stop.is_set():
        viewer = TappedViewer()
        try:
            location = await offer_to(http, viewer.pc, whep_url, token)
        except BenchError as exc:
            code = str(exc).split(" answered ")[-1][:3]
            stats.refused[code] = stats.refused.get(code, 0) + 1
            await viewer.pc.close()
            await asyncio.sleep(1.0)  # e.g. 503 Retry-After: ask again shortly
            continue
        stats.joins += 1
        live[0] += 1
        try:
            with_stop = asyncio.ensure_future(stop.wait())
            await asyncio.wait([with_stop], timeout=random.uniform(*WATCH_S))
            with_stop.cancel()
            stats.packets += sum(viewer.sample()[kind]["frames"] for kind in ("video", "audio"))
        finally:
            live[0] -= 1
            async with http.delete(base + location if location.startswith("/") else location):
                pass
            await viewer.pc.close()
            stats.leaves += 1


def drift(first: float, last: float) -> float:
    return 100.0 * (last - first) / first if first else 0.0


def report(idle: tuple[Sample, Sample], samples: list[Sample], stats: Stats,
           args: argparse.Namespace) -> tuple[str, bool]:
    """RSS: the first sample under churn against the last. Files, tasks and
    Redis keys: the stack idle (publisher live, no viewer) after the warm-up's
    audience left and after the soak's — what a leak leaves behind."""
    first, last = samples[0], samples[-1]
    before, after = idle
    rows, flat = [], True
    for role in ROLES:
        rss = drift(first.rss_mib[role], last.rss_mib[role])
        flat &= abs(rss) <= DRIFT_LIMIT
        # A store pool is bounded by its configuration; every other file must stay.
        own = (before.fds[role] - before.pooled[role], after.fds[role] - after.pooled[role])
        flat &= own[1] <= own[0] + 2 and after.pooled[role] <= POOL_BOUND
        flat &= after.tasks[role] <= before.tasks[role] + 2
        rows.append((role, f"{first.rss_mib[role]:.1f} → {last.rss_mib[role]:.1f} ({rss:+.1f} %)",
                     f"{before.fds[role]} → {after.fds[role]} "
                     f"({before.pooled[role]} → {after.pooled[role]})",
                     f"{before.tasks[role]} → {after.tasks[role]}"))
    flat &= after.lasting_keys <= before.lasting_keys + 2
    rows.append(("redis keys (without TTL)", "",
                 f"{before.redis_keys} → {after.redis_keys} "
                 f"({before.lasting_keys} → {after.lasting_keys})", ""))
    body = "\n".join([
        f"Measured {utc_now()} on {machine_description()}: {args.minutes:g} min, "
        f"{args.viewers} viewer seats (joins {stats.joins}, leaves {stats.leaves}, refused "
        f"{json.dumps(stats.refused) if stats.refused else 'none'}; publisher lost and "
        f"published again: {stats.republished}). RSS: first sample under "
        f"churn against the last at {last.t:.0f} s ({len(samples)} samples). Open files, "
        "asyncio tasks, Redis keys (DBSIZE, and in brackets those without a TTL; the row's "
        "second column): idle (waited for: the publisher the worker's one peer, signaling's "
        "keep-alive pool to the worker drained), "
        f"the publisher live, after a {args.warmup:g} s warm-up audience left (pools at their "
        "working size) and after the soak's audience left.",
        "",
        markdown_table(("role", "RSS MiB under churn (drift)",
                        "open files idle (of them: connections to the stores)",
                        "asyncio tasks idle"), rows),
        "",
        f"Verdict: {'flat' if flat else 'NOT flat'} (RSS within ±{DRIFT_LIMIT:g} %, "
        "files other than store-pool connections, tasks and Redis keys without a TTL "
        f"within +2; store-pool connections within their bound, {POOL_BOUND}).",
        "",
        "    " + " ".join([".venv/bin/python bench/soak.py", *sys.argv[1:]]),
    ])
    return body, flat


async def publish(http: aiohttp.ClientSession, stream: dict[str, Any]) -> RTCPeerConnection:
    publisher = client_pc()  # encodes 360p VP8 and Opus, as OBS would
    publisher.addTransceiver(MovingVideo(640, 360), direction="sendonly")
    publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await offer_to(http, publisher, stream["whip_url"], stream["stream_key"])
    return publisher


async def keep_publishing(http: aiohttp.ClientSession, stream: dict[str, Any],
                          publisher: list[RTCPeerConnection],
                          roles: dict[str, tuple[ManagedProcess, int]], stats: Stats) -> None:
    """Publish again, as OBS does, when the worker has ended the stream (on a
    loaded machine this process can starve its publisher past the worker's
    silence limit); counted, and said in the result."""
    info = f"http://127.0.0.1:{roles['sfu'][1]}/control/streams/{stream['id']}"
    while True:
        await asyncio.sleep(5.0)
        try:
            async with http.get(info) as resp:
                live = bool((await resp.json())["live"])
        except (aiohttp.ClientError, OSError, KeyError, ValueError):
            continue
        if not live:
            print("  the worker ended the stream: publishing again", flush=True)
            await publisher[0].close()
            publisher[0] = await publish(http, stream)
            stats.republished += 1


async def run(args: argparse.Namespace, settings: Settings,
              roles: dict[str, tuple[ManagedProcess, int]],
              ) -> tuple[tuple[Sample, Sample], list[Sample], Stats]:
    base = settings.base_url
    keys = [Keypair.create_from_uri(f"//soak-{n}", ss58_format=settings.ss58_prefix)
            for n in range(args.viewers + 1)]
    await grant_dev_funds(settings, [k.ss58_address for k in keys])
    stats, samples, live = Stats(), [], [0]
    stores = store_ports(settings)
    redis = aioredis.Redis.from_url(settings.redis_url)
    # No keep-alive from us: our own idle connections would count as the
    # server's open files and tasks.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async def token(account: str) -> str:
            async with http.post(base + "/api/dev/token", json={"account": account}) as resp:
                return str((await resp.json())["token"])

        creator = await token(keys[0].ss58_address)
        async with http.post(base + "/api/streams", json={"title": "soak", "record": False},
                             headers={"Authorization": f"Bearer {creator}"}) as resp:
            stream = await resp.json()
        publisher = [await publish(http, stream)]
        keeper = asyncio.create_task(keep_publishing(http, stream, publisher, roles, stats))
        tokens = [await token(k.ss58_address) for k in keys[1:]]
        started = time.monotonic()

        def audience(stop: asyncio.Event) -> list[asyncio.Task[None]]:
            return [asyncio.create_task(viewer_slot(http, base, stream["whep_url"], t, stop,
                                                    stats, live)) for t in tokens]

        # Warm-up: the pools (Postgres, Redis, HTTP keep-alive) grow to what
        # this audience needs; then the audience leaves, and idle is measured.
        warm = asyncio.Event()
        seats = audience(warm)
        await asyncio.sleep(args.warmup)
        warm.set()
        await asyncio.gather(*seats, return_exceptions=True)
        await settle(roles)
        idle_before = await take_sample(started, roles, redis, 0, stores)
        stop = asyncio.Event()
        seats = audience(stop)
        try:
            await asyncio.sleep(min(args.sample, 30.0))
            end = time.monotonic() + args.minutes * 60 - min(args.sample, 30.0)
            while True:
                samples.append(await take_sample(started, roles, redis, live[0], stores))
                s = samples[-1]
                print(f"{s.t:6.0f} s  viewers {s.viewers:3d}  rss {s.rss_mib}  fds {s.fds}  "
                      f"tasks {s.tasks}  redis keys {s.redis_keys}", flush=True)
                if time.monotonic() >= end:
                    break
                for name, (proc, _) in roles.items():
                    if not proc.running:
                        raise BenchError(f"{name} died:\n{proc.tail()}")
                await asyncio.sleep(min(args.sample, max(0.0, end - time.monotonic())))
        finally:
            stop.set()
            await asyncio.gather(*seats, return_exceptions=True)
        await settle(roles)  # the last DELETEs' peers closed, the pool drained
        idle_after = await take_sample(started, roles, redis, 0, stores)
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await publisher[0].close()
        await redis.aclose()
    return (idle_before, idle_after), samples, stats


async def soak(args: argparse.Namespace,
               ) -> tuple[tuple[Sample, Sample], list[Sample], Stats]:
    async with BenchStack("vk-soak-", sfu=1, billing=True,
                          env={"VILOKANAM_ICE_HOST_ADDRESSES": "127.0.0.1"},
                          overrides={"dev_mode": True,
                                     "token_secret": "soak-" + "x" * 40}) as stack:
        roles = {role: (proc, stack.roles[role][0].port)
                 for role in ROLES if (proc := stack.roles[role][0].proc) is not None}
        return await run(args, stack.settings, roles)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before sample 1")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    args.warmup = min(args.warmup, max(10.0, args.minutes * 60 / 3))
    idle, samples, stats = asyncio.run(soak(args))
    body, flat = report(idle, samples, stats, args)
    before, after = idle
    for role in ROLES:  # what stayed: the coroutines and the files that grew
        print(f"{role}: tasks grown {grown(before.coroutines[role], after.coroutines[role])}; "
              f"files grown {grown(before.fd_kinds[role], after.fd_kinds[role])}")
    print(body)
    if args.write_doc:
        update_doc_section(RELIABILITY_DOC, "soak", body, title=RELIABILITY_TITLE)
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
