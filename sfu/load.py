"""How loaded the worker's event loop is, measured, so that admission can
refuse a new viewer *before* the loop falls behind (when it does, the
publisher's packets and ICE consent checks wait in the kernel, and a stream
can end for everyone).

Two signals, sampled every `SAMPLE_INTERVAL`: the event-loop thread's CPU
share over the last second (the loop is one thread: near 100% of a core it
cannot keep up; other threads, e.g. a test's own encoders, do not count)
and the event-loop lag (how late a timer fires: it is already behind).
Either above its limit means overloaded."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import Gauge

SAMPLE_INTERVAL = 0.1  # s
WINDOW = 10  # samples: 1 s
SUSTAINED = 3  # samples of the window that must be late

LOOP_LAG = Gauge("vilokanam_sfu_loop_lag_seconds",
                 "Event-loop lag an SFU worker sustained over the last second.")
CPU_SHARE = Gauge("vilokanam_sfu_cpu_share",
                  "CPU an SFU worker's event-loop thread used over the last second, in cores.")


@dataclass
class LoadMonitor:
    max_cpu: float  # cores (1.0 = one full core)
    max_lag: float  # s
    _lags: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _cpu: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=WINDOW + 1))

    @property
    def lag(self) -> float:
        """The lag sustained in the last second: its SUSTAINED-th worst sample,
        so that one pause (a GC run, a slow callback) alone refuses no one."""
        worst = sorted(self._lags, reverse=True)
        return worst[min(SUSTAINED, len(worst)) - 1] if worst else 0.0

    @property
    def cpu(self) -> float:
        if len(self._cpu) < 2:
            return 0.0
        (wall0, cpu0), (wall1, cpu1) = self._cpu[0], self._cpu[-1]
        return (cpu1 - cpu0) / (wall1 - wall0) if wall1 > wall0 else 0.0

    def overloaded(self) -> str | None:
        """Why the worker takes no new viewer now, or None."""
        if self.lag > self.max_lag:
            return f"event loop {self.lag * 1000:.0f} ms behind"
        if self.cpu > self.max_cpu:
            return f"CPU at {self.cpu * 100:.0f}% of a core"
        return None

    def sample(self, lag: float) -> None:
        self._lags.append(max(0.0, lag))
        self._cpu.append((time.monotonic(), time.thread_time()))  # called on the loop thread
        LOOP_LAG.set(self.lag)
        CPU_SHARE.set(self.cpu)

    async def run(self) -> None:
        """Forever: one sample per interval (owned by the worker's TaskOwner)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + SAMPLE_INTERVAL
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.sample(loop.time() - due)
