"""Background tasks with an owner: every task a component starts is kept,
logged if it fails, and cancelled when the component closes — none is left
running after shutdown, none fails silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import Counter

from vilokanam.logs import log_event

log = logging.getLogger(__name__)

LOOP_FAILURES = Counter(
    "vilokanam_loop_failures_total",
    "Failed iterations of a long-running loop (the loop goes on after a backoff)", ["loop"])


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


async def run_forever(name: str, step: Callable[[], Awaitable[object]], *, every: float,
                      max_backoff: float | None = None, failure_event: str | None = None,
                      at_once: bool = False) -> None:
    """The one policy for every long-running loop: call `step` every `every`
    seconds until cancelled — only the loop's owner ends it.

    Paced by deadlines, so a slow step is not followed by a full extra wait and
    the beat does not drift; a loop that fell behind skips the beats it missed
    rather than bursting. A step that returns True has more to do now (a
    backlog) and runs again at once (any other result is ignored). A failing step is logged
    (`failure_event`, default `<name>.failed`, with the error) and counted in
    vilokanam_loop_failures_total{loop}; the next try comes after a backoff
    that doubles from `every` up to `max_backoff` (default `every`: a clock
    keeps its beat). A loop that died on one error would silently stop
    billing, crediting, paying or reaping."""
    clock = asyncio.get_running_loop()
    ceiling = every if max_backoff is None else max(every, max_backoff)
    event = failure_event or f"{name}.failed"
    backoff = every
    deadline = clock.time() + (0.0 if at_once else every)
    while True:
        await asyncio.sleep(max(0.0, deadline - clock.time()))
        try:
            more = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # see the docstring
            LOOP_FAILURES.labels(name).inc()
            log_event(log, event, logging.WARNING, loop=name, error=repr(exc)[:300],
                      retry_in_s=round(backoff, 3))
            deadline = clock.time() + backoff
            backoff = min(backoff * 2, ceiling)
            continue
        backoff = every
        now = clock.time()
        if more is True:
            deadline = now
        else:
            deadline += every
            if deadline < now:  # fell behind: skip the missed beats
                deadline = now + every - (now - deadline) % every
