"""Stream lifecycle SQL that more than one role writes.

The worker that carries a stream ends it in Postgres; so does the reaper for a
worker that died, and signaling when a creator ends a stream no worker carries.
One statement set serves all three, so an ended stream looks the same
whoever ended it.

Lock order: every transaction that writes more than one of these tables
writes stream_viewers, then streams, then stream_sessions (the flush's one
statement, a viewer joining or leaving, the end below, a recording's
finish): with one order, two writers of one stream can wait for each other
but never deadlock."""

from __future__ import annotations

import asyncpg


async def end_stream_rows(pg: asyncpg.Pool, stream_id: str,
                          session_id: str | None = None) -> list[str]:
    """A stream's end in Postgres: the stream ended, its session closed, its
    viewers inactive. `None` closes whichever sessions of the stream are open
    (the reaper does not know which one its dead worker had). Returns the ids
    of the sessions it closed."""
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE stream_viewers SET is_active = FALSE, updated_at = now() "
            "WHERE stream_id = $1 AND is_active", stream_id)
        await conn.execute(
            "UPDATE streams SET status = 'ended', end_time = now(), viewer_count = 0 "
            "WHERE id = $1", stream_id)
        closed = await conn.fetch(
            "UPDATE stream_sessions SET end_time = now() WHERE stream_id = $1 "
            "AND end_time IS NULL AND ($2::uuid IS NULL OR id = $2::uuid) RETURNING id::text",
            stream_id, session_id)
    return [row["id"] for row in closed]
