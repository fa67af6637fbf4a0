"""A billing flusher that stops at one named point of its flush and waits to be
killed: run by tests/test_metering_faults.py, which kills it with -9 there.

    python tests/flush_crasher.py DATABASE_URL REDIS_URL POINT
"""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billing.flush import Flusher
from vilokanam.redis_client import redis_from_url


class StoppingFlusher(Flusher):
    point = ""

    async def _checkpoint(self, name: str) -> None:
        if name == self.point:
            print(f"at {name}", flush=True)
            await asyncio.sleep(3600)  # held here until the test kills it: the crash point


async def main(database_url: str, redis_url: str, point: str) -> None:
    pg = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    redis = redis_from_url(redis_url)  # standalone or redis+cluster://
    flusher = StoppingFlusher(pg, redis, Decimal("0.1"), max_batches=5)
    flusher.point = point
    while True:
        await flusher.flush_once()
        await asyncio.sleep(0.01)  # the flusher's pace between rounds, not a wait


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
