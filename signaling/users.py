"""HTTP-side account handling: the 400 for a bad address and the Bearer check
every authenticated route uses. The rows themselves: vilokanam/users.py."""

from __future__ import annotations

from aiohttp import web

from signaling.errors import ApiError, bad_request, unauthorized
from signaling.state import SETTINGS
from signaling.tokens import InvalidToken, TokenClaims, verify_token
from vilokanam.accounts import InvalidAccount, canonical_account
from vilokanam.config import Settings
from vilokanam.users import User, find_user, get_or_create_user, make_creator

__all__ = ["User", "canonical_or_400", "find_user", "get_or_create_user", "make_creator",
           "require_user", "token_secret_or_503"]


def canonical_or_400(address: object, settings: Settings) -> str:
    """The account in the stored prefix, or 400 `invalid_account`."""
    if not isinstance(address, str):
        raise bad_request("invalid_account", "account must be an SS58 address string")
    try:
        return canonical_account(address, settings.ss58_prefix)
    except InvalidAccount as exc:
        raise bad_request("invalid_account", str(exc)) from None


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
