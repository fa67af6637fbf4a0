"""Money is exact: `Decimal` tokens in the API and Postgres (NUMERIC(38, 18)),
integer planck on chain (10^decimals planck = 1 token). Never float."""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, Rounded

# scaleb() rounds to the context's precision, 28 digits by default: a planck
# amount of 29+ digits (10^17 tokens at 12 decimals; u128 has 39) came back
# changed (found by tests/test_fuzz_money.py). Shifting by this context is
# exact, or raises instead of rounding.
_EXACT = Context(prec=200, Emax=10**6, Emin=-10**6, traps=[Inexact, Rounded])

_DECIMAL_STRING = re.compile(r"[0-9]+(\.[0-9]+)?")


class InexactAmount(ValueError):
    """The amount is not a whole number of planck."""


def format_amount(amount: Decimal) -> str:
    """An exact decimal string without trailing zeros: "0.001", "5".
    (Decimal.normalize() would round past 28 digits; NUMERIC(38, 18) has 38.)"""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def decimal_from_json(value: object) -> Decimal | None:
    """A JSON amount — a plain decimal string or a number parsed as Decimal
    (json.loads(parse_float=Decimal)) — or None if it is neither."""
    if isinstance(value, bool):  # bool is an int; true is not an amount
        return None
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, str) and _DECIMAL_STRING.fullmatch(value):
        return Decimal(value)
    return None


def shift(amount: Decimal, places: int) -> Decimal:
    """amount × 10^places, exactly (never rounded to 28 digits)."""
    return amount.scaleb(places, context=_EXACT)


def to_planck(tokens: Decimal, decimals: int) -> int:
    planck = shift(tokens, decimals)
    if planck != planck.to_integral_value():
        raise InexactAmount(f"{tokens} is not a whole number of planck at {decimals} decimals")
    return int(planck)


def from_planck(planck: int, decimals: int) -> Decimal:
    return shift(Decimal(planck), -decimals)
