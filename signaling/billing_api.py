"""Money on chain, as the signaling API shows it.

`GET /api/billing/info` (no auth): what a viewer needs to deposit — the escrow
account (in the configured SS58 prefix, VILOKANAM_SS58_PREFIX, like every
account in this API; any prefix names the same key on chain), the chain RPC
URL for the browser, the token, the default price and the platform's fee.
Signaling knows only the escrow's public address (VILOKANAM_ESCROW_ACCOUNT),
never its secret URI, which is the billing role's alone.

`GET /api/receipts/{stream_viewer_id}` (Bearer: the viewer of that session;
anyone else gets 404): the session's charge and seconds, how much of it is
settled, and for every settlement batch that covered part of it: extrinsic
hash, nonce, block hash/number, status, the viewer's own line and its Merkle
path to the root the batch's System.remark carries on chain — and no other
session's line (a v1 batch, made before Merkle roots, still lists its lines:
its digest can only be checked that way). docs/settlement.md.

`GET /api/receipts/payments/{payment_id}` (Bearer: the payer): the same for a
tip, a subscription or a video view, whose line is the payment's own."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any

import asyncpg
from aiohttp import web

from signaling.community.params import path_uuid
from signaling.errors import bad_request, not_found
from signaling.state import SETTINGS
from signaling.timestamps import iso_or_none
from signaling.users import require_user
from vilokanam.accounts import InvalidAccount, canonical_account
from vilokanam.backends import BACKENDS
from vilokanam.logs import log_event
from vilokanam.money import format_amount
from vilokanam.receipts import (
    DIGEST_ALGORITHM,
    MERKLE_V2,
    PROOF_ALGORITHM,
    REMARK_PREFIX,
    MerkleTree,
    batch_digest,
    charge_line,
    item_line,
    merkle_remark_of,
    payment_line,
)

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _escrow_address(account: str, ss58_prefix: int) -> str | None:
    try:
        return canonical_account(account, ss58_prefix)
    except InvalidAccount:
        log_event(log, "billing.escrow_invalid", logging.ERROR,
                  reason="VILOKANAM_ESCROW_ACCOUNT is not an SS58 address")
        return None


async def billing_info(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    escrow = (_escrow_address(settings.escrow_account, settings.ss58_prefix)
              if settings.escrow_account else None)
    return web.json_response({
        "escrow_account": escrow,
        "chain_rpc": settings.chain_public_url or settings.substrate_url,
        "token_symbol": settings.token_symbol,
        "token_decimals": settings.token_decimals,
        "price_default": format_amount(settings.price_default),
        "platform_fee": format_amount(settings.platform_fee),
    })


_SESSION = """
SELECT sv.id::text AS id, sv.stream_id::text AS stream_id, sv.viewer_id::text AS viewer_id,
       sv.total_ticks, sv.paid_amount, sv.price_per_second, sv.is_active,
       p.id::text AS payment_id, p.amount, p.settled_amount, p.status,
       p.transaction_hash, u.account_id AS creator_account
  FROM stream_viewers sv
  LEFT JOIN payments p ON p.reference_id = sv.id AND p.payment_type = 'stream_view'
  LEFT JOIN users u ON u.id = p.to_user_id
 WHERE sv.id = $1::uuid
"""

# The batches that covered one charge line: a viewing session's (by
# stream_viewer_id) or a payment's (by payment_id) -- the column is ours, never input.
_SETTLEMENTS_OF = """
SELECT s.id::text AS id, s.status, s.extrinsic_hash, s.nonce, s.block_hash, s.block_number,
       s.extrinsic_index, s.digest, s.remark, s.commitment, s.genesis_hash, s.error,
       s.created_at, s.finalized_at, i.amount
  FROM settlement_items i JOIN settlements s ON s.id = i.settlement_id
 WHERE i.{column} = $1::uuid
 ORDER BY s.created_at, s.id
"""
_SETTLEMENTS = _SETTLEMENTS_OF.format(column="stream_viewer_id")

_LINES = """
SELECT settlement_id::text AS settlement_id, stream_viewer_id::text AS stream_viewer_id,
       payment_id::text AS payment_id, payment_type, amount
  FROM settlement_items WHERE settlement_id = ANY($1::uuid[])
"""


async def receipt(request: web.Request) -> web.Response:
    claims = await require_user(request)
    try:
        viewer_session = str(uuid.UUID(request.match_info["stream_viewer_id"]))
    except ValueError:
        raise bad_request("invalid_stream_viewer_id", "a viewing session id is a UUID") from None
    pg: asyncpg.Pool = request.app[BACKENDS].pg
    row = await pg.fetchrow(_SESSION, viewer_session)
    # Someone else's session is as unknown to this viewer as a missing one.
    if row is None or row["viewer_id"] != claims.user_id:
        raise not_found("receipt_not_found", f"no viewing session {viewer_session} of yours")
    settlements = await pg.fetch(_SETTLEMENTS, viewer_session)
    batches = await _batches(pg, settlements, lambda s: charge_line(viewer_session, s["amount"]))
    zero = Decimal(0)
    charge = row["amount"] if row["amount"] is not None else zero
    settled = row["settled_amount"] if row["settled_amount"] is not None else zero
    return web.json_response({
        "stream_viewer_id": row["id"],
        "stream_id": row["stream_id"],
        "creator_account": row["creator_account"],
        "seconds": row["total_ticks"] or 0,
        "price_per_second": format_amount(row["price_per_second"] or zero),
        "charge": format_amount(charge),
        "settled": format_amount(settled),
        "unsettled": format_amount(charge - settled),
        "status": row["status"] or "pending",
        "active": bool(row["is_active"]),
        **_proven(batches),
    })


async def _batches(pg: asyncpg.Pool, settlements: list[asyncpg.Record],
                   line_of: Callable[[asyncpg.Record], str]) -> list[dict[str, Any]]:
    """Each settlement that covered a charge, with the charge's own line
    (`line_of` the settlement's item) and its proof."""
    lines: dict[str, list[str]] = {}
    for item in await pg.fetch(_LINES, [s["id"] for s in settlements]):
        lines.setdefault(item["settlement_id"], []).append(item_line(
            item["payment_type"], item["stream_viewer_id"], item["payment_id"], item["amount"]))
    # A Merkle path costs a hash per line of the batch: CPU work, off the loop.
    return await asyncio.to_thread(
        lambda: [_settlement_json(s, line_of(s), lines.get(s["id"], [])) for s in settlements])


def _proven(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest completed batch that covered the charge (null before any),
    repeated at the receipt's top level, and the algorithms."""
    latest = next((b for b in reversed(batches) if b["status"] == "completed"), None)
    return {**{key: latest[key] if latest else empty for key, empty in _PROOF_FIELDS.items()},
            "proof_algorithm": PROOF_ALGORITHM, "digest_algorithm": DIGEST_ALGORITHM,
            "settlements": batches}


_PAYMENT = """
SELECT p.id::text AS id, p.payment_type, p.from_user_id::text AS payer_id, p.amount,
       p.settled_amount, p.status, p.reference_id::text AS reference_id,
       p.created_at AT TIME ZONE current_setting('TimeZone') AS created_at,
       u.account_id AS creator_account
  FROM payments p LEFT JOIN users u ON u.id = p.to_user_id
 WHERE p.id = $1::uuid
"""

_PAYMENT_SETTLEMENTS = _SETTLEMENTS_OF.format(column="payment_id")


async def payment_receipt(request: web.Request) -> web.Response:
    """GET /api/receipts/payments/{payment_id} (Bearer: the payer; anyone else
    gets 404): a tip's, a subscription's or a video view's charge, how much is
    settled, and for every batch that covered it its own line
    (`<type>:<payment id>:<amount>`) and Merkle path — no other line. A
    viewing session's charge has its receipt by session id (above)."""
    claims = await require_user(request)
    payment_id = path_uuid(request, "payment_id", "payment")
    pg: asyncpg.Pool = request.app[BACKENDS].pg
    row = await pg.fetchrow(_PAYMENT, payment_id)
    if row is None or row["payer_id"] != claims.user_id or row["payment_type"] not in _PAID_LINES:
        raise not_found("receipt_not_found", f"no payment {payment_id} of yours")
    settlements = await pg.fetch(_PAYMENT_SETTLEMENTS, payment_id)
    kind = row["payment_type"]
    batches = await _batches(pg, settlements,
                             lambda s: payment_line(kind, payment_id, s["amount"]))
    return web.json_response({
        "payment_id": row["id"],
        "payment_type": kind,
        "reference_id": row["reference_id"],
        "creator_account": row["creator_account"],
        "charge": format_amount(row["amount"]),
        "settled": format_amount(row["settled_amount"]),
        "unsettled": format_amount(row["amount"] - row["settled_amount"]),
        "status": row["status"],
        "created_at": iso_or_none(row["created_at"]),
        **_proven(batches),
    })


# Payments whose settlement line is a payment line (a stream view's is its session's).
_PAID_LINES = ("tip", "subscription", "video_view")


# What the receipt repeats from its latest completed batch, and their value
# before there is one.
_PROOF_FIELDS: dict[str, Any] = {
    "extrinsic_hash": None, "block_hash": None, "block_number": None, "extrinsic_index": None,
    "genesis_hash": None, "commitment": None, "line": None, "remark": None, "root": None,
    "proof": [], "leaf_index": None, "leaf_count": None, "digest": None, "lines": []}


def _settlement_json(s: asyncpg.Record, line: str, batch_lines: list[str]) -> dict[str, Any]:
    """One batch as the viewer may see it: a v2 (Merkle) batch shows only the
    viewer's own line (`line`) and its path; a v1 batch can only be checked with
    all of its lines, so they are shown as before (docs/settlement.md)."""
    proof: dict[str, Any] = {"root": None, "proof": [], "leaf_index": None, "leaf_count": None,
                             "digest": None, "lines": []}
    if s["commitment"] == MERKLE_V2:
        tree = MerkleTree.of(batch_lines)
        index = tree.index_of(line)
        proof.update(root=s["digest"], proof=tree.proof(index), leaf_index=index,
                     leaf_count=len(tree.lines))
        consistent = tree.root == s["digest"] and s["remark"] == merkle_remark_of(s["digest"])
    else:
        proof.update(digest=s["digest"], lines=sorted(batch_lines))
        consistent = (batch_digest(batch_lines) == s["digest"]
                      and s["remark"] == REMARK_PREFIX + s["digest"])
    # What is stored must be what the lines say: a receipt never shows a proof
    # that does not lead to the commitment on chain.
    if not consistent:
        log_event(log, "receipt.commitment_mismatch", logging.ERROR, settlement_id=s["id"],
                  commitment=s["commitment"])
    return {
        "settlement_id": s["id"],
        "status": s["status"],
        "amount": format_amount(s["amount"]),
        "line": line,
        "commitment": s["commitment"],
        "extrinsic_hash": s["extrinsic_hash"],
        "nonce": s["nonce"],
        "block_hash": s["block_hash"],
        "block_number": s["block_number"],
        "extrinsic_index": s["extrinsic_index"],
        "genesis_hash": s["genesis_hash"],
        "error": s["error"],
        **proof,
        "remark": s["remark"],
        "created_at": iso_or_none(s["created_at"]),
        "finalized_at": iso_or_none(s["finalized_at"]),
    }


def add_billing_routes(app: web.Application) -> None:
    app.router.add_get("/api/billing/info", billing_info)
    app.router.add_get("/api/receipts/{stream_viewer_id}", receipt)
    app.router.add_get("/api/receipts/payments/{payment_id}", payment_receipt)
