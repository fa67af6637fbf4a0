"""Stream keys: shown once at creation, stored only as their SHA-256
(`streams.stream_key_hash`, migration 0005), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk_"


def new_stream_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_stream_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_matches(key: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_stream_key(key), bytes(stored_hash))
