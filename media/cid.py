"""The CIDv1 `ipfs add --cid-version=1` gives a file, computed here without an
IPFS node (tests/test_cid.py checks it against npm `ipfs-car`, an independent
implementation).

kubo's defaults with --cid-version=1: fixed 262144-byte chunks, raw leaves
(codec raw, 0x55), a balanced DAG of UnixFS `File` nodes (dag-pb, 0x70) of at
most 174 links each, sha2-256, the CID written in base32 (`b...`). A file of
one chunk is its raw leaf. The file is read once, in chunks: memory stays
bounded for a file of any size."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_SIZE = 262144
MAX_LINKS = 174
RAW, DAG_PB = 0x55, 0x70
SHA2_256 = 0x12


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _field(number, 2) + _varint(len(value)) + value


def _cid(codec: int, data: bytes) -> bytes:
    return bytes([0x01]) + _varint(codec) + bytes([SHA2_256, 32]) + hashlib.sha256(data).digest()


def cid_string(cid: bytes) -> str:
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


@dataclass(frozen=True)
class _Node:
    cid: bytes
    file_size: int  # bytes of file data below this node
    tsize: int  # the node's bytes plus every descendant's (a dag-pb link's Tsize)


def _leaf(chunk: bytes) -> _Node:
    return _Node(_cid(RAW, chunk), len(chunk), len(chunk))


def _branch(children: list[_Node]) -> _Node:
    file_size = sum(c.file_size for c in children)
    unixfs = _field(1, 0) + _varint(2) + _field(3, 0) + _varint(file_size) + b"".join(
        _field(4, 0) + _varint(c.file_size) for c in children)
    links = b"".join(_bytes_field(2, _bytes_field(1, c.cid) + _bytes_field(2, b"")
                                  + _field(3, 0) + _varint(c.tsize)) for c in children)
    block = links + _bytes_field(1, unixfs)
    return _Node(_cid(DAG_PB, block), file_size, len(block) + sum(c.tsize for c in children))


class _Leaves:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._next: bytes | None = next(chunks, None)

    @property
    def done(self) -> bool:
        return self._next is None

    def take(self) -> _Node:
        assert self._next is not None
        chunk, self._next = self._next, next(self._chunks, None)
        return _leaf(chunk)


def _fill(leaves: _Leaves, first: _Node | None, depth: int) -> _Node:
    """go-unixfs balanced.fillNodeRec: children up to MAX_LINKS, each a full
    subtree of depth - 1 (a leaf at depth 1)."""
    children = [first] if first is not None else []
    while len(children) < MAX_LINKS and not leaves.done:
        children.append(leaves.take() if depth == 1 else _fill(leaves, None, depth - 1))
    return _branch(children)


def cid_of_chunks(chunks: Iterable[bytes]) -> str:
    leaves = _Leaves(_rechunk(chunks))
    if leaves.done:
        return cid_string(_cid(RAW, b""))
    root = leaves.take()
    depth = 1
    while not leaves.done:
        root = _fill(leaves, root, depth)
        depth += 1
    return cid_string(root.cid)


def _rechunk(chunks: Iterable[bytes]) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= CHUNK_SIZE:
            yield bytes(buffer[:CHUNK_SIZE])
            del buffer[:CHUNK_SIZE]
    if buffer:
        yield bytes(buffer)


def _read(paths: Iterable[Path]) -> Iterator[bytes]:
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(CHUNK_SIZE):
                yield block


def cid_of_file(path: Path) -> str:
    return cid_of_chunks(_read([path]))


def cid_of_files(paths: Iterable[Path]) -> str:
    """The CID of the files' concatenation (a rendition's segments in order are
    one playable MPEG-TS file)."""
    return cid_of_chunks(_read(paths))
