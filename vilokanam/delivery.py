"""Viewer-signed delivery receipts: the texts that are signed, and the grace.

A browser viewer's wallet signs once a **delegation** to a session key the
page made (Ed25519, WebCrypto):

    vilokanam:delegation:v1:<account>:<stream_id>:<session key hex>:<price cap>:<expires unix>

(the wallet may wrap it in `<Bytes>…</Bytes>`, as polkadot{.js} does). Every
10 s the page signs with the session key a cumulative **receipt**:

    vilokanam:receipt:v1:<stream_viewer_id>:<seconds>:<amount>

amounts in tokens as plain decimals without trailing zeros. Shared by
signaling (which checks them) and billing (which caps a signed session at its
latest signed seconds + GRACE_SECONDS); the watch page builds the same texts."""

from __future__ import annotations

from decimal import Decimal

from vilokanam.money import format_amount

GRACE_SECONDS = 10  # billed beyond the latest signed seconds at most; cut off past it
RECEIPT_EVERY_SECONDS = 10
MAX_DELEGATION_S = 24 * 3600


def delegation_text(account: str, stream_id: str, session_key: bytes, price_cap: Decimal,
                    expires_at: int) -> str:
    return (f"vilokanam:delegation:v1:{account}:{stream_id}:{session_key.hex()}:"
            f"{format_amount(price_cap)}:{expires_at}")


def receipt_text(stream_viewer_id: str, seconds: int, amount: Decimal) -> str:
    return f"vilokanam:receipt:v1:{stream_viewer_id}:{seconds}:{format_amount(amount)}"


def ed25519_verifies(public_key: bytes, message: str, signature: bytes) -> bool:
    """CPU work (tens of µs): call from a thread."""
    from substrateinterface import Keypair, KeypairType

    try:
        key = Keypair(public_key=public_key, ss58_format=42, crypto_type=KeypairType.ED25519)
        return bool(key.verify(message.encode(), signature))
    except (ValueError, TypeError):
        return False
