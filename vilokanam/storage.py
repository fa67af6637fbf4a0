"""Video storage behind one small interface: originals, recordings, HLS
renditions and thumbnails, each named by a *key* the platform makes
(`videos/<uuid>/source`, `videos/<uuid>/hls/360p/seg_00003.ts`), never by user
input. The default store is a directory (VILOKANAM_STORAGE_DIR, default
`<VILOKANAM_DATA_DIR>/media`) that several hosts can share as a volume.

Every blocking file operation runs in a thread: an upload of 4 GiB must not
stall the event loop."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

# A key: lowercase segments of [a-z0-9_.-], no empty, "." or ".." segment.
_SEGMENT = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,127}$")


class InvalidKey(ValueError):
    pass


class TooLarge(Exception):
    """A stream of bytes passed the limit; what was written is removed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


def check_key(key: str) -> str:
    parts = key.split("/")
    if not parts or any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        raise InvalidKey(f"not a storage key: {key!r}")
    return key


def video_key(video_id: str, *parts: str) -> str:
    return check_key("/".join(("videos", video_id.lower(), *parts)))


@dataclass(frozen=True)
class LocalStorage:
    """A directory. `path(key)` is also the working file the media role
    transcodes from and the signaling server serves with range requests."""

    root: Path

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def size(self, key: str) -> int | None:
        def stat() -> int | None:
            try:
                return self.path(key).stat().st_size
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(stat)

    async def write_stream(self, key: str, chunks: AsyncIterator[bytes], limit: int,
                           offset: int = 0) -> int:
        """Write `chunks` at `offset` (the file is cut there first: a resumed
        upload continues where the last acknowledged byte ended). Raises
        TooLarge as soon as offset + bytes written would pass `limit`, having
        read no chunk past it. Returns the new size."""
        path = self.path(key)

        def open_at() -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            return fd

        fd = await asyncio.to_thread(open_at)
        size = offset
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit)
                await asyncio.to_thread(_write_all, fd, chunk)
            await asyncio.to_thread(os.fsync, fd)
        except TooLarge:
            await asyncio.to_thread(os.ftruncate, fd, offset)
            raise
        finally:
            await asyncio.to_thread(os.close, fd)
        return size

    async def put(self, key: str, data: bytes) -> None:
        """Replace the whole object at `key` at once: a reader sees the old
        bytes or the new, never a half-written file (a live thumbnail)."""
        path = self.path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial")
            partial.write_bytes(data)
            os.replace(partial, path)

        await asyncio.to_thread(write)

    async def delete_prefix(self, prefix: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.path(prefix), True)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def storage_for(media_dir: Path) -> LocalStorage:
    return LocalStorage(media_dir.resolve())
