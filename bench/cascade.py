"""Cascade and overload benchmarks (issue 11 part 4): one stream over several
SFU workers, and one worker pushed past its limit.

    .venv/bin/python -m bench.cascade            # fast form (what this shared machine runs)
    .venv/bin/python -m bench.cascade --viewers 100 --capacity 30 --overload-max 200

*cascade*: `--workers` real `vilokanam sfu` processes, each on its own
address (127.0.0.2, .3, ...) with `--capacity` peer connections; one
publisher replaying a pre-encoded VP8 + Opus loop (bench/sfu_fanout.py's); the
viewers are placed one by one exactly as signaling places them
(`signaling.admission.place_viewer_of` / `start_viewer`: origin, then edges
relaying from it), never decode, and count the frames they assemble; they
live in `--client-procs` child processes (bench/viewer_pool.py), so one
client loop does not starve a hundred of them. Their
frame rate is measured over `--window` s; then one edge serving viewers is
killed with -9, each of its viewers notices its media stop (no frame for
`STALL_S`), asks to be placed again and is timed until its first frame.

*overload*: one worker with the default admission limits (measured load,
sfu/load.py) and `--overload-capacity`; viewers join until the worker has
refused `--refusals` of them (or `--overload-max` joined); the admitted
viewers' frame rate is measured while refused viewers keep knocking, and the
publisher must stay live throughout (the stream never ends).

Each report also says where the CPU went over the measuring window, per
process (each worker, each viewer process, the bench's own process with the
publisher, Redis, Postgres, and the rest of the machine), so it shows which
side saturated; and each worker's own count of its peers (GET /control/stats)
next to where the viewers' clients were answered: a viewer whose connection
the worker closed (ICE consent expired) is gone from the first, not the second.

`--counting raw` is the lean viewer (bench/lean_viewer.py, a load-generator
shortcut): aiortc makes the connection (offer/answer, ICE, DTLS), then each
RTP datagram is counted from its clear header at the socket and dropped
before SRTP; STUN, DTLS and RTCP keep their path and the viewer's receiver
reports (what metering and relay liveness need) are still sent; no NACKs.
`--counting rtp` counts frames from RTP headers after SRTP and skips only
aiortc's jitter buffer and depacketizer (bench/rtp_frames.py).
`--counting assembled` (the default) counts the frames the jitter buffer
assembles. `--pin` puts the workers on CPU 0 and the viewer processes and
the publisher on CPU 1 (other processes of the machine still use both).

Results go to docs/benchmarks.md (sections `cascade`, `overload`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiortc import RTCRtpSender, RTCSessionDescription

from bench.common import (
    BenchError,
    RoleCpu,
    machine_description,
    markdown_table,
    median,
    update_doc_section,
    utc_now,
)
from bench.common import wait_until as wait_sync
from bench.sfu_fanout import (
    CLIENT_CPUS,
    FPS,
    REPO,
    SERVER_CPUS,
    EncodedLoop,
    Lab,
    LoopedTrack,
    Stores,
    _get_ok,
    _insert_stream,
    client_pc,
    encode_audio,
    encode_video_at,
    pin,
    require_running,
    start_stores,
)
from bench.viewer_pool import STALL_S, ViewerPool, Watching, _Viewers
from sfu.aiortc_hooks import restrict_host_candidates
from vilokanam.services.process import ManagedProcess

COUNTING = {"assembled": "frames counted as aiortc's jitter buffer assembles them",
            "rtp": "frames counted from RTP headers (bench/rtp_frames.py, a load-generator "
                   "shortcut: no jitter buffer)",
            "raw": "frames counted from the clear RTP headers at the viewers' sockets "
                   "(bench/lean_viewer.py, a load-generator shortcut: media dropped before "
                   "SRTP, receiver reports kept, no NACKs)"}

PINNED = {True: "workers pinned to CPU 0, viewer processes and publisher to CPU 1",
          False: "not pinned to cores"}


@dataclass
class Worker:
    proc: ManagedProcess
    url: str


@dataclass
class Measured:
    """One measuring window: each viewer's frame rate, where the CPU went
    (role -> % of one core, and the whole machine's), and what each worker's
    control API said it held when the window began (its own count, the
    authority: a client's record of where it joined misses a peer the worker
    closed since)."""

    fps: dict[str, float]
    cpu: dict[str, float]
    machine_cpu: float
    held: dict[str, dict[str, int]]  # worker URL -> /control/stats
    states: dict[str, str]  # viewer -> its client's connection state


def cpu_roles(lab: Lab, pool: ViewerPool, workers: list[Worker],
              origin: str | None) -> dict[str, int | None]:
    """Every process of the run by what it does (each counted with its children)."""
    roles: dict[str, int | None] = {"bench (publisher, placement)": os.getpid()}
    for n, pid in enumerate(pool.pids):
        roles[f"viewer process {n}"] = pid
    for worker in workers:
        role = "origin" if worker.url == origin else "edge"
        roles[f"{worker.proc.name} ({role})"] = worker.proc.pid
    for proc in lab.processes:
        if proc.name in ("redis", "postgres"):
            roles[proc.name] = proc.pid
    return roles


async def worker_stats(http: aiohttp.ClientSession, workers: list[Worker]
                       ) -> dict[str, dict[str, int]]:
    """Each live worker's own count of its peers (GET /control/stats)."""
    held: dict[str, dict[str, int]] = {}
    for worker in workers:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{worker.url}/control/stats",
                                timeout=aiohttp.ClientTimeout(total=5)) as resp:
                held[worker.url] = dict(await resp.json())
    return held


async def measure(http: aiohttp.ClientSession, pool: ViewerPool, window: float,
                  roles: dict[str, int | None], workers: list[Worker]) -> Measured:
    held = await worker_stats(http, workers)
    states = await pool.states()
    start = RoleCpu.take(roles)
    fps = await pool.fps_over(window)
    end = RoleCpu.take(roles)
    return Measured(fps, end.percent_since(start), end.machine_percent_since(start), held,
                    states)


def start_worker(lab: Lab, stores: Stores, n: int, capacity: int, admission: bool,
                 pinned: bool) -> Worker:
    from vilokanam.config import Settings
    from vilokanam.services.net import free_port

    host = f"127.0.0.{n + 2}"
    settings = Settings.from_env(
        {"VILOKANAM_ICE_HOST_ADDRESSES": host}, database_url=stores.database_url,
        redis_url=stores.redis_url, sfu_host=host,
        sfu_port=free_port(host), http_port=free_port(), billing_port=free_port(),
        data_dir=lab.root / "data", sfu_capacity=capacity,
        record_streams=False,
        **({} if admission else {"sfu_max_cpu": 64, "sfu_max_loop_lag_ms": 60_000}))
    env = {"PATH": os.environ.get("PATH", ""), **settings.as_env()}
    proc = lab.start(f"sfu-{n}", [sys.executable, "-m", "vilokanam", "sfu"], env)
    url = settings.sfu_control_url
    wait_sync(f"SFU worker {n} ready", lambda: _get_ok(f"{url}/readyz"), 30,
              require_running(proc))
    if pinned:
        pin(proc.pid, SERVER_CPUS)  # its threads so far; later ones inherit it
    return Worker(proc, url)


def pin_clients(args: argparse.Namespace, pool: ViewerPool) -> None:
    """With `--pin`, the viewer processes and this one (the publisher) on the
    core the workers are not on."""
    if args.pin:
        for pid in (os.getpid(), *pool.pids):
            pin(pid, CLIENT_CPUS)


async def publish(http: aiohttp.ClientSession, redis: aioredis.Redis, media: EncodedLoop,
                  stream: str) -> Any:
    from routing.placement import place_stream

    placement = await place_stream(redis, stream)
    pc = client_pc()
    video = pc.addTransceiver(LoopedTrack("video", media.video, FPS), direction="sendonly")
    video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                               if c.mimeType in ("video/VP8", "video/rtx")])
    pc.addTransceiver(LoopedTrack("audio", media.audio, 50), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    url = f"{placement.worker.control_url}/control/streams/{stream}/publisher"
    async with http.post(url, json={"sdp": pc.localDescription.sdp,
                                    "signaling_url": "http://bench.invalid"}) as resp:
        answer = await resp.json()
        if resp.status != 201:
            raise BenchError(f"publish refused: {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return pc, placement.worker.control_url


async def fresh_heartbeats(redis: aioredis.Redis) -> None:
    """Every worker has reported its load since now (placement reads those)."""
    from routing.placement import live_workers

    since = int(time.time() * 1000)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(w.heartbeat_ms > since for w in await live_workers(redis)):
            return
        await asyncio.sleep(0.05)


async def run_cascade(args: argparse.Namespace, lab: Lab, stores: Stores,
                      media: EncodedLoop) -> dict[str, Any]:
    workers = [start_worker(lab, stores, n, args.capacity, args.admission, args.pin)
               for n in range(args.workers)]
    stream = await _insert_stream(stores.database_url, stores.creator, "bench cascade")
    redis = aioredis.Redis.from_url(stores.redis_url)
    pool = await ViewerPool.start(args.client_procs, stream, stores.redis_url, str(lab.root),
                                  args.counting)
    pin_clients(args, pool)
    async with aiohttp.ClientSession() as http:
        publisher, origin = await publish(http, redis, media, stream)
        roles = cpu_roles(lab, pool, workers, origin)
        on: dict[str, str] = {}
        join_ms = []
        try:
            for user in stores.users[:args.viewers]:
                await fresh_heartbeats(redis)
                joined = await pool.join(user)
                if not joined["ok"]:
                    raise BenchError(f"a viewer could not join within 60 s: {joined['code']}")
                on[user] = joined["worker"]
                join_ms.append(joined["ms"])
            per_worker = {w.url: sum(1 for u in on.values() if u == w.url) for w in workers}
            await asyncio.sleep(args.warmup)
            measured = await measure(http, pool, args.window, roles, workers)
            fps = measured.fps
            print(f"cascade window: min {min(fps.values()):.1f} / median "
                  f"{median(list(fps.values())):.1f} fps over {len(fps)} viewers; "
                  f"CPU {measured.cpu}", file=sys.stderr, flush=True)
            edges = [w for w in workers if w.url != origin and per_worker[w.url]]
            if not edges:
                raise BenchError("no viewer on an edge: raise --viewers or lower --capacity")
            doomed = max(edges, key=lambda w: per_worker[w.url])
            killed_at = time.monotonic()
            doomed.proc.kill()
            played_at, moved_to, refused = await pool.rejoin_stalled(doomed.url)
            on.update(moved_to)
            after = await pool.fps_over(min(args.window, 10))
        finally:
            await pool.close()
            await publisher.close()
    await redis.aclose()
    return {"workers": args.workers, "capacity": args.capacity, "viewers": len(on),
            "per_worker": sorted(per_worker.values(), reverse=True),
            "held": [measured.held.get(w.url, {}) for w in sorted(
                workers, key=lambda w: -per_worker[w.url])],
            "not_connected": sum(1 for s in measured.states.values() if s != "connected"),
            "cpu": measured.cpu, "machine_cpu": measured.machine_cpu,
            "measured_viewers": len(fps), "fps": list(fps.values()),
            "fps_origin": [f for u, f in fps.items() if on.get(u) == origin] or [0.0],
            "join_ms": join_ms, "killed_viewers": len(played_at) + len(refused),
            "replay_s": [t - killed_at for t in played_at.values()],
            "refused_again": sorted(refused.values()),
            "fps_after": list(after.values())}


async def run_overload(args: argparse.Namespace, lab: Lab, stores: Stores,
                       media: EncodedLoop) -> dict[str, Any]:
    worker = start_worker(lab, stores, args.workers, args.overload_capacity, admission=True,
                          pinned=args.pin)
    stream = await _insert_stream(stores.database_url, stores.creator, "bench overload")
    redis = aioredis.Redis.from_url(stores.redis_url)
    pool = await ViewerPool.start(args.client_procs, stream, stores.redis_url, str(lab.root),
                                  args.counting)
    pin_clients(args, pool)
    async with aiohttp.ClientSession() as http:
        # Only this worker: the cascade's are gone (killed or stopped) by now.
        publisher, origin = await publish(http, redis, media, stream)
        roles = cpu_roles(lab, pool, [worker], origin)
        admitted = 0
        refusals: list[str] = []
        first_refusal_at: int | None = None
        try:
            for user in stores.users[:-1]:
                if admitted >= args.overload_max or len(refusals) >= args.refusals:
                    break
                joined = await pool.join(user, retry=False)
                if joined["ok"]:
                    admitted += 1
                    continue
                refusals.append(joined["code"])
                first_refusal_at = first_refusal_at or admitted
                await asyncio.sleep(0.5)
            await asyncio.sleep(args.warmup)
            knocking = asyncio.ensure_future(_knock(http, redis, stream, stores.users[-1],
                                                    args.counting))
            measured = await measure(http, pool, args.window, roles, [worker])
            fps = measured.fps
            knocking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await knocking
            async with http.get(f"{worker.url}/control/streams/{stream}") as resp:
                live = bool((await resp.json())["live"])
        finally:
            await pool.close()
            await publisher.close()
    await redis.aclose()
    return {"capacity": args.overload_capacity, "admitted": admitted,
            "first_refusal_at": first_refusal_at, "refusals": refusals,
            "fps": list(fps.values()), "publisher_live": live,
            "held": [measured.held.get(worker.url, {})],
            "not_connected": sum(1 for s in measured.states.values() if s != "connected"),
            "cpu": measured.cpu, "machine_cpu": measured.machine_cpu,
            "measured_viewers": len(fps)}


async def _knock(http: aiohttp.ClientSession, redis: aioredis.Redis, stream: str,
                 user: str, counting: str) -> None:
    """A refused viewer retrying every second while the others are measured."""
    viewers = _Viewers(stream, redis, http, counting)
    while True:
        joined = await viewers.join_once(user)
        if isinstance(joined, Watching):
            await joined.viewer.pc.close()
        await asyncio.sleep(1.0)


def cpu_text(r: dict[str, Any]) -> list[str]:
    """Where the CPU went over the measuring window, by role, and which side
    saturated: the viewers' clients (and the publisher), the workers, the stores."""
    cpu: dict[str, float] = r["cpu"]
    clients = sum(v for k, v in cpu.items() if k.startswith(("viewer process", "bench")))
    viewer_procs = sum(v for k, v in cpu.items() if k.startswith("viewer process"))
    workers = sum(v for k, v in cpu.items() if k.startswith("sfu-"))
    stores = sum(v for k, v in cpu.items() if k in ("redis", "postgres"))
    ours = clients + workers + stores
    cores = os.cpu_count() or 1
    rows = [[role, f"{percent:.0f}"] for role, percent in cpu.items()]
    per_viewer = viewer_procs / max(1, r["measured_viewers"])
    rows += [["**viewer clients + publisher**", f"**{clients:.0f}**"],
             ["… viewer processes per measured viewer", f"{per_viewer:.2f}"],
             ["**SFU workers**", f"**{workers:.0f}**"], ["**Redis + Postgres**", f"{stores:.0f}"],
             ["**the machine** (all processes)", f"{r['machine_cpu']:.0f} of {100 * cores}"],
             ["other processes (not this run)", f"{max(0.0, r['machine_cpu'] - ours):.0f}"]]
    return ["", "CPU over the measuring window (% of one core; each process with its children):",
            "", markdown_table(["process", "% of a core"], rows)]


def refused_text(codes: list[str]) -> str:
    """How many were refused, and with what (`3 (no_capacity)`)."""
    return f"{len(codes)} ({', '.join(sorted(set(codes)))})" if codes else "0"


def held_text(r: dict[str, Any]) -> str:
    """The workers' own count of what they hold (GET /control/stats)."""
    held = r["held"]
    return " / ".join(f"{h.get('viewers', '?')}+{h.get('relays', '?')}" for h in held)


def cascade_text(args: argparse.Namespace, r: dict[str, Any]) -> str:
    fps, after, replay = r["fps"], r["fps_after"], r["replay_s"]
    rows = [[r["workers"], r["capacity"], r["viewers"], " / ".join(map(str, r["per_worker"])),
             held_text(r), r["not_connected"], f"{min(fps):.1f}", f"{median(fps):.1f}",
             f"{min(r['fps_origin']):.1f}",
             sum(1 for f in fps if f < 29), f"{median(r['join_ms']):.0f}",
             r["killed_viewers"], len(replay), refused_text(r["refused_again"]),
             f"{median(replay):.1f}" if replay else "—", f"{max(replay):.1f}" if replay else "—",
             f"{min(after):.1f}" if after else "—"]]
    return "\n".join([
        f"### Cascade: one stream over {r['workers']} workers ({utc_now()})",
        "",
        f"Command: `.venv/bin/python -m bench.cascade {' '.join(args.argv)}`".rstrip() + ". "
        f"{machine_description()}. Admission limits "
        f"{'kept' if args.admission else 'lifted (cost runs)'}; video "
        f"{args.bitrate / 1e6:g} Mbit/s; viewers in {args.client_procs} processes, "
        f"{COUNTING[args.counting]}; {PINNED[args.pin]}.",
        "",
        markdown_table(["workers", "capacity", "viewers", "viewers per worker (joined)",
                        "viewers+relays per worker (its own count)", "viewers not connected",
                        "min fps", "median fps", "min fps on the origin", "viewers < 29 fps",
                        "join p50 ms", "viewers of the killed edge", "… playing again",
                        "… not placed again", "play again p50 s", "play again max s",
                        "min fps after"], rows),
        "",
        "*joined*: where each viewer's client was answered; *its own count*: "
        "the worker's GET /control/stats as the window began (viewers + relays fed "
        "or feeding). "
        "fps: video frames each viewer received per second over the window (30 sent). "
        "*play again*: from the edge's kill -9 to the first frame on the new connection, "
        f"the player reconnecting after {STALL_S:g} s without a frame; the first tries meet "
        "the dead edge's record (3 s TTL) or a full cluster until the edge that fed the "
        "dead one drops that relay (no receiver report for 5 s) and has room again. "
        "*not placed again*: refused for a minute (with its codes), e.g. `no_capacity` when "
        "the workers left have no room for the killed edge's viewers "
        "(`--workers` × `--capacity` peers less one worker's).",
        *cpu_text(r),
    ])


def overload_text(args: argparse.Namespace, r: dict[str, Any]) -> str:
    fps = r["fps"]
    codes = sorted(set(r["refusals"]))
    rows = [[r["capacity"], r["admitted"], held_text(r), r["not_connected"],
             r["first_refusal_at"] if r["first_refusal_at"]
             is not None else "none", len(r["refusals"]), ", ".join(codes) or "—",
             f"{min(fps):.1f}" if fps else "—", f"{median(fps):.1f}" if fps else "—",
             sum(1 for f in fps if f < 29), "yes" if r["publisher_live"] else "**no**"]]
    return "\n".join([
        f"### Overload: one worker past its measured limit ({utc_now()})",
        "",
        f"Command: `.venv/bin/python -m bench.cascade {' '.join(args.argv)}`".rstrip() + ". "
        f"{machine_description()}. Default admission limits (VILOKANAM_SFU_MAX_CPU 0.85, "
        f"VILOKANAM_SFU_MAX_LOOP_LAG_MS 100); viewers in {args.client_procs} processes, "
        f"{COUNTING[args.counting]}; {PINNED[args.pin]}.",
        "",
        markdown_table(["capacity", "admitted", "viewers+relays (its own count)",
                        "viewers not connected", "first refused after", "refusals",
                        "refused with", "min fps", "median fps", "viewers < 29 fps",
                        "publisher live at the end"], rows),
        "",
        "Viewers join one at a time until the worker has refused "
        f"{args.refusals} (each refusal is `at_capacity`, ws `no_capacity`, WHEP 503); "
        "the admitted ones are measured while a refused viewer keeps retrying every second.",
        *cpu_text(r),
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=4,
                        help="peer connections per worker in the cascade (fast form: 4)")
    parser.add_argument("--viewers", type=int, default=8, help="cascade viewers (fast: 8)")
    parser.add_argument("--overload-capacity", type=int, default=150)
    parser.add_argument("--overload-max", type=int, default=40,
                        help="stop adding overload viewers here even if none was refused")
    parser.add_argument("--refusals", type=int, default=3)
    parser.add_argument("--admission", action="store_true",
                        help="keep the load limits in the cascade too (default: lifted)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--bitrate", type=int, default=2_000_000)
    parser.add_argument("--client-procs", type=int, default=2,
                        help="processes the viewers are spread over (bench/viewer_pool.py)")
    parser.add_argument("--counting", choices=tuple(COUNTING), default="assembled",
                        help="how viewers count frames: aiortc's jitter buffer, RTP headers "
                             "(bench/rtp_frames.py), or clear RTP headers at the socket "
                             "(bench/lean_viewer.py); the last two are load-generator "
                             "shortcuts")
    parser.add_argument("--pin", action="store_true",
                        help="workers on CPU 0, viewer processes and the publisher on CPU 1 "
                             "(sched_setaffinity, as bench/sfu_fanout.py)")
    parser.add_argument("--skip", choices=("cascade", "overload"), action="append", default=[])
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    args.argv = argv
    args.viewers_list = []
    return args


async def main_async(args: argparse.Namespace, lab: Lab, stores: Stores,
                     media: EncodedLoop) -> list[tuple[str, str]]:
    sections = []
    if "cascade" not in args.skip:
        sections.append(("cascade", cascade_text(args, await run_cascade(args, lab, stores,
                                                                          media))))
        print(sections[-1][1], flush=True)
        lab.stop([p for p in lab.processes if p.name.startswith("sfu-")])
    if "overload" not in args.skip:
        sections.append(("overload", overload_text(args, await run_overload(args, lab, stores,
                                                                             media))))
        print(sections[-1][1], flush=True)
    return sections


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # The clients on loopback, as the workers (127.0.0.2, ...): aioice leaves
    # loopback out by itself.
    restrict_host_candidates(["127.0.0.1"])
    root = Path(tempfile.mkdtemp(prefix="vk-bench-cascade-"))
    lab = Lab(root, argparse.Namespace(viewers=[], warmup=0, window=0))
    try:
        media = EncodedLoop(encode_video_at(args.bitrate, 2 * FPS), encode_audio())
        stores = start_stores(lab, max(args.viewers, args.overload_max) + args.refusals + 2)
        sections = asyncio.run(main_async(args, lab, stores, media))
    finally:
        lab.close()
    if not args.no_doc:
        for name, text in sections:
            update_doc_section(args.doc, name, text)
        print(f"written to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
