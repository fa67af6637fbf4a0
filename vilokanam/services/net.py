"""Port helpers shared by the local service supervisors and the role servers."""

from __future__ import annotations

import socket
import time


class PortInUseError(OSError):
    def __init__(self, port: int, setting: str | None = None) -> None:
        where = f" (set {setting} to use another)" if setting else ""
        super().__init__(f"port {port} is already in use{where}")
        self.port = port


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def ensure_port_free(port: int, host: str = "127.0.0.1", setting: str | None = None) -> None:
    if port and not port_is_free(port, host):
        raise PortInUseError(port, setting)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> bool:
    """True once something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
