"""The migration runner against a real Postgres: order, idempotence, refusal of
edited files, and two runners at once."""

import asyncio
import hashlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Stores
from vilokanam.migrations import MigrationError, load_migrations, migrate
from vilokanam.resources import resource_dir


@pytest.fixture
async def fresh_db(stores: Stores) -> AsyncIterator[str]:
    """The URL of a brand-new empty database, dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    base, _ = stores.database_url.rsplit("/", 1)
    admin = await asyncpg.connect(f"{base}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(resource_dir("sql"), target)
    return target


async def test_applies_all_in_order_then_is_a_no_op(fresh_db: str) -> None:
    names = [m.name for m in load_migrations()]
    assert names == sorted(names) and names[0].startswith("0001_")
    assert await migrate(fresh_db) == names
    assert await migrate(fresh_db) == []
    conn = await asyncpg.connect(fresh_db)
    try:
        rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
    finally:
        await conn.close()
    assert [r["name"] for r in rows] == names


async def test_edited_applied_migration_is_refused_by_name(fresh_db: str,
                                                           sql_copy: Path) -> None:
    await migrate(fresh_db, sql_copy)
    second = sorted(sql_copy.iterdir())[1]
    second.write_text(second.read_text() + "\nSELECT 1; -- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match=second.name + " was edited"):
        await migrate(fresh_db, sql_copy)


async def test_a_corrected_comment_is_no_edit(fresh_db: str, sql_copy: Path) -> None:
    await migrate(fresh_db, sql_copy)
    second = sorted(sql_copy.iterdir())[1]
    second.write_text("-- a corrected header\n\n" + second.read_text() + "\n  -- and a note\n")
    assert await migrate(fresh_db, sql_copy) == []


async def test_checksums_an_earlier_runner_recorded_are_accepted_and_updated(
        fresh_db: str) -> None:
    """Databases migrated before the checksum left comments out hold the whole
    text's checksum (and 0001's from before its header was corrected)."""
    await migrate(fresh_db)
    migrations = load_migrations()
    conn = await asyncpg.connect(fresh_db)
    try:
        for m in migrations:
            whole = hashlib.sha256(m.sql.encode()).hexdigest()
            await conn.execute("UPDATE schema_migrations SET checksum = $2 WHERE name = $1",
                               m.name, whole)
        await conn.execute("UPDATE schema_migrations SET checksum = $2 WHERE name = $1",
                           migrations[0].name,
                           "2db849551de83d8465d755672e374588733ad29317272ad4c1d202b23b40a4bd")
        assert await migrate(fresh_db) == []
        rows = dict(await conn.fetch("SELECT name, checksum FROM schema_migrations"))
    finally:
        await conn.close()
    assert rows == {m.name: m.checksum for m in migrations}


async def test_vanished_applied_migration_is_refused(fresh_db: str, sql_copy: Path) -> None:
    await migrate(fresh_db, sql_copy)
    last = sorted(sql_copy.iterdir())[-1]
    last.unlink()
    with pytest.raises(MigrationError, match=last.name + " was applied but its file is gone"):
        await migrate(fresh_db, sql_copy)


async def test_failing_migration_rolls_back_alone(fresh_db: str, sql_copy: Path) -> None:
    applied = await migrate(fresh_db, sql_copy)
    (sql_copy / "9998_good.sql").write_text("CREATE TABLE good_one (x int);")
    (sql_copy / "9999_bad.sql").write_text("CREATE TABLE bad_one (x int); SELECT nonsense(;")
    with pytest.raises(MigrationError, match="9999_bad.sql failed"):
        await migrate(fresh_db, sql_copy)
    conn = await asyncpg.connect(fresh_db)
    try:
        names = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        tables = {r["t"] for r in await conn.fetch(
            "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    assert names == {*applied, "9998_good.sql"}
    assert "good_one" in tables and "bad_one" not in tables


def test_badly_named_file_is_refused(sql_copy: Path) -> None:
    (sql_copy / "7_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="7_oops.sql"):
        load_migrations(sql_copy)


async def test_two_runners_at_once_apply_each_file_once(fresh_db: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_db) for _ in range(4)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == [m.name for m in load_migrations()]


def test_cli_migrate_twice_and_edited_file(fresh_db: str, sql_copy: Path) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vilokanam", "migrate",
                               "--database-url", fresh_db],
                              capture_output=True, text=True, timeout=60)

    first, second = run(), run()
    assert first.returncode == 0 and "applied: 0001_" in first.stdout
    assert second.returncode == 0 and "nothing to apply" in second.stdout
