"""The workers' Redis pub/sub events (docs/architecture.md, "Events"), fanned
out to the websockets on this signaling server that care.

One pub/sub connection per signaling app, pattern-subscribed to every stream's
and every peer's channel once at startup. That costs each signaling server
every event of every stream (small, and only on changes), and buys two
things: no subscribe round trip per websocket, and no window in which a
websocket is registered but its subscription not yet active. Listeners are
registered per channel in memory; delivery is a plain synchronous call, so a
listener must not block (the websocket one only queues a message)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiohttp import web

from routing.channels import peer_channel, stream_channel
from vilokanam import live_ticks
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event
from vilokanam.metering import LIVE_CHANNEL

log = logging.getLogger(__name__)

# The channel names are the workers' (sfu/events.py, vilokanam/metering.py).
# A worker's live tick message carries every viewer it billed that second
# (vilokanam/live_ticks.py); it is split here into one "tick" event
# {"seconds", "cost"} per peer this server has listeners for, so a websocket
# hears only its own.
# USERS_CHANNEL: per-user events between signaling servers (a suspension).
USERS_CHANNEL = "vk:users:events"
PATTERNS = (stream_channel("*"), peer_channel("*"), LIVE_CHANNEL, USERS_CHANNEL)
_STREAM_PREFIX, _STREAM_SUFFIX = stream_channel("*").split("*")
_PEER_PREFIX, _PEER_SUFFIX = peer_channel("*").split("*")
RETRY_S = 1.0
# get_message wakes up this often, so redis-py's health check PINGs an idle
# connection and a dead one is noticed.
POLL_S = 1.0
SUBSCRIBE_TIMEOUT_S = 5.0


class Listener(Protocol):
    def on_event(self, channel: str, event: dict[str, Any]) -> None: ...


class EventHub:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._listeners: dict[str, set[Listener]] = {}
        self._every_stream: set[Listener] = set()  # hear every stream's events
        self._peers: set[str] = set()  # the peer ids whose channel has listeners
        self._pubsub: Any = None  # redis.asyncio.client.PubSub, once started
        self._task: asyncio.Task[None] | None = None

    def add(self, channel: str, listener: Listener) -> None:
        self._listeners.setdefault(channel, set()).add(listener)
        if (peer_id := _peer_of(channel)) is not None:
            self._peers.add(peer_id)

    def remove(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[channel]
                if (peer_id := _peer_of(channel)) is not None:
                    self._peers.discard(peer_id)

    def add_every_stream(self, listener: Listener) -> None:
        """`listener` hears the events of every stream (e.g. each go-live)."""
        self._every_stream.add(listener)

    def remove_every_stream(self, listener: Listener) -> None:
        self._every_stream.discard(listener)

    @property
    def channels(self) -> int:
        return len(self._listeners)

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        try:
            await self._subscribe()
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._listen(), name="signaling-events")

    async def _subscribe(self) -> None:
        await self._pubsub.psubscribe(*PATTERNS)
        # Wait for Redis to confirm, so every event published after start()
        # returns reaches us.
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            confirmed = 0
            while confirmed < len(PATTERNS):
                message = await self._pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                confirmed += message is not None and message["type"] == "psubscribe"

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def _listen(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                         timeout=POLL_S)
            except (aioredis.RedisError, OSError) as exc:
                # redis-py reconnects and re-subscribes on the next read; events
                # published meanwhile are lost (pub/sub keeps no history).
                log_event(log, "events.redis_error", logging.WARNING, error=repr(exc))
                await asyncio.sleep(RETRY_S)
                continue
            if message is not None and message["type"] == "pmessage":
                channel = _text(message["channel"])
                if channel == LIVE_CHANNEL:
                    self.dispatch_ticks(message["data"])
                else:
                    self.dispatch(channel, message["data"])

    def dispatch(self, channel: str, data: bytes | str) -> None:
        every = self._every_stream if _is_stream_channel(channel) else set()
        if channel not in self._listeners and not every:
            return
        event = _decode(channel, data)
        if event is not None:
            self._deliver(channel, event, every)

    def dispatch_ticks(self, data: bytes | str) -> None:
        """One worker's live message: a tick event to each of its peers that
        has a listener here. The message names all the worker's viewers, this
        server holds a few: each tick (and its cost) is made only for those."""
        try:
            ticks = live_ticks.decode(data)
        except live_ticks.BadLiveMessage as exc:
            log_event(log, "events.bad_event", logging.WARNING, channel=LIVE_CHANNEL,
                      error=str(exc))
            return
        mine = ([p for p in ticks if p in self._peers] if len(ticks) < len(self._peers)
                else [p for p in self._peers if p in ticks])
        for peer_id in mine:
            seconds, cost = ticks[peer_id]
            self._deliver(peer_channel(peer_id), {"type": "tick", "seconds": seconds,
                                                  "cost": cost})

    def _deliver(self, channel: str, event: dict[str, Any],
                 every: set[Listener] | None = None) -> None:
        listeners = self._listeners.get(channel, set()) | (every or set())
        for listener in tuple(listeners):  # a listener may unregister itself
            try:
                listener.on_event(channel, event)
            except Exception as exc:  # one bad listener must not starve the rest
                log_event(log, "events.listener_failed", logging.ERROR, channel=channel,
                          event_type=event.get("type"), error=repr(exc))


def _decode(channel: str, data: bytes | str) -> dict[str, Any] | None:
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        log_event(log, "events.bad_event", logging.WARNING, channel=channel)
        return None
    return event


def _is_stream_channel(channel: str) -> bool:
    return channel.startswith(_STREAM_PREFIX) and channel.endswith(_STREAM_SUFFIX)


def _peer_of(channel: str) -> str | None:
    """The peer id of a peer's channel; None for any other channel."""
    if channel.startswith(_PEER_PREFIX) and channel.endswith(_PEER_SUFFIX):
        return channel[len(_PEER_PREFIX):len(channel) - len(_PEER_SUFFIX)]
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


EVENTS = web.AppKey("events", EventHub)


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = EventHub(app[BACKENDS].redis)
    await hub.start()
    app[EVENTS] = hub
    try:
        yield
    finally:
        await hub.stop()
