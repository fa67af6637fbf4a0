"""The record step's journal rows as ONE binary COPY payload, built a column
at a time in C (str.join, bytes.fromhex, bytes repetition) with no Python work
per tick.

asyncpg's `copy_records_to_table` encodes an array element by element through
its generic codec (an `isinstance` against collections.abc per element): at
100k viewers that was three quarters of the billing process's CPU. The rows
here are always the same five columns of `tick_journal` (sql/0090), so their
binary form (PostgreSQL's COPY BINARY: a header, then per row a field count
and each field's length and bytes; an array is its dimensions, its element
type and each element's length and bytes) is written directly."""

from __future__ import annotations

import binascii
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import groupby

from vilokanam.metering import ID_SEPARATOR, id_count

# COPY BINARY's signature, flags and header extension length.
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
UUID_OID = 2950
INT8_OID = 20
_UUID_LENGTH_HEX = "00000010"  # each uuid element's length (16), in hex
_INT8_LENGTH = struct.pack(">i", 8)


def _field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _array_header(count: int, oid: int) -> bytes:
    if count == 0:  # an empty array has no dimension
        return struct.pack(">iii", 0, 0, oid)
    return struct.pack(">iiiii", 1, 0, oid, count, 1)


_UUID_TEXT = 36  # 8-4-4-4-12 hex digits
_DASHES = (8, 13, 18, 23)


def _canonical(joined: str, count: int) -> bool:
    """`count` canonical uuid texts joined by commas: every comma and dash in
    its place, counted on strided slices (in C); a2b_hex then refuses any
    other character that is not a hex digit."""
    block = _UUID_TEXT + 1
    return (len(joined) == block * count - 1
            and joined.count(ID_SEPARATOR) == count - 1
            == joined[_UUID_TEXT::block].count(ID_SEPARATOR)
            and joined.count("-") == 4 * count
            and all(joined[at::block].count("-") == count for at in _DASHES))


def uuid_array(ids: Sequence[str] | str) -> bytes:
    """A uuid[] from canonical uuid texts (a list, or joined by commas as a
    batch stores them): each element's length and its 16 bytes, all from one
    hex string -- the commas become the lengths. Checked first, all at once:
    an id that is not a canonical uuid would shift every element after it."""
    joined = ids if isinstance(ids, str) else ID_SEPARATOR.join(ids)
    count = id_count(joined)
    if count == 0:
        return _array_header(0, UUID_OID)
    if not _canonical(joined, count):
        raise ValueError("a journal id is not a canonical uuid")
    hexed = _UUID_LENGTH_HEX + joined.replace("-", "").replace(ID_SEPARATOR, _UUID_LENGTH_HEX)
    try:
        return _array_header(count, UUID_OID) + binascii.a2b_hex(hexed)
    except binascii.Error as exc:
        raise ValueError("a journal id is not a canonical uuid") from exc


def int8_array(values: Iterable[int]) -> bytes:
    """An int8[] of mostly equal values (a batch's prices): one element's bytes
    repeated per run."""
    runs = [(value, sum(1 for _ in run)) for value, run in groupby(values)]
    count = sum(n for _, n in runs)
    return _array_header(count, INT8_OID) + b"".join(
        (_INT8_LENGTH + struct.pack(">q", value)) * n for value, n in runs)


async def as_source(payload: bytes) -> AsyncIterator[bytes]:
    """A payload as asyncpg's `copy_to_table` takes it: an async iterable
    (bytes alone would be read as a file's path)."""
    yield payload


def journal_payload(rows: Iterable[tuple[str, int, Sequence[str] | str, Sequence[str] | str,
                                         Sequence[int]]]) -> bytes:
    """COPY BINARY of (batch_id, second, sessions, users, prices) rows."""
    parts = [HEADER]
    for batch_id, second, sessions, users, prices in rows:
        parts += [struct.pack(">h", 5), _field(batch_id.encode()),
                  _field(struct.pack(">q", second)), _field(uuid_array(sessions)),
                  _field(uuid_array(users)), _field(int8_array(prices))]
    parts.append(TRAILER)
    return b"".join(parts)
