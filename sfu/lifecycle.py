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

    async def stream_started(self, stream_id: str, sfu_url: str, signaling_url: str) -> str:
        """The stream goes live; returns the new stream_sessions id."""
        async with self.pg.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "UPDATE streams SET status = 'live', start_time = now(), end_time = NULL, "
                "viewer_count = 0 WHERE id = $1 RETURNING id", stream_id)
            if found is None:
                raise StreamNotFound(stream_id)
            session_id = await conn.fetchval(
                "INSERT INTO stream_sessions (stream_id, sfu_server_url, signaling_server_url, "
                "start_time) VALUES ($1, $2, $3, now()) RETURNING id",
                stream_id, sfu_url, signaling_url)
        return str(session_id)

    async def stream_ended(self, stream_id: str, session_id: str) -> None:
        await end_stream_rows(self.pg, stream_id, session_id)

    async def viewer_joined(self, stream_id: str, session_id: str, user_id: str,
                            viewer_count: int) -> tuple[str, Decimal]:
        """One stream_viewers row per viewer session, priced at the stream's
        price now (a later change never re-prices it) — 0 for a subscriber of
        its creator, whose seconds are still ticked; returns (id, price)."""
        async with self.pg.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO stream_viewers (stream_id, viewer_id, join_time, is_active, "
                "session_id, price_per_second) SELECT s.id, $2, now(), TRUE, $3, "
                f"CASE WHEN {subscribed_sql('$2::uuid', 's.creator_id')} THEN 0 "
                "ELSE s.price_per_second END "
                "FROM streams s WHERE s.id = $1 RETURNING id, price_per_second",
                stream_id, user_id, session_id)
            if row is None:
                raise StreamNotFound(stream_id)
            await self._count(conn, stream_id, session_id, viewer_count)
        return str(row["id"]), Decimal(row["price_per_second"])

    async def viewer_left(self, stream_id: str, session_id: str, viewer_session_id: str,
                          viewer_count: int) -> None:
        async with self.pg.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() WHERE id = $1",
                viewer_session_id)
            await self._count(conn, stream_id, session_id, viewer_count)

    @staticmethod
    async def _count(conn: asyncpg.Connection, stream_id: str, session_id: str,
                     viewer_count: int) -> None:
        await conn.execute("UPDATE streams SET viewer_count = $2 WHERE id = $1",
                           stream_id, viewer_count)
        await conn.execute(
            "UPDATE stream_sessions SET viewer_peak = GREATEST(viewer_peak, $2) WHERE id = $1",
            session_id, viewer_count)

    async def record_analytics(self, at: datetime, counts: dict[str, int]) -> None:
        """One stream_analytics row per live stream, in one statement."""
        if not counts:
            return
        await self.pg.execute(
            "INSERT INTO stream_analytics (stream_id, timestamp, viewer_count) "
            "SELECT s, $2, c FROM unnest($1::uuid[], $3::int[]) AS t(s, c)",
            list(counts), at, list(counts.values()))
