"""One bench stack: the platform's processes a benchmark runs against, started
and stopped in one place.

    async with BenchStack("vk-soak-", sfu=1, billing=True) as stack:
        ... stack.settings.base_url, stack.roles["sfu"][0].proc.pid ...

Postgres (migrated) and Redis always; `signaling` signaling servers, `sfu`
SFU workers, the billing worker, the media role and a chopsticks chain when
asked. Every role is the real `vilokanam <role>` command as a child
(vilokanam.services.process.ManagedProcess: own process group, dies with its
parent), each on its own port, all on the same stores. Each piece can be
killed (kill -9) and started again on the same port and data: the chaos run
(bench/chaos.py) does that; the other benches only start and stop."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.conftest import ALICE_FUNDS, ESCROW_FUNDS, ESCROW_URI, npm_cache_dir
from tests.processes import ROLE_PORT, start_role, wait_healthy
from vilokanam.config import Settings
from vilokanam.migrations import migrate
from vilokanam.services.chain import ChainNode, dev_accounts
from vilokanam.services.net import free_port
from vilokanam.services.postgres import PostgresServer
from vilokanam.services.process import ManagedProcess
from vilokanam.services.redis import RedisServer

ROLE_ORDER = ("sfu", "billing", "media", "signaling")  # signaling last: it places on workers


@dataclass
class Role:
    """One role process of the stack: its own settings (its port) and log dir."""

    kind: str
    index: int
    settings: Settings
    log_dir: Path
    proc: ManagedProcess | None = None

    @property
    def port(self) -> int:
        return int(getattr(self.settings, ROLE_PORT[self.kind]))

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"

    def start(self) -> None:
        """Start (again: same port, same log, appended) and wait for /healthz."""
        self.proc = start_role(self.settings, self.kind, self.log_dir)
        wait_healthy(self.proc, self.port, timeout=60.0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@dataclass
class BenchStack:
    """Postgres, Redis and the asked-for roles; `settings` is what a client
    uses (signaling 0's base URL, the stores, the secrets)."""

    prefix: str = "vk-bench-"
    signaling: int = 1
    sfu: int = 0
    billing: bool = False
    media: bool = False
    chain: bool = False
    env: Mapping[str, str] = field(default_factory=dict)  # VILOKANAM_* read by Settings
    overrides: Mapping[str, Any] = field(default_factory=dict)  # Settings fields, last
    funded: Mapping[str, int] = field(default_factory=dict)  # chain genesis extra funding
    keep_in: Path | None = None  # leave the stack's directory (role logs, stores) here
    root: Path = field(init=False)
    postgres: PostgresServer = field(init=False)
    redis: RedisServer = field(init=False)
    node: ChainNode | None = field(init=False, default=None)
    settings: Settings = field(init=False)
    roles: dict[str, list[Role]] = field(init=False, default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(init=False, default=None)

    async def __aenter__(self) -> BenchStack:
        if self.keep_in is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=self.prefix)
            self.root = Path(self._tmp.name)
        else:  # a failing run's logs are what explains it
            self.keep_in.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.keep_in))
        try:
            await asyncio.to_thread(self._start)
            await migrate(self.postgres.url)
            await asyncio.to_thread(self._start_roles)
        except BaseException:
            await asyncio.to_thread(self._stop)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.to_thread(self._stop)

    def _start(self) -> None:
        self.postgres = PostgresServer(self.root / "pg", free_port(), fast=True)
        self.redis = RedisServer(self.root / "redis", free_port())
        self.postgres.start()
        self.redis.start()
        chain_env: dict[str, str] = {}
        if self.chain:
            from vilokanam.accounts import address_of

            funded = {address: ALICE_FUNDS for address in dev_accounts().values()}
            funded[address_of(ESCROW_URI)] = ESCROW_FUNDS
            funded.update(self.funded)
            self.node = ChainNode(self.root / "chain", free_port(), funded=funded,
                                  npm_dir=npm_cache_dir())
            self.node.provision()
            self.node.start()
            chain_env = {"SUBSTRATE_URL": self.node.url, "VILOKANAM_ESCROW_URI": ESCROW_URI}
        base = Settings.from_env(
            {**chain_env, **self.env}, database_url=self.postgres.url,
            redis_url=self.redis.url, http_port=free_port(), sfu_port=free_port(),
            billing_port=free_port(), media_port=free_port(), data_dir=self.root / "data")
        self.settings = dataclasses.replace(base, **self.overrides)

    def _start_roles(self) -> None:
        counts = {"sfu": self.sfu, "billing": int(self.billing), "media": int(self.media),
                  "signaling": self.signaling}
        for kind in ROLE_ORDER:
            self.roles[kind] = []
            for _ in range(counts[kind]):
                self.add_role(kind)

    def add_role(self, kind: str, **overrides: Any) -> Role:
        """Start one more process of `kind` (blocking: call it in a thread from a
        loop); `overrides` are Settings fields of that process only."""
        index = len(self.roles.setdefault(kind, []))
        # The first of a kind keeps the client-facing settings' port.
        port: dict[str, Any] = {} if index == 0 else {ROLE_PORT[kind]: free_port()}
        role = Role(kind, index, dataclasses.replace(self.settings, **port, **overrides),
                    self.root / f"{kind}{index}")
        self.roles[kind].append(role)
        role.start()
        return role

    def _stop(self) -> None:
        for kind in reversed(ROLE_ORDER):
            for role in self.roles.get(kind, []):
                role.stop()
        if self.node is not None:
            self.node.stop()
        for server in ("redis", "postgres"):
            if hasattr(self, server):
                getattr(self, server).stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp.name, ignore_errors=True)

    # -- what benches read ------------------------------------------------------------------

    def all_roles(self) -> list[Role]:
        return [role for kind in ROLE_ORDER for role in self.roles.get(kind, [])]

    def processes(self) -> dict[str, ManagedProcess]:
        """Every managed child by name, stores and chain included."""
        found = {role.name: role.proc for role in self.all_roles() if role.proc is not None}
        found["postgres"] = self.postgres.process
        found["redis"] = self.redis.process
        if self.node is not None:
            found["chain"] = self.node.process
        return found

    def bases(self) -> list[str]:
        """The base URL of every signaling server."""
        return [role.settings.base_url for role in self.roles.get("signaling", [])]
