"""What a settlement batch commits to on chain, and how a receipt proves a
charge was in it. Shared by billing (which writes the remark) and signaling
(which serves receipts): neither imports the other.

A batch's lines are its charges, one per viewing session:
`<stream_viewer_id>:<amount>` (tokens, plain decimal, no trailing zeros).
The v1 remark carries the SHA-256 digest of all the lines
(docs/settlement.md)."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from vilokanam.money import format_amount

REMARK_PREFIX = "vilokanam:settlement:v1:"
DIGEST_ALGORITHM = ("sha256 over the UTF-8 bytes of the lines sorted ascending and joined "
                    "with '\\n' (no trailing newline); a line is '<stream_viewer_id>:<amount>', "
                    "amount in tokens as a plain decimal without trailing zeros; the batch's "
                    f"System.remark is '{REMARK_PREFIX}' + the digest in lowercase hex")


def charge_line(stream_viewer_id: str, amount: Decimal) -> str:
    return f"{stream_viewer_id}:{format_amount(amount)}"


def batch_digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def remark_of(digest: str) -> str:
    return REMARK_PREFIX + digest

