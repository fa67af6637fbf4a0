"""A stream's life in Postgres, written by the worker that carries it (it is
the one that knows when a publisher connects and when a connection dies).
The schema's own tables: streams, stream_sessions, stream_viewers,
stream_analytics. The end of a stream is shared SQL (vilokanam/stream_rows.py):
the reaper and signaling write it too."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from vilokanam.stream_rows import end_stream_rows
from vilokanam.subscriptions import subscribed_sql


class StreamNotFound(LookupError):
    pass


@dataclass
class Lifecycle:
    pg: asyncpg.Pool

    async def ended_by_others(self, session_ids: list[str],
                              viewer_session_ids: list[str]) -> tuple[set[str], set[str]]:
        """Of ours, the stream sessions someone else closed and the viewer
        sessions made inactive (the reaper, taking us for dead)."""
        async with self.pg.acquire() as conn:
            closed = await conn.fetch(
                "SELECT id::text FROM stream_sessions WHERE id = ANY($1::uuid[]) "
                "AND end_time IS NOT NULL", session_ids)
            inactive = await conn.fetch(
                "SELECT id::text FROM stream_viewers WHERE id = ANY($1::uuid[]) "
                "AND NOT is_active", viewer_session_ids)
        return {r["id"] for r in closed}, {r["id"] for r in inactive}

    async def stream_started(self, stream_id: str, control_url: str, signaling_url: str) -> str:
        """The stream goes live; returns the new stream_sessions id. A stream
        has one open session: one left open by a worker that died (its
        publisher has reconnected elsewhere before the reaper ended it) is
        closed here, and its viewers made inactive — those on edges that
        carry on are moved to the new session by their edge (`viewers_moved`)."""
        async with self.pg.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() "
                "WHERE stream_id = $1 AND is_active", stream_id)
            found = await conn.fetchval(
                "UPDATE streams SET status = 'live', start_time = now(), end_time = NULL, "
                "viewer_count = 0 WHERE id = $1 RETURNING id", stream_id)
            if found is None:
                raise StreamNotFound(stream_id)
            await conn.execute(
                "UPDATE stream_sessions SET end_time = now() WHERE stream_id = $1 "
                "AND end_time IS NULL", stream_id)
            session_id = await conn.fetchval(
                "INSERT INTO stream_sessions (stream_id, sfu_server_url, signaling_server_url, "
                "start_time) VALUES ($1, $2, $3, now()) RETURNING id",
                stream_id, control_url, signaling_url)
        return str(session_id)

    async def stream_ended(self, stream_id: str, session_id: str) -> None:
        await end_stream_rows(self.pg, stream_id, session_id)

    async def viewer_joined(self, stream_id: str, session_id: str, user_id: str,
                            worker_id: str) -> tuple[str, Decimal, int]:
        """One stream_viewers row per viewer session, priced at the stream's
        price now (a later change never re-prices it) — 0 for a subscriber of
        its creator, whose seconds are still ticked; `worker_id` serves it.
        Returns (id, price, the whole audience): `streams.viewer_count` counts
        the viewers of every worker carrying the stream (origin and edges),
        one increment per active row, under the streams row's lock."""
        async with self.pg.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO stream_viewers (stream_id, viewer_id, join_time, is_active, "
                "session_id, price_per_second, sfu_worker_id) SELECT s.id, $2, now(), TRUE, $3, "
                f"CASE WHEN {subscribed_sql('$2::uuid', 's.creator_id')} THEN 0 "
                "ELSE s.price_per_second END, $4 "
                "FROM streams s WHERE s.id = $1 RETURNING id, price_per_second",
                stream_id, user_id, session_id, worker_id)
            if row is None:
                raise StreamNotFound(stream_id)
            audience = await self._count(conn, stream_id, session_id, 1)
        return str(row["id"]), Decimal(row["price_per_second"]), audience

    async def viewer_left(self, stream_id: str, session_id: str,
                          viewer_session_id: str) -> int | None:
        """The viewer's row goes inactive; returns the audience after, or None
        when the row was inactive already (a retry, or the stream's end came
        first): the count falls once per row, never twice."""
        async with self.pg.acquire() as conn, conn.transaction():
            left = await conn.fetchval(
                "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() "
                "WHERE id = $1 AND is_active RETURNING id", viewer_session_id)
            if left is None:
                return None
            return await self._count(conn, stream_id, session_id, -1)

    async def viewers_moved(self, stream_id: str, session_id: str,
                            viewer_session_ids: list[str]) -> int:
        """An edge resumed from a new origin (the publisher reconnected on
        another worker): its viewers carry on in the new stream session, active
        again (their billing goes on). Returns the audience after."""
        if not viewer_session_ids:
            return 0
        async with self.pg.acquire() as conn, conn.transaction():
            revived = await conn.fetchval(
                "WITH old AS (SELECT id, is_active FROM stream_viewers WHERE id = ANY($1::uuid[]) "
                "FOR UPDATE), moved AS (UPDATE stream_viewers v SET session_id = $2, "
                "is_active = TRUE, updated_at = now() FROM old WHERE v.id = old.id "
                "RETURNING old.is_active) SELECT count(*) FILTER (WHERE NOT is_active) FROM moved",
                viewer_session_ids, session_id)
            return await self._count(conn, stream_id, session_id, int(revived))

    @staticmethod
    async def _count(conn: asyncpg.Connection, stream_id: str, session_id: str,
                     change: int) -> int:
        audience = int(await conn.fetchval(
            "UPDATE streams SET viewer_count = GREATEST(COALESCE(viewer_count, 0) + $2, 0) "
            "WHERE id = $1 RETURNING viewer_count", stream_id, change) or 0)
        await conn.execute(
            "UPDATE stream_sessions SET viewer_peak = GREATEST(viewer_peak, $2) WHERE id = $1",
            session_id, audience)
        return audience

    async def open_session(self, stream_id: str) -> str | None:
        """The stream's open session (an edge follows it), None if ended."""
        found = await self.pg.fetchval(
            "SELECT id::text FROM stream_sessions WHERE stream_id = $1 AND end_time IS NULL "
            "ORDER BY start_time DESC LIMIT 1", stream_id)
        return None if found is None else str(found)

    async def record_analytics(self, at: datetime, stream_ids: list[str]) -> None:
        """One stream_analytics row per live stream, in one statement, written
        by the stream's origin only: the count is the whole audience
        (`streams.viewer_count`, every worker's viewers)."""
        if not stream_ids:
            return
        await self.pg.execute(
            "INSERT INTO stream_analytics (stream_id, timestamp, viewer_count) "
            "SELECT id, $2, COALESCE(viewer_count, 0) FROM streams WHERE id = ANY($1::uuid[])",
            stream_ids, at)
