"""A private Postgres server: the binaries come from the `pgserver` wheel
(Postgres 16), so no system installation or service is needed."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vilokanam.services.net import ensure_port_free, wait_for_port
from vilokanam.services.process import ManagedProcess, ServiceStartError

# Postgres refuses to run as root; when we are root it runs as this user.
SYSTEM_USER = "vilokanam-pg"
DATABASE = "vilokanam"


def postgres_bin_dir() -> Path:
    """The pgserver wheel's binaries (found without importing pgserver, whose
    import has side effects), else a system Postgres on PATH."""
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "pginstall" / "bin"
        if (bundled / "postgres").exists():
            return bundled
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    raise ServiceStartError("no Postgres binaries: install the project (pip pulls in pgserver)")


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SYSTEM_USER],
            check=True, capture_output=True,
        )
    return SYSTEM_USER


def _open_path_for(user: str, path: Path) -> None:
    """Let `user` reach `path`: chown it and make its parents traversable."""
    entry = pwd.getpwnam(user)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class PostgresServer:
    """`data_dir` holds PGDATA and the server log. `fast` (the test harness)
    skips fsync: a machine crash could lose data, a process crash cannot."""

    data_dir: Path
    port: int
    fast: bool = False
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.socket_dir = self.data_dir / "pgsocket"
        self.bin = postgres_bin_dir()
        self.user = _system_user()
        options = ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
        if self.fast:
            # fsync=off only skips flushing the OS cache to disk; a commit is still
            # written before it returns (synchronous_commit stays on), so a kill -9
            # of Postgres loses nothing committed — what fault tests rely on.
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self.process = ManagedProcess(
            name="postgres",
            argv=[str(self.bin / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                  "-k", str(self.socket_dir), *options],
            log_path=self.data_dir / "postgres.log",
            stop_signal=signal.SIGINT,  # "fast" shutdown: ends sessions, checkpoints
            run_as=self.user,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._initdb()
        ensure_port_free(self.port)
        self.process.start()
        if not wait_for_port(self.port, timeout=timeout) or not self._ready(timeout):
            tail = self.process.tail()
            self.process.stop()
            raise ServiceStartError(f"Postgres did not start on port {self.port}:\n{tail}")
        self._ensure_database()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def _run_tool(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        user = pwd.getpwnam(self.user) if self.user else None
        return subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True, text=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )

    def _initdb(self) -> None:
        for path in (self.pgdata, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            if self.user:
                _open_path_for(self.user, path)
        if (self.pgdata / "PG_VERSION").exists():
            return
        done = self._run_tool("initdb", "-D", str(self.pgdata), "-U", "postgres",
                              "--auth=trust", "--encoding=UTF8", "--no-instructions")
        if done.returncode != 0:
            raise ServiceStartError(f"initdb failed:\n{done.stdout}{done.stderr}")

    def _ready(self, timeout: float) -> bool:
        """Accepting connections — after a crash, only once recovery is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self._run_tool("pg_isready", "-h", "127.0.0.1", "-p", str(self.port),
                                  "-U", "postgres", "-d", "postgres", "-t", "1")
            if done.returncode == 0:
                return True
            if not self.process.running:
                return False
            time.sleep(0.1)
        return False

    def _ensure_database(self) -> None:
        psql = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tA"]
        exists = self._run_tool("psql", *psql, "-d", "postgres", "-c",
                                f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if exists.stdout.strip() != "1":
            created = self._run_tool("psql", *psql, "-d", "postgres", "-c",
                                     f'CREATE DATABASE "{DATABASE}"')
            if created.returncode != 0:
                raise ServiceStartError(f"could not create database: {created.stderr}")
