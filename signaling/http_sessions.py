"""WHIP and WHEP session resources (`/whip|whep/{stream}/sessions/{id}`):
what each one points at, kept in Redis so that any signaling server behind the
load balancer can serve its PATCH and DELETE, and how long it lives.

A session is one Redis hash, `vk:http_session:<id>`, with a TTL
(`Timing.ttl_s`), plus its id in the sorted set `vk:http_sessions` scored
by its last refresh. Its lifetime is its peer's on the worker:

- the signaling server that created it keeps it: it refreshes the TTL every
  `refresh_s`, and listens on the peer's channel through the EventHub; the
  worker's `peer_closed` (sent for every peer when a stream ends, too) drops
  the session at once; so does a `stream_ended` on the stream's channel
  (signaling publishes one when it ends a stream no worker carries);
- at every refresh, a kept session whose worker stopped heartbeating (a
  killed worker sends no events), or whose stream is no longer placed on its
  worker (the stream ended: an event missed during a Redis reconnect, or
  published in the moment before the session was stored), is dropped;
- a session nobody has refreshed for `orphan_after_s` lost its keeper (that
  signaling server stopped or died): the next server to notice adopts it, so
  a session outlives the server that created it;
- a request that finds the worker no longer has the peer drops it too (lazy
  clean-up for an event that was missed);
- the TTL is the last resort: if every signaling server is gone, nothing
  outlives it.

Only which sessions this server keeps is in memory; everything a request
needs is in Redis."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from routing.channels import peer_channel
from routing.registry import stream_edges_key, stream_worker_key, worker_key
from signaling.events import EVENTS, USERS_CHANNEL, EventHub
from signaling.sdpfrag import IceCredentials
from signaling.sfu_client import SFU_CLIENT, PeerGone, PeerRef, SfuClient, SfuError
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event
from vilokanam.tasks import TaskOwner, run_forever

log = logging.getLogger(__name__)

# One hash tag for the sessions and their index, so that on a Redis Cluster
# the transactions that write both stay in one slot.
INDEX_KEY = "vk:{http}:sessions"
_ORPHANS_PER_PASS = 500  # bounds one refresh's work; the rest wait for the next


def session_key(resource_id: str) -> str:
    return f"vk:{{http}}:session:{resource_id}"


@dataclass(frozen=True)
class Timing:
    """Adoption must happen before expiry: orphan_after_s + refresh_s < ttl_s."""

    ttl_s: float = 30.0
    refresh_s: float = 5.0
    orphan_after_s: float = 12.0  # a keeper that missed two refreshes is gone


TIMING = Timing()


class Kind(StrEnum):
    WHIP = "whip"  # a publisher
    WHEP = "whep"  # a viewer


@dataclass(frozen=True)
class HttpSession:
    resource_id: str
    kind: Kind
    stream_id: str
    worker_id: str
    control_url: str
    peer_id: str
    etag: str  # a strong entity-tag: the ICE session (RFC 9725 section 4.3.1)
    credentials: IceCredentials  # the client's, from its offer
    user_id: str = ""  # the viewer (WHEP) or the stream's creator (WHIP): a suspension ends it

    @classmethod
    def new(cls, kind: Kind, stream_id: str, worker_id: str, peer: PeerRef,
            credentials: IceCredentials, user_id: str = "") -> HttpSession:
        # 192 random bits: the resource URL is the capability to end the session.
        return cls(secrets.token_urlsafe(24), kind, stream_id, worker_id, peer.control_url,
                   peer.peer_id, f'"{secrets.token_urlsafe(12)}"', credentials, user_id)

    @property
    def peer(self) -> PeerRef:
        return PeerRef(self.control_url, self.peer_id)

    @property
    def path(self) -> str:
        return f"/{self.kind}/{self.stream_id}/sessions/{self.resource_id}"

    def to_redis(self) -> dict[str, str]:
        return {"kind": self.kind.value, "stream_id": self.stream_id,
                "worker_id": self.worker_id, "control_url": self.control_url,
                "peer_id": self.peer_id, "etag": self.etag,
                "ice_ufrag": self.credentials.ufrag or "", "ice_pwd": self.credentials.pwd or "",
                "user_id": self.user_id}

    @classmethod
    def from_redis(cls, resource_id: str, raw: dict[Any, Any]) -> HttpSession | None:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            return cls(resource_id, Kind(fields["kind"]), fields["stream_id"],
                       fields["worker_id"], fields["control_url"], fields["peer_id"],
                       fields["etag"], IceCredentials(fields.get("ice_ufrag") or None,
                                                      fields.get("ice_pwd") or None),
                       fields.get("user_id", ""))
        except (KeyError, ValueError):
            return None  # not ours, or written by a future version: treat as absent


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SessionStore:
    def __init__(self, redis: aioredis.Redis, timing: Timing) -> None:
        self._redis = redis
        self._ttl_ms = int(timing.ttl_s * 1000)

    async def save(self, session: HttpSession) -> None:
        key, fields = session_key(session.resource_id), session.to_redis()
        mapping: dict[Any, Any] = fields  # redis-py's Mapping type is invariant
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, self._ttl_ms)
            pipe.zadd(INDEX_KEY, {session.resource_id: _now_ms()})
            await pipe.execute()

    async def load(self, resource_id: str) -> HttpSession | None:
        raw = await self._redis.hgetall(session_key(resource_id))
        return HttpSession.from_redis(resource_id, raw) if raw else None

    async def drop(self, resource_id: str) -> bool:
        """Delete the session; True for the one caller that actually did."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(session_key(resource_id))
            pipe.zrem(INDEX_KEY, resource_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def touch(self, sessions: list[HttpSession]) -> list[HttpSession]:
        """Refresh the TTLs; returns the sessions that still exist. XX: a
        session someone else dropped meanwhile is not put back in the index."""
        if not sessions:
            return []
        now = _now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for session in sessions:
                pipe.pexpire(session_key(session.resource_id), self._ttl_ms)
            for session in sessions:
                pipe.zadd(INDEX_KEY, {session.resource_id: now}, xx=True)
            results = await pipe.execute()
        return [s for s, alive in zip(sessions, results[:len(sessions)], strict=True) if alive]

    async def on_live_streams(self, sessions: list[HttpSession]) -> list[HttpSession]:
        """The sessions whose worker is heartbeating and still carries their
        stream: as its origin (the worker unplaces a stream when it ends) or
        as one of its edges (an edge leaves the stream's edges when it stops
        carrying it)."""
        if not sessions:
            return []
        workers = sorted({s.worker_id for s in sessions})
        streams = sorted({s.stream_id for s in sessions})
        found = await self._redis.mget([*map(worker_key, workers),
                                        *map(stream_worker_key, streams)])
        alive = {w for w, raw in zip(workers, found[:len(workers)], strict=True) if raw}
        placed = {stream: _text(raw) for stream, raw
                  in zip(streams, found[len(workers):], strict=True) if raw is not None}
        on_edges = [s for s in sessions if s.worker_id in alive and s.stream_id in placed
                    and placed[s.stream_id] != s.worker_id]
        edge_of: set[HttpSession] = set()
        if on_edges:
            async with self._redis.pipeline(transaction=False) as pipe:
                for s in on_edges:
                    pipe.sismember(stream_edges_key(s.stream_id), s.worker_id)
                members = await pipe.execute()
            edge_of = {s for s, member in zip(on_edges, members, strict=True) if member}
        return [s for s in sessions if s.worker_id in alive and s.stream_id in placed
                and (placed[s.stream_id] == s.worker_id or s in edge_of)]

    async def orphans(self, idle_s: float) -> list[HttpSession]:
        """Sessions nobody has refreshed for `idle_s`. Ids whose hash has
        expired are removed from the index here."""
        stale = await self._redis.zrangebyscore(INDEX_KEY, "-inf", _now_ms() - idle_s * 1000,
                                                start=0, num=_ORPHANS_PER_PASS)
        found = []
        for raw_id in stale:
            resource_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            session = await self.load(resource_id)
            if session is None:
                await self._redis.zrem(INDEX_KEY, resource_id)
            else:
                found.append(session)
        return found


def _now_ms() -> int:
    return int(time.time() * 1000)


class SessionKeeper:
    """The sessions this signaling server keeps alive (see the module doc).
    An EventHub listener: `on_event` must not block, so the drops it decides
    on run as tasks it owns."""

    def __init__(self, store: SessionStore, hub: EventHub, timing: Timing,
                 sfu: SfuClient | None = None) -> None:
        self.store = store
        self._hub = hub
        self._sfu = sfu  # to end the peers of a suspended user
        self._timing = timing
        self._kept: dict[str, HttpSession] = {}  # by resource id
        self._by_channel: dict[str, str] = {}  # peer channel -> resource id
        self._tasks = TaskOwner("http-sessions")

    def __len__(self) -> int:
        return len(self._kept)

    async def open(self, session: HttpSession) -> None:
        """Store a new session and keep it."""
        await self.store.save(session)
        self.keep(session)

    def keep(self, session: HttpSession) -> None:
        channel = peer_channel(session.peer_id)
        self._kept[session.resource_id] = session
        self._by_channel[channel] = session.resource_id
        self._hub.add(channel, self)

    def forget(self, resource_id: str) -> None:
        session = self._kept.pop(resource_id, None)
        if session is not None:
            channel = peer_channel(session.peer_id)
            self._by_channel.pop(channel, None)
            self._hub.remove(channel, self)

    async def drop(self, session: HttpSession, reason: str) -> bool:
        self.forget(session.resource_id)
        dropped = await self.store.drop(session.resource_id)
        if dropped:
            log_event(log, "http_session.dropped", kind=session.kind.value,
                      stream_id=session.stream_id, peer_id=session.peer_id, reason=reason)
        return dropped

    def on_event(self, channel: str, event: dict[str, Any]) -> None:
        if channel == USERS_CHANNEL:
            if event.get("type") == "suspended":
                self._end_sessions_of(str(event.get("user_id")))
            return
        if event.get("type") == "stream_ended":
            self._end_sessions_of_stream(str(event.get("stream_id")))
            return
        resource_id = self._by_channel.get(channel)
        session = self._kept.get(resource_id) if resource_id is not None else None
        if session is None or event.get("type") != "peer_closed":
            return
        self.forget(session.resource_id)  # at once: nothing else of it reaches us
        self._tasks.spawn(self.drop(session, f"peer_closed:{event.get('reason')}"), "drop")

    def _end_sessions_of(self, user_id: str) -> None:
        """A suspended user's WHIP/WHEP sessions kept here end at once (every
        session is kept by some server, so every server doing this ends all)."""
        for session in [s for s in self._kept.values() if user_id and s.user_id == user_id]:
            self.forget(session.resource_id)
            self._tasks.spawn(self._end(session, "suspended"), "suspended")

    def _end_sessions_of_stream(self, stream_id: str) -> None:
        """The stream ended. From its worker, every peer was closed first
        (each `peer_closed` dropped its session already); from signaling,
        which ended a stream no worker would end (POST /api/streams/{id}/end),
        this is the only word: close what may still be open and drop it."""
        for session in [s for s in self._kept.values() if s.stream_id == stream_id]:
            self.forget(session.resource_id)
            self._tasks.spawn(self._end(session, "stream_ended"), "stream-ended")

    async def _end(self, session: HttpSession, reason: str) -> None:
        if self._sfu is not None:
            try:
                await self._sfu.close_peer(session.peer)
            except (PeerGone, SfuError):
                pass  # gone already, or its worker is (the refresh drops it then)
        await self.drop(session, reason)

    def start(self) -> None:
        self._hub.add(USERS_CHANNEL, self)
        self._hub.add_every_stream(self)
        self._tasks.spawn(self._run(), "refresh")

    async def stop(self) -> None:
        """This server stops keeping its sessions; they stay in Redis for
        another signaling server to adopt (their peers live on the workers)."""
        self._hub.remove(USERS_CHANNEL, self)
        self._hub.remove_every_stream(self)
        for resource_id in list(self._kept):
            self.forget(resource_id)
        await self._tasks.close()

    async def _run(self) -> None:
        await run_forever("http_session.keeper", self.refresh, every=self._timing.refresh_s,
                          failure_event="http_session.refresh_failed")

    async def refresh(self) -> None:
        """One pass: refresh what we keep, adopt orphans, drop what lost its
        worker or stream."""
        kept = list(self._kept.values())
        alive = await self.store.touch(kept)
        for session in set(kept) - set(alive):
            self.forget(session.resource_id)  # dropped by another server
        adopted = [s for s in await self.store.orphans(self._timing.orphan_after_s)
                   if s.resource_id not in self._kept]
        for session in adopted:
            self.keep(session)
            log_event(log, "http_session.adopted", kind=session.kind.value,
                      stream_id=session.stream_id, peer_id=session.peer_id)
        await self.store.touch(adopted)
        current = alive + adopted
        for session in set(current) - set(await self.store.on_live_streams(current)):
            await self.drop(session, "stream_or_worker_gone")


KEEPER = web.AppKey("http_session_keeper", SessionKeeper)


async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Append after `events_ctx`: the keeper listens through the EventHub."""
    timing = TIMING
    keeper = SessionKeeper(SessionStore(app[BACKENDS].redis, timing), app[EVENTS], timing,
                           app[SFU_CLIENT])
    app[KEEPER] = keeper
    keeper.start()
    try:
        yield
    finally:
        await keeper.stop()
