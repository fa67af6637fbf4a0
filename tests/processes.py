"""Role processes for tests: the real `vilokanam <role>` command as a child."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

from vilokanam.config import Settings
from vilokanam.services.process import ManagedProcess

ROLE_PORT = {"signaling": "http_port", "sfu": "sfu_port", "billing": "billing_port",
             "media": "media_port"}


def role_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), **settings.as_env(), **extra}


def start_role(settings: Settings, role: str, log_dir: Path, *args: str) -> ManagedProcess:
    proc = ManagedProcess(role, [sys.executable, "-m", "vilokanam", role, *args],
                          log_path=log_dir / f"{role}.log", env=role_env(settings))
    proc.start()
    return proc


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_healthy(proc: ManagedProcess, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.running, f"{proc.name} exited early:\n{proc.tail()}"
        try:
            if http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} did not serve /healthz in {timeout} s:\n{proc.tail()}")
