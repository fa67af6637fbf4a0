"""The real signaling and SFU processes, with JSON logs, never write a secret:
not the token secret or escrow URI they are configured with, nor the tokens
and stream keys that pass through them during a publish (with a wrong key
first, so the refusal path logs too). Likewise signaling, billing and the
media role through a tip, an upload the media role processes, a paid video
view (its signed playlist URL is a capability) and a receipt lookup."""

from __future__ import annotations

import dataclasses
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from tests.media_clients import Publisher
from tests.processes import start_role, wait_healthy
from tests.waiting import wait_until
from vilokanam.balances import credit
from vilokanam.config import Settings

TOKEN_SECRET = "tok-secret-" + "q" * 32
ESCROW_URI = "//SomeSecretUri"
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
WRONG_KEY = "sk_wrong_but_secret_looking_value_0123456789"


async def _post_json(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                     token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status in (200, 201), await response.text()
        return dict(await response.json())


async def _publish(ws: aiohttp.ClientWebSocketResponse, stream_id: str, key: str,
                   sdp: str) -> dict[str, Any]:
    await ws.send_json({"type": "publish", "stream_id": stream_id, "stream_key": key,
                        "sdp": sdp})
    return await _reply(ws, ("answer", "error"))


async def _reply(ws: aiohttp.ClientWebSocketResponse, types: tuple[str, ...]) -> dict[str, Any]:
    """The next message of one of `types`, past `hello`, candidates and events."""
    while True:
        message = dict(await ws.receive_json(timeout=15))
        if message["type"] in types:
            return message


async def _publish_until_placed(ws: aiohttp.ClientWebSocketResponse, stream_id: str,
                                key: str, sdp: str) -> dict[str, Any]:
    """The worker registers itself shortly after /healthz answers: retry while
    signaling has no worker to place the stream on."""
    async def placed() -> dict[str, Any] | None:
        reply = await _publish(ws, stream_id, key, sdp)
        return None if reply.get("code") in ("no_capacity", "sfu_unavailable") else reply

    return dict(await wait_until(placed, "signaling placing the stream on the worker",
                                 timeout=10, interval=0.2))


async def _flow(base: str) -> list[str]:
    """Everything that carries a secret; returns the secrets it saw."""
    publisher = Publisher()
    async with aiohttp.ClientSession() as http:
        token = (await _post_json(http, f"{base}/api/dev/token", {"account": ALICE}))["token"]
        stream = await _post_json(http, f"{base}/api/streams", {"title": "Secret"}, token)
        async with http.get(f"{base}/api/me", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
        async with http.get(f"{base}/api/billing/info") as r:
            assert r.status == 200
        # An offer is enough: the flow is about what the servers log, not media.
        publisher.pc.addTransceiver("video", direction="sendonly")
        await publisher.pc.setLocalDescription(await publisher.pc.createOffer())
        sdp = publisher.pc.localDescription.sdp
        async with http.ws_connect(f"{base.replace('http', 'ws')}/ws") as ws:
            refused = await _publish(ws, stream["id"], WRONG_KEY, sdp)
            assert refused["type"] == "error" and refused["code"] == "unauthorized", refused
            answered = await _publish_until_placed(ws, stream["id"], stream["stream_key"], sdp)
            assert answered["type"] == "answer", answered
            await ws.send_json({"type": "leave"})
            await _reply(ws, ("left", "error"))
    await publisher.close()
    return [token, stream["stream_key"]]


def _check_log(path: Path, secrets: list[str]) -> None:
    text = path.read_text()
    assert text.strip(), f"{path.name} is empty"
    for secret in secrets:
        assert secret not in text, f"{path.name} leaks {secret[:6]}…"
    for line in text.splitlines():
        record = json.loads(line)  # every line, tracebacks included, is one object
        assert "event" in record and "level" in record, line


async def test_no_secret_reaches_the_logs(db: asyncpg.Connection, redis: aioredis.Redis,
                                          settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, dev_mode=True, token_secret=TOKEN_SECRET,
                                   escrow_uri=ESCROW_URI, log_format="json")
    procs = [start_role(settings, "sfu", tmp_path), start_role(settings, "signaling", tmp_path)]
    try:
        wait_healthy(procs[0], settings.sfu_port)
        wait_healthy(procs[1], settings.http_port)
        seen = await _flow(f"http://127.0.0.1:{settings.http_port}")
    finally:
        for proc in procs:
            proc.stop()
    for role in ("sfu", "signaling"):
        _check_log(tmp_path / f"{role}.log", [TOKEN_SECRET, ESCROW_URI, WRONG_KEY, *seen])


# -- the roles and routes added since: media, tips, uploads, views, receipts ------------

BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


async def _money_and_media_flow(base: str, db: asyncpg.Connection,
                                redis: aioredis.Redis) -> list[str]:
    """A tip, an upload the media role processes (and refuses: not a video),
    a paid view with its signed playlist URL, a receipt lookup; returns the
    secrets it saw (the tokens, the playlist's signature)."""
    async with aiohttp.ClientSession() as http:
        viewer = await _post_json(http, f"{base}/api/dev/token", {"account": ALICE})
        creator = await _post_json(http, f"{base}/api/dev/token", {"account": BOB})
        await credit(db, redis, viewer["user_id"], Decimal(10), "adjustment", "secrets", 12)
        as_viewer = {"Authorization": f"Bearer {viewer['token']}"}
        as_creator = {"Authorization": f"Bearer {creator['token']}"}
        async with http.post(f"{base}/api/videos", params={"title": "not a video"},
                             data=b"\x00" * 4096,
                             headers={**as_creator, "Content-Type": "video/mp4"}) as r:
            assert r.status == 201, await r.text()
            upload = (await r.json())["id"]  # Bob is a creator now
        async with http.post(f"{base}/api/users/{BOB}/tips", headers=as_viewer,
                             json={"amount": "0.5", "message": "thanks"}) as r:
            assert r.status == 201, await r.text()
        video = str(await db.fetchval(
            "INSERT INTO videos (creator_id, title, status, published_at, price_per_second) "
            "VALUES ($1, 'paid', 'ready', now(), 0.001) RETURNING id", creator["user_id"]))
        async with http.post(f"{base}/api/videos/{video}/views", headers=as_viewer) as r:
            assert r.status == 201, await r.text()
            playlist = (await r.json())["playlist_url"]
        async with http.get(playlist) as r:
            await r.read()  # served or not, the request is what must not be logged
        async with http.get(f"{base}/api/receipts/{uuid.uuid4()}", headers=as_viewer) as r:
            assert r.status == 404, await r.text()

        async def processed() -> bool:
            return await db.fetchval("SELECT status FROM videos WHERE id = $1::uuid",
                                     upload) == "failed"

        await wait_until(processed, "the media role refusing the upload", timeout=60)
    signature = parse_qs(urlsplit(playlist).query)["sig"][0]
    return [viewer["token"], creator["token"], signature]


async def test_no_secret_reaches_the_logs_of_media_billing_tips_uploads_views(
        db: asyncpg.Connection, redis: aioredis.Redis, settings: Settings,
        tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, dev_mode=True, token_secret=TOKEN_SECRET,
                                   escrow_uri=ESCROW_URI, log_format="json")
    roles = {"signaling": settings.http_port, "billing": settings.billing_port,
             "media": settings.media_port}
    procs = [start_role(settings, role, tmp_path) for role in roles]
    try:
        for proc, port in zip(procs, roles.values(), strict=True):
            wait_healthy(proc, port)
        seen = await _money_and_media_flow(f"http://127.0.0.1:{settings.http_port}", db, redis)
    finally:
        for proc in procs:
            proc.stop()
    # A leak would be in the lines these steps log: prove they were written.
    events = {role: {json.loads(line)["event"] for line in
                     (tmp_path / f"{role}.log").read_text().splitlines()} for role in roles}
    assert {"tip.paid", "video.uploaded", "video.view_started"} <= events["signaling"]
    assert {"job.started", "job.failed"} <= events["media"]
    for role in roles:
        _check_log(tmp_path / f"{role}.log", [TOKEN_SECRET, ESCROW_URI, *seen])
