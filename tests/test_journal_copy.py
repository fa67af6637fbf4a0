"""billing/journal_copy.py: the record step's binary COPY, checked against a
real Postgres reading it back."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from billing.journal_copy import as_source, journal_payload, uuid_array

COLUMNS = ("batch_id", "second", "sessions", "users", "prices")


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_rows_copied_read_back_the_same(db: asyncpg.Connection) -> None:
    sessions, users = ids(1200), ids(1200)
    prices = [5] * 700 + [2**62] * 499 + [0]  # runs, and an int8 near its bound
    one_session, one_user = ids(1), ids(1)
    rows = [("w-1:100", 100, ",".join(sessions), ",".join(users), prices),  # joined, as stored
            ("w-2:101", 101, one_session, one_user, [7]),  # lists
            ("vod:x:3", -1, "", "", [])]  # empty columns
    await db.copy_to_table("tick_journal", columns=COLUMNS, format="binary",
                           source=as_source(journal_payload(rows)))
    got = {r["batch_id"]: r for r in await db.fetch(
        "SELECT batch_id, second, sessions::text[] AS s, users::text[] AS u, prices "
        "FROM tick_journal")}
    assert (got["w-1:100"]["s"], got["w-1:100"]["u"]) == (sessions, users)
    assert got["w-1:100"]["prices"] == prices and got["w-1:100"]["second"] == 100
    assert (got["w-2:101"]["s"], got["w-2:101"]["u"], got["w-2:101"]["prices"]) == (
        one_session, one_user, [7])
    assert (got["vod:x:3"]["s"], got["vod:x:3"]["prices"], got["vod:x:3"]["second"]) == (
        [], [], -1)


async def test_uppercase_uuids_are_the_same_uuids(db: asyncpg.Connection) -> None:
    session = ids(1)[0]
    await db.copy_to_table("tick_journal", columns=COLUMNS, format="binary", source=as_source(
        journal_payload([("w:1", 1, session.upper(), session, [1])])))
    row = await db.fetchrow("SELECT sessions[1]::text AS s, users[1]::text AS u FROM tick_journal")
    assert row["s"] == row["u"] == session


@pytest.mark.parametrize("bad", [
    "s1",  # not a uuid (the tests' made-up ids)
    "0123456-89ab-cdef-0123-456789abcdef0",  # a dash out of place, same length
    "0123456789abcdef0123456789abcdef",  # no dashes
    "0123456g-89ab-cdef-0123-456789abcdef",  # not hex
    "01234567-89ab-cdef-0123-456789abcde ",  # a space a2b_hex would not skip, fromhex would
])
def test_an_id_that_is_not_a_canonical_uuid_is_refused(bad: str) -> None:
    """Each element's place is found by counting, not parsing: a malformed id
    would shift every one after it, so the whole column is refused."""
    good = ids(3)
    for column in ([*good[:1], bad, *good[1:]], ",".join([*good, bad]), [bad]):
        with pytest.raises(ValueError, match="canonical uuid"):
            uuid_array(column)
