"""The shared receipt core (vilokanam/receipts.py): the line format and the
v1 digest, checked against an independent computation."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from vilokanam.receipts import REMARK_PREFIX, batch_digest, charge_line, remark_of

SESSION_A = "11111111-1111-4111-8111-111111111111"
SESSION_B = "22222222-2222-4222-8222-222222222222"


def test_a_line_is_the_session_and_the_exact_amount_without_trailing_zeros() -> None:
    assert charge_line(SESSION_A, Decimal("0.004000000028")) == f"{SESSION_A}:0.004000000028"
    assert charge_line(SESSION_A, Decimal("3.000")) == f"{SESSION_A}:3"
    # 38 significant digits survive (NUMERIC(38, 18)); normalize() would round them.
    big = Decimal("12345678901234567890.123456789012345678")
    assert charge_line(SESSION_B, big) == f"{SESSION_B}:{big}"


def test_the_v1_digest_is_sha256_of_the_sorted_lines_whatever_their_order() -> None:
    lines = [charge_line(SESSION_B, Decimal("0.002")), charge_line(SESSION_A, Decimal("1.5"))]
    expected = hashlib.sha256(f"{SESSION_A}:1.5\n{SESSION_B}:0.002".encode()).hexdigest()
    assert batch_digest(lines) == batch_digest(list(reversed(lines))) == expected
    assert remark_of(expected) == REMARK_PREFIX + expected == f"vilokanam:settlement:v1:{expected}"
    assert batch_digest(lines[:1]) != expected

