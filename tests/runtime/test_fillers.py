"""Caffe's fillers: values and statistics against Caffe's formulas, and the errors people see.

Seeds are fixed, and every statistical tolerance is at least six standard errors wide, so the
tests would hold for almost any seed too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffec.errors import UserError
from caffec.runtime.fillers import check, fill, filler_names

RANDOM_FILLERS = ["uniform", "gaussian", "positive_unitball", "xavier", "msra"]


def filled(spec, shape, *, seed=0, dtype=np.float64):
    out = np.empty(shape, dtype=dtype)
    fill(spec, out, np.random.default_rng(seed))
    return out


def raises(spec, shape, *fragments):
    """Both fill and check raise a UserError whose text holds every fragment."""
    with pytest.raises(UserError) as info:
        filled(spec, shape)
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text
    with pytest.raises(UserError) as again:
        check(spec, shape)
    assert str(again.value) == text
    return info.value


def test_names_are_caffes():
    assert filler_names() == [
        "bilinear",
        "constant",
        "gaussian",
        "msra",
        "positive_unitball",
        "uniform",
        "xavier",
    ]


# --- constant -------------------------------------------------------------------------------


def test_empty_spec_is_constant_zero():
    assert np.array_equal(filled({}, (3, 4)), np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_exact(dtype):
    out = filled({"type": "constant", "value": 2.5}, (2, 3, 4, 5), dtype=dtype)
    assert out.dtype == dtype
    assert np.all(out == dtype(2.5))


def test_fills_a_strided_view_only():
    base = np.full((4, 6), -1.0)
    fill({"value": 7}, base[:, ::2], np.random.default_rng(0))
    assert np.all(base[:, ::2] == 7)
    assert np.all(base[:, 1::2] == -1)


# --- uniform --------------------------------------------------------------------------------


def test_uniform_range_and_moments():
    out = filled({"type": "uniform", "min": -2, "max": 3}, (100_000,))
    assert out.min() >= -2 and out.max() <= 3
    assert abs(out.mean() - 0.5) < 0.03  # standard error 0.0046
    assert abs(out.std() - 5 / math.sqrt(12)) < 0.02


def test_uniform_defaults_to_unit_interval():
    out = filled({"type": "uniform"}, (10_000,), dtype=np.float32)
    assert out.min() >= 0 and out.max() <= 1
    assert abs(out.mean() - 0.5) < 0.02


def test_uniform_with_min_equal_max_is_constant():
    assert np.all(filled({"type": "uniform", "min": 1.5, "max": 1.5}, (100,)) == 1.5)


# --- gaussian -------------------------------------------------------------------------------


def test_gaussian_moments():
    out = filled({"type": "gaussian", "mean": 10, "std": 0.1}, (200_000,))
    assert abs(out.mean() - 10) < 0.002  # standard error 0.00022
    assert abs(out.std() - 0.1) < 0.002


def test_gaussian_defaults_to_standard_normal():
    out = filled({"type": "gaussian"}, (100_000,))
    assert abs(out.mean()) < 0.02
    assert abs(out.std() - 1) < 0.02


def test_sparse_gaussian_keeps_sparse_over_shape0():
    # Caffe keeps each weight with probability sparse / shape[0].
    out = filled({"type": "gaussian", "std": 2, "sparse": 10}, (50, 1000))
    nonzero = out[out != 0]
    assert abs(nonzero.size / out.size - 10 / 50) < 0.012  # standard error 0.0018
    assert abs(nonzero.std() - 2) < 0.06


def test_sparse_gaussian_extremes():
    assert np.all(filled({"type": "gaussian", "sparse": 0}, (8, 9)) == 0)
    assert np.all(filled({"type": "gaussian", "sparse": 8}, (8, 9)) != 0)


def test_sparse_gaussian_on_one_axis():
    # Caffe only needs an axis 0 for sparse, so a bias-shaped blob is accepted (p = 250 / 1000).
    out = filled({"type": "gaussian", "sparse": 250}, (1000,))
    assert abs(np.count_nonzero(out) / out.size - 0.25) < 0.09  # standard error 0.014


# --- positive_unitball ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_unitball_rows_sum_to_one(dtype):
    out = filled({"type": "positive_unitball"}, (7, 3, 4, 5), dtype=dtype)
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out.reshape(7, -1).sum(axis=1), 1, rtol=1e-5)
    assert len(np.unique(out)) > 100  # random, not flat


def test_positive_unitball_one_axis_is_all_ones():
    assert np.allclose(filled({"type": "positive_unitball"}, (6,)), 1)


# --- xavier and msra ------------------------------------------------------------------------

# shape (200, 50, 3, 3): fan_in = 50*3*3 = 450, fan_out = 200*3*3 = 1800.
FAN_SHAPE = (200, 50, 3, 3)
FAN_N = {"FAN_IN": 450, "FAN_OUT": 1800, "AVERAGE": 1125}


@pytest.mark.parametrize("norm", sorted(FAN_N))
def test_xavier_scale(norm):
    out = filled({"type": "xavier", "variance_norm": norm}, FAN_SHAPE)
    scale = math.sqrt(3 / FAN_N[norm])
    assert np.abs(out).max() <= scale
    assert np.abs(out).max() > 0.999 * scale
    assert abs(out.std() / (scale / math.sqrt(3)) - 1) < 0.02  # relative error 0.0026
    assert abs(out.mean()) < 0.03 * scale


def test_xavier_defaults_to_fan_in():
    assert np.array_equal(
        filled({"type": "xavier"}, FAN_SHAPE),
        filled({"type": "xavier", "variance_norm": "FAN_IN"}, FAN_SHAPE),
    )


@pytest.mark.parametrize("norm", sorted(FAN_N))
def test_msra_scale(norm):
    out = filled({"type": "msra", "variance_norm": norm}, FAN_SHAPE)
    std = math.sqrt(2 / FAN_N[norm])
    assert abs(out.std() / std - 1) < 0.02  # relative error 0.0024
    assert abs(out.mean()) < 0.03 * std


@pytest.mark.parametrize(("norm", "n"), [("FAN_IN", 1), ("FAN_OUT", 1000), ("AVERAGE", 500.5)])
def test_xavier_on_one_axis_takes_count_as_fan_out(norm, n):
    # For a (1000,) blob fan_in = count / shape[0] = 1 and fan_out = count.
    out = filled({"type": "xavier", "variance_norm": norm}, (1000,))
    scale = math.sqrt(3 / n)
    assert scale * 0.9 < np.abs(out).max() <= scale


def test_xavier_and_msra_accept_more_than_four_axes():
    # shape (40, 6, 3, 3, 3): fan_in = 6*3*3*3 = 162.
    out = filled({"type": "msra"}, (40, 6, 3, 3, 3))
    assert abs(out.std() / math.sqrt(2 / 162) - 1) < 0.05
    assert np.abs(filled({"type": "xavier"}, (4, 6, 3, 3, 3))).max() <= math.sqrt(3 / 162)


# --- bilinear -------------------------------------------------------------------------------


def test_bilinear_factor_2_kernel_4():
    # f = ceil(4/2) = 2, centre c = 3/4: the 1-D tent is 1 - |x/2 - 3/4| = 1/4, 3/4, 3/4, 1/4.
    expected = np.array(
        [
            [1 / 16, 3 / 16, 3 / 16, 1 / 16],
            [3 / 16, 9 / 16, 9 / 16, 3 / 16],
            [3 / 16, 9 / 16, 9 / 16, 3 / 16],
            [1 / 16, 3 / 16, 3 / 16, 1 / 16],
        ]
    )
    out = filled({"type": "bilinear"}, (3, 2, 4, 4), dtype=np.float32)
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(out[i, j], expected, rtol=1e-7)


def test_bilinear_factor_3_kernel_5():
    # f = 3, c = 2/3: the tent is 1/3, 2/3, 1, 2/3, 1/3.
    tent = np.array([1, 2, 3, 2, 1]) / 3
    out = filled({"type": "bilinear"}, (1, 1, 5, 5))
    np.testing.assert_allclose(out[0, 0], np.outer(tent, tent))


def test_bilinear_kernel_3_is_centred():
    # Caffe after BVLC/caffe#5713; Caffe 1.0 gave an off-centre kernel for this size.
    tent = np.array([0.5, 1, 0.5])
    np.testing.assert_allclose(
        filled({"type": "bilinear"}, (2, 1, 3, 3))[1, 0], np.outer(tent, tent)
    )


def test_bilinear_ignores_rng():
    a = filled({"type": "bilinear"}, (2, 2, 4, 4), seed=1)
    b = filled({"type": "bilinear"}, (2, 2, 4, 4), seed=2)
    assert np.array_equal(a, b)


# --- determinism ----------------------------------------------------------------------------


def _spec(name):
    return {"type": name, "sparse": 3} if name == "gaussian" else {"type": name}


@pytest.mark.parametrize("name", RANDOM_FILLERS)
def test_equal_seeds_equal_values(name):
    shape = (6, 5, 3, 3)
    assert np.array_equal(filled(_spec(name), shape, seed=42), filled(_spec(name), shape, seed=42))
    assert not np.array_equal(
        filled(_spec(name), shape, seed=1), filled(_spec(name), shape, seed=2)
    )


@pytest.mark.parametrize("name", RANDOM_FILLERS)
def test_dtype_does_not_change_the_draw(name):
    shape = (6, 5, 3, 3)
    single = filled(_spec(name), shape, seed=7, dtype=np.float32)
    double = filled(_spec(name), shape, seed=7, dtype=np.float64)
    np.testing.assert_allclose(single, double, rtol=1e-6, atol=1e-7)


def test_rng_state_advances():
    rng = np.random.default_rng(0)
    a, b = np.empty(100), np.empty(100)
    fill({"type": "gaussian"}, a, rng)
    fill({"type": "gaussian"}, b, rng)
    assert not np.array_equal(a, b)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_type_suggests_and_lists():
    err = raises({"type": "xaviar"}, (2, 2), "unknown filler type 'xaviar'", "'xavier'")
    for name in filler_names():
        assert name in err.hint


def test_type_is_case_sensitive_like_caffe():
    raises(
        {"type": "Gaussian"}, (2, 2), "unknown filler type 'Gaussian'", "did you mean 'gaussian'"
    )


def test_unknown_field():
    raises(
        {"type": "xavier", "varianceNorm": "FAN_OUT"},
        (2, 2),
        "unknown field 'varianceNorm'",
        "did you mean 'variance_norm'",
    )


def test_unknown_variance_norm():
    raises({"type": "msra", "variance_norm": "fan_in"}, (2, 2), "filler 'msra'", "'FAN_IN'")


def test_bilinear_needs_4d():
    raises({"type": "bilinear"}, (2, 4, 4), "filler 'bilinear'", "4-D", "(2, 4, 4)")


def test_bilinear_needs_square_kernel():
    raises({"type": "bilinear"}, (2, 1, 3, 4), "filler 'bilinear'", "square", "3x4")


def test_sparse_only_on_gaussian():
    raises({"type": "xavier", "sparse": 2}, (4, 4), "filler 'xavier'", "sparse", "gaussian")


def test_sparse_gaussian_needs_an_axis():
    raises({"type": "gaussian", "sparse": 1}, (), "filler 'gaussian'", "at least one axis")


def test_sparse_above_shape0():
    raises(
        {"type": "gaussian", "sparse": 5}, (4, 10), "filler 'gaussian'", "sparse (5)", "at most 4"
    )


def test_sparse_below_minus_one():
    raises({"type": "gaussian", "sparse": -2}, (4, 4), "filler 'gaussian'", "-2")


@pytest.mark.parametrize("std", [0, -1])
def test_gaussian_std_must_be_positive(std):
    err = raises({"type": "gaussian", "std": std}, (4,), "filler 'gaussian'", "std")
    assert "constant" in err.hint


def test_uniform_min_above_max():
    raises(
        {"type": "uniform", "min": 2, "max": 1}, (4,), "filler 'uniform'", "min (2.0)", "max (1.0)"
    )


def test_empty_blob():
    raises({"type": "constant"}, (0, 3), "filler 'constant'", "empty", "(0, 3)")


@pytest.mark.parametrize(
    "spec",
    [
        {"value": "1"},
        {"type": "gaussian", "std": None},
        {"value": True},
        {"type": "gaussian", "sparse": 1.5},
    ],
)
def test_non_numeric_fields(spec):
    raises(spec, (4, 4), "must be")


def test_every_error_has_a_hint():
    bad = [
        {"type": "nope"},
        {"type": "bilinear"},
        {"type": "gaussian", "std": 0},
        {"type": "uniform", "sparse": 1},
        {"type": "xavier", "variance_norm": "BOTH"},
        {"oops": 1},
        {"type": "gaussian", "std": "0.1"},
        {"type": "gaussian", "sparse": 2.5},
        {"type": "gaussian", "sparse": 7},
        {"type": "uniform", "min": 1, "max": 0},
        {"type": "bilinear"},
    ]
    for spec in bad:
        with pytest.raises(UserError) as info:
            check(spec, (2, 3))
        assert info.value.hint, spec


def test_check_accepts_valid_specs():
    for name in filler_names():
        check({"type": name}, (2, 3, 5, 5))


def test_integer_output_is_refused():
    with pytest.raises(TypeError, match="float32 or float64"):
        fill({}, np.zeros(4, dtype=np.int32), np.random.default_rng(0))
