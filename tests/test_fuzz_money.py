"""Property tests of the money parsers (hypothesis): amounts are exact Decimal
or integer planck, never float; every round trip is the identity; and the
parsers accept exactly what the OpenAPI document promises (the `_AMOUNT_IN`
pattern and integer range), so the document and the handlers cannot drift."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from signaling.api import PRICE_LIMIT, parse_price
from signaling.creator_support import parse_amount
from signaling.errors import ApiError
from signaling.openapi_schema import _AMOUNT_IN
from vilokanam.money import (
    InexactAmount,
    decimal_from_json,
    format_amount,
    from_planck,
    to_planck,
)

DECIMALS = 12
FAST = settings(max_examples=200, deadline=None)
PATTERN = re.compile(_AMOUNT_IN["anyOf"][0]["pattern"])
INTEGER = _AMOUNT_IN["anyOf"][1]

# Decimals with up to 18 places below 10^20: what NUMERIC(38, 18) holds.
stored = st.decimals(min_value=Decimal("-1e20") + 1, max_value=Decimal("1e20") - 1,
                     places=18, allow_nan=False, allow_infinity=False)
planck = st.integers(min_value=0, max_value=10**32)
# Strings an amount field may be sent: decimal-looking ones and anything at all.
amount_text = st.one_of(
    st.from_regex(r"\A-?[0-9]{0,24}(\.[0-9]{0,20})?([eE][+-]?[0-9]{1,4})?\Z"),
    st.text(alphabet="0123456789.-+eE _٣", max_size=30), st.text(max_size=30))


@FAST
@given(stored)
def test_format_amount_round_trips_exactly(amount: Decimal) -> None:
    text = format_amount(amount)
    assert Decimal(text) == amount
    assert "e" not in text.lower()  # never scientific notation
    assert not ("." in text and text.endswith(("0", ".")))


@FAST
@given(planck, st.integers(min_value=0, max_value=18))
def test_planck_round_trips_exactly(units: int, decimals: int) -> None:
    tokens = from_planck(units, decimals)
    assert isinstance(tokens, Decimal)
    back = to_planck(tokens, decimals)
    assert type(back) is int and back == units


@FAST
@given(stored, st.integers(min_value=0, max_value=18))
def test_to_planck_is_exact_or_refuses(tokens: Decimal, decimals: int) -> None:
    exact = Fraction(tokens) * 10**decimals  # the oracle: no Decimal context at all
    try:
        units = to_planck(tokens, decimals)
    except InexactAmount:
        assert exact.denominator != 1
    else:
        assert exact == units and from_planck(units, decimals) == tokens


@FAST
@given(st.one_of(amount_text, st.integers(), st.floats(), st.booleans(), st.none(),
                 st.lists(st.integers(), max_size=2)))
def test_decimal_from_json_takes_decimal_strings_and_integers_never_floats(
        value: object) -> None:
    amount = decimal_from_json(value)
    if amount is None:
        assert isinstance(value, bool | float | list | type(None)) or (
            isinstance(value, str) and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value))
        return
    assert isinstance(amount, Decimal)
    assert not isinstance(value, float | bool)  # a float is never an amount
    assert amount == (Decimal(value) if isinstance(value, int) else Decimal(str(value)))


def _accepted(parse: object, value: object) -> Decimal | None:
    try:
        result = parse(value)  # type: ignore[operator]
    except ApiError as exc:
        assert exc.status == 400 and exc.code in ("invalid_amount", "invalid_price")
        return None
    assert isinstance(result, Decimal)
    return result


PARSERS = [lambda v: parse_amount(v, "amount", DECIMALS),
           lambda v: parse_price(v, Decimal("0.001"), DECIMALS)]


@pytest.mark.parametrize("parse", PARSERS, ids=["tip", "price"])
@FAST
@given(amount_text)
@example("0.000000000001")
@example("0.0000000000001")
@example("5.000000000000000")
@example("99999999999999999999")
@example("100000000000000000000")
@example("0")
@example("00.10")
def test_a_string_is_accepted_exactly_when_the_document_says(parse: object, text: str) -> None:
    amount = _accepted(parse, text)
    assert (amount is not None) == bool(PATTERN.fullmatch(text)), text
    if amount is not None:
        assert amount == Decimal(text) and 0 < amount < PRICE_LIMIT
        assert to_planck(amount, DECIMALS) == int(Decimal(text).scaleb(DECIMALS))


@pytest.mark.parametrize("parse", PARSERS, ids=["tip", "price"])
@FAST
@given(st.integers(min_value=-(10**21), max_value=10**21))
@example(10**20 - 1)
@example(10**20)
def test_an_integer_is_accepted_exactly_in_the_documented_range(parse: object,
                                                                value: int) -> None:
    amount = _accepted(parse, value)
    assert (amount is not None) == (INTEGER["minimum"] <= value <= INTEGER["maximum"])
    if amount is not None:
        assert amount == value


@pytest.mark.parametrize("parse", PARSERS, ids=["tip", "price"])
@FAST
@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_a_json_number_is_exact_whole_planck_or_refused(parse: object,
                                                        number: Decimal) -> None:
    """JSON numbers reach the parsers as Decimal (parse_float=Decimal): taken
    when finite, in range and whole planck; never rounded."""
    amount = _accepted(parse, number)
    whole = (number.is_finite() and 0 < number < PRICE_LIMIT
             and (Fraction(number) * 10**DECIMALS).denominator == 1)  # no context rounding
    assert (amount is not None) == whole, number
    if amount is not None:
        assert amount == number
