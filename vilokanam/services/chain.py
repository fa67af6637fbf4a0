"""The local Substrate dev chain: chopsticks (an npm package that runs a real
runtime's wasm in Node) booted offline from the raw genesis spec of Asset Hub
Rococo, which `@polkadot-api/known-chains` ships. Nothing is fetched from the
network at run time; `npm ci` talks to the npm registry only, on first use.

The chain lives in memory: every start is a fresh genesis with the configured
accounts funded, so a restart (or kill -9) loses every block since. chopsticks'
`db:`/`resume:` would need the sqlite3 native module (its install script
downloads a prebuilt binary from GitHub) and, even when built from source,
resuming a chain booted from a genesis spec is broken in chopsticks 1.5.1:
block 0's hash changes, so every signed extrinsic fails with `badProof`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vilokanam.resources import resource_dir
from vilokanam.services.net import ensure_port_free
from vilokanam.services.process import ManagedProcess, ServiceStartError

# What the genesis spec says (checked against it on every provision()):
CHAIN_SS58_PREFIX = 2  # the runtime's System.SS58Prefix; the spec's properties omit it
TOKEN_DECIMALS = 12
TOKEN_SYMBOL = "ROC"

NODE_MIN_MAJOR = 20  # chopsticks 1.5 declares Node 22 but runs on 20
GENESIS_MODULE = "@polkadot-api/known-chains/rococo_v2_2_asset_hub"
CHOPSTICKS_CLI = Path("node_modules/@acala-network/chopsticks/chopsticks.cjs")
# No lifecycle scripts: the only ones are sqlite3's (downloads a prebuilt binary
# from GitHub; unused without `db:`) and known-chains' (runs a file it does not
# ship). chopsticks declares Node >= 22, so a strict-engine npmrc must not stop us.
NPM_CI_FLAGS = ("--ignore-scripts", "--no-audit", "--no-fund", "--engine-strict=false",
                "--prefer-offline", "--loglevel=error")
DEV_ACCOUNT_NAMES = ("alice", "bob", "charlie", "dave", "eve", "ferdie")

_EXTRACT_GENESIS_JS = (
    "require('fs').writeFileSync(process.argv[2], require(process.argv[1]).default)"
)


def node_available() -> bool:
    """Node >= 20 and npm on PATH: what the dev chain needs."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        return False
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout
        return int(version.strip().lstrip("v").split(".")[0]) >= NODE_MIN_MAJOR
    except (OSError, subprocess.SubprocessError, ValueError):
        return False


def dev_accounts() -> dict[str, str]:
    """The well-known dev keys //Alice … //Ferdie (sr25519) in the chain's prefix."""
    from substrateinterface import Keypair  # heavy import, only when asked

    return {name: Keypair.create_from_uri(f"//{name.capitalize()}",
                                          ss58_format=CHAIN_SS58_PREFIX).ss58_address
            for name in DEV_ACCOUNT_NAMES}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One installer at a time per npm dir (parallel test sessions share one)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".install.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], cwd: Path, what: str, timeout: float) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ServiceStartError(f"{what} took longer than {timeout:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise ServiceStartError(f"{what} failed ({done.returncode}):\n{tail}")


def packages_installed(npm_dir: Path) -> bool:
    """True when `npm_dir` holds the project's pinned chain packages: the lock
    file a stamp recorded (its sha256) is today's, and chopsticks is there."""
    stamp = npm_dir / ".lock-sha256"
    wanted = _sha256(resource_dir("chain") / "package-lock.json")
    installed = stamp.read_text().strip() if stamp.exists() else None
    return installed == wanted and (npm_dir / CHOPSTICKS_CLI).exists()


def install_packages(npm_dir: Path, timeout: float = 600.0) -> None:
    """`npm ci` the project's pinned chain packages into `npm_dir`, unless the
    same lock file is already installed there."""
    source = resource_dir("chain")
    stamp = npm_dir / ".lock-sha256"
    with _locked(npm_dir):
        if packages_installed(npm_dir):
            return
        wanted = _sha256(source / "package-lock.json")
        stamp.unlink(missing_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(source / name, npm_dir / name)
        npm = shutil.which("npm")
        if npm is None:
            raise ServiceStartError("npm is not on PATH: install Node >= 20 for the dev chain")
        _run([npm, "ci", *NPM_CI_FLAGS], npm_dir, "npm ci of the chain packages", timeout)
        stamp.write_text(wanted + "\n")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise ServiceStartError("node is not on PATH: install Node >= 20 for the dev chain")
    return node


def extract_genesis(npm_dir: Path, target: Path) -> None:
    """Write the Asset Hub Rococo raw spec (a JS string in known-chains) to
    `target`, and check that it still says what our constants say."""
    partial = target.with_suffix(".partial")
    _run([_node(), "-e", _EXTRACT_GENESIS_JS, GENESIS_MODULE, str(partial)], npm_dir,
         "extracting the genesis spec", 60.0)
    properties = json.loads(partial.read_text())["properties"]
    if (properties.get("tokenSymbol"), properties.get("tokenDecimals")) != (
            TOKEN_SYMBOL, TOKEN_DECIMALS):
        raise ServiceStartError(f"unexpected genesis token properties: {properties}")
    os.replace(partial, target)


def _funding(funded: dict[str, int]) -> dict[str, Any]:
    """import-storage for the funded accounts. Amounts go as decimal strings:
    chopsticks parses its config in JavaScript, where numbers above 2^53 lose
    digits. TotalIssuance is the genesis one (0 in this spec) plus the funds."""
    for address, amount in funded.items():
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError(f"funding for {address} must be a non-negative int (planck)")
    accounts = [[[address], {"providers": 1, "data": {"free": str(amount)}}]
                for address, amount in funded.items()]
    return {"System": {"Account": accounts},
            "Balances": {"TotalIssuance": str(sum(funded.values()))}}


@dataclass
class ChainNode:
    """One chopsticks process on 127.0.0.1:`port` that builds a block as soon
    as a transaction arrives. `funded` maps SS58 address -> free planck at
    genesis. `npm_dir` holds node_modules (default `data_dir/npm`); tests point
    it at a shared cache because an install takes seconds and 270 MB."""

    data_dir: Path
    port: int
    funded: dict[str, int] = field(default_factory=dict)
    npm_dir: Path | None = None
    process: ManagedProcess = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.npm_dir = (self.npm_dir or self.data_dir / "npm").resolve()
        self.genesis_path = self.data_dir / "genesis.json"
        self.config_path = self.data_dir / "chopsticks.yml"
        # An absolute config path matters: for a bare file name that does not
        # exist, chopsticks downloads a config of that name from GitHub.
        self.process = ManagedProcess(
            name="chain",
            argv=[shutil.which("node") or "node", str(self.npm_dir / CHOPSTICKS_CLI),
                  "--config", str(self.config_path)],
            log_path=self.data_dir / "chain.log",
            cwd=self.data_dir,  # chopsticks reads a .env from its working directory
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def provision(self) -> None:
        """Install the packages (if needed), extract the genesis, write the config."""
        assert self.npm_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        install_packages(self.npm_dir)
        extract_genesis(self.npm_dir, self.genesis_path)
        self.write_config()

    def write_config(self) -> None:
        """chopsticks' config, as JSON (which is YAML): no YAML library needed."""
        config: dict[str, Any] = {
            "genesis": str(self.genesis_path),
            "host": "127.0.0.1",
            "port": self.port,
            "build-block-mode": "Instant",
        }
        if self.funded:
            config["import-storage"] = _funding(self.funded)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def start(self, timeout: float = 60.0) -> None:
        """Start chopsticks and wait until its RPC answers on our port."""
        if not self.config_path.exists():
            self.provision()
        # chopsticks silently moves to the next port when one is taken: refuse.
        ensure_port_free(self.port)
        log_offset = self._log_size()
        self.process.start()
        if not self._wait_ready(log_offset, timeout):
            tail = self.process.tail(60)
            self.process.stop()
            raise ServiceStartError(f"the chain did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """kill -9, as a crash would (the in-memory chain is gone with it)."""
        self.process.kill()

    def rpc(self, method: str, params: list[Any] | None = None, timeout: float = 5.0) -> Any:
        """One JSON-RPC call over HTTP (chopsticks serves HTTP and ws on one port)."""
        body = json.dumps({"id": 1, "jsonrpc": "2.0", "method": method,
                           "params": params or []}).encode()
        request = urllib.request.Request(self.http_url, data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def _log_size(self) -> int:
        try:
            return self.process.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _listening(self, log_offset: int) -> bool:
        """This run's log says it listens on our port (not on port + 1)."""
        with open(self.process.log_path, "rb") as log:
            log.seek(log_offset)
            text = log.read().decode(errors="replace")
        return f"listening on http://127.0.0.1:{self.port} " in text

    def _wait_ready(self, log_offset: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.running:
            if self._listening(log_offset):
                try:
                    self.rpc("system_chain", timeout=2.0)
                    return True
                except (OSError, urllib.error.URLError, RuntimeError, ValueError):
                    pass
            time.sleep(0.1)
        return False
