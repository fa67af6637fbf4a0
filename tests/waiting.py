"""Waiting on a condition with a deadline: the tests' one way to wait for
something another task, process or server does (never a bare sleep)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

POLL_INTERVAL = 0.05


async def wait_until(check: Callable[[], Any], what: str, timeout: float = 10.0,
                     interval: float = POLL_INTERVAL) -> Any:
    """Call `check` (sync or async) until it returns something truthy, and
    return that; fail naming `what` once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(check: Callable[[], Any], what: str, timeout: float = 10.0,
                    interval: float = POLL_INTERVAL) -> Any:
    """`wait_until` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return value


async def wait_for_value(read: Callable[[], Any], ok: Callable[[Any], bool],
                         what: str = "the value", timeout: float = 10.0,
                         interval: float = POLL_INTERVAL) -> Any:
    """The first value of `read()` (sync or async) for which `ok` holds; the
    failure names `what` and the last value read."""
    last: list[Any] = []

    async def check() -> tuple[Any] | None:
        value = read()
        if inspect.isawaitable(value):
            value = await value
        last[:] = [value]
        return (value,) if ok(value) else None  # a tuple: truthy even for a falsy value

    try:
        return (await wait_until(check, what, timeout=timeout, interval=interval))[0]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last[0] if last else None!r}") from None
