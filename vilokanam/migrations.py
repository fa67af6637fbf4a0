"""Schema migrations: numbered `sql/NNNN_name.sql` files applied in order, each
in its own transaction, recorded with a checksum in `schema_migrations`.

An applied file whose statements were edited afterwards is refused by name —
the database would otherwise silently differ from what the file says. The
checksum covers what runs, not the comment lines (a whole line starting with
`--`) or blank lines: a comment can be corrected without a new migration.
Databases migrated before that rule recorded the checksum of the whole text;
they are accepted and their row is brought to the new checksum. Two processes
may run this at once: a Postgres advisory lock makes the second wait and then
find nothing left to do."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from vilokanam.backends import connect_postgres_once
from vilokanam.resources import resource_dir

# Arbitrary but fixed: every migrating process must take the same lock.
ADVISORY_LOCK_ID = 0x56494C4F  # "VILO"
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


# Whole-text checksums of files whose comments were corrected after they were
# applied somewhere (the statements are unchanged: the statement checksum of
# the file as it is now still matches). 0001: its header cited a document
# outside the repository.
_REWORDED = {
    "0001_platform_schema.sql":
        "2db849551de83d8465d755672e374588733ad29317272ad4c1d202b23b40a4bd",
}


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Of the statements: comment-only and blank lines left out."""
        statements = "\n".join(
            line.rstrip() for line in self.sql.splitlines()
            if line.strip() and not line.lstrip().startswith("--"))
        return hashlib.sha256(statements.encode()).hexdigest()

    def recorded_before(self, checksum: str) -> bool:
        """Whether `checksum` is what an earlier runner recorded for this file
        (the whole text's, or the text's before a comment was corrected)."""
        whole = hashlib.sha256(self.sql.encode()).hexdigest()
        return checksum in (whole, _REWORDED.get(self.name))


def load_migrations(sql_dir: Path | None = None) -> list[Migration]:
    folder = sql_dir or resource_dir("sql")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".sql")
    for path in files:
        if not _FILE_NAME.match(path.name):
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
    numbers = [p.name[:4] for p in files]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migration files share a number in {folder}")
    return [Migration(p.name, p.read_text()) for p in files]


def check_applied(applied: dict[str, str],
                  migrations: list[Migration]) -> tuple[list[Migration], list[Migration]]:
    """The migrations still to apply, and the applied ones whose recorded
    checksum is an earlier runner's; refuses edited or vanished applied files."""
    by_name = {m.name: m for m in migrations}
    outdated = []
    for name, checksum in sorted(applied.items()):
        migration = by_name.get(name)
        if migration is None:
            raise MigrationError(f"{name} was applied but its file is gone; restore it")
        if migration.checksum == checksum:
            continue
        if not migration.recorded_before(checksum):
            raise MigrationError(
                f"{name} was edited after it was applied; restore it and put the change "
                "in a new migration")
        outdated.append(migration)
    return [m for m in migrations if m.name not in applied], outdated


async def migrate(dsn: str, sql_dir: Path | None = None) -> list[str]:
    """Apply every pending migration; returns the names applied (empty: no-op)."""
    migrations = load_migrations(sql_dir)
    conn = await connect_postgres_once(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
        try:
            return await _apply_pending(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(_CREATE_LEDGER)
    rows = await conn.fetch("SELECT name, checksum FROM schema_migrations")
    pending, outdated = check_applied({r["name"]: r["checksum"] for r in rows}, migrations)
    for migration in outdated:
        await conn.execute("UPDATE schema_migrations SET checksum = $2 WHERE name = $1",
                           migration.name, migration.checksum)
    for migration in pending:
        async with conn.transaction():
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{migration.name} failed: {exc}") from exc
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                migration.name, migration.checksum)
    return [m.name for m in pending]
