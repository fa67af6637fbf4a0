"""bench/live_ticks.py: the live tick message's CPU before and now, on the
same audience, whose ticks both formats must give alike (the script asserts
it before it times anything)."""

from __future__ import annotations

import pytest

from bench.live_ticks import main, measure


def test_both_formats_give_the_same_ticks_and_the_encoder_is_cheaper() -> None:
    rows, old_bytes, new_bytes = measure(viewers=500, listeners=10, repeat=5)
    assert [row.step.split(":")[0] for row in rows] == ["worker", "signaling"]
    assert new_bytes < old_bytes
    encode = rows[0]
    # ~30x on this machine: a factor of 2 holds on any load
    assert encode.now_s * 2 < encode.before_s, encode


def test_the_script_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--viewers", "100", "--repeat", "2"])
    out = capsys.readouterr().out
    assert "| worker: encode |" in out and "| signaling: decode" in out
