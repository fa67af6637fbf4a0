from decimal import Decimal

import pytest

from vilokanam.money import (
    InexactAmount,
    decimal_from_json,
    format_amount,
    from_planck,
    to_planck,
)


def test_format_is_exact_and_trimmed() -> None:
    assert format_amount(Decimal("0.001000")) == "0.001"
    assert format_amount(Decimal("5.000")) == "5"
    assert format_amount(Decimal("0.000000000001")) == "0.000000000001"
    big = Decimal("12345678901234567890.123456789012345678")
    assert format_amount(big) == "12345678901234567890.123456789012345678"


@pytest.mark.parametrize(("value", "expected"), [
    ("0.001", Decimal("0.001")), (Decimal("0.5"), Decimal("0.5")), (3, Decimal(3)),
    (True, None), ("1e-3", None), ("-1", None), (0.1, None), (None, None), ("", None),
])
def test_decimal_from_json(value: object, expected: Decimal | None) -> None:
    assert decimal_from_json(value) == expected


def test_planck_round_trip_is_exact() -> None:
    assert to_planck(Decimal("0.001"), 12) == 10**9
    assert to_planck(Decimal("1000000"), 12) == 10**18
    assert from_planck(1, 12) == Decimal("0.000000000001")
    with pytest.raises(InexactAmount):
        to_planck(Decimal("0.0000000000001"), 12)
