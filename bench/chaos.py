"""Chaos: kill -9 one process of a kind at a random moment while streams are
watched, start it again, and check that no tick was lost or billed twice and
that the money adds up, to the planck, in Postgres and on chain.

The stack (bench/stack.py) is real: 2 signaling servers, 2 SFU workers,
billing (deposit watcher and settler on), the media role, Postgres, Redis and
a chopsticks chain. Two streams are published by aiortc clients over WHIP (a
generated moving picture and a tone, encoded as OBS would); `--viewers`
aiortc viewers per stream watch over WHEP and write down every wall-clock
second in which media reached them. A viewer that gets no media for
`STALL_S` leaves (DELETE) and asks again — what the watch page's player does
when its worker is gone; a publisher whose session is gone (`404` on its
session URL) publishes again, as OBS does. Every request goes to a signaling
server that answers (a load balancer's job).

For each kind of process (signaling, sfu, billing, media, postgres, redis,
chain) a fresh audience watches `--rounds` rounds; in each, after a random
part of `--watch` seconds, one random process of the kind is killed with
SIGKILL (its whole process group) and started again after 0.5-3 s, on the same
port and data. (The chain lives in memory: it restarts from genesis.) For the
media kind a video is uploaded before each kill, so a transcode job is in
flight. When the kind's rounds are done the audience leaves and the books
settle; then:

(a) per viewer: the seconds billed (its `stream_viewers` rows) against the
    seconds it counted; the allowed difference is the outage it measured
    (each gap without media, rounded up), per connection the time it received
    media before its first RTCP receiver report (a viewer is billed only once
    it reports), and 2 s per connection (its partial first and last seconds:
    the worker's tick clock against the viewer's);
(b) beyond that allowance: billed < counted is a tick lost, billed > counted
    a tick billed twice; and every session's paid amount = ticks x price, its
    payment = its paid amount, each stream's and stream session's ticks = the
    sum of its viewers' ticks;
(c) Σ charges = Σ creator earnings + the platform fee (to the planck); each
    viewer's grant - charges = its balance, in Postgres and live in Redis;
    a settlement then completes and each creator's on-chain balance - its
    genesis funds = Σ its payouts on the chain now served, and
    earnings = paid out + pending in Postgres;
(d) no stream left `live` without a live worker, once the reaper's grace passed;
(e) no orphan: no process left in the session of a child that is gone;
(f) no stuck job: the media job queue drains.

    .venv/bin/python bench/chaos.py --rounds 20 --write-doc     # the full form
    .venv/bin/python bench/chaos.py --rounds 1 --kinds signaling,sfu,billing --watch 4 --viewers 1

Prints one row per kind and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RtcpRrPacket
from substrateinterface import Keypair

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    RELIABILITY_DOC,
    RELIABILITY_TITLE,
    BenchError,
    all_stat_fields,
    machine_description,
    markdown_table,
    update_doc_section,
    utc_now,
)
from bench.stack import BenchStack  # noqa: E402
from billing.chain import ChainClient, public_key_hex  # noqa: E402
from routing.reaper import REAP_GRACE_S  # noqa: E402
from routing.registry import stream_worker_key, worker_key  # noqa: E402
from sfu.aiortc_hooks import tap_receiver  # noqa: E402
from tests.conftest import ALICE_FUNDS  # noqa: E402
from tests.media_clients import MovingVideo, client_pc  # noqa: E402
from tests.media_samples import mp4  # noqa: E402
from vilokanam.admin import DEV_GRANT, grant_dev_funds  # noqa: E402

KINDS = ("signaling", "sfu", "billing", "media", "postgres", "redis", "chain")
CONTROL = "none"  # the same rounds with nothing killed: the fault-free difference
STALL_S = 2.0  # no media this long: the viewer's player gives up and asks again
FIRST_MEDIA_S = 10.0  # a new connection with no media this long: ask again
OUTAGE_MIN_S = 0.5  # a gap between frames longer than this is an outage
EDGE_S = 2  # seconds billed and counted may differ by per connection (the control row shows it)
RESTART_DELAY_S = (0.5, 3.0)
BACK_S = 90.0  # after a restart: every viewer receiving again within this
BOOKS_S = 90.0  # the books settle (flush, sync, settlement) within this
JOBS_S = 120.0
PLANCK = Decimal(10) ** -12
CREATOR_URI = "//chaos-creator"
STREAMS = 2


# -- clients -------------------------------------------------------------------------------


class Refused(Exception):
    """An offer answered with something else than 201 (or no server answered)."""


@dataclass
class Api:
    """HTTP to whichever signaling server answers first, from a random one."""

    http: aiohttp.ClientSession
    bases: list[str]

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], str]:
        start = random.randrange(len(self.bases))
        for n in range(len(self.bases)):
            base = self.bases[(start + n) % len(self.bases)]
            try:
                async with self.http.request(method, base + path, **kw) as resp:
                    return resp.status, dict(resp.headers), await resp.text()
            except (aiohttp.ClientConnectionError, TimeoutError):
                continue
        raise Refused(f"no signaling server answered {method} {path}")

    async def json(self, method: str, path: str, token: str | None = None,
                   **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, _, text = await self.call(method, path, headers=headers, **kw)
        if status not in (200, 201):
            raise BenchError(f"{method} {path} answered {status}: {text[:200]}")
        return json.loads(text)

    async def offer(self, path: str, pc: RTCPeerConnection, bearer: str) -> str:
        """WHIP/WHEP: POST the offer, apply the answer; the session's URL path."""
        await pc.setLocalDescription(await pc.createOffer())
        status, headers, text = await self.call("POST", path, data=pc.localDescription.sdp,
                                                headers={"Content-Type": "application/sdp",
                                                         "Authorization": f"Bearer {bearer}"})
        if status != 201:
            raise Refused(f"{path} answered {status}: {text[:120]}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        return headers["Location"]

    async def delete(self, location: str) -> None:
        try:
            await self.call("DELETE", location)
        except Refused:
            pass


@dataclass
class Received:
    """What one viewer got: the wall-clock seconds with media, its outages,
    and per connection how long it received media before its first RTCP
    receiver report (a worker bills no viewer that has not reported yet)."""

    seconds: set[int] = field(default_factory=set)
    outages: list[float] = field(default_factory=list)
    unreported: list[float] = field(default_factory=list)  # per connection, s
    connections: int = 0
    last: float | None = None  # time.time() of the last frame
    connected_at: float = 0.0
    first_frame_at: float | None = None  # of the current connection
    first_report_at: float | None = None

    def connected(self) -> None:
        self.connections += 1
        self.connected_at = time.time()
        self.first_frame_at = self.first_report_at = None

    def disconnected(self) -> None:
        if self.first_frame_at is not None:
            reported = self.first_report_at if self.first_report_at is not None else time.time()
            self.unreported.append(max(0.0, reported - self.first_frame_at))

    def on_frame(self, *_: Any) -> None:
        now = time.time()
        if self.last is not None and now - self.last > OUTAGE_MIN_S:
            self.outages.append(now - self.last)
        self.last = now
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.seconds.add(int(now))

    def on_report(self) -> None:
        if self.first_report_at is None:
            self.first_report_at = time.time()

    def stalled(self) -> bool:
        now = time.time()
        if self.last is None or self.last < self.connected_at:
            return now - self.connected_at > FIRST_MEDIA_S
        return now - self.last > STALL_S

    def receiving(self) -> bool:
        return self.last is not None and time.time() - self.last < 1.0

    def allowance(self) -> int:
        """Seconds billed and counted may differ by: each outage (a killed
        worker's last second(s) were counted here, never written there); per
        connection, the time it received media before its first receiver
        report (not billed: docs/metering.md), and its first and last partial
        seconds (the worker's tick clock against this client's seconds; the
        control kind, nothing killed, shows exactly these)."""
        return (sum(math.ceil(gap) for gap in [*self.outages, *self.unreported])
                + EDGE_S * self.connections)


def note_reports(receiver: Any, received: Received) -> None:
    """Tell `received` when the receiver sends its first RTCP receiver report."""
    send = receiver._send_rtcp

    async def sending(packet: Any) -> None:
        if isinstance(packet, RtcpRrPacket) and packet.reports:
            received.on_report()
        await send(packet)

    receiver._send_rtcp = sending


@dataclass
class ChaosViewer:
    api: Api
    stream_id: str
    user_id: str
    token: str
    received: Received = field(default_factory=Received)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pc = client_pc()
            for kind in ("video", "audio"):
                receiver = pc.addTransceiver(kind, direction="recvonly").receiver
                tap_receiver(receiver, self.received.on_frame)
                note_reports(receiver, self.received)
            location = None
            try:
                location = await self.api.offer(f"/whep/{self.stream_id}", pc, self.token)
                self.received.connected()
                while not stop.is_set() and not self.received.stalled() \
                        and pc.connectionState not in ("failed", "closed"):
                    await wait_or(stop, 0.25)
            except Refused:
                await wait_or(stop, 0.5)
            finally:
                if location is not None:
                    self.received.disconnected()
                    await self.api.delete(location)
                await pc.close()


@dataclass
class ChaosPublisher:
    api: Api
    stream_id: str
    stream_key: str
    publishes: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pc = client_pc()
            pc.addTransceiver(MovingVideo(160, 120), direction="sendonly")
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            location = None
            try:
                location = await self.api.offer(f"/whip/{self.stream_id}", pc, self.stream_key)
                self.publishes += 1
                while not stop.is_set() and pc.connectionState not in ("failed", "closed"):
                    await wait_or(stop, 1.0)
                    try:
                        status, _, _ = await self.api.call("GET", location)
                    except Refused:
                        continue
                    if status == 404:  # the session is gone: its worker died
                        break
            except Refused:
                await wait_or(stop, 1.0)
            finally:
                if location is not None and stop.is_set():
                    await self.api.delete(location)
                await pc.close()


async def wait_or(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def eventually(what: str, check: Callable[[], Awaitable[bool]], limit: float,
                     every: float = 0.5) -> bool:
    deadline = time.monotonic() + limit
    while True:
        try:
            if await check():
                return True
        except (OSError, asyncpg.PostgresError, aioredis.RedisError):
            pass  # a store coming back
        if time.monotonic() > deadline:
            print(f"  ! timed out after {limit:.0f} s waiting for {what}", flush=True)
            return False
        await asyncio.sleep(every)


# -- the driver ----------------------------------------------------------------------------


@dataclass
class Target:
    """One thing the driver can kill -9 and start again."""

    name: str
    kill: Callable[[], None]
    start: Callable[[], None]


def targets(stack: BenchStack, kind: str) -> list[Target]:
    if kind == CONTROL:
        def nothing() -> None:
            pass
        return [Target("nothing", nothing, nothing)]
    if kind in ("postgres", "redis", "chain"):
        server: Any = {"postgres": stack.postgres, "redis": stack.redis, "chain": stack.node}[kind]
        return [Target(kind, server.kill, server.start)]
    return [Target(role.name, role.kill, role.start) for role in stack.roles[kind]]


@dataclass
class Result:
    kind: str
    rounds: int
    viewers: int
    billed: int = 0
    counted: int = 0
    lost: int = 0
    doubled: int = 0
    money_planck: Decimal = Decimal(0)
    max_outage: float = 0.0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  ✗ {what}", flush=True)

    def row(self) -> tuple[object, ...]:
        return (self.kind, self.rounds, self.viewers, self.billed, self.counted, self.lost,
                self.doubled, self.money_planck, f"{self.max_outage:.1f}",
                "pass" if not self.failures else "FAIL: " + "; ".join(self.failures))


@dataclass
class Chaos:
    stack: BenchStack
    api: Api
    pg: asyncpg.Pool
    redis: aioredis.Redis
    args: argparse.Namespace
    clip: Path
    creator_token: str = ""
    creator_id: str = ""
    creator_public_key: str = ""
    streams: list[dict[str, Any]] = field(default_factory=list)
    started_pids: set[int] = field(default_factory=set)

    def note_pids(self) -> None:
        self.started_pids.update(p.pid for p in self.stack.processes().values() if p.pid)

    async def setup(self) -> None:
        self.note_pids()
        creator = Keypair.create_from_uri(CREATOR_URI, ss58_format=2)
        self.creator_public_key = public_key_hex(creator.ss58_address)
        self.creator_token = (await self.api.json(
            "POST", "/api/dev/token", json={"account": creator.ss58_address}))["token"]
        for n in range(STREAMS):
            self.streams.append(await self.api.json(
                "POST", "/api/streams", self.creator_token,
                json={"title": f"chaos {n}", "record": False}))
        self.creator_id = await self.user_id(self.creator_token)

    async def audience(self, kind: str) -> list[ChaosViewer]:
        keys = [Keypair.create_from_uri(f"//chaos-{kind}-{n}", ss58_format=2)
                for n in range(self.args.viewers * STREAMS)]
        await grant_dev_funds(self.stack.settings, [k.ss58_address for k in keys])
        viewers = []
        for n, key in enumerate(keys):
            token = (await self.api.json("POST", "/api/dev/token",
                                         json={"account": key.ss58_address}))["token"]
            user_id = await self.user_id(token)
            viewers.append(ChaosViewer(self.api, self.streams[n % STREAMS]["id"], user_id,
                                       token))
        return viewers

    async def user_id(self, token: str) -> str:
        """The users row of a token's account (canonical: the platform's prefix)."""
        account = (await self.api.json("GET", "/api/me", token))["account"]
        found = await self.pg.fetchval("SELECT id::text FROM users WHERE account_id = $1",
                                       account)
        if found is None:
            raise BenchError(f"no users row for {account}")
        return str(found)

    async def upload(self) -> None:
        status, _, text = await self.api.call(
            "POST", "/api/videos", params={"title": "chaos clip"}, data=self.clip.read_bytes(),
            headers={"Authorization": f"Bearer {self.creator_token}",
                     "Content-Type": "video/mp4"})
        if status != 201:
            print(f"  ! upload answered {status}: {text[:120]}", flush=True)

    async def phase(self, kind: str) -> Result:
        print(f"== {kind}: {self.args.rounds} round(s)", flush=True)
        viewers = await self.audience(kind)
        result = Result(kind, self.args.rounds, len(viewers))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(v.run(stop)) for v in viewers]
        try:
            if not await eventually("every viewer receiving", self.all_receiving(viewers),
                                    BACK_S):
                result.fail("viewers never all received media before the first kill")
            for n in range(self.args.rounds):
                await self.round(kind, n, viewers, result)
            await asyncio.sleep(random.uniform(*self.watch()))
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.check(kind, viewers, result)
        return result

    def watch(self) -> tuple[float, float]:
        return (self.args.watch / 2, self.args.watch)

    def all_receiving(self, viewers: list[ChaosViewer]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return all(v.received.receiving() for v in viewers)
        return check

    async def round(self, kind: str, n: int, viewers: list[ChaosViewer], result: Result) -> None:
        if kind == "media":
            await self.upload()
        await asyncio.sleep(random.uniform(*self.watch()))
        target = random.choice(await self.targets(kind))
        await asyncio.to_thread(target.kill)
        killed = time.monotonic()
        await asyncio.sleep(random.uniform(*RESTART_DELAY_S))
        await asyncio.to_thread(target.start)
        self.note_pids()
        print(f"  round {n + 1}: killed {target.name}, back after "
              f"{time.monotonic() - killed:.1f} s", flush=True)
        if not await eventually(f"every viewer receiving after {target.name}'s restart",
                                self.all_receiving(viewers), BACK_S):
            result.fail(f"round {n + 1}: viewers not back after {target.name} restarted")

    async def targets(self, kind: str) -> list[Target]:
        """Every process of the kind; for the SFU, the workers that carry a
        stream (killing an idle one tests nothing of the tick path)."""
        every = targets(self.stack, kind)
        if kind != "sfu":
            return every
        ports = set()
        for stream in self.streams:
            worker = await self.redis.get(stream_worker_key(stream["id"]))
            record = await self.redis.get(worker_key(worker.decode())) if worker else None
            if record is not None:
                ports.add(urlsplit(json.loads(record)["control_url"]).port)
        carrying = [t for t, role in zip(every, self.stack.roles["sfu"], strict=True)
                    if role.port in ports]
        return carrying or every

    # -- the checks ------------------------------------------------------------------------

    async def check(self, kind: str, viewers: list[ChaosViewer], result: Result) -> None:
        users = [v.user_id for v in viewers]
        await self.books_settled(users, result)
        await self.viewer_seconds(viewers, result)
        await self.ticks_add_up(result)
        await self.money(users, result)
        await self.settled_on_chain(result)
        await self.no_orphaned_stream(result)
        self.no_orphan_process(result)
        await self.no_stuck_job(result)

    async def books_settled(self, users: list[str], result: Result) -> None:
        async def settled() -> bool:
            pending = await self.redis.zcard("vk:ticks:pending")
            journal = await self.pg.fetchval("SELECT count(*) FROM tick_journal")
            active = await self.pg.fetchval(
                "SELECT count(*) FROM stream_viewers WHERE viewer_id = ANY($1::uuid[]) "
                "AND is_active", users)
            return bool(pending == 0 and journal == 0 and active == 0)

        if not await eventually("the ticks flushed and synced", settled, BOOKS_S):
            result.fail("ticks still pending, in the journal or sessions active")
        await asyncio.sleep(float(self.stack.settings.flush_interval) * 3)  # a last straggler
        await eventually("the ticks flushed and synced", settled, BOOKS_S)

    async def viewer_seconds(self, viewers: list[ChaosViewer], result: Result) -> None:
        rows = await self.pg.fetch(
            "SELECT viewer_id::text AS viewer, sum(total_ticks)::bigint AS ticks "
            "FROM stream_viewers WHERE viewer_id = ANY($1::uuid[]) GROUP BY viewer_id",
            [v.user_id for v in viewers])
        billed = {r["viewer"]: int(r["ticks"]) for r in rows}
        for n, viewer in enumerate(viewers):
            got = viewer.received
            ticks, counted, allowed = billed.get(viewer.user_id, 0), len(got.seconds), \
                got.allowance()
            result.billed += ticks
            result.counted += counted
            result.max_outage = max([result.max_outage, *got.outages])
            if counted - ticks > allowed:
                result.lost += counted - ticks - allowed
            if ticks - counted > allowed:
                result.doubled += ticks - counted - allowed
            print(f"  viewer {n}: billed {ticks} s, counted {counted} s, allowed ±{allowed} "
                  f"({got.connections} connection(s), outages "
                  f"{', '.join(f'{g:.1f}' for g in got.outages) or 'none'}, before the "
                  f"first report {', '.join(f'{g:.1f}' for g in got.unreported)})", flush=True)
        if result.lost:
            result.fail(f"{result.lost} tick(s) lost beyond the outage")
        if result.doubled:
            result.fail(f"{result.doubled} tick(s) billed beyond what was received")

    async def ticks_add_up(self, result: Result) -> None:
        """Over the whole run: each session's money is its ticks x its price,
        its payment its money; a stream's and a stream session's ticks are
        their viewers' ticks."""
        bad = await self.pg.fetchval(
            """SELECT
                 (SELECT count(*) FROM stream_viewers v
                   LEFT JOIN payments p ON p.reference_id = v.id
                                       AND p.payment_type = 'stream_view'
                   WHERE v.paid_amount <> v.total_ticks * v.price_per_second
                      OR COALESCE(p.amount, 0) <> v.paid_amount)
               + (SELECT count(*) FROM streams s
                   WHERE s.total_ticks <> (SELECT COALESCE(sum(total_ticks), 0)
                                             FROM stream_viewers WHERE stream_id = s.id))
               + (SELECT count(*) FROM stream_sessions ss
                   WHERE ss.total_ticks <> (SELECT COALESCE(sum(total_ticks), 0)
                                              FROM stream_viewers WHERE session_id = ss.id))""")
        if bad:
            result.fail(f"{bad} session/stream row(s) whose ticks and money disagree")

    async def money(self, users: list[str], result: Result) -> None:
        fee = self.stack.settings.platform_fee
        row = await self.pg.fetchrow(
            """SELECT (SELECT COALESCE(sum(amount), 0) FROM payments
                        WHERE payment_type = 'stream_view') AS charges,
                      (SELECT COALESCE(sum(total_earnings), 0) FROM creator_earnings) AS earned""")
        assert row is not None
        charges, earned = Decimal(row["charges"]), Decimal(row["earned"])
        # The creator's share is truncated to 18 decimals per sync: the
        # platform's fee is the rest, to far below a planck.
        off = abs(charges - earned - charges * fee)
        self.add_money(result, off, f"Σ charges {charges} ≠ Σ earnings {earned} + fee")
        for user in users:
            paid = Decimal(await self.pg.fetchval(
                "SELECT COALESCE(sum(paid_amount), 0) FROM stream_viewers "
                "WHERE viewer_id = $1::uuid", user))
            books = Decimal(await self.pg.fetchval(
                "SELECT COALESCE(sum(balance), 0) FROM viewer_balances WHERE user_id = $1::uuid",
                user))
            live_raw = await self.redis.get(f"vk:bal:{user}")
            live = Decimal(int(live_raw)) * PLANCK if live_raw is not None else None
            self.add_money(result, abs(DEV_GRANT - paid - books),
                           f"viewer {user}: grant - charges {DEV_GRANT - paid} ≠ books {books}")
            if live is not None:
                self.add_money(result, abs(books - live),
                               f"viewer {user}: live balance {live} ≠ books {books}")

    def add_money(self, result: Result, off: Decimal, what: str) -> None:
        planck = off / PLANCK
        if planck >= 1:
            result.money_planck += planck.to_integral_value()
            result.fail(what)

    async def settled_on_chain(self, result: Result) -> None:
        """Once every charge is settled, the chain agrees with Postgres."""
        assert self.stack.node is not None

        async def paid_out() -> bool:
            return not await self.pg.fetchval(
                "SELECT EXISTS (SELECT 1 FROM payments WHERE amount > settled_amount) "
                "OR EXISTS (SELECT 1 FROM settlements WHERE status IN ('prepared', 'submitted'))")

        if not await eventually("every charge settled", paid_out, BOOKS_S):
            result.fail("charges left unsettled (or a settlement left open)")
            return
        earned = await self.pg.fetchrow(
            "SELECT total_earnings, pending_payout FROM creator_earnings "
            "WHERE creator_id = $1::uuid", self.creator_id)
        assert earned is not None
        payouts = await self.pg.fetch(
            "SELECT s.block_number, s.block_hash, p.amount_planck FROM settlement_payouts p "
            "JOIN settlements s ON s.id = p.settlement_id "
            "WHERE s.status = 'completed' AND p.creator_id = $1::uuid", self.creator_id)
        all_paid = sum((Decimal(p["amount_planck"]) for p in payouts), Decimal(0))
        self.add_money(result, abs(Decimal(earned["total_earnings"])
                                   - Decimal(earned["pending_payout"]) - all_paid * PLANCK),
                       "earnings ≠ paid out + pending")
        client = ChainClient(self.stack.node.url)
        try:
            on_this_chain = Decimal(0)
            for p in payouts:
                if await asyncio.to_thread(client.block_hash, p["block_number"]) == \
                        p["block_hash"]:
                    on_this_chain += Decimal(p["amount_planck"])
            free = await asyncio.to_thread(client.free_balance, self.creator_public_key)
        finally:
            client.close()
        off = abs(Decimal(free - ALICE_FUNDS) - on_this_chain)
        if off:
            result.money_planck += off
            result.fail(f"creator on chain: +{free - ALICE_FUNDS} planck, "
                        f"payouts on this chain {on_this_chain}")

    async def no_orphaned_stream(self, result: Result) -> None:
        async def none_orphaned() -> bool:
            live = await self.pg.fetch("SELECT id::text FROM streams WHERE status = 'live'")
            for row in live:
                worker = await self.redis.get(stream_worker_key(row["id"]))
                if worker is None or not await self.redis.exists(worker_key(worker.decode())):
                    return False
            return True

        if not await eventually("no stream live without a worker", none_orphaned,
                                REAP_GRACE_S + 30):
            result.fail("a stream is left live without a live worker")

    def no_orphan_process(self, result: Result) -> None:
        running = {p.pid for p in self.stack.processes().values() if p.running and p.pid}
        orphans = []
        for pid, fields in all_stat_fields():
            session = int(fields[3])  # field 6 of proc(5): the session id
            if fields[0] != "Z" and session in self.started_pids and session not in running:
                orphans.append(pid)
        if orphans:
            result.fail(f"orphan process(es) {orphans}")

    async def no_stuck_job(self, result: Result) -> None:
        async def drained() -> bool:
            return not await self.pg.fetchval(
                "SELECT count(*) FROM processing_jobs WHERE status IN ('queued', 'running')")

        if not await eventually("the media job queue drained", drained, JOBS_S):
            result.fail("a media job is stuck")


async def run(args: argparse.Namespace, clip: Path) -> list[Result]:
    creator = Keypair.create_from_uri(CREATOR_URI, ss58_format=2).ss58_address
    env = {"VILOKANAM_ICE_HOST_ADDRESSES": "127.0.0.1", "VILOKANAM_SFU_MAX_CPU": "4",
           "VILOKANAM_SFU_MAX_LOOP_LAG_MS": "2000", "VILOKANAM_SETTLEMENT_PERIOD": "2",
           "VILOKANAM_MEDIA_JOB_LEASE": "5"}
    async with BenchStack("vk-chaos-", signaling=2, sfu=2, billing=True, media=True,
                          chain=True, env=env, funded={creator: ALICE_FUNDS},
                          keep_in=args.keep_logs, overrides={
                              "dev_mode": True, "token_secret": "chaos-" + "x" * 40}) as stack:
        pg = await asyncpg.create_pool(stack.settings.database_url, min_size=0, max_size=4)
        redis = aioredis.Redis.from_url(stack.settings.redis_url)
        results = []
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=20)) as http:
                chaos = Chaos(stack, Api(http, stack.bases()), pg, redis, args, clip)
                await chaos.setup()
                stop = asyncio.Event()
                publishers = [ChaosPublisher(chaos.api, s["id"], s["stream_key"])
                              for s in chaos.streams]
                publishing = [asyncio.create_task(p.run(stop)) for p in publishers]
                try:
                    for kind in args.kinds:
                        results.append(await chaos.phase(kind))
                finally:
                    stop.set()
                    await asyncio.gather(*publishing, return_exceptions=True)
        finally:
            await redis.aclose()
            await pg.close()
    return results


def report(results: list[Result], args: argparse.Namespace) -> tuple[str, bool]:
    ok = all(not r.failures for r in results)
    body = "\n".join([
        f"Measured {utc_now()} on {machine_description()}: 2 signaling, 2 SFU workers, "
        f"billing, media, Postgres, Redis, chopsticks; {STREAMS} streams published over WHIP, "
        f"{args.viewers} WHEP viewers per stream for each kind; {args.rounds} kill -9 + "
        f"restart round(s) per kind, {args.watch / 2:g}-{args.watch:g} s apart. Billed: the "
        "viewers' `stream_viewers` ticks; counted: the wall-clock seconds in which each "
        "viewer received media; lost / doubled: the difference beyond each viewer's "
        "measured outage, its time before its first receiver report and 2 s per "
        "connection (its partial first and last seconds); money: planck off in any of "
        "Σ charges = Σ earnings + fee, grant − charges = balance (books and live), "
        "earnings = paid out + pending, and the creator's balance on chain after a "
        "settlement; max outage: the longest gap without media a viewer saw.",
        "",
        markdown_table(("kind", "rounds", "viewers", "billed s", "counted s", "ticks lost",
                        "ticks doubled", "money difference (planck)", "max outage s",
                        "checks (a)-(f)"), (r.row() for r in results)),
        "",
        f"Verdict: {'nothing lost, doubled or off' if ok else 'FAILED'}.",
        "",
        "    " + " ".join([".venv/bin/python bench/chaos.py", *sys.argv[1:]]),
    ])
    return body, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="kills per kind")
    parser.add_argument("--kinds", default=",".join((CONTROL, *KINDS)),
                        help=f"comma-separated, of {', '.join(KINDS)}; {CONTROL}: the "
                             "control, the same rounds with nothing killed")
    parser.add_argument("--viewers", type=int, default=2, help="viewers per stream")
    parser.add_argument("--watch", type=float, default=10.0,
                        help="seconds of watching before a kill: a random part of this, "
                             "at least half")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--write-doc", action="store_true")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="keep each stack's directory (every role's log) under DIR")
    args = parser.parse_args()
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - {CONTROL, *KINDS}
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="vk-chaos-clip-") as tmp:
        clip = mp4(Path(tmp) / "clip.mp4", seconds=2, width=160, height=120)
        results = asyncio.run(run(args, clip))
    body, ok = report(results, args)
    print(body)
    if args.write_doc:
        update_doc_section(RELIABILITY_DOC, "chaos", body, title=RELIABILITY_TITLE)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
