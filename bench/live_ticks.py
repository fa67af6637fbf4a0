"""The live tick message's CPU per viewer (vilokanam/live_ticks.py), measured
in process CPU time (`time.process_time`, so a busy machine slows it less
than wall-clock would).

- worker: building the second's message for V viewers from the worker's
  peers, as sfu/metering.py `TickEmitter.emit` does, in the format before
  (`{peer_id: {"seconds", "cost"}}`: a dict and a Decimal `format_amount`
  per viewer, then `json.dumps`) and now (`live_ticks.encode`);
- signaling: one signaling server's share of one worker's message: decode it
  and make the tick of the L peers it has listeners for, before (json.loads
  of the whole message) and now (`live_ticks.decode` + L lookups).

    .venv/bin/python bench/live_ticks.py                  # 5,000 viewers, 20 listeners
    .venv/bin/python bench/live_ticks.py --viewers 100000 --repeat 20

A measurement script: it prints a table, writes nothing."""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from vilokanam import live_ticks
from vilokanam.money import format_amount, from_planck

DECIMALS = 12
PRICE_PLANCK = 1_000_000_000  # 0.001 token per second, the default stream price


@dataclass
class Meter:
    """The part of sfu/metering.py's ViewerMeter the message reads."""

    price: Decimal
    price_planck: int
    ticks: int


@dataclass
class Viewer:
    """The part of an SFU peer the message reads."""

    peer_id: str
    meter: Meter = field(default_factory=lambda: Meter(
        from_planck(PRICE_PLANCK, DECIMALS), PRICE_PLANCK, 0))


def audience(n: int) -> list[Viewer]:
    viewers = [Viewer(secrets.token_urlsafe(18)) for _ in range(n)]
    for k, viewer in enumerate(viewers):
        viewer.meter.ticks = 1 + k % 3600  # sessions of different ages
    return viewers


def before_encode(ticked: list[Viewer]) -> str:
    live = {p.peer_id: {"seconds": p.meter.ticks, "cost": format_amount(p.meter.price
                                                                         * p.meter.ticks)}
            for p in ticked}
    return json.dumps(live)


def now_encode(ticked: list[Viewer]) -> str:
    return live_ticks.encode([p.peer_id for p in ticked], [p.meter.ticks for p in ticked],
                             [p.meter.price_planck for p in ticked], DECIMALS)


def before_decode(text: str, mine: list[str]) -> list[tuple[int, str]]:
    ticks = json.loads(text)
    return [(ticks[p]["seconds"], ticks[p]["cost"]) for p in mine if p in ticks]


def now_decode(text: str, mine: list[str]) -> list[tuple[int, str]]:
    ticks = live_ticks.decode(text)
    return [tuple(ticks[p]) for p in mine if p in ticks]


def cpu_per_call(call: Callable[[], object], repeat: int) -> float:
    call()  # warm
    began = time.process_time()
    for _ in range(repeat):
        call()
    return (time.process_time() - began) / repeat


@dataclass(frozen=True)
class Row:
    step: str
    before_s: float  # CPU seconds per message
    now_s: float


def measure(viewers: int, listeners: int, repeat: int) -> tuple[list[Row], int, int]:
    """The rows, and the message's size before and now (bytes)."""
    crowd = audience(viewers)
    mine = [v.peer_id for v in crowd[::max(1, viewers // listeners)]]
    old, new = before_encode(crowd), now_encode(crowd)
    assert before_decode(old, mine) == now_decode(new, mine)  # the same ticks either way
    rows = [Row("worker: encode", cpu_per_call(lambda: before_encode(crowd), repeat),
                cpu_per_call(lambda: now_encode(crowd), repeat)),
            Row(f"signaling: decode + the ticks of {len(mine)} listened peers",
                cpu_per_call(lambda: before_decode(old, mine), repeat),
                cpu_per_call(lambda: now_decode(new, mine), repeat))]
    return rows, len(old), len(new)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="live_ticks.py")
    parser.add_argument("--viewers", type=int, default=5000)
    parser.add_argument("--listeners", type=int, default=20,
                        help="peers of the message one signaling server has listeners for")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    rows, old_bytes, new_bytes = measure(args.viewers, args.listeners, args.repeat)
    print(f"{args.viewers} viewers in one worker's message, {old_bytes} bytes before, "
          f"{new_bytes} now; CPU time (process) per viewer of the message:")
    print("| step | before µs | now µs | before/now |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row.step} | {row.before_s * 1e6 / args.viewers:.3f} "
              f"| {row.now_s * 1e6 / args.viewers:.3f} | {row.before_s / row.now_s:.1f}x |")


if __name__ == "__main__":
    main()
