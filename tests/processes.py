"""Role processes for tests: the real `vilokanam <role>` command as a child."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.waiting import wait_until_sync
from vilokanam.config import Settings
from vilokanam.services.process import ManagedProcess

ROLE_PORT = {"signaling": "http_port", "sfu": "sfu_port", "billing": "billing_port",
             "media": "media_port"}


def role_env(settings: Settings, role: str | None = None, **extra: str) -> dict[str, str]:
    """The role's environment: its settings, without other roles' secrets."""
    return {"PATH": os.environ.get("PATH", ""), **settings.as_env(role), **extra}


def start_role(settings: Settings, role: str, log_dir: Path, *args: str) -> ManagedProcess:
    proc = ManagedProcess(role, [sys.executable, "-m", "vilokanam", role, *args],
                          log_path=log_dir / f"{role}.log", env=role_env(settings, role))
    proc.start()
    return proc


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_healthy(proc: ManagedProcess, port: int, timeout: float = 20.0) -> None:
    def healthy() -> bool:
        assert proc.running, f"{proc.name} exited early:\n{proc.tail()}"
        try:
            return http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        except OSError:
            return False

    wait_until_sync(healthy, f"{proc.name} serving /healthz", timeout=timeout, interval=0.1)


@dataclass
class Platform:
    """The sfu, signaling and billing roles as processes, as `vilokanam dev` runs them."""

    settings: Settings
    roles: list[ManagedProcess]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}{path}"

    def post(self, path: str, body: dict, token: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url(path), data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.load(resp))


@pytest.fixture
def platform(settings: Settings, tmp_path: Path) -> Iterator[Platform]:
    settings = dataclasses.replace(settings, dev_mode=True, token_secret="e2e-" + "x" * 40)
    # billing flushes the ticks, so the wallet's sessions show what was billed.
    roles = [start_role(settings, "sfu", tmp_path), start_role(settings, "signaling", tmp_path),
             start_role(settings, "billing", tmp_path)]
    try:
        wait_healthy(roles[0], settings.sfu_port)
        wait_healthy(roles[1], settings.http_port)
        wait_healthy(roles[2], settings.billing_port)
        yield Platform(settings, roles)
    finally:
        for role in roles:
            role.stop()
