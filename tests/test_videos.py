"""Uploads and processing with real parts: the signaling app on a real port,
the real `vilokanam media` process, Postgres and Redis. Files are made by the
tests with PyAV (tests/media_samples.py): an MP4 (H.264/AAC) and a WebM
(VP8/Opus) become ready videos; files that are not media, truncated, without
video or in a codec we refuse become `failed` with a reason; size limits are
enforced before the body is read."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from media.cid import cid_of_file
from media.probe import probe
from signaling import videos
from tests.api_client import ALICE_42, BOB_42, Client, bearer, dev_settings, error_of, login, serve
from tests.media_samples import make_clip, mp4, webm
from tests.processes import start_role, wait_healthy
from vilokanam.config import Settings
from vilokanam.services.process import ManagedProcess

READY_WITHIN = 60.0


@pytest.fixture
def media_role(settings: Settings, tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_role(dev_settings(settings), "media", tmp_path / "logs")
    wait_healthy(proc, settings.media_port)
    yield proc
    proc.stop()


async def upload(client: Client, token: str, path: Path, content_type: str = "video/mp4",
                 **query: str) -> dict[str, Any]:
    response = await client.post("/api/videos", data=path.read_bytes(),
                                 params={"title": path.name, **query},
                                 headers={**bearer(token), "Content-Type": content_type})
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def settled(client: Client, video_id: str, timeout: float = READY_WITHIN) -> dict[str, Any]:
    """The video once processing has ended (ready or failed)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/videos/{video_id}")
        assert response.status == 200, await response.text()
        video = dict(await response.json())
        if video["status"] in ("ready", "failed"):
            return video
        assert time.monotonic() < deadline, f"still {video['status']}: {video}"
        await asyncio.sleep(0.2)


def storage_path(settings: Settings, video_id: str, *parts: str) -> Path:
    return settings.media_dir.joinpath("videos", video_id, *parts)


async def test_mp4_and_webm_uploads_become_ready_videos(
        client: Client, media_role: ManagedProcess, settings: Settings, tmp_path: Path,
        db: asyncpg.Connection) -> None:
    token = (await login(client))["token"]
    clip_mp4 = mp4(tmp_path / "clip.mp4", seconds=3, width=426, height=240)
    clip_webm = webm(tmp_path / "clip.webm", seconds=2, width=160, height=120)
    made = [await upload(client, token, clip_mp4, tags="demo,test"),
            await upload(client, token, clip_webm, "video/webm")]
    assert all(m["status"] == "processing" for m in made)
    for created, source in zip(made, (clip_mp4, clip_webm), strict=True):
        video = await settled(client, created["id"])
        assert video["status"] == "ready", video
        truth = probe(source)
        assert (video["width"], video["height"]) == (truth.width, truth.height)
        assert video["duration"] == max(1, round(truth.duration))
        assert video["file_size"] == source.stat().st_size
        meta = video["metadata"]
        assert (meta["format"], meta["codec"], meta["audio_codec"]) == (
            truth.format, truth.codec, truth.audio_codec)
        assert meta["frame_rate"] == "30" and meta["aspect_ratio"] == truth.aspect_ratio
        # The CID is that of the bytes uploaded (checked against ipfs-car in test_cid.py).
        assert video["ipfs_hash"] == cid_of_file(source)
        assert video["published_at"] is not None
        assert video["creator_account"] == ALICE_42 and video["price_per_second"] == "0.001"
        versions = video["versions"]
        assert versions and all(v["height"] <= truth.height for v in versions)
        assert all(v["file_size"] > 0 and v["bitrate"] > 0 and v["ipfs_hash"].startswith("b")
                   for v in versions)
        thumb = await client.get(video["thumbnail_url"].removeprefix(settings.base_url))
        assert thumb.status == 200 and thumb.content_type == "image/jpeg"
        assert (await thumb.read())[:2] == b"\xff\xd8"
    first = await settled(client, made[0]["id"])
    assert first["metadata"]["tags"] == ["demo", "test"]
    assert [v["resolution"] for v in first["versions"]] == ["240p"]
    second = await settled(client, made[1]["id"])
    assert [v["resolution"] for v in second["versions"]] == ["120p"]  # below the ladder
    listed = await (await client.get("/api/videos", params={"creator": ALICE_42})).json()
    assert {v["id"] for v in listed["videos"]} == {m["id"] for m in made}
    assert (await (await client.get("/api/videos", params={"creator": BOB_42})).json()
            )["videos"] == []
    jobs = await db.fetch("SELECT status, attempts, progress FROM processing_jobs")
    assert [(j["status"], j["attempts"], j["progress"]) for j in jobs] == [("done", 1, 100)] * 2


async def test_files_that_cannot_become_videos_fail_with_a_reason(
        client: Client, media_role: ManagedProcess, tmp_path: Path,
        db: asyncpg.Connection) -> None:
    token = (await login(client))["token"]
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video at all " * 1000)
    good = mp4(tmp_path / "good.mp4", seconds=2, width=160, height=120)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    audio_only = make_clip(tmp_path / "audio.mp4", video=None, seconds=2)
    ffv1 = make_clip(tmp_path / "ffv1.mkv", container="matroska", video="ffv1", audio=None,
                     seconds=1, width=64, height=48)
    cases = {
        "garbage": (garbage, "video/mp4", "not a video"),
        "truncated": (truncated, "video/mp4", "not a video"),
        "audio only": (audio_only, "video/mp4", "no video stream"),
        "unsupported codec": (ffv1, "video/x-matroska", "codec 'ffv1' is not supported"),
    }
    ids = {name: (await upload(client, token, path, ctype))["id"]
           for name, (path, ctype, _) in cases.items()}
    for name, (_, _, reason) in cases.items():
        video = await settled(client, ids[name])
        assert video["status"] == "failed", (name, video)
        assert reason in video["failure_reason"], (name, video["failure_reason"])
        assert "versions" not in video or video["versions"] == []
    # Refused at once (no retry of a file that will never be media), nothing half-made.
    assert await db.fetchval("SELECT count(*) FROM video_versions") == 0
    assert await db.fetchval(
        "SELECT count(*) FROM processing_jobs WHERE status = 'failed' AND attempts = 1") == 4
    assert (await (await client.get("/api/videos")).json())["videos"] == []
    assert media_role.running  # and the worker carries on


async def _raw_request(port: int, head: str, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    await writer.drain()
    try:
        async with asyncio.timeout(read_timeout):
            return await reader.read(65536)
    finally:
        writer.close()


async def test_upload_limits_and_bad_requests(db: asyncpg.Connection, redis: aioredis.Redis,
                                              settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(videos, "UPLOAD_IDLE_S", 1.0)
    limited = dev_settings(settings, upload_max_bytes=5000)
    async with serve(limited) as client:
        token = (await login(client))["token"]
        # Over the limit by Content-Length: 413 with the body never sent.
        head = (f"POST /api/videos?title=big HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: video/mp4\r\n"
                f"Content-Length: 1000000\r\n\r\n")
        answer = await _raw_request(limited.http_port, head)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"payload_too_large" in answer
        # Chunked, no length: refused once the limit is passed, the video failed.
        response = await client.post(
            "/api/videos", data=_chunks(20, 1000), params={"title": "chunked"},
            headers={**bearer(token), "Content-Type": "video/mp4"})
        assert await error_of(response, 413) == "payload_too_large"
        row = await db.fetchrow("SELECT status, failure_reason FROM videos WHERE title = 'chunked'")
        assert row["status"] == "failed" and "larger than 5000" in row["failure_reason"]
        assert not (limited.media_dir / "videos").exists() or not any(
            (limited.media_dir / "videos").glob("*/source"))
        assert await error_of(await client.post(
            "/api/videos", data=b"x", headers={"Content-Type": "video/mp4"}), 401) == \
            "unauthorized"
        assert await error_of(await client.post(
            "/api/videos", data=b"x", headers={**bearer(token), "Content-Type": "text/plain"}),
            415) == "unsupported_media_type"
        assert await error_of(await client.get("/api/videos/nope"), 400) == "invalid_video_id"
        assert await error_of(await client.get(
            "/api/videos/00000000-0000-0000-0000-000000000000"), 404) == "video_not_found"
        assert await error_of(await client.get("/api/videos", params={"limit": "x"}),
                              400) == "invalid_paging"
        # Interrupted: the client promises 4000 bytes, sends 100 ...
        head = (f"POST /api/videos?title=cut HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: video/mp4\r\n"
                f"Content-Length: 4000\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", limited.http_port)
        writer.write(head.encode() + b"x" * 100)
        await writer.drain()
        await _until(db, "SELECT upload_offset = 0 AND status = 'uploading' "
                         "FROM videos WHERE title = 'cut'")
        # ... and then says nothing more: after UPLOAD_IDLE_S it is gone.
        await _until(db, "SELECT status = 'failed' FROM videos WHERE title = 'cut'")
        writer.close()
        reason = await db.fetchval("SELECT failure_reason FROM videos WHERE title = 'cut'")
        assert "interrupted after 100 of 4000 bytes" in reason
        assert (await client.get("/healthz")).status == 200  # nothing else broke


async def _until(db: asyncpg.Connection, query: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await db.fetchval(query):
        assert time.monotonic() < deadline, query
        await asyncio.sleep(0.05)


async def _chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"\0" * size


async def test_tus_resumable_upload(client: Client, media_role: ManagedProcess,
                                    settings: Settings, tmp_path: Path) -> None:
    token = (await login(client))["token"]
    data = mp4(tmp_path / "resumable.mp4", seconds=2, width=160, height=120).read_bytes()
    tus = {**bearer(token), "Tus-Resumable": "1.0.0"}
    options = await client.options("/api/videos")
    assert options.headers["Tus-Version"] == "1.0.0"
    assert options.headers["Tus-Max-Size"] == str(settings.upload_max_bytes)
    title = base64.b64encode(b"resumed").decode()
    created = await client.post("/api/videos", headers={
        **tus, "Upload-Length": str(len(data)), "Upload-Metadata": f"title {title}"})
    assert created.status == 201, await created.text()
    location = created.headers["Location"]
    path = location.removeprefix(settings.base_url)
    video_id = (await created.json())["id"]
    half = len(data) // 2
    patch = {**tus, "Content-Type": "application/offset+octet-stream"}
    first = await client.patch(path, data=data[:half], headers={**patch, "Upload-Offset": "0"})
    assert first.status == 204 and first.headers["Upload-Offset"] == str(half)
    head = await client.head(path, headers=tus)
    assert head.headers["Upload-Offset"] == str(half)
    assert head.headers["Upload-Length"] == str(len(data))
    stale = await client.patch(path, data=data[:10], headers={**patch, "Upload-Offset": "0"})
    assert await error_of(stale, 409) == "offset_mismatch"
    too_much = await client.patch(path, data=data[half:] + b"extra",
                                  headers={**patch, "Upload-Offset": str(half)})
    assert await error_of(too_much, 413) == "payload_too_large"
    bob = (await login(client, BOB_42))["token"]
    other = await client.patch(path, data=data[half:], headers={
        **patch, **bearer(bob), "Upload-Offset": str(half)})
    assert await error_of(other, 403) == "forbidden"
    wrong_version = await client.patch(path, data=data[half:], headers={
        **patch, "Tus-Resumable": "0.2.2", "Upload-Offset": str(half)})
    assert await error_of(wrong_version, 412) == "tus_version_unsupported"
    rest = await client.patch(path, data=data[half:], headers={**patch,
                                                                "Upload-Offset": str(half)})
    assert rest.status == 204 and rest.headers["Upload-Offset"] == str(len(data))
    video = await settled(client, video_id)
    assert video["status"] == "ready" and video["title"] == "resumed"
    assert storage_path(settings, video_id, "source").read_bytes() == data
    done = await client.patch(path, data=b"x", headers={**patch,
                                                        "Upload-Offset": str(len(data))})
    assert await error_of(done, 409) == "upload_complete"


async def test_creator_changes_price_and_title(client: Client, db: asyncpg.Connection,
                                               settings: Settings) -> None:
    token = (await login(client))["token"]
    creator = await db.fetchval("SELECT id FROM users WHERE account_id = $1", ALICE_42)
    video_id = await db.fetchval(
        "INSERT INTO videos (creator_id, title, status, price_per_second) "
        "VALUES ($1, 'v', 'ready', 0.001) RETURNING id::text", creator)
    changed = await client.patch(f"/api/videos/{video_id}", json={
        "price_per_second": "0.002", "title": "new"}, headers=bearer(token))
    assert changed.status == 200, await changed.text()
    body = await changed.json()
    assert body["price_per_second"] == "0.002" and body["title"] == "new"
    bob = (await login(client, BOB_42))["token"]
    assert await error_of(await client.patch(f"/api/videos/{video_id}", json={"title": "x"},
                                             headers=bearer(bob)), 403) == "forbidden"
    assert await error_of(await client.patch(
        f"/api/videos/{video_id}", json={"price_per_second": "-1"}, headers=bearer(token)),
        400) == "invalid_price"
    # tags in a JSON body are a list (a query's comma string is not JSON's: schemathesis)
    assert await error_of(await client.patch(
        f"/api/videos/{video_id}", json={"tags": "a,b"}, headers=bearer(token)),
        400) == "invalid_tags"
    listed = await client.patch(f"/api/videos/{video_id}", json={"tags": ["a", "b"]},
                                headers=bearer(token))
    assert listed.status == 200 and (await listed.json())["tags"] == ["a", "b"]

