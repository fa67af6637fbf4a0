"""The billing worker: flushes ticks to Postgres exactly once and keeps the
live balances (reconciled with Postgres every VILOKANAM_RECONCILE_INTERVAL);
with a chain configured (SUBSTRATE_URL and VILOKANAM_ESCROW_URI) it also
credits deposits to the escrow and pays creators out in batches on chain. Its
HTTP port serves health and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from billing.chain import AsyncChain, ChainClient, load_escrow
from billing.deposits import DepositWatcher
from billing.flush import Flusher, run_flusher, run_syncer
from billing.reconcile import Reconciler
from billing.settlement import Settler
from vilokanam.backends import BACKENDS, attach_backends
from vilokanam.balances import rebuild_live_balances
from vilokanam.config import Settings
from vilokanam.health import READINESS_CHECKS, add_health_routes
from vilokanam.logs import log_event
from vilokanam.tasks import TaskOwner

log = logging.getLogger(__name__)

# /readyz: the chain is "up" if the deposit watcher (which asks for the
# finalized head every second) heard from it this recently, or else if it
# answers a probe now (on its own connection, with a short timeout).
CHAIN_READY_WITHIN_S = 10.0
PROBE_TIMEOUT_S = 2.0
CHAIN = web.AppKey("chain", AsyncChain)
CHAIN_PROBE = web.AppKey("chain_probe", AsyncChain)


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    attach_backends(app, settings)

    async def flush_ctx(app: web.Application) -> AsyncIterator[None]:
        backends = app[BACKENDS]
        await rebuild_live_balances(backends.pg, backends.redis, settings.token_decimals)
        tasks = TaskOwner("billing")
        flusher = Flusher(backends.pg, backends.redis, settings.platform_fee)
        tasks.spawn(run_flusher(flusher, float(settings.flush_interval)), "flush")
        tasks.spawn(run_syncer(flusher, float(settings.tick_sync_interval)), "tick_sync")
        reconciler = Reconciler(backends.pg, backends.redis, settings.token_decimals,
                                float(settings.reconcile_interval))
        tasks.spawn(reconciler.run(), "reconcile")
        yield
        await tasks.close()  # unflushed ticks stay in Redis for the next start

    async def chain_ctx(app: web.Application) -> AsyncIterator[None]:
        if not (settings.substrate_url and settings.escrow_uri):
            log_event(log, "chain.off", logging.WARNING,
                      reason="SUBSTRATE_URL or VILOKANAM_ESCROW_URI is not set: no deposits "
                             "are credited and no creator is paid on chain")
            yield
            return
        backends = app[BACKENDS]
        escrow = await asyncio.to_thread(load_escrow, settings.escrow_uri)
        # One connection each: a long catch-up never delays a payout, and back.
        watcher_chain = AsyncChain(ChainClient(settings.substrate_url, escrow))
        settler_chain = AsyncChain(ChainClient(settings.substrate_url, escrow))
        probe = AsyncChain(ChainClient(settings.substrate_url, ws_timeout=PROBE_TIMEOUT_S))
        app[CHAIN] = watcher_chain
        app[CHAIN_PROBE] = probe
        watcher = DepositWatcher(backends.pg, backends.redis, watcher_chain,
                                 ss58_prefix=settings.ss58_prefix,
                                 decimals=settings.token_decimals)
        settler = Settler(backends.pg, settler_chain, decimals=settings.token_decimals,
                          period_s=float(settings.settlement_period),
                          threshold=settings.payout_threshold)
        tasks = TaskOwner("billing-chain")
        tasks.spawn(watcher.run(), "deposits")
        tasks.spawn(settler.run(), "settlement")  # resolves a batch left open first
        yield
        await tasks.close()
        await asyncio.gather(watcher_chain.close(), settler_chain.close(), probe.close())

    async def chain_ready(app: web.Application) -> dict[str, bool]:
        chain, probe = app.get(CHAIN), app.get(CHAIN_PROBE)
        if chain is None or probe is None:
            return {}  # no chain configured: settlement is off (logged at start)
        if chain.answered_within(CHAIN_READY_WITHIN_S):
            return {"chain": True}
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                return {"chain": await probe.ping()}
        except TimeoutError:
            return {"chain": False}

    app.cleanup_ctx.append(flush_ctx)
    app.cleanup_ctx.append(chain_ctx)
    add_health_routes(app, role="billing")
    app[READINESS_CHECKS].append(chain_ready)
    return app
