"""`vilokanam dev`: the whole platform on one machine, owned by one process.

It starts (unless given URLs) a private Postgres, Redis and chopsticks chain
under VILOKANAM_DATA_DIR, applies migrations, then runs signaling, one SFU
worker, billing and media as child processes, prints every URL, and on Ctrl-C or
SIGTERM stops them all — within 10 s, leaving no process behind."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Protocol

from vilokanam.admin import DEV_GRANT, grant_dev_funds
from vilokanam.config import Settings, redact_url
from vilokanam.dev_ports import assign_ports, check_ports_free, sfu_worker_settings
from vilokanam.logs import register_secret
from vilokanam.migrations import migrate
from vilokanam.services.process import ManagedProcess

STARTUP_TIMEOUT = 30.0
ROLE_STOP_TIMEOUT = 5.0
DEV_ESCROW_URI = "//VilokanamEscrow"
DEV_ACCOUNT_FUNDS = 1_000_000 * 10**12  # one million tokens each, in planck
ESCROW_FUNDS = 1_000 * 10**12


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class DevStack:
    settings: Settings
    services: list[Stoppable] = field(default_factory=list)  # stopped in reverse order
    roles: list[ManagedProcess] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # each role's /healthz port, by name
    workers: list[Settings] = field(default_factory=list)  # the SFU workers' own settings
    chain_note: str = ""

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    def start_stores(self) -> None:
        from vilokanam.services.postgres import PostgresServer
        from vilokanam.services.redis import RedisServer

        if not self.settings.database_url:
            pg = PostgresServer(self.data_dir / "postgres", self.settings.dev_postgres_port)
            pg.start()
            self.services.append(pg)
            self.settings = replace(self.settings, database_url=pg.url)
        if not self.settings.redis_url:
            rd = RedisServer(self.data_dir / "redis", self.settings.dev_redis_port)
            rd.start()
            self.services.append(rd)
            self.settings = replace(self.settings, redis_url=rd.url)

    def start_chain(self) -> None:
        from vilokanam.accounts import address_of
        from vilokanam.services.chain import ChainNode, dev_accounts, node_available

        if self.settings.substrate_url:
            self.chain_note = "using the chain at SUBSTRATE_URL"
            return
        if not node_available():
            self.chain_note = ("Node.js 20+ not found: on-chain settlement is OFF "
                               "(install Node to run the local chain)")
            return
        escrow_uri = self.settings.escrow_uri or DEV_ESCROW_URI
        funded = {address: DEV_ACCOUNT_FUNDS for address in dev_accounts().values()}
        funded[address_of(escrow_uri)] = ESCROW_FUNDS
        chain = ChainNode(self.data_dir / "chain", self.settings.dev_chain_port, funded=funded)
        assert chain.npm_dir is not None
        print(chain_preparing_line(chain.npm_dir), flush=True)
        chain.provision()
        chain.start()
        self.services.append(chain)
        self.settings = replace(self.settings, substrate_url=chain.url, escrow_uri=escrow_uri,
                                escrow_account=self.settings.escrow_account
                                or address_of(escrow_uri))

    def start_roles(self) -> None:
        logs = self.data_dir / "logs"
        self.workers = workers = sfu_worker_settings(self.settings)
        for role in ("signaling", "sfu", "billing", "media"):
            runs = ([(f"sfu{n + 1}" if n else "sfu", worker, worker.sfu_port)
                     for n, worker in enumerate(workers)] if role == "sfu"
                    else [(role, self.settings, self._port(role))])
            for name, settings, port in runs:
                env = {**_inherited_env(), **settings.as_env(role)}  # each role its secrets
                proc = ManagedProcess(name, [sys.executable, "-m", "vilokanam", role],
                                      log_path=logs / f"{name}.log", env=env)
                proc.start()
                self.roles.append(proc)
                self.ports[name] = port

    def _port(self, role: str) -> int:
        return {"signaling": self.settings.http_port, "billing": self.settings.billing_port,
                "media": self.settings.media_port}[role]

    def wait_until_serving(self, deadline: float) -> None:
        for proc in self.roles:
            while not _healthy(self.ports[proc.name]):
                if not proc.running:
                    raise RoleFailed(proc)
                if time.monotonic() > deadline:
                    raise RoleFailed(proc, "did not serve /healthz within 30 s")
                time.sleep(0.1)

    def failed_role(self) -> ManagedProcess | None:
        return next((p for p in self.roles if not p.running), None)

    def stop(self) -> None:
        for proc in self.roles:
            proc.send_signal(signal.SIGTERM)  # all at once, then wait for each
        for proc in self.roles:
            proc.stop(timeout=ROLE_STOP_TIMEOUT)
        for service in reversed(self.services):
            service.stop()

    def urls(self) -> list[tuple[str, str]]:
        base = self.settings.base_url
        chain = self.settings.substrate_url or f"off — {self.chain_note}"
        return [
            ("web app", f"{base}/"),
            ("studio", f"{base}/studio"),
            ("wallet", f"{base}/wallet"),
            ("metrics", f"{base}/metrics"),
            *((f"sfu worker {n + 1} (private)" if self.settings.sfu_workers > 1
               else "sfu worker (private)", worker.sfu_control_url)
              for n, worker in enumerate(self.workers)),
            ("billing", f"http://127.0.0.1:{self.settings.billing_port}/healthz"),
            ("media", f"http://127.0.0.1:{self.settings.media_port}/healthz"),
            ("video storage", str(self.settings.media_dir.resolve())),
            ("postgres", redact_url(self.settings.database_url or "")),
            ("redis", redact_url(self.settings.redis_url or "")),
            ("chain rpc", chain),
            ("data dir", str(self.data_dir)),
            ("logs", str(self.data_dir / "logs")),
        ]


def chain_preparing_line(npm_dir: Path) -> str:
    """What dev says before it provisions the chain: the npm install (a minute
    or two, 270 MB) is announced only when it is about to happen."""
    from vilokanam.services.chain import packages_installed

    if packages_installed(npm_dir):
        return "preparing the local chain..."
    return "preparing the local chain (first run: installing its npm packages)..."


class RoleFailed(RuntimeError):
    def __init__(self, proc: ManagedProcess, why: str = "exited") -> None:
        super().__init__(f"{proc.name} {why}; the end of {proc.log_path}:\n{proc.tail()}")


def _inherited_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class _Stop(Exception):
    pass


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


async def _grant_dev_funds(settings: Settings) -> int:
    from vilokanam.services.chain import dev_accounts

    return await grant_dev_funds(settings, list(dev_accounts().values()))


def _dev_token_secret(data_dir: Path) -> str:
    """A token secret kept in the data dir, so tokens survive a dev restart."""
    import secrets

    path = data_dir / "token_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def run_dev(settings: Settings, given: Collection[str] = ()) -> int:
    """`given`: the variables the user set (their ports are kept as given)."""
    settings, moves = assign_ports(settings, given)
    for move in moves:
        print(f"vilokanam dev: {move}", flush=True)
    check_ports_free(settings)
    sfu_worker_settings(settings)  # refuses impossible VILOKANAM_SFU_WORKERS before starting
    if settings.token_secret is None:
        settings = replace(settings, token_secret=_dev_token_secret(settings.data_dir.resolve()))
    register_secret(settings.token_secret)
    stack = DevStack(replace(settings, dev_mode=True))
    started = time.monotonic()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start_stores()
        assert stack.settings.database_url
        applied = asyncio.run(migrate(stack.settings.database_url))
        print(f"migrations applied: {', '.join(applied) or 'none pending'}", flush=True)
        granted = asyncio.run(_grant_dev_funds(stack.settings))
        if granted:
            print(f"granted {DEV_GRANT} tokens of balance to {granted} dev accounts", flush=True)
        stack.start_chain()
        stack.start_roles()
        # The first run's npm install is not part of the 30 s: roles are.
        stack.wait_until_serving(time.monotonic() + STARTUP_TIMEOUT)
        _print_ready(stack, time.monotonic() - started)
        while (failed := stack.failed_role()) is None:
            time.sleep(0.2)
        print(f"vilokanam dev: {RoleFailed(failed)}", file=sys.stderr)
        return 1
    except _Stop:
        print("\nstopping...", flush=True)
        return 0
    except RoleFailed as exc:
        print(f"vilokanam dev: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped.", flush=True)


def _print_ready(stack: DevStack, seconds: float) -> None:
    print(f"\nVilokanam-view is running ({seconds:.1f} s). Ctrl-C stops everything.")
    width = max(len(name) for name, _ in stack.urls())
    for name, url in stack.urls():
        print(f"  {name:<{width}}  {url}")
    print(flush=True)
