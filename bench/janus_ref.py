"""Debian's Janus as the reference SFU of bench/sfu_fanout.py: installed with
apt-get when missing, configured in a private directory (only the Streaming
plugin and the HTTP transport, `event_loops = 1`), fed plain RTP of the same
pre-encoded loop the aiortc publisher sends, watched by the same tapped
aiortc viewers through Janus's HTTP API (Janus offers, the viewer answers).

Janus skips loopback interfaces when it gathers ICE candidates, so its
candidates are on the machine's own non-loopback address: the packets still
never leave the host (the kernel delivers them locally, as for 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder

from bench.common import BenchError
from bench.debian_packages import ensure_program

JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
MOUNTPOINT = 1
VIDEO_PT, AUDIO_PT = 96, 111
RTP = struct.Struct("!BBHII")


def ensure_janus() -> str:
    """The janus binary; installs Debian's package when it is missing."""
    return ensure_program("janus", "janus")


def _only(folder: Path, source: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(source / name)


def write_config(root: Path, http_port: int, video_port: int, audio_port: int) -> Path:
    """A private config dir: nothing of /etc/janus is read."""
    conf = root / "janus-conf"
    conf.mkdir(parents=True, exist_ok=True)
    _only(root / "janus-plugins", JANUS_LIB / "plugins", ["libjanus_streaming.so"])
    _only(root / "janus-transports", JANUS_LIB / "transports", ["libjanus_http.so"])
    for empty in ("janus-events", "janus-loggers"):
        (root / empty).mkdir(exist_ok=True)
    (conf / "janus.jcfg").write_text(f"""general: {{
    configs_folder = "{conf}"
    plugins_folder = "{root / 'janus-plugins'}"
    transports_folder = "{root / 'janus-transports'}"
    events_folder = "{root / 'janus-events'}"
    loggers_folder = "{root / 'janus-loggers'}"
    log_to_stdout = true
    debug_level = 3
    session_timeout = 0
    event_loops = 1
}}
media: {{
    rtp_port_range = "30000-39999"
}}
nat: {{
    nice_debug = false
}}
""")
    (conf / "janus.transport.http.jcfg").write_text(f"""general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {http_port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
}}
""")
    (conf / "janus.plugin.streaming.jcfg").write_text(f"""general: {{
}}
bench: {{
    type = "rtp"
    id = {MOUNTPOINT}
    description = "bench"
    audio = true
    video = true
    audioport = {audio_port}
    audiopt = {AUDIO_PT}
    audiortpmap = "opus/48000/2"
    videoport = {video_port}
    videopt = {VIDEO_PT}
    videortpmap = "VP8/90000"
}}
""")
    return conf


# -- the feeder: plain RTP of the pre-encoded loop, in real time --------------------------


async def feed_rtp(video: list[bytes], audio: list[bytes], fps: int, video_port: int,
                   audio_port: int, stop: asyncio.Event, stats: dict[str, Any]) -> None:
    """Both tracks, paced frame by frame, to the mountpoint's ports."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    tasks = [asyncio.ensure_future(_feed(sock, "video", video, fps, 90_000 // fps,
                                         VIDEO_PT, video_port, stop, stats)),
             asyncio.ensure_future(_feed(sock, "audio", audio, 50, 960, AUDIO_PT,
                                         audio_port, stop, stats))]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()


async def _feed(sock: socket.socket, kind: str, frames: list[bytes], rate: int, step: int,
                pt: int, port: int, stop: asyncio.Event, stats: dict[str, Any]) -> None:
    ssrc, seq, picture_id = 0x1234 + pt, 0, 0
    counters = stats.setdefault(kind, {"sent": 0, "lost": 0, "frames": 0})
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        due = start + n / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 1.0:  # stalled: skip ahead, no burst
            start += now - due
        data = frames[n % len(frames)]
        if kind == "video":
            payloads = Vp8Encoder._packetize(data, picture_id)
            picture_id = (picture_id + 1) % (1 << 15)
        else:
            payloads = [data]
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == len(payloads) - 1 else 0
            sock.sendto(RTP.pack(0x80, marker | pt, seq, (n * step) & 0xFFFFFFFF, ssrc)
                        + payload, ("127.0.0.1", port))
            seq = (seq + 1) & 0xFFFF
            counters["sent"] += 1
        counters["frames"] += 1
        n += 1


# -- a viewer through the HTTP API ------------------------------------------------------------


async def _call(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json={"transaction": str(time.monotonic_ns()), **body}) as resp:
        answer = dict(await resp.json(content_type=None))
    if answer.get("janus") == "error":
        raise BenchError(f"janus: {answer.get('error')}")
    return answer


async def watch(pc: RTCPeerConnection, session: aiohttp.ClientSession, base: str) -> None:
    """create -> attach streaming -> watch -> (offer) -> answer -> start."""
    created = await _call(session, f"{base}/janus", {"janus": "create"})
    sid = created["data"]["id"]
    attached = await _call(session, f"{base}/janus/{sid}",
                           {"janus": "attach", "plugin": "janus.plugin.streaming"})
    handle = f"{base}/janus/{sid}/{attached['data']['id']}"
    await _call(session, handle, {"janus": "message",
                                  "body": {"request": "watch", "id": MOUNTPOINT}})
    offer = await _wait_offer(session, f"{base}/janus/{sid}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await _call(session, handle, {"janus": "message", "body": {"request": "start"},
                                  "jsep": {"type": "answer", "sdp": pc.localDescription.sdp}})


async def _wait_offer(session: aiohttp.ClientSession, url: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"{url}?maxev=5") as resp:
            events = await resp.json(content_type=None)
        for event in events if isinstance(events, list) else [events]:
            jsep = event.get("jsep")
            if jsep and jsep.get("type") == "offer":
                return str(jsep["sdp"])
    raise BenchError("janus sent no offer")
