"""`users` rows, keyed by the canonical account: one key is one user, whatever
SS58 prefix it arrived in. Shared by signaling (login, API) and billing
(credits, deposits)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

_USER_COLUMNS = "id::text AS id, account_id, COALESCE(is_creator, FALSE) AS is_creator"


@dataclass(frozen=True)
class User:
    id: str
    account: str
    is_creator: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(row["id"], row["account_id"], row["is_creator"])


async def get_or_create_user(conn: asyncpg.Pool | asyncpg.Connection, account: str) -> User:
    """The user of a canonical account, created on first sight."""
    return await _write_or_read(
        conn, "INSERT INTO users (account_id) VALUES ($1) ON CONFLICT (account_id) DO NOTHING",
        account)


async def make_creator(conn: asyncpg.Pool | asyncpg.Connection, account: str) -> User:
    """Creating a stream makes its user a creator (created if need be)."""
    return await _write_or_read(
        conn, "INSERT INTO users (account_id, is_creator) VALUES ($1, TRUE) "
              "ON CONFLICT (account_id) DO UPDATE SET is_creator = TRUE "
              "WHERE users.is_creator IS NOT TRUE", account)


async def _write_or_read(conn: asyncpg.Pool | asyncpg.Connection, write: str,
                         account: str) -> User:
    """Run an INSERT … ON CONFLICT that writes only when something changes
    (so a returning user's row and its updated_at stay as they are), then
    read the row if the write had nothing to do."""
    row = await conn.fetchrow(f"{write} RETURNING {_USER_COLUMNS}", account)
    if row is not None:
        return User.from_row(row)
    user = await find_user(conn, account)
    assert user is not None, "a users row vanished between INSERT and SELECT"
    return user


async def find_user(conn: asyncpg.Pool | asyncpg.Connection, account: str) -> User | None:
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE account_id = $1",
                              account)
    return None if row is None else User.from_row(row)


# -- standing: role and suspension (migration 0010) --------------------------------

MODERATOR = "moderator"


@dataclass(frozen=True)
class Standing:
    """What a user may do: every front checks it on every request, so a
    suspension takes effect at once (tokens are stateless and live on)."""

    role: str
    suspended: bool

    @property
    def is_moderator(self) -> bool:
        return self.role == MODERATOR and not self.suspended


GOOD_STANDING = Standing("user", False)  # a user with no row yet (never acted)


async def standing_of(conn: asyncpg.Pool | asyncpg.Connection, user_id: str) -> Standing:
    row = await conn.fetchrow(
        "SELECT role, suspended_at IS NOT NULL AS suspended FROM users WHERE id = $1::uuid",
        user_id)
    return GOOD_STANDING if row is None else Standing(row["role"], row["suspended"])


async def make_moderator(conn: asyncpg.Pool | asyncpg.Connection, account: str) -> User:
    """Grant the moderator role (the user is created if new)."""
    return await _write_or_read(
        conn, "INSERT INTO users (account_id, role) VALUES ($1, 'moderator') "
              "ON CONFLICT (account_id) DO UPDATE SET role = 'moderator' "
              "WHERE users.role <> 'moderator'", account)


async def suspend(conn: asyncpg.Pool | asyncpg.Connection, user_id: str, by_user_id: str,
                  reason: str) -> bool:
    """Suspend a user; True when this call did (False: already suspended)."""
    status = await conn.execute(
        "UPDATE users SET suspended_at = now(), suspended_by = $2::uuid, "
        "suspension_reason = $3 WHERE id = $1::uuid AND suspended_at IS NULL",
        user_id, by_user_id, reason)
    return bool(status == "UPDATE 1")


async def unsuspend(conn: asyncpg.Pool | asyncpg.Connection, account: str) -> bool:
    """Lift a suspension (an operator's correction); True when there was one."""
    status = await conn.execute(
        "UPDATE users SET suspended_at = NULL, suspended_by = NULL, suspension_reason = NULL "
        "WHERE account_id = $1 AND suspended_at IS NOT NULL", account)
    return bool(status == "UPDATE 1")
