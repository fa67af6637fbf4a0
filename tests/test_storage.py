"""Storage keys are made by the platform and refused when they could leave the
store; writes stream to disk, stop at the limit and resume at an offset. The
same tests run against both stores: the directory and an S3-compatible bucket
(moto's server mode as the stand-in, tests/s3_stand_in.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.s3_stand_in import new_bucket
from vilokanam.config import Settings
from vilokanam.storage import (
    InvalidKey,
    LocalStorage,
    S3Config,
    S3Storage,
    Storage,
    TooLarge,
    check_key,
    storage_for,
    video_key,
)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("key", ["../etc/passwd", "videos/../../x", "/abs", "a//b", "",
                                 "videos/A", "videos/.", "videos/x\x00"])
def test_keys_that_could_leave_the_store_are_refused(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


def test_video_keys() -> None:
    assert video_key("ABC-1", "hls", "240p") == "videos/abc-1/hls/240p"
    with pytest.raises(InvalidKey):
        video_key("x", "..")


async def test_write_stream_limit_and_resume(tmp_path: Path) -> None:
    storage = storage_for(tmp_path)
    assert await storage.write_stream("videos/v/source", _chunks(b"abc", b"def"), 10) == 6
    assert storage.path("videos/v/source").read_bytes() == b"abcdef"
    # A resume at offset 4 cuts what came after the acknowledged bytes.
    assert await storage.write_stream("videos/v/source", _chunks(b"XY"), 10, offset=4) == 6
    assert storage.path("videos/v/source").read_bytes() == b"abcdXY"
    with pytest.raises(TooLarge):
        await storage.write_stream("videos/v/source", _chunks(b"12345", b"678901"), 10, offset=0)
    assert await storage.size("videos/v/source") == 0  # nothing past the limit is kept
    assert await storage.size("videos/none") is None
    await storage.delete_prefix("videos/v")
    assert not storage.path("videos/v").exists()


# -- the same tests against both backends: the directory and S3 (moto stand-in) --

@pytest.fixture(params=["directory", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        storage = storage_for(tmp_path / "spool", await new_bucket(endpoint))
        assert isinstance(storage, S3Storage)
    else:
        storage = storage_for(tmp_path / "media")
        assert isinstance(storage, LocalStorage)
    yield storage
    await storage.close()


async def _read(storage: Storage, key: str) -> bytes:
    path = await storage.fetch(key)
    data = path.read_bytes()
    await storage.evict(key)
    return data


async def test_both_stores_write_limit_and_resume(store: Storage) -> None:
    key = "videos/v/source"
    assert await store.write_stream(key, _chunks(b"abc", b"def"), 10) == 6
    assert await _read(store, key) == b"abcdef"
    assert await store.write_stream(key, _chunks(b"XY"), 10, offset=4) == 6
    assert await _read(store, key) == b"abcdXY"
    with pytest.raises(TooLarge):
        await store.write_stream(key, _chunks(b"12345", b"678901"), 10, offset=2)
    assert await _read(store, key) == b"ab"  # the acknowledged bytes, nothing past the limit
    assert await store.size("videos/none") is None


async def test_both_stores_take_large_files_in_parts_and_resume_them(store: Storage) -> None:
    """Past one 8 MiB part, and a resume past 5 MiB (S3: a server-side copy)."""
    key = "videos/big/source"
    first = bytes(range(256)) * (24 * 1024)  # 6 MiB
    assert await store.write_stream(key, _chunks(first[:4 << 20], first[4 << 20:]),
                                    1 << 30) == len(first)
    more = b"\x07" * (5 << 20)
    assert await store.write_stream(key, _chunks(more, more), 1 << 30, offset=len(first)) \
        == len(first) + 2 * len(more)
    assert await store.size(key) == len(first) + 2 * len(more)
    assert await _read(store, key) == first + more + more


async def test_both_stores_keep_what_arrived_when_a_body_breaks(store: Storage) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await store.write_stream("videos/v/source", broken(), 100)
    assert await store.size("videos/v/source") == 11  # tus resumes from here


async def test_both_stores_publish_trees_and_spooled_files(store: Storage,
                                                           tmp_path: Path) -> None:
    def tree(name: str, files: dict[str, bytes]) -> Path:
        root = tmp_path / name
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root

    await store.put_tree("videos/v/hls", tree("a", {"240p/index.m3u8": b"#EXTM3U\n",
                                                    "240p/seg_00000.ts": b"old",
                                                    "360p/seg_00000.ts": b"gone"}))
    await store.put_tree("videos/v/hls", tree("b", {"240p/index.m3u8": b"#EXTM3U\n#2\n",
                                                    "240p/seg_00000.ts": b"new"}))
    assert await store.read_text("videos/v/hls/240p/index.m3u8") == "#EXTM3U\n#2\n"
    assert await _read(store, "videos/v/hls/240p/seg_00000.ts") == b"new"
    assert await store.size("videos/v/hls/360p/seg_00000.ts") is None  # the old tree is gone
    with pytest.raises(FileNotFoundError):
        await store.read_text("videos/v/hls/720p/index.m3u8")
    if isinstance(store, S3Storage):  # the directory hands out its path, there or not
        with pytest.raises(FileNotFoundError):
            await store.fetch("videos/v/hls/720p/index.m3u8")
    thumb = tmp_path / "thumb.jpg"
    thumb.write_bytes(b"\xff\xd8jpeg")
    await store.put_file("videos/v/thumb.jpg", thumb)
    assert await _read(store, "videos/v/thumb.jpg") == b"\xff\xd8jpeg"
    # A recording is written at path(key) and committed when done.
    store.path("videos/r/source").parent.mkdir(parents=True, exist_ok=True)
    store.path("videos/r/source").write_bytes(b"webm bytes")
    await store.commit_spooled("videos/r/source")
    assert await store.size("videos/r/source") == 10
    await store.delete_prefix("videos/v")
    assert await store.size("videos/v/thumb.jpg") is None
    assert await store.size("videos/r/source") == 10


async def test_both_stores_serve_ranges_and_content_types(store: Storage,
                                                          aiohttp_client: Any) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    await store.write_stream("videos/v/seg", _chunks(data), 1 << 20)

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await store.serve(request, request.match_info["key"].replace("~", "/"),
                                     "video/mp2t", {"Cache-Control": "private, no-store"})
        except FileNotFoundError:
            raise web.HTTPNotFound() from None

    app = web.Application()
    app.router.add_get("/{key}", handler)
    client = await aiohttp_client(app)
    whole = await client.get("/videos~v~seg")
    assert whole.status == 200 and await whole.read() == data
    assert whole.headers["Content-Type"] == "video/mp2t"
    assert whole.headers["Cache-Control"] == "private, no-store"
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = await client.get("/videos~v~seg", headers={"Range": "bytes=10-19"})
    assert part.status == 206 and await part.read() == data[10:20]
    assert part.headers["Content-Range"] == "bytes 10-19/1024"
    assert part.headers["Content-Type"] == "video/mp2t"
    tail = await client.get("/videos~v~seg", headers={"Range": "bytes=-4"})
    assert tail.status == 206 and await tail.read() == data[-4:]
    open_end = await client.get("/videos~v~seg", headers={"Range": "bytes=1000-"})
    assert open_end.status == 206 and await open_end.read() == data[1000:]
    past = await client.get("/videos~v~seg", headers={"Range": "bytes=5000-"})
    assert past.status == 416 and past.headers["Content-Range"] == "bytes */1024"
    assert (await client.get("/videos~v~none")).status == 404


def test_s3_settings_make_the_bucket_store_and_its_keys_stay_with_their_roles() -> None:
    settings = Settings.from_env({"VILOKANAM_S3_BUCKET": "media", "VILOKANAM_S3_ENDPOINT":
                                  "http://127.0.0.1:9000", "VILOKANAM_S3_ACCESS_KEY": "ak",
                                  "VILOKANAM_S3_SECRET_KEY": "sk"})
    assert settings.s3 == S3Config("http://127.0.0.1:9000", "media", "us-east-1", "ak", "sk")
    assert isinstance(storage_for(settings.media_dir, settings.s3), S3Storage)
    assert Settings.from_env({}).s3 is None
    for role in ("signaling", "sfu", "media"):
        assert settings.as_env(role)["VILOKANAM_S3_SECRET_KEY"] == "sk"
    billing = settings.as_env("billing")
    assert "VILOKANAM_S3_SECRET_KEY" not in billing and "VILOKANAM_S3_ACCESS_KEY" not in billing
    assert billing["VILOKANAM_S3_BUCKET"] == "media"
