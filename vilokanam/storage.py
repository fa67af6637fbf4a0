"""Video storage behind one small interface: originals, recordings, HLS
renditions and thumbnails, each named by a *key* the platform makes
(`videos/<uuid>/source`, `videos/<uuid>/hls/360p/seg_00003.ts`), never by user
input. The default store is a directory (VILOKANAM_STORAGE_DIR, default
`<VILOKANAM_DATA_DIR>/media`) that several hosts can share as a volume; with
VILOKANAM_S3_BUCKET set it is an S3-compatible bucket (`S3Storage`), and the
directory only holds files in the making (a live recording, a processing
attempt's renditions) until they are put in the bucket.

Both stores have one interface: `path(key)` is the local file a writer writes
(the store itself for a directory, the spool for S3) and `fetch(key)` the
local file a reader reads; `put_file`/`put_tree` publish local files under a
key; `serve` answers an HTTP GET with range requests. Every blocking file
operation runs in a thread: an upload of 4 GiB must not stall the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

# A key: lowercase segments of [a-z0-9_.-], no empty, "." or ".." segment.
_SEGMENT = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,127}$")


class InvalidKey(ValueError):
    pass


class StorageError(OSError):
    """The object store failed (S3's own error, as an OSError like a disk's)."""


_Method = TypeVar("_Method")


def _translating(method: _Method) -> _Method:
    @functools.wraps(method)  # type: ignore[arg-type]
    async def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)  # type: ignore[operator]
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"object storage: {exc}") from exc

    return translated  # type: ignore[return-value]


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


class Storage(Protocol):
    """What the roles need of a store (LocalStorage, S3Storage)."""

    @property
    def root(self) -> Path: ...

    def path(self, key: str) -> Path: ...
    async def size(self, key: str) -> int | None: ...
    async def write_stream(self, key: str, chunks: AsyncIterator[bytes], limit: int,
                           offset: int = 0) -> int: ...
    async def read_text(self, key: str) -> str: ...
    async def fetch(self, key: str) -> Path: ...
    async def evict(self, key: str) -> None: ...
    async def put_file(self, key: str, local: Path) -> None: ...
    async def put_tree(self, prefix: str, local: Path) -> None: ...
    async def commit_spooled(self, key: str) -> None: ...
    async def serve(self, request: web.BaseRequest, key: str, content_type: str,
                    headers: dict[str, str]) -> web.StreamResponse: ...
    async def delete(self, key: str) -> None: ...
    async def delete_prefix(self, prefix: str) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class LocalStorage:
    """A directory. `path(key)` is also the working file the media role
    transcodes from and the signaling server serves with range requests."""

    root: Path

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def read_text(self, key: str) -> str:
        """Raises FileNotFoundError when there is no such file."""
        return await asyncio.to_thread(self.path(key).read_text)

    async def fetch(self, key: str) -> Path:
        return self.path(key)

    async def evict(self, key: str) -> None:
        return None  # the directory is the store: nothing is a copy

    async def put_file(self, key: str, local: Path) -> None:
        target = self.path(key)
        if local != target:
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(local.replace, target)

    async def put_tree(self, prefix: str, local: Path) -> None:
        """Swaps the directory `local` in as `prefix` (renames: the old tree
        is never mixed with the new)."""
        target = self.path(prefix)

        def swap() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            old = target.with_name(target.name + "-old")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            local.rename(target)
            shutil.rmtree(old, ignore_errors=True)

        await asyncio.to_thread(swap)

    async def commit_spooled(self, key: str) -> None:
        return None  # written in place

    async def serve(self, request: web.BaseRequest, key: str, content_type: str,
                    headers: dict[str, str]) -> web.StreamResponse:
        """The file with range requests (aiohttp's FileResponse); 404 when absent."""
        path = self.path(key)
        if not await asyncio.to_thread(path.is_file):
            raise FileNotFoundError(key)
        return web.FileResponse(path, headers={"Content-Type": content_type, **headers})

    async def close(self) -> None:
        return None

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


@dataclass(frozen=True)
class S3Config:
    endpoint: str | None  # None: AWS itself
    bucket: str
    region: str
    access_key: str | None
    secret_key: str | None


PART_BYTES = 8 * 1024 * 1024  # S3 wants every part but the last to be >= 5 MiB
MIN_PART_BYTES = 5 * 1024 * 1024


@dataclass
class S3Storage:
    """An S3-compatible bucket (AWS, MinIO, Ceph, moto...). Keys are the
    object names. Uploads stream into multipart uploads (8 MiB parts: what one
    upload holds in memory at once); a resumed upload (tus) is a new multipart
    upload whose first part is a server-side copy of the bytes already there.
    `root` is the local spool: files being written (a live recording, a
    processing attempt) live there until put in the bucket; `fetch` downloads
    into it."""

    root: Path
    config: S3Config
    _client: Any = None
    _exit: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None:
                from aiobotocore.session import get_session

                self._client = await self._exit.enter_async_context(
                    get_session().create_client(
                        "s3", endpoint_url=self.config.endpoint, region_name=self.config.region,
                        aws_access_key_id=self.config.access_key,
                        aws_secret_access_key=self.config.secret_key))
            return self._client

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None

    @_translating
    async def size(self, key: str) -> int | None:
        s3 = await self.client()
        try:
            head = await s3.head_object(Bucket=self.config.bucket, Key=check_key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return int(head["ContentLength"])

    @_translating
    async def write_stream(self, key: str, chunks: AsyncIterator[bytes], limit: int,
                           offset: int = 0) -> int:
        """As LocalStorage.write_stream. An interrupted body keeps what arrived
        (the parts so far are completed); TooLarge keeps only the first
        `offset` bytes."""
        s3, bucket, key = await self.client(), self.config.bucket, check_key(key)
        upload = await s3.create_multipart_upload(Bucket=bucket, Key=key)
        parts: list[dict[str, Any]] = []
        buffer = bytearray()

        async def put_part(data: bytes) -> None:
            answer = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                          PartNumber=len(parts) + 1, Body=data)
            parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})

        async def complete() -> None:
            if not parts:  # under one part: a plain PUT
                await s3.abort_multipart_upload(Bucket=bucket, Key=key,
                                                UploadId=upload["UploadId"])
                await s3.put_object(Bucket=bucket, Key=key, Body=bytes(buffer))
                return
            if buffer:
                await put_part(bytes(buffer))
            await s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                MultipartUpload={"Parts": parts})

        if offset >= MIN_PART_BYTES:
            answer = await s3.upload_part_copy(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1,
                CopySource={"Bucket": bucket, "Key": key}, CopySourceRange=f"bytes=0-{offset - 1}")
            parts.append({"PartNumber": 1, "ETag": answer["CopyPartResult"]["ETag"]})
        prefix = b""  # the kept bytes, when too few for a part of their own
        if 0 < offset < MIN_PART_BYTES:
            existing = await s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{offset - 1}")
            async with existing["Body"] as body:
                prefix = bytes(await body.read())
            buffer += prefix
        size = offset
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit)
                buffer += chunk
                if len(buffer) >= PART_BYTES:
                    await put_part(bytes(buffer))
                    buffer.clear()
        except TooLarge:
            del parts[1 if offset >= MIN_PART_BYTES else 0:]  # the copied part stays
            buffer = bytearray(prefix)
            await complete()
            raise
        except BaseException:
            await asyncio.shield(complete())  # what arrived is kept, as on disk
            raise
        await complete()
        return size

    async def _get_object(self, key: str) -> Any:
        """The object's GetObject answer (its "Body" streams it); a missing one is
        FileNotFoundError, as on disk."""
        s3 = await self.client()
        try:
            return await s3.get_object(Bucket=self.config.bucket, Key=check_key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                raise FileNotFoundError(key) from None
            raise

    @_translating
    async def read_text(self, key: str) -> str:
        answer = await self._get_object(key)
        async with answer["Body"] as body:
            return bytes(await body.read()).decode()

    @_translating
    async def fetch(self, key: str) -> Path:
        """The object as a local file in the spool (downloaded unless there)."""
        local = self.path(key)
        if await asyncio.to_thread(local.is_file):
            return local
        answer = await self._get_object(key)
        partial = local.with_name(local.name + ".part")
        await asyncio.to_thread(partial.parent.mkdir, parents=True, exist_ok=True)
        fd = await asyncio.to_thread(os.open, partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                     0o640)
        try:
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(1024 * 1024):
                    await asyncio.to_thread(_write_all, fd, chunk)
        finally:
            await asyncio.to_thread(os.close, fd)
        await asyncio.to_thread(partial.replace, local)
        return local

    async def evict(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)

    @_translating
    async def put_file(self, key: str, local: Path) -> None:
        """A local file as the object `key` (multipart past one part)."""
        await self.write_stream(key, _file_chunks(local), 2**63)

    @_translating
    async def put_tree(self, prefix: str, local: Path) -> None:
        """Every file under `local` as `prefix/<relative path>`; objects under
        `prefix` the new tree does not have are removed afterwards."""
        files = await asyncio.to_thread(lambda: sorted(p for p in local.rglob("*")
                                                       if p.is_file()))
        keys = set()
        for file in files:
            key = check_key(f"{prefix}/{file.relative_to(local).as_posix()}")
            await self.put_file(key, file)
            keys.add(key)
        for stale in set(await self._keys(prefix)) - keys:
            await self.delete(stale)
        await asyncio.to_thread(shutil.rmtree, local, True)

    @_translating
    async def commit_spooled(self, key: str) -> None:
        """A file written in the spool (a recording) goes to the bucket; the
        spool copy is removed. Nothing there: nothing to do."""
        local = self.path(key)
        if not await asyncio.to_thread(local.is_file):
            return
        await self.put_file(key, local)
        await self.evict(key)

    @_translating
    async def serve(self, request: web.BaseRequest, key: str, content_type: str,
                    headers: dict[str, str]) -> web.StreamResponse:
        """The object through this server (so billing, CSP and CORS stay as
        for the directory), the client's Range passed on to the bucket."""
        size = await self.size(key)
        if size is None:
            raise FileNotFoundError(key)
        common = {"Content-Type": content_type, "Accept-Ranges": "bytes", **headers}
        try:
            wanted = request.http_range
        except ValueError:
            wanted = slice(None, None)  # an unreadable Range: the whole object, as aiohttp does
        start, stop = wanted.start, wanted.stop
        ranged = start is not None or stop is not None
        if start is not None and start < 0:  # bytes=-N: the last N
            start, stop = max(0, size + start), size
        start = start or 0
        stop = size if stop is None else min(stop, size)
        if ranged and (start >= size or start >= stop):
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        response = web.StreamResponse(status=206 if ranged else 200, headers=common)
        response.content_length = stop - start
        if ranged:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        await response.prepare(request)
        if stop > start and request.method != "HEAD":
            s3 = await self.client()
            answer = await s3.get_object(Bucket=self.config.bucket, Key=check_key(key),
                                         Range=f"bytes={start}-{stop - 1}")
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(256 * 1024):
                    await response.write(chunk)
        await response.write_eof()
        return response

    @_translating
    async def delete(self, key: str) -> None:
        s3 = await self.client()
        await s3.delete_object(Bucket=self.config.bucket, Key=check_key(key))

    @_translating
    async def delete_prefix(self, prefix: str) -> None:
        for key in await self._keys(prefix):
            await self.delete(key)
        await asyncio.to_thread(shutil.rmtree, self.path(prefix), True)

    async def _keys(self, prefix: str) -> list[str]:
        s3 = await self.client()
        keys: list[str] = []
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.config.bucket,
                                             Prefix=check_key(prefix) + "/"):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:  # each read runs in a thread
        while chunk := await asyncio.to_thread(file.read, PART_BYTES):
            yield chunk


def storage_for(media_dir: Path, s3: S3Config | None = None) -> Storage:
    """The directory store, or the bucket (with `media_dir` as its spool)."""
    if s3 is not None:
        return S3Storage(media_dir.resolve(), s3)
    return LocalStorage(media_dir.resolve())
