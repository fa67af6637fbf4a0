"""Money is exact: `Decimal` tokens in the API and Postgres (NUMERIC(38, 18)),
integer planck on chain (10^decimals planck = 1 token). Never float."""

from __future__ import annotations

import re
from decimal import Decimal

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


def to_planck(tokens: Decimal, decimals: int) -> int:
    planck = tokens.scaleb(decimals)
    if planck != planck.to_integral_value():
        raise InexactAmount(f"{tokens} is not a whole number of planck at {decimals} decimals")
    return int(planck)


def from_planck(planck: int, decimals: int) -> Decimal:
    return Decimal(planck).scaleb(-decimals)
