"""Bearer tokens: `v1.<payload>.<signature>`, the payload base64url JSON
`{"sub": user id, "acc": account, "exp": unix seconds}`, the signature an
HMAC-SHA256 over the payload with VILOKANAM_TOKEN_SECRET. Stateless: any
signaling server with the same secret verifies any token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

PREFIX = "v1"
DEFAULT_TTL_S = 24 * 3600


class InvalidToken(ValueError):
    """Malformed, forged or expired; the message says which, never the token."""


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    account: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def issue_token(secret: str, user_id: str, account: str, ttl_s: int = DEFAULT_TTL_S,
                now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = _b64(json.dumps({"sub": user_id, "acc": account, "exp": expires},
                              separators=(",", ":")).encode())
    return f"{PREFIX}.{payload}.{_sign(secret, payload)}"


def verify_token(secret: str, token: str, now: float | None = None) -> TokenClaims:
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise InvalidToken("malformed token")
    _, payload, signature = parts
    if not hmac.compare_digest(_sign(secret, payload), signature):
        raise InvalidToken("bad token signature")
    try:
        claims = json.loads(_unb64(payload))
        result = TokenClaims(str(claims["sub"]), str(claims["acc"]), int(claims["exp"]))
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("malformed token") from None
    if result.expires_at <= (now if now is not None else time.time()):
        raise InvalidToken("token expired")
    return result


def bearer_credential(authorization: str) -> str:
    """The credential of an `Authorization: Bearer <credential>` header, or ""
    (which no token or stream key matches). The one parser of the header, for
    REST, WHIP and WHEP alike."""
    scheme, _, credential = authorization.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""
