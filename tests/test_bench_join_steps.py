"""bench/join_steps.py: a join's steps read back from the processes' log
lines as vilokanam/logs.py writes them, each placed after its Watch click."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from pathlib import Path

from bench.join_steps import (
    SHOWN,
    join_steps,
    medians,
    parse_line,
    read_lines,
    summary,
    timed,
)
from vilokanam.logs import _Formatter, log_event


def logged(at: float, event: str, **fields: object) -> str:
    """One line exactly as a process writes it (text format) at Unix time `at`."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Formatter(as_json=False))
    logger = logging.getLogger(f"test.join_steps.{event}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    original = logging.LogRecord.__init__

    def at_time(record: logging.LogRecord, *args: object, **kwargs: object) -> None:
        original(record, *args, **kwargs)  # type: ignore[arg-type]
        record.created = at

    logging.LogRecord.__init__ = at_time  # type: ignore[method-assign]
    try:
        log_event(logger, event, **fields)
    finally:
        logging.LogRecord.__init__ = original  # type: ignore[method-assign]
    return stream.getvalue()


def test_a_line_is_read_back_with_its_time_and_fields() -> None:
    at = datetime(2026, 12, 1, 19, 0, 0, 250000, tzinfo=UTC).timestamp()
    line = parse_line(logged(at, "viewer.joined", stream_id="s1", ms=42, note="two words"))
    assert line is not None
    assert line.event == "viewer.joined" and line.at_ms == at * 1000
    assert line.fields == {"stream_id": "s1", "ms": "42", "note": "two words"}
    assert parse_line("Traceback (most recent call last):") is None


def test_each_join_gets_the_steps_between_its_click_and_the_next(tmp_path: Path) -> None:
    t0 = 1_764_615_600.0  # a whole second: ms precision in the logs is exact here
    signaling, edge = tmp_path / "signaling.log", tmp_path / "sfu.log"
    signaling.write_text(
        logged(t0 + 0.100, "ws.watch_received", conn="c1")
        + logged(t0 + 0.150, "ws.watch_placed", ms=50)
        + logged(t0 + 0.400, "ws.session_started", state="publishing")  # not a watch
        + logged(t0 + 0.420, "ws.session_started", state="watching", ms=320)
        + logged(t0 + 5.080, "ws.watch_received", conn="c2"))
    edge.write_text(
        logged(t0 + 0.200, "edge.relay_requested", stream_id="s")
        + logged(t0 + 0.300, "edge.relay_opened", ms=100)
        + logged(t0 + 0.410, "viewer.joined", sdp_ms=60, store_ms=20)
        + logged(t0 + 0.600, "viewer.media_started", kind="audio", role="viewer")
        + logged(t0 + 0.610, "viewer.media_started", kind="video", role="viewer")
        + logged(t0 + 0.620, "viewer.first_frame", kind="video", role="relay")
        + logged(t0 + 0.630, "viewer.first_frame", kind="video", role="viewer")
        + logged(t0 + 5.300, "viewer.joined", sdp_ms=80, store_ms=30))
    lines = read_lines([signaling, edge, tmp_path / "absent.log"])
    clicks = [t0 * 1000, (t0 + 5) * 1000]
    first, second = join_steps(lines, clicks, [700.0, 400.0])
    assert first == {"ws watch received": 100, "placed": 150, "relay requested": 200,
                     "relay answered (offer/answer)": 300,
                     "viewer answered by the worker": 410, "answer sent to the browser": 420,
                     "viewer ICE+DTLS up": 610, "viewer first frame sent": 630, SHOWN: 700}
    assert second == {"ws watch received": 80, "viewer answered by the worker": 300,
                      SHOWN: 400}
    lines_out = "\n".join(summary([first, second]))
    assert "ws watch received" in lines_out and "(2 of 2 joins)" in lines_out
    assert "relay requested" in lines_out and "(1 of 2 joins)" in lines_out
    assert ("relay requested", "200 ms", "1 of 2") in medians([first, second])
    assert ("ws watch received", "90 ms", "2 of 2") in medians([first, second])
    assert "\n".join(timed(lines, clicks)).count("p50") == 4
    assert timed(lines, clicks)[1].split() == ["worker:", "SDP", "answer", "p50", "70", "ms",
                                                "(2", "times)"]  # the median of 60 and 80
