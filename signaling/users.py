"""`users` rows, keyed by the canonical account (one key is one user, whatever
SS58 prefix it arrived in), and the Bearer check every authenticated route uses."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from signaling.errors import ApiError, bad_request, unauthorized
from signaling.state import SETTINGS
from signaling.tokens import InvalidToken, TokenClaims, verify_token
from vilokanam.accounts import InvalidAccount, canonical_account
from vilokanam.config import Settings

_USER_COLUMNS = "id::text AS id, account_id, COALESCE(is_creator, FALSE) AS is_creator"


@dataclass(frozen=True)
class User:
    id: str
    account: str
    is_creator: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(row["id"], row["account_id"], row["is_creator"])


def canonical_or_400(address: object, settings: Settings) -> str:
    """The account in the stored prefix, or 400 `invalid_account`."""
    if not isinstance(address, str):
        raise bad_request("invalid_account", "account must be an SS58 address string")
    try:
        return canonical_account(address, settings.ss58_prefix)
    except InvalidAccount as exc:
        raise bad_request("invalid_account", str(exc)) from None


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


def token_secret_or_503(settings: Settings) -> str:
    if settings.token_secret is None:
        raise ApiError(503, "tokens_unavailable",
                       "this server has no VILOKANAM_TOKEN_SECRET, so it issues no tokens")
    return settings.token_secret


async def require_user(request: web.Request) -> TokenClaims:
    """The claims of the request's `Authorization: Bearer <token>`, or 401.
    Tokens are stateless (signaling/tokens.py): no database round-trip here;
    `claims.account` is canonical because only this server issues tokens."""
    secret = token_secret_or_503(request.app[SETTINGS])
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("an 'Authorization: Bearer <token>' header is required")
    try:
        return verify_token(secret, token.strip())
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None
