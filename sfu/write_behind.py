"""Store writes a worker must not lose while Postgres or Redis is briefly down.

A viewer who leaves, or a stream that ends, during an outage is gone from the
worker at once (it is no longer ticked or served); what the stores must learn
of it — the `stream_viewers` row made inactive, the stream ended, its pin
removed — is kept here and retried, in order, every second by the worker's
clock until it lands. Writes are idempotent, so a retry after an ambiguous
failure is harmless."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from vilokanam.logs import log_event

log = logging.getLogger(__name__)

DEFERRED = Counter("vilokanam_sfu_writes_deferred_total",
                   "Worker store writes that failed and were queued for retry", ["write"])
PENDING = Gauge("vilokanam_sfu_writes_pending", "Worker store writes waiting for a retry")

Write = Callable[[], Awaitable[Any]]


@dataclass
class WriteBehind:
    _pending: deque[tuple[str, Write, dict[str, Any]]] = field(default_factory=deque)

    async def write(self, name: str, write: Write, **ids: Any) -> None:
        """Run `write` now; if it fails (or earlier writes still wait, to keep
        their order), queue it for `retry`."""
        if not self._pending:
            try:
                await write()
                return
            except Exception as exc:  # any store error: keep it for later
                log_event(log, "write.deferred", logging.WARNING, write=name,
                          error=repr(exc)[:300], **ids)
        DEFERRED.labels(name).inc()
        self._pending.append((name, write, ids))
        PENDING.set(len(self._pending))

    async def retry(self) -> None:
        """Retry queued writes in order; stop at the first that still fails."""
        while self._pending:
            name, write, ids = self._pending[0]
            await write()  # raises: the clock's loop policy logs and counts it
            self._pending.popleft()
            PENDING.set(len(self._pending))
            log_event(log, "write.recovered", write=name, **ids)

    def __len__(self) -> int:
        return len(self._pending)
