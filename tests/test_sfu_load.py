"""The worker's load measure: event-loop lag and the loop thread's CPU share."""

from __future__ import annotations

import asyncio
import time

from sfu.load import SUSTAINED, WINDOW, LoadMonitor


def test_sustained_lag_over_the_limit_is_overload_until_it_leaves_the_window() -> None:
    monitor = LoadMonitor(max_cpu=10.0, max_lag=0.05)
    monitor.sample(0.01)
    monitor.sample(0.5)  # one pause alone is no overload
    assert monitor.overloaded() is None
    for _ in range(SUSTAINED - 1):
        monitor.sample(0.2)
    assert "200 ms behind" in (monitor.overloaded() or "")
    for _ in range(WINDOW):
        monitor.sample(0.0)
    assert monitor.overloaded() is None


def test_a_busy_loop_thread_is_overload() -> None:
    monitor = LoadMonitor(max_cpu=0.1, max_lag=10.0)
    monitor.sample(0.0)
    end = time.thread_time() + 0.2
    while time.thread_time() < end:  # burn this thread's CPU (the machine is shared)
        pass
    monitor.sample(0.0)
    assert monitor.cpu > 0.1
    assert "CPU" in (monitor.overloaded() or "")


async def test_run_measures_a_blocked_loop() -> None:
    monitor = LoadMonitor(max_cpu=10.0, max_lag=0.05)
    task = asyncio.ensure_future(monitor.run())
    await asyncio.sleep(0.15)
    for _ in range(SUSTAINED):
        time.sleep(0.2)  # the loop is blocked: the next timer fires late
        await asyncio.sleep(0.11)
    task.cancel()
    assert monitor.lag > 0.1
