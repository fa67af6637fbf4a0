"""HTTP-side account handling: the 400 for a bad address and the Bearer check
every authenticated route uses. The rows themselves: vilokanam/users.py."""

from __future__ import annotations

from aiohttp import web

from signaling.errors import ApiError, bad_request, unauthorized
from signaling.state import SETTINGS
from signaling.tokens import InvalidToken, TokenClaims, verify_token
from vilokanam.accounts import InvalidAccount, canonical_account
from vilokanam.backends import BACKENDS
from vilokanam.config import Settings
from vilokanam.users import Standing, User, find_user, get_or_create_user, make_creator, standing_of

__all__ = ["User", "canonical_or_400", "find_user", "get_or_create_user", "make_creator",
           "require_moderator", "require_user", "require_user_standing", "suspended_error",
           "token_secret_or_503"]


def suspended_error() -> ApiError:
    return ApiError(403, "suspended", "this account is suspended")


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
    """The claims of the request's `Authorization: Bearer <token>`, or 401;
    403 `suspended` for a suspended user."""
    claims, _ = await require_user_standing(request)
    return claims


async def require_user_standing(request: web.Request) -> tuple[TokenClaims, Standing]:
    """The caller and its standing. Tokens are stateless (signaling/tokens.py),
    so a suspension outlives them: one primary-key read per request refuses a
    suspended user at once, on every server."""
    claims = _bearer_claims(request)
    standing = await standing_of(request.app[BACKENDS].pg, claims.user_id)
    if standing.suspended:
        raise suspended_error()
    return claims, standing


async def require_moderator(request: web.Request) -> TokenClaims:
    """The caller, who must be a moderator (403 `not_moderator`)."""
    claims, standing = await require_user_standing(request)
    if not standing.is_moderator:
        raise ApiError(403, "not_moderator", "only moderators may do this")
    return claims


def _bearer_claims(request: web.Request) -> TokenClaims:
    """`claims.account` is canonical because only this server issues tokens."""
    secret = token_secret_or_503(request.app[SETTINGS])
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("an 'Authorization: Bearer <token>' header is required")
    try:
        return verify_token(secret, token.strip())
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None
