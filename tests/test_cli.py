"""The `vilokanam` command as a user runs it: roles start, serve health and
readiness, stop cleanly; bad input ends in one clear line and a non-zero exit."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ROLE_PORT, http_get, role_env, start_role, wait_healthy
from vilokanam.config import Settings


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vilokanam", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("role", ["signaling", "sfu", "billing"])
def test_role_serves_health_readiness_metrics_and_stops_on_sigterm(
        role: str, settings: Settings, tmp_path: Path) -> None:
    port = getattr(settings, ROLE_PORT[role])
    proc = start_role(settings, role, tmp_path)
    try:
        wait_healthy(proc, port)
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200
        assert json.loads(body) == {"ready": True, "role": role,
                                    "checks": {"postgres": True, "redis": True}}
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"# TYPE" in body
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.stop(timeout=10)
        assert code == 0, proc.tail()
        assert time.monotonic() - started < 10
    finally:
        proc.stop()
    assert "role.stopped" in proc.tail()


def test_readyz_turns_503_when_redis_goes_away(settings: Settings, tmp_path: Path,
                                               stores) -> None:  # type: ignore[no-untyped-def]
    redis_server = stores.owned_redis()
    proc = start_role(settings, "signaling", tmp_path)
    try:
        wait_healthy(proc, settings.http_port)
        redis_server.kill()
        status, body = http_get(f"http://127.0.0.1:{settings.http_port}/readyz", timeout=5)
        assert status == 503
        assert json.loads(body)["checks"] == {"postgres": True, "redis": False}
        assert http_get(f"http://127.0.0.1:{settings.http_port}/healthz")[0] == 200
    finally:
        proc.stop()
        stores.ensure_running()


@pytest.mark.parametrize("role", ["signaling", "sfu", "billing", "migrate"])
def test_unreachable_database_is_one_clear_line(role: str, settings: Settings) -> None:
    url = "postgresql://someone:hunter22@127.0.0.1:1/nowhere"
    env = role_env(settings, DATABASE_URL=url)
    done = run_cli(role, env=env)
    assert done.returncode == 3
    assert done.stderr.strip().splitlines()[-1] == (
        f"vilokanam {role}: cannot reach Postgres at postgresql://someone:***@127.0.0.1:1/"
        "nowhere: connection refused")
    assert "Traceback" not in done.stderr and "hunter22" not in done.stderr + done.stdout


def test_unreachable_redis_is_one_clear_line(settings: Settings) -> None:
    env = role_env(settings, REDIS_URL="redis://127.0.0.1:1/0")
    done = run_cli("sfu", env=env)
    assert done.returncode == 3
    assert "vilokanam sfu: cannot reach Redis at redis://127.0.0.1:1/0" in done.stderr
    assert "Traceback" not in done.stderr


def test_port_in_use_names_the_port(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", settings.http_port))
        taken.listen()
        done = run_cli("signaling", env=role_env(settings))
    assert done.returncode == 3
    assert (f"vilokanam signaling: port {settings.http_port} is already in use "
            "(set VILOKANAM_HTTP_PORT to use another)") in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_setting_names_the_variable(settings: Settings) -> None:
    done = run_cli("billing", env=role_env(settings, VILOKANAM_BILLING_PORT="lots"))
    assert done.returncode == 2
    assert "VILOKANAM_BILLING_PORT must be a port number, got 'lots'" in done.stderr


@pytest.mark.parametrize("args", [["launch"], ["sfu", "--turbo"], []])
def test_unknown_subcommand_or_flag_prints_usage(args: list[str]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: vilokanam")


def test_help_lists_every_subcommand() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("dev", "migrate", "signaling", "sfu", "billing"):
        assert command in done.stdout


def test_credit_command_credits_and_refuses_bad_amounts(settings: Settings) -> None:
    env = role_env(settings)
    account = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
    done = run_cli("credit", "--account", account, "--amount", "2.5", env=env)
    assert done.returncode == 0, done.stderr
    first = done.stdout.strip()
    assert first.startswith("credited 2.5 ROC; balance ")
    done = run_cli("credit", "--account", account, "--amount", "0.5", env=env)
    before = Decimal(first.rsplit("balance ", 1)[1].split()[0])
    after = Decimal(done.stdout.strip().rsplit("balance ", 1)[1].split()[0])
    assert done.stdout.startswith("credited 0.5 ROC; ") and after == before + Decimal("0.5")
    for amount in ("-1", "0", "abc", "0.0000000000001"):
        bad = run_cli("credit", "--account", account, "--amount", amount, env=env)
        assert bad.returncode == 2 and "--amount must be" in bad.stderr, amount
    bad = run_cli("credit", "--account", "nobody", "--amount", "1", env=env)
    assert bad.returncode == 2 and "--account" in bad.stderr


async def test_admin_moderator_grants_the_role(settings: Settings, db: Any) -> None:
    env = role_env(settings)
    account = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
    chain_prefix = "FoQJpPyadYccjavVdTWxpxU7rUEaYhfLCPwXgkfD6Zat9QP"  # the same key, prefix 2
    for given in (account, chain_prefix, account):  # idempotent, any prefix
        done = await asyncio.to_thread(run_cli, "admin", "moderator", given, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{account} is a moderator"
    assert await db.fetch("SELECT account_id, role FROM users") == [(account, "moderator")]
    bad = await asyncio.to_thread(run_cli, "admin", "moderator", "nobody", env=env)
    assert bad.returncode == 2 and "ACCOUNT" in bad.stderr
    usage = await asyncio.to_thread(run_cli, "admin", env=env)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: vilokanam admin")


async def test_admin_unsuspend_lifts_a_suspension(settings: Settings, db: Any) -> None:
    env = role_env(settings)
    account = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
    await db.execute("INSERT INTO users (account_id, suspended_at) VALUES ($1, now())", account)
    done = await asyncio.to_thread(run_cli, "admin", "unsuspend", account, env=env)
    assert (done.returncode, done.stdout.strip()) == (0, f"{account} is no longer suspended")
    assert await db.fetchval("SELECT suspended_at FROM users") is None
    done = await asyncio.to_thread(run_cli, "admin", "unsuspend", account, env=env)
    assert (done.returncode, done.stdout.strip()) == (0, f"{account} is not suspended")
