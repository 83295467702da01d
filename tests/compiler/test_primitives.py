"""Expression helpers of the primitives that the numeric layer tests reach only in part."""

from __future__ import annotations

import math

import pytest

from caffec.compiler.primitives import power
from caffec.errors import InternalError


@pytest.mark.parametrize("quarters", range(-16, 17))
def test_power_of_quarter_exponents_is_sqrt_products(quarters: int) -> None:
    value = quarters / 4
    text = power("s", "e", value)
    assert "pow" not in text
    for s in (0.3, 1.0, 2.5, 17.0):
        got = eval(text, {"sqrt": math.sqrt, "s": s})  # the expression is C and Python alike
        assert got == pytest.approx(s**value, rel=1e-14)


def test_power_of_other_exponents_calls_pow_with_the_named_constant() -> None:
    assert power("s", "beta", 0.625) == "pow(s, beta)"
    assert power("s", "beta", 4.25) == "pow(s, beta)"


def test_power_needs_a_name() -> None:
    with pytest.raises(InternalError):
        power("a + b", "e", 2.0)
