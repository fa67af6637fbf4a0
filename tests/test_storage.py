"""Storage keys are made by the platform and refused when they could leave the
store; writes stream to disk, stop at the limit and resume at an offset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vilokanam.storage import InvalidKey, TooLarge, check_key, storage_for, video_key


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
