"""A WHIP client we did not write: Debian's `simple-whip-client` (GStreamer's
webrtcbin, libnice, libsoup) publishes VP8 and Opus test sources to our WHIP
endpoint, trickling its candidates in a PATCH (or, with `-n`, putting them
in its offer), while an aiortc WHEP viewer
receives its frames; Ctrl-C makes it DELETE the session, which ends the stream.

On Debian bookworm the client aborts at start ("libsoup2 symbols detected"):
libnice links libgupnp-igd, which pulls in libsoup 3 next to the client's
libsoup 2. A do-nothing stand-in for libgupnp-igd-1.0.so.4 (UPnP port
mapping, which nothing here needs), built with gcc into the test's tmp dir and
put first on LD_LIBRARY_PATH, avoids it (docs/whip-whep.md)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import require
from tests.test_whip_whep import Stack, eventually, running
from vilokanam.balances import balance_key
from vilokanam.config import Settings

# libnice calls exactly these four; with no IGD object it skips UPnP.
IGD_STAND_IN = """
void *gupnp_simple_igd_thread_new(void) { return 0; }
unsigned long gupnp_simple_igd_get_type(void) { return 0; }
void gupnp_simple_igd_add_port(void) {}
void gupnp_simple_igd_remove_port_local(void) {}
"""
# Only the codecs in these pipelines are offered: VP8 and Opus, both forwarded.
VIDEO = ("videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240 ! "
         "videoconvert ! queue ! vp8enc deadline=1 target-bitrate=300000 ! "
         "rtpvp8pay pt=96 ssrc=1 ! queue ! "
         "application/x-rtp,media=video,encoding-name=VP8,payload=96")
AUDIO = ("audiotestsrc is-live=true wave=red-noise ! audioconvert ! audioresample ! queue ! "
         "opusenc ! rtpopuspay pt=100 ssrc=2 ! queue ! "
         "application/x-rtp,media=audio,encoding-name=OPUS,payload=100")


def build_igd_stand_in(directory: Path) -> Path:
    require(shutil.which("gcc") is not None, "gcc (to build the libgupnp-igd stand-in)")
    source = directory / "igd_stand_in.c"
    source.write_text(IGD_STAND_IN)
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libgupnp-igd-1.0.so.4",
                    "-o", str(directory / "libgupnp-igd-1.0.so.4"), str(source)], check=True)
    return directory


def own_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback first."""
    import ifaddr  # aioice's own interface lister

    found = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
             if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    return ["127.0.0.1", *found]


@pytest.fixture
async def stack(settings: Settings, db: asyncpg.Connection,
                redis: aioredis.Redis) -> AsyncIterator[Stack]:
    # libnice gathers no loopback candidate and pairs none of its own with the
    # worker's loopback-only one (ICE fails): here the worker also offers the
    # machine's own addresses, as a production worker does.
    async with running(settings, db, redis,
                       worker_overrides={"ice_host_addresses": own_addresses()}) as s:
        yield s


@pytest.mark.parametrize("trickle", [True, False], ids=["trickle-patch", "candidates-in-offer"])
async def test_simple_whip_client_publishes_and_a_whep_viewer_watches(
        stack: Stack, tmp_path: Path, trickle: bool) -> None:
    whip_client = shutil.which("whip-client")
    require(whip_client is not None, "Debian's simple-whip-client (the whip-client binary)")
    assert whip_client is not None
    libs = build_igd_stand_in(tmp_path)
    stream_id, key = await stack.stream()
    log = tmp_path / "whip-client.log"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    with log.open("wb") as out:
        client = await asyncio.create_subprocess_exec(
            whip_client, "-u", stack.url(f"/whip/{stream_id}"), "-t", key,
            "-V", VIDEO, "-A", AUDIO, "-o", "-l", "5", *([] if trickle else ["-n"]),
            env=env, stdout=out, stderr=out)
    viewer = None
    try:
        await eventually(lambda: stack.db.fetchval(
            "SELECT status FROM streams WHERE id = $1", stream_id), lambda s: s == "live",
            f"whip-client to go live (its log: {log})", timeout=30)
        viewer, whep = await stack.watch(stream_id)
        await viewer.wait_for_frames("video", 30, timeout=30)
        await viewer.wait_for_frames("audio", 30, timeout=30)
        await assert_whep_viewer_is_billed(stack)

        client.send_signal(signal.SIGINT)  # it DELETEs its session, then exits
        assert await asyncio.wait_for(client.wait(), 15) == 0
        await eventually(lambda: stack.db.fetchval(
            "SELECT status FROM streams WHERE id = $1", stream_id), lambda s: s == "ended",
            "the stream to end")
        await eventually(lambda: stack.request("GET", whep.url), lambda r: r.status == 404,
                         "the viewer's session to go with the stream")
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
        if viewer is not None:
            await viewer.close()
    output = log.read_text(errors="replace")
    # Trickling, its offer has no candidates and one PATCH brings them; with -n
    # they are all in the offer and it sends no PATCH.
    assert ("Sending candidates" in output) is trickle, output
    # Every request it made was answered as it expects: its POST got 201, its
    # trickle PATCHes 204 (a failed one is logged "[trickle] <status>"), its
    # DELETE 200 (anything else is logged " [<status>] ").
    assert "[trickle]" not in output, output
    assert "HTTP error" not in output, output
    await stack.assert_nothing_left()


async def assert_whep_viewer_is_billed(stack: Stack) -> None:
    """A WHEP viewer is metered like any other: ticks, and its live balance
    charged by exactly those ticks at the stream's price."""
    from decimal import Decimal

    from sfu.control import MANAGER

    assert stack.worker is not None
    peer = next(p for p in stack.worker.app[MANAGER].peers.values() if p.role == "viewer")
    await eventually(lambda: _ticks(peer), lambda n: n >= 2, "the WHEP viewer's ticks")
    credited = await stack.db.fetchval("SELECT balance FROM viewer_balances WHERE user_id = $1",
                                       peer.user_id)
    live = int(await stack.redis.get(balance_key(peer.user_id)))
    ticks = peer.meter.ticks
    assert Decimal(credited) * 10**12 - live in (ticks * peer.meter.price_planck,
                                                  (ticks - 1) * peer.meter.price_planck)


async def _ticks(peer: Any) -> int:
    return int(peer.meter.ticks)
