"""Creator subscriptions, as every role sees them: a subscriber watches the
creator's streams and videos at price 0 while a period runs (ticks still
counted).

The SQL test of "is subscribed now" is here once, used where a viewing
session is priced (the SFU worker's viewer_joined) and where the start of
watching is admitted (balances.can_start_watching)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

PERIOD_DAYS = 30

# $viewer, $creator: a period of this subscriber and creator runs now.
SUBSCRIBED = """EXISTS (SELECT 1 FROM subscriptions sub
                   WHERE sub.subscriber_id = {viewer} AND sub.creator_id = {creator}
                     AND sub.starts_at <= now() AND now() < sub.ends_at)"""


def subscribed_sql(viewer: str, creator: str) -> str:
    """The EXISTS test for SQL expressions `viewer` and `creator` (e.g. `$2`,
    `s.creator_id`)."""
    return SUBSCRIBED.format(viewer=viewer, creator=creator)


async def price_for(pg: asyncpg.Pool | asyncpg.Connection, viewer_id: str,
                    stream_id: str) -> Decimal | None:
    """What one second of the stream costs this viewer now: 0 while they
    subscribe to its creator; None for an unknown stream."""
    value = await pg.fetchval(
        f"SELECT CASE WHEN {subscribed_sql('$2::uuid', 's.creator_id')} THEN 0 "
        "ELSE s.price_per_second END FROM streams s WHERE s.id = $1::uuid",
        stream_id, viewer_id)
    return None if value is None else Decimal(value)


async def is_subscribed(pg: asyncpg.Pool | asyncpg.Connection, viewer_id: str,
                        creator_id: str) -> bool:
    """A period of this viewer's subscription to this creator runs now (a
    video view is priced 0 then: signaling/playback.py)."""
    return bool(await pg.fetchval(f"SELECT {subscribed_sql('$1::uuid', '$2::uuid')}",
                                  viewer_id, creator_id))
