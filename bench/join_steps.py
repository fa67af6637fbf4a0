"""Where a join's time goes: the steps of one viewer's join, read from the
structured log lines the processes write (vilokanam/logs.py, text format),
each placed on the wall clock relative to the Watch click in the browser.

A join through an edge: the websocket's `watch` arrives at signaling, is
placed, the edge (when it does not carry the stream yet) asks its parent for
the relay and gets its answer, answers the viewer, signaling sends that
answer; then, in parallel, the relay's and the viewer's ICE + DTLS come up,
the edge gets its first keyframe, the viewer's first frame is sent and the
browser shows it. Joins run one after another, so a join's lines are those
between its click and the next one's.

All processes run on one host here (bench/stack.py): their clocks agree."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

RELAY_REQUESTED = "relay requested"  # the join's edge opened a new relay
# (label, event, required fields): the first matching line after the click.
STEPS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("ws watch received", "ws.watch_received", {}),
    ("placed", "ws.watch_placed", {}),
    (RELAY_REQUESTED, "edge.relay_requested", {}),
    ("relay answered (offer/answer)", "edge.relay_opened", {}),
    ("no cached keyframe: asked", "fanout.keyframe_wait", {}),
    ("viewer answered by the worker", "viewer.joined", {}),
    ("answer sent to the browser", "ws.session_started", {"state": "watching"}),
    ("relay ICE+DTLS up", "edge.relay_connected", {}),
    ("first keyframe on the edge", "fanout.first_keyframe", {}),
    ("viewer ICE+DTLS up", "viewer.media_started", {"kind": "video", "role": "viewer"}),
    ("viewer first frame sent", "viewer.first_frame", {"kind": "video", "role": "viewer"}),
)
SHOWN = "first frame shown (browser)"
# Durations a process measured itself (its own clock): (label, event, field).
TIMED: tuple[tuple[str, str, str], ...] = (
    ("signaling: checks + placement", "ws.watch_placed", "ms"),
    ("worker: SDP answer", "viewer.joined", "sdp_ms"),
    ("worker: viewer row written", "viewer.joined", "store_ms"),
    ("edge: relay offer/answer", "edge.relay_opened", "ms"),
)

_LINE = re.compile(r"^(\S+) +\S+ +\S+ (\S+)(.*)$")
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


@dataclass(frozen=True)
class LogLine:
    at_ms: float  # Unix time in ms
    event: str
    fields: dict[str, str]


def parse_line(text: str) -> LogLine | None:
    """One text-format log line (`<iso ts> LEVEL logger event k=v ...`), or
    None for anything else (a traceback's lines, a child's own output)."""
    match = _LINE.match(text.rstrip("\n"))
    if match is None:
        return None
    stamp, event, rest = match.groups()
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    fields = {key: value.strip('"') for key, value in _PAIR.findall(rest)}
    return LogLine(at.timestamp() * 1000, event, fields)


def read_lines(paths: Iterable[Path]) -> list[LogLine]:
    lines: list[LogLine] = []
    for path in paths:
        if path.exists():
            for text in path.read_text(errors="replace").splitlines():
                parsed = parse_line(text)
                if parsed is not None:
                    lines.append(parsed)
    return sorted(lines, key=lambda line: line.at_ms)


def join_steps(lines: list[LogLine], clicks_ms: list[float],
               shown_ms: list[float]) -> list[dict[str, float]]:
    """Per join: each step's ms after its click (a step that did not happen
    in that join, e.g. no relay on a warm edge, is absent)."""
    joins: list[dict[str, float]] = []
    for i, click in enumerate(clicks_ms):
        end = clicks_ms[i + 1] if i + 1 < len(clicks_ms) else float("inf")
        window = [line for line in lines if click <= line.at_ms < end]
        steps: dict[str, float] = {}
        for label, event, required in STEPS:
            for line in window:
                if line.event == event and all(line.fields.get(k) == v
                                               for k, v in required.items()):
                    steps[label] = line.at_ms - click
                    break
        steps[SHOWN] = shown_ms[i]
        joins.append(steps)
    return joins


def medians(joins: list[dict[str, float]]) -> list[tuple[str, str, str]]:
    """Per step that happened: (label, its median ms after the click over the
    joins that had it, "n of N")."""
    out = []
    for label in [*(step[0] for step in STEPS), SHOWN]:
        values = [join[label] for join in joins if label in join]
        if values:
            out.append((label, f"{statistics.median(values):.0f} ms",
                        f"{len(values)} of {len(joins)}"))
    return out


def summary(joins: list[dict[str, float]]) -> list[str]:
    """One line per step: its median ms after the click, over the joins that
    had it, and in how many joins it happened."""
    return [f"  {label:<32} p50 {p50:>9}  ({count} joins)"
            for label, p50, count in medians(joins)]


def table(joins: list[dict[str, float]]) -> list[str]:
    """Every join's steps, one column per join (a step it did not have: -)."""
    labels = [*(step[0] for step in STEPS), SHOWN]
    out = [f"  {'join':<32} " + " ".join(f"{n + 1:>5}" for n in range(len(joins)))]
    for label in labels:
        cells = [f"{join[label]:5.0f}" if label in join else "    -" for join in joins]
        out.append(f"  {label:<32} " + " ".join(cells))
    return out


def timed(lines: list[LogLine], clicks_ms: list[float]) -> list[str]:
    """The medians of what the processes timed themselves, over the joins."""
    out = []
    for label, event, name in TIMED:
        values = [float(line.fields[name]) for line in lines
                  if line.event == event and name in line.fields
                  and clicks_ms and line.at_ms >= clicks_ms[0]]
        if values:
            out.append(f"  {label:<32} p50 {statistics.median(values):6.0f} ms"
                       f"  ({len(values)} times)")
    return out
