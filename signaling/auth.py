"""Wallet login: `POST /api/auth/challenge` hands out a message to sign,
`POST /api/auth/verify` checks the account's signature over it and answers a
Bearer token (signaling/tokens.py).

Challenges live in Redis, one sorted set per canonical account: member = the
challenge text, score = its expiry (unix seconds), or 0 once used. Several may
be live at once (two tabs logging in), at most CHALLENGES_KEPT; the set expires
with its newest challenge. Used and expired entries stay until then, so a
replay or a late signature is told `challenge_invalid`, not `bad_signature`.

The verify body names no challenge (the API contract is `{account,
signature}`), so the signature is checked against each kept challenge; the one
it signs is consumed by a single atomic ZADD, so of two concurrent replays
exactly one wins."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiohttp import web

from signaling.errors import ApiError, bad_request, parse_json_body
from signaling.rate_limit import FailureLimit, FailureLimiter
from signaling.state import SETTINGS
from signaling.tokens import issue_token
from signaling.users import (
    canonical_or_400,
    get_or_create_user,
    suspended_error,
    token_secret_or_503,
)
from vilokanam.accounts import public_key_of
from vilokanam.backends import BACKENDS
from vilokanam.config import Settings
from vilokanam.logs import log_event
from vilokanam.users import standing_of

if TYPE_CHECKING:
    from substrateinterface import Keypair

log = logging.getLogger(__name__)

SITE = "Vilokanam-view"
CHALLENGE_TTL_S: float = 300.0  # a module constant so tests can shorten it
CHALLENGES_KEPT = 5  # per account: bounds Redis memory and the work of one verify
NONCE_BYTES = 16  # 128 bits
# Failed logins per remote address; counted in vilokanam_auth_failures{kind="wallet"}.
WALLET_LIMIT = FailureLimit("wallet", max_failures=10, window_s=60)
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{128}")  # sr25519 and ed25519: 64 bytes
_USED = 0.0  # the score of a consumed challenge: below any expiry, so never live
_REFUSALS = {
    "challenge_invalid": "no valid login challenge for this account; request a new one",
    "bad_signature": "the signature is not this account's signature of its challenge",
}


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _challenges_key(account: str) -> str:
    return f"vk:auth:challenges:{account}"


# -- request parsing ---------------------------------------------------------------

def parse_account(value: object, settings: Settings) -> tuple[str, bytes]:
    """The canonical account and its public key, or 400 `invalid_account`.
    SS58 also encodes short account indices, which are no key to verify with."""
    account = canonical_or_400(value, settings)
    public_key = public_key_of(account)
    if len(public_key) != 32:
        raise bad_request("invalid_account", "account must be the address of a 32-byte public key")
    return account, public_key


def parse_signature(value: object) -> bytes:
    if not isinstance(value, str) or not _SIGNATURE.fullmatch(value):
        raise bad_request("invalid_signature", "signature must be 0x and 64 bytes in hex")
    return bytes.fromhex(value[2:])


# -- challenges ------------------------------------------------------------------

def challenge_text(base_url: str, account: str, nonce: str, expires_at: str) -> str:
    """What the wallet shows its owner: which site, which account, until when."""
    return (f"{SITE} login\nsite: {base_url}\naccount: {account}\nnonce: {nonce}\n"
            f"expires: {expires_at}")


async def store_challenge(redis: aioredis.Redis, account: str, text: str,
                          expires: float) -> None:
    key = _challenges_key(account)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(key, {text: expires})
        # Keep the highest scores: used entries (0) go first, then the oldest.
        pipe.zremrangebyrank(key, 0, -CHALLENGES_KEPT - 1)
        pipe.pexpire(key, math.ceil(CHALLENGE_TTL_S * 1000))
        await pipe.execute()


async def kept_challenges(redis: aioredis.Redis, account: str) -> dict[str, float]:
    """The account's challenges, live or not, with their expiry (0: used)."""
    # redis-py types ZRANGE's answer without WITHSCORES' pairs.
    entries: list[tuple[bytes, float]] = await redis.zrange(  # type: ignore[assignment]
        _challenges_key(account), 0, -1, withscores=True)
    return {text.decode(): score for text, score in entries}


async def consume(redis: aioredis.Redis, account: str, text: str) -> bool:
    """Mark the challenge used; True for the one caller that did. LT only
    lowers a score and CH counts the change, so a used one (0) stays unchanged."""
    changed = await redis.zadd(_challenges_key(account), {text: _USED}, xx=True, lt=True, ch=True)
    return bool(changed)


# -- signatures ------------------------------------------------------------------

def signed_messages(challenge: str) -> tuple[bytes, bytes]:
    """The raw UTF-8 bytes, and the wrapping the polkadot{.js} extension adds
    to everything it signs (so a signed message can never be a transaction)."""
    raw = challenge.encode()
    return raw, b"<Bytes>" + raw + b"</Bytes>"


def _keypairs(public_key: bytes, ss58_prefix: int) -> list[Keypair]:
    # Imported here: substrate-interface is a heavy import only logins need.
    from substrateinterface import Keypair, KeypairType

    return [Keypair(public_key=public_key, ss58_format=ss58_prefix, crypto_type=crypto)
            for crypto in (KeypairType.SR25519, KeypairType.ED25519)]


def _verifies(keypair: Keypair, message: bytes, signature: bytes) -> bool:
    try:
        return bool(keypair.verify(message, signature))
    except ValueError:  # bytes that are no signature or no point of this curve
        return False


def find_signed(public_key: bytes, ss58_prefix: int, signature: bytes,
                challenges: Iterable[str]) -> str | None:
    """The challenge the signature signs, either wrapping, sr25519 or ed25519.
    CPU work (tens of µs per try): run it in a thread."""
    keypairs = _keypairs(public_key, ss58_prefix)
    for challenge in challenges:
        if any(_verifies(keypair, message, signature)
               for keypair in keypairs for message in signed_messages(challenge)):
            return challenge
    return None


async def refusal(redis: aioredis.Redis, account: str, public_key: bytes, ss58_prefix: int,
                  signature: bytes) -> str | None:
    """None when the signature consumed a live challenge of the account; else
    the refusal code."""
    kept = await kept_challenges(redis, account)
    if not kept:
        return "challenge_invalid"
    signed = await asyncio.to_thread(find_signed, public_key, ss58_prefix, signature, kept)
    if signed is None:
        return "bad_signature"
    if kept[signed] <= time.time() or not await consume(redis, account, signed):
        return "challenge_invalid"
    return None


# -- handlers --------------------------------------------------------------------

async def auth_challenge(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await parse_json_body(request)
    account, _ = parse_account(body.get("account"), settings)
    expires = time.time() + CHALLENGE_TTL_S
    text = challenge_text(settings.base_url, account, secrets.token_hex(NONCE_BYTES),
                          _iso(expires))
    await store_challenge(request.app[BACKENDS].redis, account, text, expires)
    return web.json_response({"challenge": text, "expires_at": _iso(expires)})


async def auth_verify(request: web.Request) -> web.Response:
    settings, backends = request.app[SETTINGS], request.app[BACKENDS]
    secret = token_secret_or_503(settings)  # before a challenge is used up for nothing
    limiter, remote = FailureLimiter(backends.redis, WALLET_LIMIT), request.remote or "unknown"
    # Before any check: a limited address learns nothing, right signature or not.
    if await limiter.is_limited(remote):
        raise ApiError(429, "rate_limited", "too many failed logins from this address; "
                       "try again later", {"Retry-After": str(WALLET_LIMIT.window_s)})
    body = await parse_json_body(request)
    account, public_key = parse_account(body.get("account"), settings)
    signature = parse_signature(body.get("signature"))
    code = await refusal(backends.redis, account, public_key, settings.ss58_prefix, signature)
    if code is not None:
        failures = await limiter.record_failure(remote)
        log_event(log, "auth.wallet_refused", logging.WARNING, remote=remote, account=account,
                  code=code, failures=failures)
        raise ApiError(401, code, _REFUSALS[code])
    user = await get_or_create_user(backends.pg, account)
    if (await standing_of(backends.pg, user.id)).suspended:
        log_event(log, "auth.suspended_refused", logging.WARNING, user_id=user.id,
                  account=account)
        raise suspended_error()
    log_event(log, "auth.wallet_login", user_id=user.id, account=account)
    return web.json_response({"token": issue_token(secret, user.id, account),
                              "user_id": user.id, "account": account})


def add_auth_routes(app: web.Application) -> None:
    app.router.add_post("/api/auth/challenge", auth_challenge)
    app.router.add_post("/api/auth/verify", auth_verify)
