"""`vilokanam dev` as a newcomer runs it: everything serving within 30 s, URLs
printed, data kept across a restart, Ctrl-C/SIGTERM stopping every process
within 10 s, and a clear line when Node is missing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import npm_cache_dir, require
from tests.processes import http_get
from tests.waiting import wait_until_sync
from vilokanam.config import Settings
from vilokanam.dev import chain_preparing_line
from vilokanam.services.chain import node_available
from vilokanam.services.net import free_port, port_is_free

READY_LINE = "Vilokanam-view is running"


@dataclass
class DevRun:
    """One `vilokanam dev` process with its output read line by line."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> float:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, "dev exited:\n" + "\n".join(self.seen)
                continue
            self.seen.append(line)
            if text in line:
                return time.monotonic() - started
        raise AssertionError(f"no {text!r} within {timeout} s:\n" + "\n".join(self.seen))

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "\n".join(self.seen)


@dataclass
class DevPorts:
    http: int = field(default_factory=free_port)
    sfu: int = field(default_factory=free_port)
    billing: int = field(default_factory=free_port)
    media: int = field(default_factory=free_port)
    postgres: int = field(default_factory=free_port)
    redis: int = field(default_factory=free_port)
    chain: int = field(default_factory=free_port)

    def env(self, data_dir: Path, path: str) -> dict[str, str]:
        return {
            "PATH": path,
            "HOME": os.environ.get("HOME", "/root"),
            "VILOKANAM_DATA_DIR": str(data_dir),
            "VILOKANAM_HTTP_PORT": str(self.http),
            "VILOKANAM_SFU_PORT": str(self.sfu),
            "VILOKANAM_BILLING_PORT": str(self.billing),
            "VILOKANAM_MEDIA_PORT": str(self.media),
            "VILOKANAM_DEV_POSTGRES_PORT": str(self.postgres),
            "VILOKANAM_DEV_REDIS_PORT": str(self.redis),
            "VILOKANAM_DEV_CHAIN_PORT": str(self.chain),
        }


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A dev data dir whose chain packages come from the test cache (the first
    `vilokanam dev` on a machine installs them itself; that is not retested)."""
    data = tmp_path / "dev"
    (data / "chain").mkdir(parents=True)
    npm_cache_dir().mkdir(parents=True, exist_ok=True)
    (data / "chain" / "npm").symlink_to(npm_cache_dir())
    return data


StartDev = Callable[..., DevRun]


@pytest.fixture
def start_dev(data_dir: Path) -> Iterator[StartDev]:
    runs: list[DevRun] = []

    def start(ports: DevPorts, path: str = os.environ["PATH"],
              extra: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> DevRun:
        env = {k: v for k, v in {**ports.env(data_dir, path), **(extra or {})}.items()
               if k not in unset}
        proc = subprocess.Popen([sys.executable, "-m", "vilokanam", "dev"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        run = DevRun(proc)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_and_check_nothing_left(run: DevRun) -> float:
    family = descendants(run.proc.pid)
    assert family, "dev started no children?"
    started = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    run.proc.wait(timeout=15)
    took = time.monotonic() - started
    assert run.proc.returncode == 0, run.output()
    assert took < 10, f"stopping took {took:.1f} s"
    # children the stop ended may take a moment to be reaped by init
    try:
        wait_until_sync(lambda: not any(alive(pid) for pid in family), "no process left",
                        timeout=2)
    except AssertionError:
        raise AssertionError(f"processes left behind: {[p for p in family if alive(p)]}") \
            from None
    assert "stopped." in run.output()
    return took


async def _count(url: str, query: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def _add_user(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO users (account_id) VALUES ('dev-restart-probe')")
    finally:
        await conn.close()


def test_dev_serves_everything_keeps_data_and_stops_clean(start_dev: StartDev) -> None:
    require(node_available(), "Node >= 20 with npm (for the chopsticks dev chain)")
    ports = DevPorts()
    run = start_dev(ports)
    assert run.wait_for(READY_LINE, timeout=30) < 30
    output = run.output()
    # the packages are in place (the test cache): no first-run install is announced
    assert "preparing the local chain...\n" in output + "\n"
    assert "installing its npm packages" not in output
    for url in (f"http://127.0.0.1:{ports.http}/", f"http://127.0.0.1:{ports.http}/studio",
                f"ws://127.0.0.1:{ports.chain}", f"127.0.0.1:{ports.postgres}",
                f"redis://127.0.0.1:{ports.redis}"):
        assert url in output
    for port in (ports.http, ports.sfu, ports.billing):
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    status, home = http_get(f"http://127.0.0.1:{ports.http}/")  # the web app, not a 404
    assert status == 200 and b'<body data-page="home">' in home
    database_url = f"postgresql://postgres@127.0.0.1:{ports.postgres}/vilokanam"
    asyncio.run(_add_user(database_url))
    stop_and_check_nothing_left(run)

    again = start_dev(ports)
    again.wait_for(READY_LINE, timeout=30)
    assert "migrations applied: none pending" in again.output()
    assert asyncio.run(_count(database_url, "SELECT count(*) FROM users "
                                            "WHERE account_id = 'dev-restart-probe'")) == 1
    # the six dev accounts were granted their balance once, not once per start
    assert asyncio.run(_count(database_url, "SELECT count(*) FROM balance_ledger "
                                            "WHERE reference = 'dev grant'")) == 6
    stop_and_check_nothing_left(again)


def test_the_npm_install_is_announced_only_when_it_will_happen(tmp_path: Path) -> None:
    from vilokanam.resources import resource_dir
    from vilokanam.services.chain import CHOPSTICKS_CLI

    npm_dir = tmp_path / "npm"
    assert "first run: installing its npm packages" in chain_preparing_line(npm_dir)
    (npm_dir / CHOPSTICKS_CLI).parent.mkdir(parents=True)
    (npm_dir / CHOPSTICKS_CLI).write_text("")
    lock = (resource_dir("chain") / "package-lock.json").read_bytes()
    (npm_dir / ".lock-sha256").write_text(hashlib.sha256(lock + b"old").hexdigest() + "\n")
    assert "first run" in chain_preparing_line(npm_dir)  # an older lock file: installs again
    (npm_dir / ".lock-sha256").write_text(hashlib.sha256(lock).hexdigest() + "\n")
    assert chain_preparing_line(npm_dir) == "preparing the local chain..."


def test_dev_without_node_runs_with_settlement_off(start_dev: StartDev) -> None:
    ports = DevPorts()
    run = start_dev(ports, path="/usr/sbin:/sbin")  # no node, npm or anything else
    run.wait_for(READY_LINE, timeout=30)
    notes = [line for line in run.output().splitlines() if "settlement is OFF" in line]
    assert len(notes) == 1, run.output()
    assert http_get(f"http://127.0.0.1:{ports.http}/healthz")[0] == 200
    stop_and_check_nothing_left(run)


def test_dev_runs_the_sfu_workers_it_is_asked_for(start_dev: StartDev) -> None:
    """VILOKANAM_SFU_WORKERS=2: two workers, each on its own port, both in the
    registry placement reads."""
    ports = DevPorts()
    run = start_dev(ports, path="/usr/sbin:/sbin", extra={"VILOKANAM_SFU_WORKERS": "2"})
    run.wait_for(READY_LINE, timeout=30)
    urls = [line.split()[-1] for line in run.output().splitlines()
            if "sfu worker" in line and "(private)" in line]
    assert len(urls) == 2 and urls[0] == f"http://127.0.0.1:{ports.sfu}", run.output()
    for url in urls:
        assert http_get(f"{url}/healthz")[0] == 200
    status, text = http_get(f"http://127.0.0.1:{ports.http}/readyz")
    assert status == 200, text
    redis_url = f"redis://127.0.0.1:{ports.redis}"
    assert asyncio.run(_registered_workers(redis_url)) == 2
    stop_and_check_nothing_left(run)


async def _registered_workers(url: str) -> int:
    import redis.asyncio as aioredis

    from routing.registry import WORKERS_KEY

    client = aioredis.from_url(url)
    try:
        return int(await client.scard(WORKERS_KEY))
    finally:
        await client.aclose()


def test_dev_refuses_a_port_in_use(start_dev: StartDev) -> None:
    import socket

    ports = DevPorts()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.postgres))
        taken.listen()
        run = start_dev(ports)
        run.proc.wait(timeout=30)
    assert run.proc.returncode == 3
    assert (f"vilokanam dev: port {ports.postgres} is already in use "
            "(set VILOKANAM_DEV_POSTGRES_PORT to use another)") in run.output()


def test_dev_moves_the_sfu_off_the_port_the_user_gave_signaling(start_dev: StartDev) -> None:
    """VILOKANAM_HTTP_PORT=8090 is the SFU worker's default port: the worker
    moves to another, says so, and both serve."""
    sfu_default = Settings.from_env({}).sfu_port
    require(port_is_free(sfu_default), f"port {sfu_default} free (the SFU's default)")
    ports = DevPorts(http=sfu_default)
    run = start_dev(ports, path="/usr/sbin:/sbin", unset=("VILOKANAM_SFU_PORT",))
    run.wait_for(READY_LINE, timeout=30)
    output = run.output()
    moved = re.search(rf"vilokanam dev: VILOKANAM_SFU_PORT is (\d+): its default {sfu_default} "
                      r"is VILOKANAM_HTTP_PORT's", output)
    assert moved, output
    sfu_port = int(moved.group(1))
    assert sfu_port != sfu_default
    assert f"http://127.0.0.1:{sfu_port}" in output  # the printed worker URL follows
    for port in (sfu_default, sfu_port):
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    stop_and_check_nothing_left(run)


def test_dev_names_both_settings_a_user_put_on_one_port(start_dev: StartDev) -> None:
    ports = DevPorts()
    run = start_dev(ports, extra={"VILOKANAM_BILLING_PORT": str(ports.http)})
    run.proc.wait(timeout=30)
    assert run.proc.returncode == 2
    assert run.output().strip().splitlines()[-1] == (
        f"vilokanam dev: VILOKANAM_HTTP_PORT and VILOKANAM_BILLING_PORT are both {ports.http}: "
        "give them different ports")


def test_dev_with_an_unreachable_database_url_is_one_clear_line(
        start_dev: StartDev) -> None:
    ports = DevPorts()
    run = start_dev(ports, extra={"DATABASE_URL": "postgresql://u:pw123456@127.0.0.1:1/x"})
    run.proc.wait(timeout=30)
    assert run.proc.returncode == 3
    assert run.output().strip().splitlines()[-1] == (
        "vilokanam dev: cannot reach Postgres at postgresql://u:***@127.0.0.1:1/x: "
        "connection refused")
    assert "Traceback" not in run.output()
