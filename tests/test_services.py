"""The harness's own promise to fault tests: every server it owns can be
killed with -9 and restarted, and committed data survives."""

import os
import signal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import Stores
from tests.waiting import wait_until_sync
from vilokanam.services.net import PortInUseError, free_port
from vilokanam.services.process import ManagedProcess
from vilokanam.services.redis import RedisServer


async def test_postgres_kill_9_and_restart_keeps_committed_rows(
        db: asyncpg.Connection, stores: Stores) -> None:
    postgres = stores.owned_postgres()
    await db.execute("INSERT INTO users (account_id) VALUES ('survivor')")
    pid = postgres.process.pid
    postgres.kill()
    assert pid is not None and not _alive(pid)
    with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        await asyncpg.connect(stores.database_url, timeout=2)
    postgres.start()
    conn = await asyncpg.connect(stores.database_url)
    try:
        assert await conn.fetchval("SELECT account_id FROM users") == "survivor"
    finally:
        await conn.close()


async def test_redis_kill_9_at_once_keeps_every_answered_write(
        redis: aioredis.Redis, stores: Stores) -> None:
    """appendfsync always: what Redis answered is on disk, so a kill -9 the
    moment after the last answer loses none of it (docs/metering.md)."""
    server = stores.owned_redis()
    assert (await redis.config_get("appendfsync"))["appendfsync"] == "always"
    for n in range(200):  # one answered write after another, the last just before the kill
        await redis.incr("tick:probe")
        await redis.set(f"tick:probe:{n}", n)
    server.kill()
    server.start()
    client = aioredis.Redis.from_url(stores.redis_url)
    try:
        assert await client.get("tick:probe") == b"200"
        assert await client.get("tick:probe:199") == b"199"
    finally:
        await client.aclose()


def test_port_in_use_is_refused_by_name(tmp_path: Path, stores: Stores) -> None:
    server = stores.owned_redis()
    with pytest.raises(PortInUseError, match=f"port {server.port} is already in use"):
        RedisServer(tmp_path, server.port).start()


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A shell that starts a grandchild ignoring SIGTERM: stop() must still end both.
    proc = ManagedProcess("stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & wait"],
                          log_path=tmp_path / "log")
    proc.start()
    assert proc.pid is not None
    group = proc.pid
    proc.stop(timeout=0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a supervisor killed with -9 leaves no server behind."""
    marker = tmp_path / "child.pid"
    repo = str(Path(__file__).resolve().parent.parent)
    log = str(tmp_path / "log")
    script = (
        f"import sys, time; sys.path.insert(0, {repo!r})\n"
        "from pathlib import Path\n"
        "from vilokanam.services.process import ManagedProcess\n"
        f"p = ManagedProcess('sleeper', ['sleep', '300'], log_path=Path({log!r}))\n"
        f"p.start(); Path({str(marker)!r}).write_text(str(p.pid)); time.sleep(300)\n"
    )
    parent = ManagedProcess("parent", ["python3", "-c", script], log_path=tmp_path / "p.log")
    parent.start()
    wait_until_sync(lambda: marker.exists() and marker.read_text(), "the child's pid file",
                    timeout=5)
    child = int(marker.read_text())
    assert _alive(child)
    assert parent.pid is not None
    os.kill(parent.pid, signal.SIGKILL)  # only the parent, not its group
    parent.kill()
    wait_until_sync(lambda: not _alive(child), "the child dying with its parent", timeout=5)


def test_free_port_is_free() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False
