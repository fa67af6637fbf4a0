"""Schema migrations: numbered `sql/NNNN_name.sql` files applied in order, each
in its own transaction, recorded with a checksum in `schema_migrations`.

An applied file that was edited afterwards is refused by name — the database
would otherwise silently differ from what the file says. Two processes may run
this at once: a Postgres advisory lock makes the second wait and then find
nothing left to do."""

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


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


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


def check_applied(applied: dict[str, str], migrations: list[Migration]) -> list[Migration]:
    """The migrations still to apply; refuses edited or vanished applied files."""
    by_name = {m.name: m for m in migrations}
    for name, checksum in sorted(applied.items()):
        migration = by_name.get(name)
        if migration is None:
            raise MigrationError(f"{name} was applied but its file is gone; restore it")
        if migration.checksum != checksum:
            raise MigrationError(
                f"{name} was edited after it was applied; restore it and put the change "
                "in a new migration")
    return [m for m in migrations if m.name not in applied]


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
    pending = check_applied({r["name"]: r["checksum"] for r in rows}, migrations)
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
