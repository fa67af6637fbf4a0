"""What a worker tells signaling, over Redis pub/sub (docs/architecture.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from sfu.registry import unplace


def stream_channel(stream_id: str) -> str:
    return f"vk:stream:{stream_id}:events"


def peer_channel(peer_id: str) -> str:
    return f"vk:peer:{peer_id}:events"


@dataclass
class EventBus:
    redis: aioredis.Redis
    worker_id: str

    async def stream(self, stream_id: str, type_: str, **fields: Any) -> None:
        await self._publish(stream_channel(stream_id),
                            {"type": type_, "stream_id": stream_id, **fields})

    async def peer_closed(self, peer_id: str, reason: str) -> None:
        await self._publish(peer_channel(peer_id),
                            {"type": "peer_closed", "peer_id": peer_id, "reason": reason})

    async def _publish(self, channel: str, message: dict[str, Any]) -> None:
        await self.redis.publish(channel, json.dumps(message))

    async def unplace(self, stream_id: str) -> None:
        """The stream ended here: signaling must not send viewers to us for it."""
        await unplace(self.redis, stream_id, self.worker_id)
