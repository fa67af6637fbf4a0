"""Viewers held in child processes, so the clients are not the bottleneck.

One Python process cannot receive (SRTP, jitter buffer) for a hundred
viewers and still measure them fairly: the first cascade runs' 3–11 fps were
the client loop starving, not the workers. A `ViewerPool` spreads viewers
over `procs` children; each child places and connects its viewers exactly as
signaling does (`signaling.admission.place_viewer_of` / `start_viewer`),
never decodes, and counts the frames it assembles (bench/sfu_fanout.py's
`TappedViewer`), or with `counting="rtp"` counts them from RTP headers and
skips aiortc's jitter buffer (bench/rtp_frames.py, a load-generator
shortcut: the viewers' receiver reports and NACKs are kept), or with
`counting="raw"` reads the clear RTP headers at the socket and drops the
media there, before SRTP (bench/lean_viewer.py: receiver reports kept, no
NACKs). The parent
drives them one command at a time, one JSON line each way over the child's
stdin/stdout:

    {"op": "join", "user": U, "retry": true}   -> {"ok": true, "worker": URL, "ms": M}
                                                  or {"ok": false, "code": C}
    {"op": "frames"}                            -> {"at": T, "frames": {U: N, ...},
                                                    "states": {U: connectionState, ...}}
    {"op": "rejoin_stalled", "worker": URL}     -> {"at": {U: T, ...}, "worker": {U: URL},
                                                    "refused": {U: C, ...}}
    {"op": "close"}                             -> {"ok": true}

T are `time.monotonic()` readings: CLOCK_MONOTONIC is one clock for every
process of the machine, so the parent compares them with its own.

    python -m bench.viewer_pool STREAM REDIS_URL [COUNTING]   # a child (the pool starts it)"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import BenchError

STALL_S = 1.0  # a player that got no frame for this long reconnects
REJOIN_TIMEOUT = 60.0
FIRST_FRAME_S = 15.0


# -- the parent's side ---------------------------------------------------------------------

@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: list[str] = field(default_factory=list)

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self.lock:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise BenchError(f"viewer process {self.proc.pid} died (exit {self.proc.returncode})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"viewer process {self.proc.pid}: {reply['error']}")
        return reply


@dataclass
class ViewerPool:
    """`procs` child processes; viewers are dealt to them in turn."""

    children: list[_Child]
    _turn: itertools.cycle = field(init=False)  # type: ignore[type-arg]
    _of: dict[str, _Child] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(self.children)

    @classmethod
    async def start(cls, procs: int, stream: str, redis_url: str, log_dir: str,
                    counting: str = "assembled") -> ViewerPool:
        children = []
        for n in range(procs):
            log = os.open(os.path.join(log_dir, f"viewers-{n}.log"),
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.viewer_pool", stream, redis_url, counting,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
            finally:
                os.close(log)
            children.append(_Child(proc))
        return cls(children)

    async def join(self, user: str, retry: bool = True) -> dict[str, Any]:
        child = next(self._turn)
        reply = await child.call({"op": "join", "user": user, "retry": retry})
        if reply["ok"]:
            child.users.append(user)
            self._of[user] = child
        return reply

    @property
    def pids(self) -> list[int]:
        return [child.proc.pid for child in self.children]

    async def frames(self) -> dict[str, tuple[float, int]]:
        replies = await asyncio.gather(*(c.call({"op": "frames"}) for c in self.children))
        return {user: (r["at"], n) for r in replies for user, n in r["frames"].items()}

    async def states(self) -> dict[str, str]:
        """Each viewer's peer-connection state, as its client sees it."""
        replies = await asyncio.gather(*(c.call({"op": "frames"}) for c in self.children))
        return {user: state for r in replies for user, state in r["states"].items()}

    async def fps_over(self, window: float) -> dict[str, float]:
        before = await self.frames()
        await asyncio.sleep(window)
        after = await self.frames()
        return {u: (after[u][1] - n) / (after[u][0] - at) for u, (at, n) in before.items()
                if u in after}

    async def rejoin_stalled(self, worker_url: str
                             ) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
        """Every viewer on `worker_url` waits for its media to stop, joins again;
        the monotonic time of each one's first frame after, its new worker, and
        the refusal of each one the cluster could not take again."""
        replies = await asyncio.gather(*(c.call({"op": "rejoin_stalled", "worker": worker_url})
                                         for c in self.children))
        return ({u: t for r in replies for u, t in r["at"].items()},
                {u: w for r in replies for u, w in r["worker"].items()},
                {u: c for r in replies for u, c in r["refused"].items()})

    async def close(self) -> None:
        for child in self.children:
            if child.proc.returncode is None:
                try:
                    await asyncio.wait_for(child.call({"op": "close"}), 30)
                except (BenchError, TimeoutError, ConnectionError):
                    child.proc.kill()
                await child.proc.wait()


# -- the child's side ----------------------------------------------------------------------

@dataclass
class Watching:
    viewer: Any  # bench.sfu_fanout.TappedViewer
    worker_url: str

    @property
    def frames(self) -> int:
        count: int = self.viewer.counters["video"].frames
        return count


@dataclass
class _Viewers:
    stream: str
    redis: Any
    http: Any
    counting: str = "assembled"  # or "rtp" (bench/rtp_frames.py), "raw" (bench/lean_viewer.py)
    watching: dict[str, Watching] = field(default_factory=dict)

    async def join_once(self, user: str) -> Watching | str:
        """One placement and offer, as signaling makes them; the refusal's code
        when the cluster says no."""
        from aiortc import RTCSessionDescription

        from bench.sfu_fanout import TappedViewer
        from signaling.admission import place_viewer_of, start_viewer
        from signaling.protocol import ProtocolError
        from signaling.sfu_client import SfuClient

        viewer = TappedViewer(counting=self.counting)
        try:
            placement = await place_viewer_of(self.redis, self.stream)
            await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
            viewer.offered()
            viewer.enlarge_receive_buffers()  # a stall of the shared cores drops nothing here
            answer = await start_viewer(SfuClient(self.http), self.redis, placement, self.stream,
                                        sdp=viewer.pc.localDescription.sdp, viewer_user_id=user)
        except ProtocolError as exc:
            await viewer.pc.close()
            return exc.code.value
        await viewer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        watching = Watching(viewer, answer.peer.control_url)
        if await frames_within(watching, 1, FIRST_FRAME_S):
            return watching
        await viewer.pc.close()
        return "no_frames"

    async def join(self, user: str, retry: bool) -> dict[str, Any]:
        """Join (retrying after a refusal as the web app does, when `retry`)."""
        started = time.monotonic()
        deadline = started + REJOIN_TIMEOUT
        refused: set[str] = set()
        while True:
            joined = await self.join_once(user)
            if isinstance(joined, Watching):
                self.watching[user] = joined
                return {"ok": True, "worker": joined.worker_url,
                        "ms": (time.monotonic() - started) * 1000}
            refused.add(joined)
            if not retry or time.monotonic() > deadline:
                return {"ok": False, "code": ",".join(sorted(refused))}
            await asyncio.sleep(0.3)

    async def rejoin_after_stall(self, user: str) -> float | str:
        """When its first frame came on the new connection, or why the cluster
        could not take it again within REJOIN_TIMEOUT (e.g. `no_capacity`: the
        workers left are full)."""
        watching = self.watching[user]
        last, last_at = watching.frames, time.monotonic()
        while time.monotonic() - last_at < STALL_S:
            await asyncio.sleep(0.05)
            if watching.frames != last:
                last, last_at = watching.frames, time.monotonic()
        await watching.viewer.pc.close()
        del self.watching[user]
        reply = await self.join(user, retry=True)
        if not reply["ok"]:
            return str(reply["code"])
        return time.monotonic()

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        if op == "join":
            return await self.join(message["user"], message["retry"])
        if op == "frames":
            return {"at": time.monotonic(),
                    "frames": {u: w.frames for u, w in self.watching.items()},
                    "states": {u: w.viewer.pc.connectionState
                               for u, w in self.watching.items()}}
        if op == "rejoin_stalled":
            users = [u for u, w in self.watching.items() if w.worker_url == message["worker"]]
            outcome = dict(zip(users, await asyncio.gather(
                *(self.rejoin_after_stall(u) for u in users)), strict=True))
            return {"at": {u: t for u, t in outcome.items() if isinstance(t, float)},
                    "refused": {u: t for u, t in outcome.items() if isinstance(t, str)},
                    "worker": {u: self.watching[u].worker_url for u in users
                               if u in self.watching}}
        if op == "close":
            for w in self.watching.values():
                await w.viewer.pc.close()
            return {"ok": True}
        raise BenchError(f"unknown op {op!r}")


async def frames_within(watching: Watching, count: int, within: float) -> bool:
    deadline = time.monotonic() + within
    start = watching.frames
    while watching.frames < start + count:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _serve(stream: str, redis_url: str, counting: str) -> None:
    import aiohttp
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    redis = aioredis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        viewers = _Viewers(stream, redis, http, counting)
        while line := await reader.readline():
            message = json.loads(line)
            try:
                reply = await viewers.handle(message)
            except BenchError as exc:  # the parent raises it; this process stays to close
                reply = {"error": str(exc)}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
            if message["op"] == "close":
                break
    await redis.aclose()


def main(argv: list[str]) -> int:
    import logging

    from sfu.aiortc_hooks import restrict_host_candidates

    # aioice says when a connection's consent expires, on this side (the log
    # file the pool gives this process): which end gave up is then readable.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aioice.ice").setLevel(logging.INFO)

    restrict_host_candidates(["127.0.0.1"])  # as the workers' clients: loopback only
    asyncio.run(_serve(argv[0], argv[1], argv[2] if len(argv) > 2 else "assembled"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
