"""The tick benchmark's fast form, as CI runs it: the whole path (simulated
workers -> Redis -> the real billing process -> Postgres) at 200 viewers for
4 s, on a standalone Redis and on a 3-node Redis Cluster, every exactness
check passing in both (bench/ticks.py exits 1 otherwise). The full sizes are a
manual run (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_fast_form_runs_and_every_total_is_exact() -> None:
    done = subprocess.run(
        [sys.executable, "bench/ticks.py", "--viewers", "200", "--seconds", "4", "--no-write",
         "--redis", "standalone,cluster"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("10/10 checks pass") == 2, done.stdout[-3000:]  # each mode
    for mode in ("standalone", "cluster"):
        assert f"| 200 | {mode} |" in done.stdout, done.stdout[-3000:]
    assert "FAILED" not in done.stdout
    assert "sync lag p50 / p99 / max" in done.stdout  # the journal's second step measured
