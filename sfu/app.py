"""The SFU worker's application: its private control port serves the control
API, health and metrics; the StreamManager it owns carries the media."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from routing.channels import EventBus
from routing.registry import WorkerRegistration, new_worker_id
from sfu.aiortc_hooks import restrict_host_candidates
from sfu.control import MANAGER, add_control_routes
from sfu.lifecycle import Lifecycle
from sfu.load import LoadMonitor
from sfu.metering import TickEmitter
from sfu.recorder import Recordings
from sfu.streams import StreamManager
from sfu.thumbnails import LiveThumbnails
from sfu.udp_mux import UdpMux
from vilokanam.backends import BACKENDS, attach_backends
from vilokanam.config import Settings
from vilokanam.health import add_health_routes
from vilokanam.storage import LocalStorage, storage_for


def udp_mux_for(settings: Settings) -> UdpMux | None:
    """The worker's one UDP port, when VILOKANAM_SFU_UDP_PORT is set: bound to
    the one host address if there is exactly one (and nothing is announced
    instead), else to every interface; candidates announce the public IP
    (behind NAT) or the host addresses."""
    if settings.sfu_udp_port is None:
        return None
    import aioice.ice

    hosts = settings.ice_host_addresses or aioice.ice.get_host_addresses(
        use_ipv4=True, use_ipv6=False)
    announced = [settings.sfu_public_ip] if settings.sfu_public_ip else list(hosts)
    bind = hosts[0] if len(hosts) == 1 and not settings.sfu_public_ip else "0.0.0.0"
    return UdpMux(bind, settings.sfu_udp_port, announced)


def create_app(settings: Settings) -> web.Application:
    if settings.ice_host_addresses:
        restrict_host_candidates(settings.ice_host_addresses)
    app = web.Application(client_max_size=256 * 1024)  # SDP offers with many candidates
    attach_backends(app, settings)

    async def manager_ctx(app: web.Application) -> AsyncIterator[None]:
        backends = app[BACKENDS]
        worker_id = new_worker_id()
        mux = udp_mux_for(settings)
        if mux is not None:
            await mux.start()
        storage = storage_for(settings.media_dir, settings.s3)
        manager = StreamManager(
            ice_servers=settings.ice_servers, capacity=settings.sfu_capacity,
            control_url=settings.sfu_control_url, lifecycle=Lifecycle(backends.pg),
            events=EventBus(backends.redis, worker_id),
            emitter=TickEmitter.for_redis(worker_id, backends.redis, settings.token_decimals),
            token_decimals=settings.token_decimals,
            load_monitor=LoadMonitor(max_cpu=float(settings.sfu_max_cpu),
                                     max_lag=settings.sfu_max_loop_lag_ms / 1000),
            udp_mux=mux, edge_keep=float(settings.sfu_edge_keep),

            recordings=Recordings(backends.pg, storage,
                                  enabled=settings.record_streams,
                                  max_attempts=settings.media_max_attempts))
        # Live thumbnails stay files of the shared directory even with a bucket:
        # renewed every few seconds, they are served from `path(key)` (the
        # bucket's spool is that same directory).
        manager.thumbnails = LiveThumbnails(
            backends.pg, LocalStorage(settings.media_dir.resolve()),
            float(settings.thumbnail_interval), manager.tasks)
        manager.start()
        app[MANAGER] = manager
        registration = WorkerRegistration(
            backends.redis, worker_id=worker_id, control_url=settings.sfu_control_url,
            capacity=settings.sfu_capacity, load_fn=lambda: manager.load,
            streams_fn=lambda: len(manager.streams), on_reaped=manager.forget_what_was_reaped)
        await registration.start()
        yield
        await registration.begin_drain()  # out of placement first, then end what we carry
        await manager.close()
        await registration.stop()  # only now: killed before here, the reaper ends the rest
        await storage.close()
        if mux is not None:
            mux.close()

    app.cleanup_ctx.append(manager_ctx)
    add_health_routes(app, role="sfu")
    add_control_routes(app)
    return app
