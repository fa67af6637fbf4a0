"""A FAKE SFU worker for the signaling protocol tests: the worker's control
API (sfu/control.py) with canned answers and no media.

It exists because the protocol tests need a worker that refuses on command
(every refusal code, in any state), answers without a real offer, and records
what signaling sent it — things a real aiortc worker cannot be made to do at
will. It is kept honest by tests/test_worker_contract.py, which runs the same
requests against this fake and the real worker app and requires the same
statuses, error codes and response shapes; the end-to-end and media tests run
the real worker. It registers itself in Redis through the real registry
heartbeat, exactly as a worker does."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from routing.registry import WorkerRegistration

Recorded = tuple[str, str, Any]

# Every refusal the real worker's control API gives, code -> HTTP status. A
# test tells the fake to refuse with one of these (or with a code no worker
# has, to act out a broken worker); the contract test proves the real worker
# answers each of them with this status.
WORKER_REFUSALS: dict[str, int] = {
    "bad_request": 400,
    "bad_sdp": 400,
    "bad_candidate": 400,
    "stream_not_live": 404,
    "unknown_peer": 404,
    "already_live": 409,
    "no_supported_codec": 422,
    "too_many_tracks": 422,
    "at_capacity": 503,
}
FAKE_ANSWER_SDP = "v=0 fake answer"
# The real worker's record lives 3 s past its last beat. On a loaded CI
# machine a 3 s stall of the test process or of Redis expired the fake's
# record between two beats, and a publish got `no_capacity` (CI, stop 11).
# The protocol tests are not about heartbeat expiry (tests/test_placement.py
# and the reaper tests are, with their own short TTLs): a worker leaves
# placement here only when a test deregisters it.
FAKE_HEARTBEAT_TTL_MS = 60_000


class FakeWorker:
    """The fake (see the module's docstring). `refuse_next` makes the next
    POST fail; `while_answering` runs inside a POST before its answer;
    `delete_delay` is a slow worker's DELETE."""

    def __init__(self, redis: aioredis.Redis, worker_id: str | None = None,
                 capacity: int = 10, ttl_ms: int = FAKE_HEARTBEAT_TTL_MS) -> None:
        self.redis = redis
        self.capacity = capacity  # what it registers (the load benchmark wants thousands)
        self.ttl_ms = ttl_ms
        self.requests: list[Recorded] = []
        self.peers: set[str] = set()
        self.refusal: tuple[int, str] | None = None  # the next POST's error answer
        self.while_answering: Callable[[], Awaitable[None]] | None = None
        self.delete_delay = 0.0  # a slow worker: DELETEs take this long
        self.worker_id = worker_id or f"fake-{secrets.token_hex(3)}"
        self.app = web.Application()
        self.app.router.add_post("/control/streams/{stream_id}/publisher", self._publisher)
        self.app.router.add_post("/control/streams/{stream_id}/viewers", self._viewer)
        self.app.router.add_post("/control/peers/{peer_id}/candidates", self._candidate)
        self.app.router.add_delete("/control/peers/{peer_id}", self._delete)
        self._server = TestServer(self.app)
        self._registration: WorkerRegistration | None = None

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def last_peer(self) -> str:
        return [path for method, path, _ in self.requests if method == "ANSWERED"][-1]

    def refuse_next(self, code: str, status: int | None = None) -> None:
        """The next POST answers `code`: with the real worker's status for a
        code it has (a different one is a test error), or `status` for a code
        no real worker gives (a broken worker)."""
        if code in WORKER_REFUSALS:
            assert status in (None, WORKER_REFUSALS[code]), \
                f"the real worker answers {code} with {WORKER_REFUSALS[code]}, not {status}"
            status = WORKER_REFUSALS[code]
        assert status is not None, f"{code} is no worker's code: say which status"
        self.refusal = (status, code)

    async def start(self) -> None:
        await self._server.start_server()
        self._registration = WorkerRegistration(
            self.redis, worker_id=self.worker_id, control_url=self.control_url,
            capacity=self.capacity,
            load_fn=lambda: len(self.peers), streams_fn=lambda: 0, ttl_ms=self.ttl_ms)
        await self._registration.start()

    async def deregister(self) -> None:
        if self._registration is not None:
            await self._registration.stop()
            self._registration = None

    async def stop(self) -> None:
        await self.deregister()
        await self._server.close()

    def requests_to(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r[0] == method]

    async def _record(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        return body

    async def _answer(self, request: web.Request, fields: dict[str, Any]) -> web.Response:
        await self._record(request)
        if self.refusal is not None:
            return self._refuse()
        if self.while_answering is not None:
            await self.while_answering()
        peer_id = f"peer-{secrets.token_hex(4)}"
        self.peers.add(peer_id)
        self.requests.append(("ANSWERED", peer_id, None))
        return web.json_response({"peer_id": peer_id, "sdp": FAKE_ANSWER_SDP, **fields},
                                 status=201)

    async def _publisher(self, request: web.Request) -> web.Response:
        return await self._answer(request, {"session_id": str(uuid.uuid4()), "resumed": False})

    async def _viewer(self, request: web.Request) -> web.Response:
        return await self._answer(request, {"viewer_session_id": str(uuid.uuid4())})

    async def _candidate(self, request: web.Request) -> web.Response:
        await self._record(request)
        if self.refusal is not None:
            return self._refuse()
        return self._peer_status(request.match_info["peer_id"], forget=False)

    def _refuse(self) -> web.Response:
        assert self.refusal is not None
        (status, code), self.refusal = self.refusal, None
        return web.json_response({"error": {"code": code, "message": f"fake {code}"}},
                                 status=status)

    async def _delete(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delete_delay)  # the slow worker a test asked for
        await self._record(request)
        return self._peer_status(request.match_info["peer_id"], forget=True)

    def _peer_status(self, peer_id: str, *, forget: bool) -> web.Response:
        if peer_id not in self.peers:
            return web.json_response({"error": {"code": "unknown_peer", "message": "fake"}},
                                     status=404)
        if forget:
            self.peers.discard(peer_id)
        return web.Response(status=204)
