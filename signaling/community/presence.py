"""Who is connected to THIS signaling server, by signed-in user, and the two
things that need it:

- `followed_live`: every server hears every stream's `stream_started` (the
  EventHub subscribes to all stream channels), and alerts the followers of
  the stream's creator among ITS connected users: one indexed query per
  go-live per server, restricted to the users connected here. So a follower
  connected anywhere hears it once, as soon as the worker's event arrives.
- suspension: a moderator's server publishes `suspended` on USERS_CHANNEL;
  every server closes that user's websockets (their media sessions end).

A member's callbacks only queue work (EventHub listeners must not block)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from signaling.community.metrics import FOLLOWED_LIVE_SENT
from signaling.events import EVENTS, USERS_CHANNEL, EventHub
from signaling.state import SETTINGS
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event
from vilokanam.tasks import TaskOwner

log = logging.getLogger(__name__)

class Member(Protocol):
    """A websocket of a signed-in user."""

    def send(self, message: dict[str, Any]) -> None: ...

    def on_suspended(self) -> None: ...


async def announce_suspended(redis: aioredis.Redis, user_id: str) -> None:
    await redis.publish(USERS_CHANNEL, json.dumps({"type": "suspended", "user_id": user_id}))


def followed_live(row: asyncpg.Record, base_url: str) -> dict[str, Any]:
    return {"type": "followed_live", "stream_id": row["stream_id"], "title": row["title"],
            "creator_account": row["creator_account"],
            "creator_username": row["creator_username"],
            "watch_url": f"{base_url}/watch/{row['stream_id']}"}


class Presence:
    def __init__(self, pg: asyncpg.Pool, base_url: str) -> None:
        self._pg = pg
        self._base_url = base_url
        self._members: dict[str, set[Member]] = {}
        self._tasks = TaskOwner("presence")

    def join(self, user_id: str, member: Member) -> None:
        self._members.setdefault(user_id, set()).add(member)

    def leave(self, user_id: str, member: Member) -> None:
        members = self._members.get(user_id)
        if members is not None:
            members.discard(member)
            if not members:
                del self._members[user_id]

    def members(self, user_id: str) -> tuple[Member, ...]:
        return tuple(self._members.get(user_id, ()))

    def on_event(self, channel: str, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if channel == USERS_CHANNEL and kind == "suspended":
            for member in self.members(str(event.get("user_id"))):
                member.on_suspended()
        elif kind == "stream_started" and self._members and isinstance(
                event.get("stream_id"), str):
            self._tasks.spawn(self._alert_followers(event["stream_id"]), "followed-live")

    async def _alert_followers(self, stream_id: str) -> None:
        rows = await self._pg.fetch(
            """SELECT s.id::text AS stream_id, s.title, u.account_id AS creator_account,
                      u.username AS creator_username, f.follower_id::text AS follower_id
                 FROM streams s JOIN users u ON u.id = s.creator_id
                 JOIN follows f ON f.following_id = s.creator_id
                WHERE s.id = $1::uuid AND f.follower_id = ANY($2::uuid[])""",
            stream_id, list(self._members))
        sent = 0
        for row in rows:
            message = followed_live(row, self._base_url)
            for member in self.members(row["follower_id"]):
                member.send(message)
                sent += 1
        FOLLOWED_LIVE_SENT.inc(sent)
        if sent:
            log_event(log, "presence.followed_live", stream_id=stream_id, sent=sent)

    async def close(self) -> None:
        await self._tasks.close()


PRESENCE = web.AppKey("community_presence", Presence)


async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
    """After `events_ctx`: it listens through the app's EventHub."""
    hub: EventHub = app[EVENTS]
    presence = Presence(app[BACKENDS].pg, app[SETTINGS].base_url)
    app[PRESENCE] = presence
    hub.add(USERS_CHANNEL, presence)
    hub.add_every_stream(presence)
    try:
        yield
    finally:
        hub.remove(USERS_CHANNEL, presence)
        hub.remove_every_stream(presence)
        await presence.close()
