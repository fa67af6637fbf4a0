"""The two stores every role talks to: the Postgres pool and the Redis client.

An app owns them through aiohttp's cleanup context (opened at startup, closed
at cleanup). An unreachable store is one clear error naming the URL (password
hidden), not a traceback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from vilokanam.config import Settings, redact_url
from vilokanam.redis_client import is_cluster_url, redis_from_url

CONNECT_TIMEOUT = 5.0


class BackendUnreachable(RuntimeError):
    pass


_PG_CONNECT_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                      asyncpg.InterfaceError)


async def connect_postgres_once(url: str) -> asyncpg.Connection:
    """A single connection (migrations, tools), with the same clear error."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except _PG_CONNECT_ERRORS as exc:
        reason = f"cannot reach Postgres at {redact_url(url)}: {_why(exc)}"
        raise BackendUnreachable(reason) from None


POSTGRES_POOL_MAX = 10  # connections per role


async def connect_postgres(url: str, *, max_size: int = POSTGRES_POOL_MAX) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=max_size, timeout=CONNECT_TIMEOUT,
            command_timeout=30)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"cannot reach Postgres at {redact_url(url)}: {_why(exc)}"
        raise BackendUnreachable(reason) from None
    assert pool is not None
    return pool


REDIS_MAX_CONNECTIONS = 64


def _redis_client(url: str) -> aioredis.Redis:
    if is_cluster_url(url):  # a Redis Cluster (vilokanam/redis_client.py)
        return redis_from_url(url, max_connections=REDIS_MAX_CONNECTIONS,
                              socket_connect_timeout=CONNECT_TIMEOUT)
    # A blocking pool: at a burst (200 viewers leaving at once) a command waits
    # for a free connection instead of failing with MaxConnectionsError.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_MAX_CONNECTIONS, timeout=CONNECT_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=15)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def connect_redis(url: str) -> aioredis.Redis:
    client = _redis_client(url)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        raise BackendUnreachable(f"cannot reach Redis at {redact_url(url)}: {_why(exc)}") from None
    return client


def _why(exc: BaseException) -> str:
    # asyncio and uvloop word a refused connection differently; say it one way.
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


@dataclass
class Backends:
    pg: asyncpg.Pool
    redis: aioredis.Redis

    @classmethod
    async def open(cls, settings: Settings) -> Backends:
        if not settings.database_url:
            raise BackendUnreachable("DATABASE_URL is not set")
        if not settings.redis_url:
            raise BackendUnreachable("REDIS_URL is not set")
        pg = await connect_postgres(settings.database_url)
        try:
            client = await connect_redis(settings.redis_url)
        except BaseException:
            await pg.close()
            raise
        return cls(pg, client)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.pg.close()

    async def readiness(self) -> dict[str, bool]:
        """Is each store answering right now? (for /readyz)"""
        return {"postgres": await self._pg_ok(), "redis": await self._redis_ok()}

    async def _pg_ok(self) -> bool:
        try:
            async with asyncio.timeout(2):
                return await self.pg.fetchval("SELECT 1") == 1
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    async def _redis_ok(self) -> bool:
        try:
            async with asyncio.timeout(2):
                return bool(await self.redis.ping())
        except (OSError, TimeoutError, aioredis.RedisError):
            return False


BACKENDS = web.AppKey("backends", Backends)


def attach_backends(app: web.Application, settings: Settings) -> None:
    async def backends_ctx(app: web.Application) -> AsyncIterator[None]:
        app[BACKENDS] = await Backends.open(settings)
        yield
        await app[BACKENDS].close()

    app.cleanup_ctx.append(backends_ctx)
