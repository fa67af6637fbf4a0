"""Signed viewing sessions on the websocket (docs/protocol.md, docs/metering.md).

`watch` may carry a `delegation` {"session_key", "price_cap", "expires_at",
"signature"}: the viewer's wallet signature (the account of the viewer token)
over `vilokanam.delivery.delegation_text`. Checked before the worker is asked;
once the session exists it is recorded and the session is billed by the
`signed` rule. Then `receipt` {"viewer_session_id", "seconds", "amount",
"signature"} messages, signed by the session key, raise the session's signed
seconds. A receipt is refused (error `receipt_refused`, counted by reason,
never billed) when its signature is bad, it is for another session, its
seconds do not grow (a replay, or going backwards), run ahead of the worker's
own meter by more than the grace, its amount is not seconds x price, or the
delegation expired."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from prometheus_client import Counter as PromCounter

from signaling.auth import find_signed
from signaling.protocol import ErrorCode, ProtocolError
from vilokanam.accounts import public_key_of
from vilokanam.delivery import (
    GRACE_SECONDS,
    MAX_DELEGATION_S,
    delegation_text,
    ed25519_verifies,
    receipt_text,
)
from vilokanam.logs import log_event
from vilokanam.money import decimal_from_json

log = logging.getLogger("vilokanam.signaling")

RECEIPTS = PromCounter("vilokanam_delivery_receipts_total",
                       "Viewer-signed delivery receipts, by outcome.", ["outcome"])


@dataclass(frozen=True)
class Delegation:
    session_key: bytes
    price_cap: Decimal
    expires_at: int
    signature: bytes


@dataclass(frozen=True)
class Receipt:
    viewer_session_id: str
    seconds: int
    amount: Decimal
    signature: bytes


@dataclass
class SignedViewing:
    """A viewing session whose viewer signs delivery receipts, as its websocket tracks it."""

    viewer_session_id: str
    delegation: Delegation
    price: Decimal
    signed_seconds: int = 0
    metered_seconds: int = 0  # the worker's meter, from its tick messages


def _hex(data: dict[str, Any], field: str, size: int | None) -> bytes:
    value = data.get(field)
    try:
        raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or (size is not None and len(raw) != size) or not raw:
        what = f"{size} bytes" if size else "bytes"
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{field}: required, 0x-hex {what}")
    return raw


def _int(data: dict[str, Any], field: str) -> int:
    value = data.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{field}: required, a non-negative integer")
    return value


def _amount(data: dict[str, Any], field: str) -> Decimal:
    value = decimal_from_json(data.get(field))
    if value is None or not value.is_finite() or value < 0 or value.adjusted() > 20:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{field}: required, tokens as a decimal")
    return value


def parse_delegation(value: object) -> Delegation | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "delegation: an object")
    return Delegation(_hex(value, "session_key", 32), _amount(value, "price_cap"),
                      _int(value, "expires_at"), _hex(value, "signature", 64))


def parse_receipt(data: dict[str, Any]) -> Receipt:
    session = data.get("viewer_session_id")
    if not isinstance(session, str) or not 0 < len(session) <= 64:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "viewer_session_id: required")
    return Receipt(session, _int(data, "seconds"), _amount(data, "amount"),
                   _hex(data, "signature", 64))


def _refused(reason: str, message: str) -> ProtocolError:
    RECEIPTS.labels(reason).inc()
    return ProtocolError(ErrorCode.RECEIPT_REFUSED, f"{reason}: {message}")


async def check_delegation(delegation: Delegation, account: str, stream_id: str,
                           stream_price: Decimal, ss58_prefix: int) -> str:
    """The delegation's text if the viewer's wallet signed it and it can pay
    the stream; else ProtocolError `delegation_refused`."""
    now = int(time.time())
    if not now < delegation.expires_at <= now + MAX_DELEGATION_S:
        raise ProtocolError(ErrorCode.DELEGATION_REFUSED,
                            f"expires_at must be in the next {MAX_DELEGATION_S} s")
    if delegation.price_cap < stream_price:
        raise ProtocolError(ErrorCode.DELEGATION_REFUSED,
                            f"the price cap is below the stream's price {stream_price}")
    text = delegation_text(account, stream_id, delegation.session_key, delegation.price_cap,
                           delegation.expires_at)
    signed = await asyncio.to_thread(find_signed, public_key_of(account), ss58_prefix,
                                     delegation.signature, [text])
    if signed is None:
        raise ProtocolError(ErrorCode.DELEGATION_REFUSED,
                            "the signature is not the account's over the delegation text")
    return text


async def record_delegation(pg: asyncpg.Pool, viewer_session_id: str, delegation: Delegation,
                            text: str) -> SignedViewing:
    async with pg.acquire() as conn, conn.transaction():
        price = await conn.fetchval(
            "UPDATE stream_viewers SET billing_rule = 'signed', signed_seconds = 0 "
            "WHERE id = $1::uuid RETURNING price_per_second", viewer_session_id)
        await conn.execute(
            "INSERT INTO viewer_delegations (stream_viewer_id, session_key, price_cap, "
            "expires_at, message, signature) VALUES ($1::uuid, $2, $3, $4, $5, $6)",
            viewer_session_id, "0x" + delegation.session_key.hex(), delegation.price_cap,
            datetime.fromtimestamp(delegation.expires_at, UTC), text,
            "0x" + delegation.signature.hex())
    return SignedViewing(viewer_session_id, delegation, Decimal(price or 0))


async def accept_receipt(pg: asyncpg.Pool, signed: SignedViewing | None,
                         receipt: Receipt) -> int:
    """Check and keep a receipt; the session's signed seconds after it."""
    if signed is None:
        raise _refused("unsigned_session", "this connection watches no signed session")
    if receipt.viewer_session_id != signed.viewer_session_id:
        raise _refused("other_session", "the receipt names another viewing session")
    text = receipt_text(receipt.viewer_session_id, receipt.seconds, receipt.amount)
    if not await asyncio.to_thread(ed25519_verifies, signed.delegation.session_key, text,
                                   receipt.signature):
        raise _refused("bad_signature", "not signed by the session key")
    if time.time() >= signed.delegation.expires_at:
        raise _refused("expired", "the delegation has expired")
    if receipt.seconds <= signed.signed_seconds:
        reason = "replayed" if receipt.seconds == signed.signed_seconds else "backwards"
        raise _refused(reason, f"seconds must grow past {signed.signed_seconds}")
    if receipt.seconds > signed.metered_seconds + GRACE_SECONDS:
        raise _refused("ahead_of_meter", f"the server metered {signed.metered_seconds} s")
    if receipt.amount != receipt.seconds * signed.price:
        raise _refused("wrong_amount", f"{receipt.seconds} s cost "
                                       f"{receipt.seconds * signed.price}")
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO delivery_receipts (stream_viewer_id, seconds, amount, signature) "
            "VALUES ($1::uuid, $2, $3, $4)", receipt.viewer_session_id, receipt.seconds,
            receipt.amount, "0x" + receipt.signature.hex())
        await conn.execute(
            "UPDATE stream_viewers SET signed_seconds = GREATEST(signed_seconds, $2) "
            "WHERE id = $1::uuid", receipt.viewer_session_id, receipt.seconds)
    signed.signed_seconds = receipt.seconds
    RECEIPTS.labels("accepted").inc()
    log_event(log, "receipt.accepted", viewer_session_id=receipt.viewer_session_id,
              seconds=receipt.seconds)
    return receipt.seconds


def receipts_stopped(signed: SignedViewing) -> bool:
    """The worker has metered past the signed seconds + grace: cut off."""
    return signed.metered_seconds > signed.signed_seconds + GRACE_SECONDS
