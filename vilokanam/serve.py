"""Runs one role's aiohttp app on uvloop until SIGTERM or SIGINT, then shuts it
down cleanly (cleanup hooks cancel its background tasks and close its stores)."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal

import uvloop
from aiohttp import web

from vilokanam.logs import log_event
from vilokanam.services.net import PortInUseError

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 8.0  # stays inside the 10 s an orchestrator grants


async def _serve(app: web.Application, role: str, host: str, port: int, setting: str) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(port, setting) from None
            raise
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log_event(log, "role.serving", role=role, host=host, port=port)
        await stop.wait()
        log_event(log, "role.stopping", role=role)
    finally:
        await runner.cleanup()
    log_event(log, "role.stopped", role=role)


def run_role(app: web.Application, role: str, host: str, port: int, setting: str) -> None:
    """Blocks until the role is told to stop. Errors propagate to the CLI,
    which turns known ones into one clear line."""
    uvloop.run(_serve(app, role, host, port, setting))
