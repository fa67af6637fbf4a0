"""bench/pg_ticks.py's fast form: the real record and sync steps against a
private Postgres, every viewer's totals checked by the harness (it exits 1 on
any wrong total or an undrained journal), and the CPU of each step read from
its backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_fast_form_bills_every_tick_and_reads_each_steps_cpu() -> None:
    done = subprocess.run(
        [sys.executable, "bench/pg_ticks.py", "--viewers", "2000", "--seconds", "6",
         "--sync-every", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["problems"] == []
    assert report["ticks"] == report["ticks_synced"] == 2000 * 6
    assert report["syncs"] == 2  # one every 3 s of ticks
    assert report["cpu_s"]["sync"] > 0  # the sync backend's CPU was read
    assert {"checkpointer", "walwriter", "exited"} <= set(report["other_s"])
