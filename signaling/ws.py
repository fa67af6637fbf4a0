"""`GET /ws`: the websocket protocol (docs/protocol.md) for publishers and
viewers. One `Connection` per websocket: it reads client messages one at a
time (so a client's candidates reach the worker after its offer), checks
credentials, places the stream, asks the worker for an answer, and relays the
worker's events for its stream and peer. Everything it sends goes through its
`Outbox`, in order."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from prometheus_client import Gauge

from routing.channels import peer_channel, stream_channel
from signaling import protocol
from signaling.admission import (
    check_stream_key,
    ensure_not_suspended,
    ensure_viewer_can_pay,
    place_publisher,
    place_viewer_of,
    start_publisher,
    start_viewer,
    verify_viewer_token,
)
from signaling.community.chat_events import CHAT_EVENTS
from signaling.community.ws_member import WsMember
from signaling.delivery_receipts import (
    Delegation,
    SignedViewing,
    accept_receipt,
    check_delegation,
    parse_delegation,
    parse_receipt,
    receipts_stopped,
    record_delegation,
)
from signaling.errors import ApiError
from signaling.events import EVENTS
from signaling.protocol import (
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    Auth,
    Candidate,
    ChatJoin,
    ChatLeave,
    ChatSend,
    ErrorCode,
    Leave,
    Message,
    ProtocolError,
    Publish,
    ReceiptMessage,
    State,
    Watch,
)
from signaling.sfu_client import SFU_CLIENT, PeerGone, PeerRef, SfuError
from signaling.state import SETTINGS
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event, ms_since

log = logging.getLogger(__name__)

WS_CONNECTIONS = Gauge("vilokanam_ws_connections", "Open websocket connections")

HEARTBEAT_S = 30.0  # aiohttp pings; a client that stops answering is closed
OUTBOX_LIMIT = 256  # messages queued for a client that does not read
HELD_LIMIT = 32  # events held while the worker has not answered yet
ENDING_GRACE_S = 5.0  # at cleanup, for sessions still ending on their worker
FAREWELL_S = 1.0  # a suspended client's last messages get this long to leave

T = TypeVar("T")


class Outbox:
    """Messages to one client, sent in order by one task it owns: an event
    never waits on another client's socket and never overtakes the answer
    queued before it. A client that lets `OUTBOX_LIMIT` messages pile up is
    not reading: `on_overflow` is called once and the rest is dropped."""

    def __init__(self, ws: web.WebSocketResponse, on_overflow: Callable[[], None],
                 name: str) -> None:
        self._ws = ws
        self._on_overflow = on_overflow
        self._overflowed = False
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._task = asyncio.create_task(self._drain(), name=name)

    def put(self, message: Message) -> None:
        if self._overflowed:
            return
        if self._queue.qsize() >= OUTBOX_LIMIT:
            self._overflowed = True
            self._on_overflow()
            return
        self._queue.put_nowait(message)

    async def drained(self) -> None:
        """Every queued message has been written (or the socket failed)."""
        await self._queue.join()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _drain(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._ws.send_json(message)
            except ConnectionError:
                self._forget_queue()
                return  # the socket is closing; the reader loop ends the connection
            finally:
                self._queue.task_done()

    def _forget_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()


@dataclass
class MediaCall:
    """A publish or watch over this websocket: pending until the worker answers,
    then live. (Not a viewing session — that is the `stream_viewers` row — nor a
    `stream_sessions` row: see "Words" in docs/architecture.md.)"""

    state: State
    stream_id: str
    peer: PeerRef | None = None
    stream_session_id: str | None = None  # publisher: the stream_sessions id
    held: list[dict[str, Any]] = field(default_factory=list)
    signed: SignedViewing | None = None  # a viewer who signs delivery receipts


class Connection:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        app = request.app
        self._request = request
        self._ws = ws
        self._settings = app[SETTINGS]
        self._backends = app[BACKENDS]
        self._sfu = app[SFU_CLIENT]
        self._events = app[EVENTS]
        self._connections = app[CONNECTIONS]
        self._remote = request.remote or "unknown"
        self._id = secrets.token_hex(4)
        self._call: MediaCall | None = None
        self._outbox = Outbox(ws, self._on_overflow, name=f"ws-outbox-{self._id}")
        self._member = WsMember(app, self.send, self._on_suspended)

    @property
    def state(self) -> State:
        call = self._call
        return call.state if call is not None and call.peer is not None else State.IDLE

    def send(self, message: Message) -> None:
        self._outbox.put(message)

    async def run(self) -> None:
        self.send(protocol.hello())
        try:
            async for frame in self._ws:
                await self._on_frame(frame)
        finally:
            # A websocket that closes ends its call, like leave. aiohttp
            # cancels handlers at shutdown, so the ending (a DELETE to the
            # worker) runs in a task the app owns and waits for at cleanup.
            await asyncio.shield(self._connections.run_ending(self._end(),
                                                              name=f"ws-end-{self._id}"))

    async def _end(self) -> None:
        # No `leave` came: the client's connection is gone, not its intent. A
        # publisher gets the worker's reconnect grace (it may come back within
        # 10 s and resume); a viewer simply leaves.
        self._member.close()
        await self._hang_up(self._detach(), lost=True)
        await self._outbox.close()

    # --- client messages -------------------------------------------------------

    async def _on_frame(self, frame: WSMessage) -> None:
        try:
            if frame.type is WSMsgType.TEXT:
                await self._on_text(frame.data)
            elif frame.type is WSMsgType.BINARY:
                raise ProtocolError(ErrorCode.BAD_REQUEST,
                                    "binary frames are not part of the protocol: send JSON text")
            elif frame.type is WSMsgType.ERROR:
                log_event(log, "ws.frame_error", logging.WARNING, **self._ids(),
                          error=repr(self._ws.exception()))
        except ProtocolError as err:
            self.send(protocol.error(err.code, err.message))
        except ApiError as err:  # a refusal shared with the REST API (chat)
            self.send(protocol.refusal(err.code, err.message, err.headers.get("Retry-After")))
        except Exception as exc:  # no exception may close the connection
            log_event(log, "ws.internal_error", logging.ERROR, **self._ids(), error=repr(exc),
                      traceback=traceback.format_exc())
            self.send(protocol.error(ErrorCode.INTERNAL_ERROR,
                                     "internal error; the request was not carried out"))

    async def _on_text(self, text: str) -> None:
        if len(text.encode()) > MAX_MESSAGE_BYTES:
            raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                                f"a message may be at most {MAX_MESSAGE_BYTES} bytes")
        match protocol.parse_message(text):
            case Publish() as message:
                await self._publish(message)
            case Watch() as message:
                await self._watch(message)
            case Candidate() as message:
                await self._candidate(message)
            case Leave():
                await self._leave()
            case Auth() | ChatJoin() | ChatLeave() | ChatSend() as message:
                await self._member.handle(message)
            case ReceiptMessage() as message:
                await self._receipt(message)

    async def _publish(self, message: Publish) -> None:
        self._require_idle("publish")
        redis = self._backends.redis
        creator_id = await check_stream_key(self._backends, self._remote, message.stream_id,
                                            message.stream_key)
        self._member.identify(creator_id)  # a suspension of the creator reaches this socket
        placement = await place_publisher(redis, message.stream_id)
        call = self._begin(State.PUBLISHING, message.stream_id)
        answer = await self._answered(call, start_publisher(
            self._sfu, redis, placement, message.stream_id, sdp=message.sdp,
            signaling_url=self._settings.base_url))
        call.stream_session_id = answer.session_id
        self._established(call, answer.peer,
                          protocol.publish_answer(answer.sdp, answer.session_id, answer.resumed))

    async def _watch(self, message: Watch) -> None:
        self._require_idle("watch")
        # The join's first steps, timed (docs/benchmarks.md, join time through an edge).
        received = time.monotonic()
        log_event(log, "ws.watch_received", **self._ids(), stream_id=message.stream_id)
        claims = verify_viewer_token(self._settings, message.token)
        delegation = parse_delegation(message.delegation)
        # The checks read apart (Postgres, Redis): at once, each on its own
        # connection; a refusal is the first in this order, as when in series.
        _, _, delegated = await first_refusal(
            ensure_not_suspended(self._backends, claims.user_id),
            ensure_viewer_can_pay(self._request.app, claims, message.stream_id),
            self._check_delegation(claims.account, message.stream_id, delegation))
        self._member.identify(claims.user_id)
        redis = self._backends.redis
        placement = await place_viewer_of(redis, message.stream_id)
        log_event(log, "ws.watch_placed", **self._ids(), stream_id=message.stream_id,
                  worker_id=placement.worker.worker_id, new_edge=placement.new_edge,
                  relay_from=placement.relay_from.worker_id if placement.relay_from else None,
                  ms=ms_since(received))
        call = self._begin(State.WATCHING, message.stream_id)
        answer = await self._answered(call, start_viewer(
            self._sfu, redis, placement, message.stream_id, sdp=message.sdp,
            viewer_user_id=claims.user_id))
        if delegation is not None and delegated is not None:
            call.signed = await record_delegation(
                self._backends.pg, answer.viewer_session_id, delegation, delegated)
        self._established(call, answer.peer,
                          protocol.watch_answer(answer.sdp, answer.viewer_session_id),
                          since=received)

    async def _check_delegation(self, account: str, stream_id: str,
                                delegation: Delegation | None) -> str | None:
        """The signed delegation's text; a stream that requires signed
        receipts refuses a viewer without one."""
        row = await self._backends.pg.fetchrow(
            "SELECT price_per_second, require_signed_receipts FROM streams WHERE id = $1::uuid",
            stream_id)
        if row is None:
            raise ProtocolError(ErrorCode.STREAM_NOT_FOUND, "no such stream")
        if delegation is None:
            if row["require_signed_receipts"]:
                raise ProtocolError(ErrorCode.RECEIPTS_REQUIRED,
                                    "this stream is watched only with signed receipts: send a "
                                    "delegation with watch")
            return None
        return await check_delegation(delegation, account, stream_id,
                                      Decimal(row["price_per_second"]),
                                      self._settings.ss58_prefix)

    async def _receipt(self, message: ReceiptMessage) -> None:
        receipt = parse_receipt(message.data)
        call = self._call
        signed = call.signed if call is not None and call.peer is not None else None
        seconds = await accept_receipt(self._backends.pg, signed, receipt)
        self.send(protocol.receipt_accepted(receipt.viewer_session_id, seconds))

    async def _candidate(self, message: Candidate) -> None:
        call = self._call
        if call is None or call.peer is None:  # idle
            raise ProtocolError(ErrorCode.WRONG_STATE,
                                "candidate is allowed only while publishing or watching")
        try:
            await self._sfu.add_candidate(call.peer, message.candidate)
        except PeerGone:
            pass  # the worker closed the peer; its peer_closed event tells the client

    async def _leave(self) -> None:
        # Idempotent: a leave that crosses the server's stream_ended is no error.
        await self._hang_up(self._detach())
        self.send(protocol.left())

    # --- checks -------------------------------------------------------------------

    def _require_idle(self, action: str) -> None:
        if self.state is not State.IDLE:
            raise ProtocolError(ErrorCode.WRONG_STATE,
                                f"cannot {action} while {self.state}: send leave first")

    # --- the call ---------------------------------------------------------------

    def _begin(self, state: State, stream_id: str) -> MediaCall:
        """Listen to the stream's events before the worker is asked, so the
        ones it publishes while answering (this viewer's count) are not lost."""
        call = MediaCall(state, stream_id)
        self._call = call
        self._events.add(stream_channel(stream_id), self)
        return call

    async def _answered(self, call: MediaCall, answer: Awaitable[T]) -> T:
        try:
            return await answer
        except BaseException:
            self._detach()  # the call never started
            raise

    def _established(self, call: MediaCall, peer: PeerRef, answer: Message,
                     since: float | None = None) -> None:
        call.peer = peer
        self._events.add(peer_channel(peer.peer_id), self)
        self.send(answer)
        timing = {} if since is None else {"ms": ms_since(since)}  # since the request
        log_event(log, "ws.session_started", **self._ids(), **timing)
        held, call.held = call.held, []
        for event in held:
            self._apply(call, event)

    def _detach(self) -> MediaCall | None:
        """End the call here at once, so no later event of it reaches the client."""
        call, self._call = self._call, None
        if call is not None:
            self._events.remove(stream_channel(call.stream_id), self)
            if call.peer is not None:
                self._events.remove(peer_channel(call.peer.peer_id), self)
        return call

    async def _hang_up(self, call: MediaCall | None, lost: bool = False) -> None:
        """Close the call's peer on the worker: a publisher's stream ends at
        once, or after the reconnect grace when the connection was `lost`."""
        if call is None or call.peer is None:
            return
        try:
            await self._sfu.close_peer(call.peer, lost=lost)
        except PeerGone:
            pass  # already closed by the worker
        except SfuError as err:
            # The worker's ICE timeout closes it; nothing more we can do.
            log_event(log, "ws.hang_up_failed", logging.WARNING, **self._ids(call),
                      error=err.message)
        log_event(log, "ws.session_ended", **self._ids(call))

    # --- worker events (called by the EventHub) ------------------------------------------

    def on_event(self, channel: str, event: dict[str, Any]) -> None:
        call = self._call
        if call is None:
            return
        if event.get("type") in CHAT_EVENTS:
            # Everyone publishing or watching hears the stream's chat; once
            # in that chat (chat_join) the member relays it, not us (no twice).
            if call.peer is not None and self._member.chat_stream != call.stream_id:
                self._member.relay(event)
            return
        if call.peer is None:
            if len(call.held) < HELD_LIMIT:
                call.held.append(event)
            return
        self._apply(call, event)

    def _apply(self, call: MediaCall, event: dict[str, Any]) -> None:
        match event.get("type"):
            case "viewer_count":
                count = event.get("count")
                if isinstance(count, int) and not isinstance(count, bool):
                    self.send(protocol.viewer_count(count))
            case "stream_started":
                self.send(protocol.stream_started())
            case "tick" if isinstance(event.get("seconds"), int):
                self.send(protocol.tick(event["seconds"], str(event.get("cost", "0"))))
                if call.signed is not None:
                    call.signed.metered_seconds = event["seconds"]
                    if receipts_stopped(call.signed):
                        self._cut_off(call)
            case "stream_ended" if not self._is_stale(call, event):
                self._detach()
                self.send(protocol.stream_ended())
            case "peer_closed" if call.peer and event.get("peer_id") == call.peer.peer_id:
                self._detach()
                self.send(protocol.peer_closed(str(event.get("reason"))))
                log_event(log, "ws.peer_closed", **self._ids(call), reason=event.get("reason"))

    def _cut_off(self, call: MediaCall) -> None:
        """A signed viewer whose receipts stopped: billing stops at the signed
        seconds + grace anyway; the media stops now too."""
        assert call.signed is not None
        log_event(log, "ws.receipts_stopped", logging.WARNING, **self._ids(call),
                  signed_seconds=call.signed.signed_seconds,
                  metered_seconds=call.signed.metered_seconds)
        self.send(protocol.error(ErrorCode.RECEIPTS_STOPPED,
                                 "no signed receipt covers the seconds watched: cut off"))
        self._connections.run_ending(self._hang_up(self._detach()), name=f"ws-cut-{self._id}")

    @staticmethod
    def _is_stale(call: MediaCall, event: dict[str, Any]) -> bool:
        """An end of an earlier call of the stream (a publisher who has
        since published again) is not the end of this one."""
        ended = event.get("session_id")
        return call.stream_session_id is not None and ended not in (
            None, call.stream_session_id)

    # --- suspension (called by presence, for the connection's user) ------------------------

    def _on_suspended(self) -> None:
        self._connections.run_ending(self._suspended(), name=f"ws-suspended-{self._id}")

    async def _suspended(self) -> None:
        """The user was suspended: end the media call at once (a publisher's
        stream ends, no grace), say why, and close the socket (1008)."""
        call = self._detach()
        self._member.close()
        self.send(protocol.error(ErrorCode.SUSPENDED, "this account was suspended"))
        log_event(log, "ws.suspended", **self._ids(call))
        await self._hang_up(call)
        try:
            async with asyncio.timeout(FAREWELL_S):
                await self._outbox.drained()
        except TimeoutError:
            pass
        await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"suspended")

    # --- housekeeping -----------------------------------------------------------------

    def _on_overflow(self) -> None:
        log_event(log, "ws.client_too_slow", logging.WARNING, **self._ids())
        if self._request.transport is not None:
            self._request.transport.abort()

    def _ids(self, call: MediaCall | None = None) -> dict[str, Any]:
        call = call or self._call
        ids: dict[str, Any] = {"conn": self._id, "remote": self._remote}
        if call is not None:
            ids.update(state=call.state.value, stream_id=call.stream_id)
            if call.peer is not None:
                ids["peer_id"] = call.peer.peer_id
        return ids


async def first_refusal(*checks: Awaitable[Any]) -> list[Any]:
    """Run `checks` at once; their results, or the exception of the first
    (in argument order) that raised, once all have finished."""
    results = await asyncio.gather(*checks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


@dataclass
class Connections:
    """The app's websockets: the open ones, closed at shutdown, and the
    endings of closed ones still talking to a worker, awaited at cleanup."""

    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    endings: set[asyncio.Task[None]] = field(default_factory=set)

    def run_ending(self, ending: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(ending, name=name)
        self.endings.add(task)
        task.add_done_callback(self.endings.discard)
        return task

    async def close_sockets(self) -> None:
        sockets = list(self.sockets)
        await asyncio.gather(*[ws.close(code=WSCloseCode.GOING_AWAY,
                                        message=b"server shutting down") for ws in sockets],
                             return_exceptions=True)

    async def wait_endings(self) -> None:
        if not self.endings:
            return
        _, late = await asyncio.wait(set(self.endings), timeout=ENDING_GRACE_S)
        for task in late:
            log_event(log, "ws.ending_abandoned", logging.WARNING, task=task.get_name())
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


CONNECTIONS = web.AppKey("ws_connections", Connections)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    # aiohttp's frame limit sits above the protocol's, so an oversized message
    # gets an error reply instead of closing the connection.
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=HEARTBEAT_S)
    await ws.prepare(request)
    sockets = request.app[CONNECTIONS].sockets
    sockets.add(ws)
    WS_CONNECTIONS.inc()
    try:
        await Connection(request, ws).run()
    finally:
        sockets.discard(ws)
        WS_CONNECTIONS.dec()
    return ws


async def _close_websockets(app: web.Application) -> None:
    """On shutdown: close every websocket so its handler ends its call
    (rather than aiohttp waiting for it, then cancelling it)."""
    await app[CONNECTIONS].close_sockets()


async def _connections_ctx(app: web.Application) -> AsyncIterator[None]:
    app[CONNECTIONS] = Connections()
    yield
    await app[CONNECTIONS].wait_endings()


def add_ws_routes(app: web.Application) -> None:
    """Call after `sfu_client_ctx` and `events_ctx` are in the app's cleanup
    contexts: this one's clean-up (waiting for sessions to end on their
    workers) must run before theirs (cleanup contexts unwind in reverse)."""
    app.router.add_get("/ws", websocket)
    app.cleanup_ctx.append(_connections_ctx)
    app.on_shutdown.append(_close_websockets)
