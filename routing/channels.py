"""The event channels between SFU workers and signaling (Redis pub/sub;
docs/architecture.md, "Events").

A worker publishes what happens to its streams and peers; every signaling
server listens and tells the clients it holds. The channel names, the event
types and the reasons a peer is closed are defined here once, as enums, so the
publisher and the listeners cannot spell them apart."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter

from routing.registry import unplace
from vilokanam.logs import log_event

log = logging.getLogger(__name__)

PUBLISH_FAILURES = Counter(
    "vilokanam_event_publish_failures_total",
    "Worker events that could not be published (Redis unreachable); pub/sub keeps no "
    "history, so listeners miss them", ["type"])


class StreamEvent(StrEnum):
    """`{"type": ..., "stream_id", ...}` on a stream's channel."""

    STARTED = "stream_started"  # a new stream_sessions row: the stream went live
    ENDED = "stream_ended"  # with the closed "session_id"
    VIEWER_COUNT = "viewer_count"  # with "count", on every change


class CloseReason(StrEnum):
    """Why a worker closed a peer connection (`peer_closed` events)."""

    LEFT = "left"  # the client asked to leave
    CONNECTION_FAILED = "connection_failed"  # ICE/DTLS failed, or the media stopped
    STREAM_ENDED = "stream_ended"  # the publisher left or its grace ran out
    WORKER_DRAINING = "worker_draining"  # the worker is stopping: reconnect elsewhere
    INSUFFICIENT_FUNDS = "insufficient_funds"  # the viewer cannot pay the next second


PEER_CLOSED = "peer_closed"


def stream_channel(stream_id: str) -> str:
    return f"vk:stream:{stream_id}:events"


def peer_channel(peer_id: str) -> str:
    return f"vk:peer:{peer_id}:events"


@dataclass
class EventBus:
    """A worker's side: publish stream and peer events, unpin ended streams."""

    redis: aioredis.Redis
    worker_id: str

    async def stream(self, stream_id: str, event: StreamEvent, **fields: Any) -> None:
        await self._publish(stream_channel(stream_id), event.value,
                            {"type": event.value, "stream_id": stream_id, **fields})

    async def peer_closed(self, peer_id: str, reason: CloseReason) -> None:
        await self._publish(peer_channel(peer_id), PEER_CLOSED,
                            {"type": PEER_CLOSED, "peer_id": peer_id, "reason": reason.value})

    async def _publish(self, channel: str, type_: str, message: dict[str, Any]) -> None:
        # An event is a notification, not state: losing one while Redis is down
        # must not stop the caller from finishing what it was doing (ending a
        # stream, cutting off a viewer). Signaling's session keeper and the
        # reaper catch up with the state itself.
        try:
            await self.redis.publish(channel, json.dumps(message))
        except (aioredis.RedisError, OSError) as exc:
            PUBLISH_FAILURES.labels(type_).inc()
            log_event(log, "events.publish_failed", logging.WARNING, channel=channel,
                      event_type=type_, error=repr(exc))

    async def unplace(self, stream_id: str) -> None:
        """The stream ended here: signaling must not send viewers to us for it."""
        await unplace(self.redis, stream_id, self.worker_id)
