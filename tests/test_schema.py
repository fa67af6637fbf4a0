"""The SQL migrations, proved with real rows in a real Postgres.

`sql/0001_platform_schema.sql` is the platform's schema document verbatim; 0002+ amend it.
Each amendment is shown to hold on data (not only in the catalog), and where 0001 was wrong
the test also evaluates 0001's own text against the same data, so it fails if the original
were in fact right (i.e. if the test data did not exercise the bug).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path

import asyncpg
import pytest

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
MIGRATIONS = sorted(SQL_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))
SCHEMA_0001 = (SQL_DIR / "0001_platform_schema.sql").read_text()

TABLES = {
    "users", "videos", "video_versions", "video_metadata", "categories", "video_categories",
    "streams", "stream_viewers", "stream_sessions", "payments", "creator_earnings", "follows",
    "comments", "comment_likes", "video_likes", "video_views", "stream_analytics", "reports",
}
# Every table of the document whose key is `id UUID PRIMARY KEY`.
TABLES_WITH_UUID_ID = TABLES - {"video_metadata", "video_categories"}
VIEWS = {"creator_dashboard", "video_analytics"}
TRIGGER_FUNCTIONS = {"update_updated_at_column", "update_video_view_count"}
TRIGGERS = {
    ("update_videos_updated_at", "videos", "update_updated_at_column"),
    ("update_streams_updated_at", "streams", "update_updated_at_column"),
    ("update_users_updated_at", "users", "update_updated_at_column"),
    ("update_video_view_count_trigger", "video_views", "update_video_view_count"),
}

ONE_PLANCK = Decimal("0.000000000001")  # 10^-12 token: the dev chain has 12 decimals
ONE_WEI = Decimal("0.000000000000000001")  # 10^-18: a chain with 18 decimals
LARGE = Decimal("99999999999999999999.999999999999999999")  # the largest NUMERIC(38, 18)


def original_select(view: str) -> str:
    """The SELECT of `view` exactly as 0001 (the schema document) defines it."""
    match = re.search(rf"CREATE VIEW {view} AS\n(.*?);", SCHEMA_0001, re.S)
    assert match, f"0001 defines no view {view}"
    return match.group(1)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def make_user(db: asyncpg.Connection, name: str, *, creator: bool = False) -> uuid.UUID:
    return await db.fetchval(
        "INSERT INTO users (account_id, username, is_creator) VALUES ($1, $2, $3) RETURNING id",
        f"5{name}Account", name, creator)


async def make_stream(db: asyncpg.Connection, creator: uuid.UUID, title: str = "s",
                      **columns: object) -> uuid.UUID:
    columns.setdefault("stream_key_hash", key_hash(f"key-{uuid.uuid4()}"))
    names = ["creator_id", "title", *columns]
    values = [creator, title, *columns.values()]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    return await db.fetchval(
        f"INSERT INTO streams ({', '.join(names)}) VALUES ({placeholders}) RETURNING id",
        *values)


async def make_video(db: asyncpg.Connection, creator: uuid.UUID, title: str = "v",
                     status: str = "ready", view_count: int = 0,
                     published_at: datetime | None = None) -> uuid.UUID:
    return await db.fetchval(
        "INSERT INTO videos (creator_id, title, status, view_count, published_at) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        creator, title, status, view_count, published_at)


# --- the schema after migration -------------------------------------------------------------


def test_migration_files_are_numbered_in_order() -> None:
    names = [p.name for p in MIGRATIONS]
    assert names[0] == "0001_platform_schema.sql"
    # Unique four-digit numbers in order; gaps are allowed: parallel branches
    # each number their migrations in a range of their own.
    numbers = [int(n[:4]) for n in names]
    assert all(n[4] == "_" for n in names)
    assert numbers == sorted(set(numbers))
    for path in MIGRATIONS[1:]:  # every amendment starts with a comment saying why
        lines = path.read_text().splitlines()
        header = lines[:next(i for i, line in enumerate(lines) if not line.startswith("--"))]
        assert any("WHY" in line for line in header), path.name


async def test_all_tables_views_functions_triggers_and_indexes_exist(
        db: asyncpg.Connection) -> None:
    tables = {r["table_name"] for r in await db.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")}
    assert TABLES <= tables
    assert len(TABLES) == 18

    views = {r["table_name"] for r in await db.fetch(
        "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'")}
    assert VIEWS <= views

    functions = {r["proname"] for r in await db.fetch(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' AND p.prorettype = 'trigger'::regtype")}
    assert TRIGGER_FUNCTIONS <= functions

    triggers = {(r["tgname"], r["relname"], r["proname"]) for r in await db.fetch(
        "SELECT t.tgname, c.relname, p.proname FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND NOT t.tgisinternal")}
    assert TRIGGERS <= triggers

    # Every index the document creates is still there.
    documented = set(re.findall(r"CREATE (?:UNIQUE )?INDEX (\w+)", SCHEMA_0001))
    assert len(documented) == 33
    indexes = {r["indexname"] for r in await db.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert documented <= indexes


def test_0001_is_the_schema_document() -> None:
    """0001 holds the document's objects, in its order, with its known defects intact."""
    tables = re.findall(r"^CREATE TABLE (\w+) \($", SCHEMA_0001, re.M)
    assert tables == [
        "users", "videos", "video_versions", "video_metadata", "categories", "video_categories",
        "streams", "stream_viewers", "stream_sessions", "payments", "creator_earnings",
        "follows", "comments", "comment_likes", "video_likes", "video_views",
        "stream_analytics", "reports"]
    assert re.findall(r"^CREATE VIEW (\w+)", SCHEMA_0001, re.M) == [
        "creator_dashboard", "video_analytics"]
    assert re.findall(r"^CREATE OR REPLACE FUNCTION (\w+)", SCHEMA_0001, re.M) == [
        "update_updated_at_column", "update_video_view_count"]
    assert len(re.findall(r"^CREATE TRIGGER \w+", SCHEMA_0001, re.M)) == 4
    assert "    stream_key VARCHAR(255) UNIQUE, -- Secret key for streaming\n" in SCHEMA_0001
    assert "    COUNT(vv.id) as unique_viewers,\n" in SCHEMA_0001


# --- 0002: every UUID primary key has a default ---------------------------------------------


async def test_every_uuid_primary_key_has_a_default(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        "SELECT table_name, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name = 'id' AND data_type = 'uuid'")
    defaults = {r["table_name"]: r["column_default"] for r in rows}
    assert TABLES_WITH_UUID_ID <= set(defaults)  # later migrations' tables too:
    assert set(defaults.values()) == {"gen_random_uuid()"}  # every uuid id has the default


async def test_rows_inserted_without_an_id_get_a_uuid(db: asyncpg.Connection) -> None:
    """One real row in each of the 16 tables, none of them given an id."""
    ids: dict[str, uuid.UUID] = {}

    async def insert(table: str, sql: str, *args: object) -> uuid.UUID:
        ids[table] = await db.fetchval(sql + " RETURNING id", *args)
        return ids[table]

    creator = await insert("users", "INSERT INTO users (account_id, is_creator) "
                           "VALUES ('5Creator', TRUE)")
    viewer = await db.fetchval("INSERT INTO users (account_id) VALUES ('5Viewer') RETURNING id")
    category = await insert("categories", "INSERT INTO categories (name) VALUES ('music')")
    video = await insert("videos", "INSERT INTO videos (creator_id, title) VALUES ($1, 't')",
                         creator)
    await insert("video_versions", "INSERT INTO video_versions (video_id, resolution, "
                 "storage_url) VALUES ($1, '720p', 'file:///v')", video)
    stream = await insert("streams", "INSERT INTO streams (creator_id, title, category_id, "
                          "stream_key_hash) VALUES ($1, 's', $2, $3)",
                          creator, category, key_hash("k"))
    viewing = await insert("stream_viewers", "INSERT INTO stream_viewers (stream_id, viewer_id) "
                           "VALUES ($1, $2)", stream, viewer)
    await insert("stream_sessions", "INSERT INTO stream_sessions (stream_id) VALUES ($1)", stream)
    await insert("payments", "INSERT INTO payments (from_user_id, to_user_id, amount, "
                 "payment_type, reference_id) VALUES ($1, $2, 1, 'stream_view', $3)",
                 viewer, creator, viewing)
    await insert("creator_earnings", "INSERT INTO creator_earnings (creator_id) VALUES ($1)",
                 creator)
    await insert("follows", "INSERT INTO follows (follower_id, following_id) VALUES ($1, $2)",
                 viewer, creator)
    comment = await insert("comments", "INSERT INTO comments (stream_id, author_id, content) "
                           "VALUES ($1, $2, 'hi')", stream, viewer)
    await insert("comment_likes", "INSERT INTO comment_likes (comment_id, user_id) "
                 "VALUES ($1, $2)", comment, creator)
    await insert("video_likes", "INSERT INTO video_likes (video_id, user_id) VALUES ($1, $2)",
                 video, viewer)
    await insert("video_views", "INSERT INTO video_views (video_id, viewer_id) VALUES ($1, $2)",
                 video, viewer)
    await insert("stream_analytics", "INSERT INTO stream_analytics (stream_id, timestamp, "
                 "viewer_count) VALUES ($1, now(), 1)", stream)
    await insert("reports", "INSERT INTO reports (reporter_id, target_type, target_id, reason) "
                 "VALUES ($1, 'comment', $2, 'spam')", viewer, comment)

    assert set(ids) == TABLES_WITH_UUID_ID
    for table, value in ids.items():
        assert isinstance(value, uuid.UUID), table
        assert value.version == 4, table
    assert len(set(ids.values()) | {viewer}) == len(ids) + 1  # all distinct


# --- 0003: tick counters are BIGINT ---------------------------------------------------------


async def test_total_ticks_above_2_pow_31_are_accepted(db: asyncpg.Connection) -> None:
    six_hours_of_100k_viewers = 100_000 * 6 * 3600  # 2,160,000,000 > 2^31 - 1
    assert six_hours_of_100k_viewers > 2**31 - 1
    creator = await make_user(db, "creator", creator=True)
    viewer = await make_user(db, "viewer")
    stream = await make_stream(db, creator, total_ticks=2**31 - 1)
    session = await db.fetchval(
        "INSERT INTO stream_sessions (stream_id, total_ticks) VALUES ($1, $2) RETURNING id",
        stream, six_hours_of_100k_viewers)
    viewing = await db.fetchval(
        "INSERT INTO stream_viewers (stream_id, viewer_id, total_ticks) VALUES ($1, $2, $3) "
        "RETURNING id", stream, viewer, 2**31)

    # A flush adding one more second of 100k viewers across the INTEGER limit.
    await db.execute("UPDATE streams SET total_ticks = total_ticks + 100000 WHERE id = $1", stream)
    assert await db.fetchval("SELECT total_ticks FROM streams WHERE id = $1", stream) \
        == 2**31 - 1 + 100_000
    assert await db.fetchval("SELECT total_ticks FROM stream_sessions WHERE id = $1", session) \
        == six_hours_of_100k_viewers
    assert await db.fetchval("SELECT total_ticks FROM stream_viewers WHERE id = $1", viewing) \
        == 2**31
    big = 2**62
    await db.execute("UPDATE stream_sessions SET total_ticks = $2 WHERE id = $1", session, big)
    assert await db.fetchval("SELECT total_ticks FROM stream_sessions WHERE id = $1", session) \
        == big

    types = {r["table_name"]: r["data_type"] for r in await db.fetch(
        "SELECT table_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name = 'total_ticks'")}
    assert types == {"streams": "bigint", "stream_sessions": "bigint",
                     "stream_viewers": "bigint"}
    # ... which 0001's INTEGER could not hold.
    with pytest.raises(asyncpg.NumericValueOutOfRangeError):
        await db.fetchval("SELECT ($1::bigint)::integer", six_hours_of_100k_viewers)


# --- 0004: money is exact to the planck and wide enough -------------------------------------


MONEY_COLUMNS = [
    ("stream_viewers", "paid_amount"),
    ("payments", "amount"),
    ("creator_earnings", "total_earnings"),
    ("creator_earnings", "pending_payout"),
]


async def test_money_columns_are_numeric_38_18(db: asyncpg.Connection) -> None:
    for table, column in [*MONEY_COLUMNS, ("streams", "price_per_second")]:
        row = await db.fetchrow(
            "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
            table, column)
        assert tuple(row) == ("numeric", 38, 18), (table, column)


async def test_one_planck_and_large_sums_round_trip_exactly(db: asyncpg.Connection) -> None:
    creator = await make_user(db, "creator", creator=True)
    viewer = await make_user(db, "viewer")
    stream = await make_stream(db, creator)

    for amount in (ONE_PLANCK, ONE_WEI, LARGE, Decimal("1234567.891011121314151617")):
        viewing = await db.fetchval(
            "INSERT INTO stream_viewers (stream_id, viewer_id, paid_amount) VALUES ($1, $2, $3) "
            "RETURNING id", stream, viewer, amount)
        stored = await db.fetchval(
            "SELECT paid_amount FROM stream_viewers WHERE id = $1", viewing)
        assert isinstance(stored, Decimal)
        assert stored == amount
        payment = await db.fetchval(
            "INSERT INTO payments (from_user_id, to_user_id, amount, payment_type) "
            "VALUES ($1, $2, $3, 'stream_view') RETURNING id", viewer, creator, amount)
        assert await db.fetchval("SELECT amount FROM payments WHERE id = $1", payment) == amount

    # A creator's earnings accumulate planck by planck, then a large sum, without loss.
    await db.execute("INSERT INTO creator_earnings (creator_id, total_earnings, pending_payout) "
                     "VALUES ($1, 0, $2)", creator, ONE_PLANCK)
    for _ in range(3):
        await db.execute("UPDATE creator_earnings SET total_earnings = total_earnings + $2, "
                         "pending_payout = pending_payout + $2 WHERE creator_id = $1",
                         creator, ONE_PLANCK)
    large_sum = Decimal("98765432109876543210.000000000001")
    await db.execute("UPDATE creator_earnings SET total_earnings = total_earnings + $2 "
                     "WHERE creator_id = $1", creator, large_sum)
    total, pending = await db.fetchrow(
        "SELECT total_earnings, pending_payout FROM creator_earnings WHERE creator_id = $1",
        creator)
    with localcontext(prec=80):  # Python's default 28 digits would round these sums
        assert total == large_sum + 3 * ONE_PLANCK
        assert total != large_sum
        assert pending == 4 * ONE_PLANCK
        # SUM over the payments is exact too (and may exceed one column's range).
        expected = 2 * (ONE_PLANCK + ONE_WEI + Decimal("1234567.891011121314151617")) + LARGE * 2
    await db.execute("INSERT INTO payments (from_user_id, to_user_id, amount, payment_type) "
                     "VALUES ($1, $2, $3, 'tip')", viewer, creator, LARGE)
    await db.execute("INSERT INTO payments (from_user_id, to_user_id, amount, payment_type) "
                     "SELECT from_user_id, to_user_id, amount, 'tip' FROM payments "
                     "WHERE amount < 2000000")
    assert await db.fetchval("SELECT SUM(amount) FROM payments") == expected


async def test_money_too_large_is_refused_not_rounded(db: asyncpg.Connection) -> None:
    creator = await make_user(db, "creator", creator=True)
    with localcontext(prec=80):
        too_large = LARGE + ONE_WEI  # 10^20 tokens: 21 integer digits
    with pytest.raises(asyncpg.NumericValueOutOfRangeError):
        await db.execute("INSERT INTO creator_earnings (creator_id, total_earnings) "
                         "VALUES ($1, $2)", creator, too_large)


async def test_original_money_type_lost_a_planck(db: asyncpg.Connection) -> None:
    """Why 0004 exists: 0001's DECIMAL(15, 8) rounds one planck to zero."""
    assert await db.fetchval("SELECT $1::numeric::DECIMAL(15, 8)", ONE_PLANCK) == 0
    assert await db.fetchval("SELECT $1::numeric::NUMERIC(38, 18)", ONE_PLANCK) == ONE_PLANCK


# --- 0005: price_per_second and the hashed stream key ---------------------------------------


async def test_price_per_second_default_and_check(db: asyncpg.Connection) -> None:
    creator = await make_user(db, "creator", creator=True)
    stream = await make_stream(db, creator)
    assert await db.fetchval("SELECT price_per_second FROM streams WHERE id = $1", stream) \
        == Decimal("0.001")

    cheap = await make_stream(db, creator, price_per_second=ONE_PLANCK)
    assert await db.fetchval("SELECT price_per_second FROM streams WHERE id = $1", cheap) \
        == ONE_PLANCK

    for bad in (Decimal(0), Decimal("-0.001"), -ONE_PLANCK):
        with pytest.raises(asyncpg.CheckViolationError):
            await make_stream(db, creator, price_per_second=bad)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE streams SET price_per_second = 0 WHERE id = $1", stream)
    with pytest.raises(asyncpg.NotNullViolationError):
        await make_stream(db, creator, price_per_second=None)


async def test_stream_key_is_stored_only_as_a_unique_hash(db: asyncpg.Connection) -> None:
    columns = {r["column_name"]: r["data_type"] for r in await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'streams'")}
    assert "stream_key" not in columns
    assert columns["stream_key_hash"] == "bytea"

    creator = await make_user(db, "creator", creator=True)
    key = "sk_live_" + "x" * 43
    stream = await make_stream(db, creator, stream_key_hash=key_hash(key))
    # The server finds a stream by its key with one indexed equality; SQL and Python agree.
    assert await db.fetchval(
        "SELECT id FROM streams WHERE stream_key_hash = sha256(convert_to($1, 'UTF8'))",
        key) == stream

    with pytest.raises(asyncpg.UniqueViolationError):
        await make_stream(db, creator, stream_key_hash=key_hash(key))
    with pytest.raises(asyncpg.CheckViolationError):  # a digest, not a key: 32 bytes
        await make_stream(db, creator, stream_key_hash=key.encode())
    with pytest.raises(asyncpg.NotNullViolationError):
        await make_stream(db, creator, stream_key_hash=None)


async def test_a_stream_inserted_without_a_key_gets_a_digest_nobody_knows(
        db: asyncpg.Connection) -> None:
    """The document allows a keyless `streams` row: it is accepted, with the digest of a
    random value (so no key, not even the empty one, publishes to it), unique per row."""
    creator = await make_user(db, "creator", creator=True)
    digests = [bytes(await db.fetchval(
        "INSERT INTO streams (creator_id, title) VALUES ($1, 'keyless') "
        "RETURNING stream_key_hash", creator)) for _ in range(2)]
    assert all(len(digest) == 32 for digest in digests)
    assert digests[0] != digests[1]
    assert not {key_hash(""), key_hash("null"), hashlib.sha256(uuid.UUID(int=0).bytes).digest()
                } & set(digests)


async def test_migrations_carry_existing_data_over(db: asyncpg.Connection) -> None:
    """Apply 0001, add rows, then apply the amendments: in a scratch schema, rolled back.
    Existing stream keys are hashed (so they keep working), money and ticks survive."""
    transaction = db.transaction()
    await transaction.start()
    try:
        await db.execute("CREATE SCHEMA migration_scratch; "
                         "SET LOCAL search_path = migration_scratch")
        await db.execute(MIGRATIONS[0].read_text())
        creator = uuid.uuid4()
        await db.execute("INSERT INTO users (id, account_id, is_creator) VALUES ($1, 'c', TRUE)",
                         creator)
        await db.execute("INSERT INTO streams (id, creator_id, title, stream_key, total_ticks) "
                         "VALUES ($1, $2, 'keyed', 'old-secret', 2147483647), "
                         "($3, $2, 'keyless', NULL, 0)", uuid.uuid4(), creator, uuid.uuid4())
        await db.execute("INSERT INTO creator_earnings (id, creator_id, total_earnings) "
                         "VALUES ($1, $2, 1234.5678)", uuid.uuid4(), creator)

        for path in MIGRATIONS[1:]:
            await db.execute(path.read_text())

        rows = {r["title"]: r for r in await db.fetch(
            "SELECT title, stream_key_hash, total_ticks, price_per_second FROM streams")}
        assert bytes(rows["keyed"]["stream_key_hash"]) == key_hash("old-secret")
        assert len(rows["keyless"]["stream_key_hash"]) == 32
        assert rows["keyed"]["total_ticks"] == 2**31 - 1
        assert rows["keyed"]["price_per_second"] == Decimal("0.001")
        assert await db.fetchval("SELECT total_earnings FROM creator_dashboard") \
            == Decimal("1234.5678")
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = $1"
        public = await db.fetchval(tables, "public") - 1  # schema_migrations is the runner's
        assert await db.fetchval(tables, "migration_scratch") == public
    finally:
        await transaction.rollback()


# --- 0006: the views give correct numbers ---------------------------------------------------


async def _dashboard_data(db: asyncpg.Connection) -> dict[str, object]:
    creator = await make_user(db, "creator", creator=True)
    early = datetime(2024, 1, 1, 12, 0)
    late = early + timedelta(days=30)
    await make_video(db, creator, "a", view_count=10, published_at=early)
    await make_video(db, creator, "b", view_count=20, published_at=late)
    await make_video(db, creator, "draft", status="processing", view_count=1000)
    for viewers in (1, 2, 3):
        await make_stream(db, creator, f"stream {viewers}", viewer_count=viewers,
                          start_time=early + timedelta(days=viewers))
    await db.execute("INSERT INTO creator_earnings (creator_id, total_earnings) VALUES ($1, $2)",
                     creator, Decimal("5.000000000001"))
    idle = await make_user(db, "idle", creator=True)
    await make_user(db, "viewer")  # not a creator: not on the dashboard
    return {"creator": creator, "idle": idle, "early": early, "late": late}


async def test_creator_dashboard_has_no_fan_out(db: asyncpg.Connection) -> None:
    data = await _dashboard_data(db)
    rows = {r["creator_id"]: r for r in await db.fetch("SELECT * FROM creator_dashboard")}
    assert set(rows) == {data["creator"], data["idle"]}

    row = rows[data["creator"]]
    assert row["username"] == "creator"
    assert row["total_videos"] == 2
    assert row["total_streams"] == 3
    assert row["total_video_views"] == 30
    assert row["total_stream_viewers"] == 6
    assert row["total_earnings"] == Decimal("5.000000000001")
    # The newest activity: the video published after the last stream started.
    assert row["last_activity"] == data["late"]

    idle = rows[data["idle"]]
    assert (idle["total_videos"], idle["total_streams"], idle["total_video_views"],
            idle["total_stream_viewers"], idle["last_activity"], idle["total_earnings"]) \
        == (0, 0, 0, 0, None, 0)


async def test_original_creator_dashboard_really_was_wrong(db: asyncpg.Connection) -> None:
    data = await _dashboard_data(db)
    original = {r["creator_id"]: r for r in await db.fetch(original_select("creator_dashboard"))}
    row = original[data["creator"]]
    assert (row["total_videos"], row["total_streams"]) == (2, 3)
    assert row["total_video_views"] == 90  # 30 x 3 streams
    assert row["total_stream_viewers"] == 12  # 6 x 2 videos
    assert row["last_activity"] == data["early"] + timedelta(days=3)  # ignores the newer video


async def _analytics_data(db: asyncpg.Connection) -> dict[str, uuid.UUID]:
    creator = await make_user(db, "creator", creator=True)
    viewer = await make_user(db, "viewer")
    video = await make_video(db, creator, "watched")
    unwatched = await make_video(db, creator, "unwatched")
    for duration in (10, 20, 30):
        await db.execute("INSERT INTO video_views (video_id, viewer_id, view_duration) "
                         "VALUES ($1, $2, $3)", video, viewer, duration)
    await db.execute("INSERT INTO video_views (video_id, viewer_id, view_duration) "
                     "VALUES ($1, NULL, 40)", video)  # anonymous
    return {"video": video, "unwatched": unwatched}


async def test_video_analytics_counts_unique_viewers(db: asyncpg.Connection) -> None:
    data = await _analytics_data(db)
    rows = {r["video_id"]: r for r in await db.fetch("SELECT * FROM video_analytics")}
    row = rows[data["video"]]
    assert row["unique_viewers"] == 1  # one person, three views; the anonymous view is not one
    assert row["total_views"] == 4
    assert row["view_count"] == 4  # the 0001 trigger
    assert row["avg_view_duration"] == 25
    assert row["creator_username"] == "creator"
    empty = rows[data["unwatched"]]
    assert (empty["unique_viewers"], empty["total_views"], empty["avg_view_duration"]) \
        == (0, 0, None)


async def test_original_video_analytics_really_was_wrong(db: asyncpg.Connection) -> None:
    data = await _analytics_data(db)
    original = {r["video_id"]: r for r in await db.fetch(original_select("video_analytics"))}
    assert original[data["video"]]["unique_viewers"] == 4


@pytest.mark.parametrize("view", sorted(VIEWS))
async def test_views_keep_the_documented_columns(db: asyncpg.Connection, view: str) -> None:
    """Same names, order and types as the document; new columns only appended."""
    documented = (await db.prepare(original_select(view))).get_attributes()
    current = (await db.prepare(f"SELECT * FROM {view}")).get_attributes()
    assert [(a.name, a.type.name) for a in current[:len(documented)]] \
        == [(a.name, a.type.name) for a in documented]
    assert [a.name for a in current[len(documented):]] \
        == (["total_views"] if view == "video_analytics" else [])


# --- 0001's triggers still work --------------------------------------------------------------


@pytest.mark.parametrize("table", ["users", "videos", "streams"])
async def test_updated_at_trigger(db: asyncpg.Connection, table: str) -> None:
    creator = await make_user(db, "creator", creator=True)
    if table == "users":
        row = creator
    elif table == "videos":
        row = await make_video(db, creator)
    else:
        row = await make_stream(db, creator)
    old = datetime(2000, 1, 1)
    column = "username" if table == "users" else "title"
    # Even an UPDATE that sets updated_at explicitly gets the trigger's NOW().
    await db.execute(f"UPDATE {table} SET updated_at = $2 WHERE id = $1", row, old)
    assert await db.fetchval(f"SELECT updated_at FROM {table} WHERE id = $1", row) > old
    before = await db.fetchval("SELECT localtimestamp")
    await db.execute(f"UPDATE {table} SET {column} = 'renamed' WHERE id = $1", row)
    updated_at = await db.fetchval(f"SELECT updated_at FROM {table} WHERE id = $1", row)
    assert updated_at >= before > old


async def test_video_view_insert_increments_view_count(db: asyncpg.Connection) -> None:
    creator = await make_user(db, "creator", creator=True)
    video = await make_video(db, creator, view_count=7)
    other = await make_video(db, creator, view_count=0)
    for _ in range(3):
        await db.execute("INSERT INTO video_views (video_id) VALUES ($1)", video)
    assert await db.fetchval("SELECT view_count FROM videos WHERE id = $1", video) == 10
    assert await db.fetchval("SELECT view_count FROM videos WHERE id = $1", other) == 0
