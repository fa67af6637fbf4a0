"""Background tasks with an owner: every task a component starts is kept,
logged if it fails, and cancelled when the component closes — none is left
running after shutdown, none fails silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from vilokanam.logs import log_event

log = logging.getLogger("vilokanam.tasks")


class TaskOwner:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_event(log, "task.failed", logging.ERROR, owner=self.owner, task=task.get_name(),
                      error=repr(task.exception()))

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def poll_forever(step: Callable[[], Awaitable[Any]], *, waiting_event: str,
                       poll_interval: float, max_backoff: float) -> None:
    """Run `step` every `poll_interval` until cancelled. A failing step is
    logged as `waiting_event` and retried with exponential backoff: a worker
    loop that died would silently stop crediting or paying."""
    backoff = poll_interval
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log_event(log, waiting_event, logging.WARNING, error=type(exc).__name__,
                      detail=str(exc)[:200], retry_in_s=round(backoff, 2))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
            continue
        backoff = poll_interval
        await asyncio.sleep(poll_interval)
