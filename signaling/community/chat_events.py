"""Chat on the stream's event channel (the one its worker publishes on):
every signaling server already listens to every stream's channel
(signaling/events.py), so one PUBLISH reaches the chatters on all of them.
Only signaling publishes these types; a worker never does. A tip to a
creator who is live is shown in that stream's chat as `chat_tip`."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from signaling.events import stream_channel

CHAT_MESSAGE = "chat_message"
CHAT_DELETED = "chat_deleted"
CHAT_TIP = "chat_tip"
CHAT_EVENTS = (CHAT_MESSAGE, CHAT_DELETED, CHAT_TIP)


async def announce_message(redis: aioredis.Redis, stream_id: str,
                           message: dict[str, Any]) -> None:
    await redis.publish(stream_channel(stream_id), json.dumps(
        {"type": CHAT_MESSAGE, "stream_id": stream_id, "message": message}))


async def announce_tip(redis: aioredis.Redis, stream_id: str, tip: dict[str, Any]) -> None:
    """`tip`: {"id", "amount", "from_account", "from_username", "message", "created_at"}."""
    await redis.publish(stream_channel(stream_id), json.dumps(
        {"type": CHAT_TIP, "stream_id": stream_id, "tip": tip}))


async def announce_deleted(redis: aioredis.Redis, stream_id: str, comment_id: str) -> None:
    await redis.publish(stream_channel(stream_id), json.dumps(
        {"type": CHAT_DELETED, "stream_id": stream_id, "id": comment_id}))
