"""The chaos run's fast form, as CI runs it: the whole stack (2 signaling, 2
SFU workers, billing, media, Postgres, Redis, chopsticks), one kill -9 and
restart each of a signaling server, an SFU worker and billing, and every check of the full
run (bench/chaos.py exits 1 when any fails: a tick lost or doubled, money off
by a planck, a stream left live, an orphan process, a stuck job). The full
form (20 rounds of every kind) is a manual run (docs/reliability.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from vilokanam.services.chain import node_available

REPO = Path(__file__).resolve().parent.parent
KINDS = ("signaling", "sfu", "billing")

pytestmark = pytest.mark.chain


@pytest.mark.timeout(600)
def test_the_fast_form_kills_each_kind_and_every_check_passes() -> None:
    require(node_available(), "Node >= 20 with npm (for the chopsticks dev chain)")
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", "--rounds", "1", "--kinds", ",".join(KINDS),
         "--watch", "4", "--viewers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=580)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    # The faults landed: each kind's process was killed and came back ...
    for kind in KINDS:
        assert re.search(rf"round 1: killed {kind}\d*, back after", out), out[-4000:]
    # ... and the viewers were billed for what they watched, per kind.
    for kind in KINDS:
        row = re.search(rf"^\| {kind} \| 1 \| (\d+) \| (\d+) \| (\d+) \| 0 \| 0 \| 0 \| "
                        r"[\d.]+ \| pass \|$", out, re.M)
        assert row, out[-4000:]
        assert int(row.group(2)) > 0 and int(row.group(3)) > 0  # billed and counted seconds
    assert "Verdict: nothing lost, doubled or off." in out
