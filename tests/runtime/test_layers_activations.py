"""Exp, Log, BNLL, Clip, Swish, Threshold, ReLU6 (a fork layer) and MVN: forward against the
numpy references below (written from Caffe's layer sources), backward by finite differences,
in place, and the errors for bad fields.

Parameter values are exactly representable in float32 (prototxt floats are float32), so
the references get the same numbers the compiled layer does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gradcheck import check_gradients, one_layer_net, run_case

from caffec.errors import UserError

# ----------------------------------------------------------------------------- references


def exp(x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """base ^ (shift + scale * x); base -1 is e."""
    return np.power(np.e if base == -1 else base, shift + scale * x)


def log(x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """log_base(shift + scale * x); base -1 is e."""
    return np.log(shift + scale * x) / (1.0 if base == -1 else np.log(base))


def bnll(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow. (Caffe's form loses what is below 1e-16 of 1 in
    1 + exp(x): the tests compare to 1e-15 absolute.)"""
    return np.logaddexp(0.0, x)


def clip(x: np.ndarray, min: float, max: float) -> np.ndarray:  # noqa: A002 - Caffe's names
    return np.clip(x, min, max)


def swish(x: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """x * sigmoid(beta * x), the sigmoid through tanh."""
    return x * (0.5 + 0.5 * np.tanh(0.5 * beta * x))


def threshold(x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    return np.where(x > threshold, 1.0, 0.0)


def relu6(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, 0.0), 6.0)


def mvn_groups(x: np.ndarray, across_channels: bool) -> np.ndarray:
    """x as (groups, elements): one group per item, or per (item, channel)."""
    shape = x.shape + (1,) * (2 - x.ndim)
    return x.reshape(shape[0] if across_channels else shape[0] * shape[1], -1)


def mvn(
    x: np.ndarray, normalize_variance: bool = True, across_channels: bool = False, eps: float = 1e-9
) -> np.ndarray:
    """(x - mean) / (std + eps) per group, the top 4-D as Caffe's Reshape makes it."""
    g = mvn_groups(x, across_channels)
    centred = g - g.mean(axis=1, keepdims=True)
    if normalize_variance:
        centred /= np.sqrt(np.mean(centred**2, axis=1, keepdims=True)) + eps
    return centred.reshape(x.shape + (1,) * (4 - x.ndim))


def mvn_caffe_backward(
    y: np.ndarray, dy: np.ndarray, std: np.ndarray, across_channels: bool
) -> np.ndarray:
    """Caffe's MVN backward with normalize_variance: (dy - mean(dy) - mean(dy * y) * y) / std,
    ``std`` being sqrt(var) + eps per group."""
    y, dy = mvn_groups(y, across_channels), mvn_groups(dy, across_channels)
    mean_dy = dy.mean(axis=1, keepdims=True)
    mean_dyy = (dy * y).mean(axis=1, keepdims=True)
    return (dy - mean_dy - mean_dyy * y) / std[:, None]


# ----------------------------------------------------------------------------- inputs


def normal(scale: float = 1.0) -> Callable[[np.random.Generator, tuple], np.ndarray]:
    return lambda rng, shape: rng.standard_normal(shape) * scale


def uniform(low: float, high: float) -> Callable[[np.random.Generator, tuple], np.ndarray]:
    return lambda rng, shape: rng.uniform(low, high, shape)


def away_from(
    kinks: tuple[float, ...], low: float, high: float
) -> Callable[[np.random.Generator, tuple], np.ndarray]:
    """Uniform values, none within 0.01 of a kink, where finite differences would straddle it."""

    def draw(rng: np.random.Generator, shape: tuple) -> np.ndarray:
        x = rng.uniform(low, high, shape)
        for kink in kinks:
            near = np.abs(x - kink) < 0.01
            x[near] = kink + np.where(x[near] < kink, -0.02, 0.02)
        return x

    return draw


# ----------------------------------------------------------------------------- cases

CASES = [
    # (type, param text, bottom shape, reference with its keywords, input)
    ("Exp", "", (2, 3, 4), lambda x: exp(x), normal()),
    ("Exp", "exp_param { base: 2 }", (3, 5), lambda x: exp(x, base=2.0), normal()),
    ("Exp", "exp_param { base: 0.5 scale: -1.5 shift: 0.25 }", (2, 3, 2, 2),
     lambda x: exp(x, base=0.5, scale=-1.5, shift=0.25), normal()),
    ("Exp", "exp_param { scale: 0.5 shift: -2 }", (4, 3), lambda x: exp(x, scale=0.5, shift=-2.0),
     normal(2.0)),
    ("Exp", "exp_param { base: 1 shift: 3 }", (2, 3), lambda x: exp(x, base=1.0, shift=3.0),
     normal()),  # base 1: every top is 1
    ("Log", "", (2, 3, 4), lambda x: log(x), uniform(0.1, 4.0)),
    ("Log", "log_param { base: 2 scale: 3 shift: 0.5 }", (3, 4),
     lambda x: log(x, base=2.0, scale=3.0, shift=0.5), uniform(0.0, 2.0)),
    ("Log", "log_param { base: 0.25 scale: -2 shift: 1 }", (2, 2, 3),
     lambda x: log(x, base=0.25, scale=-2.0, shift=1.0), uniform(-3.0, 0.25)),
    ("BNLL", "", (2, 3, 4, 5), bnll, normal(3.0)),
    ("BNLL", "", (3, 4), bnll, uniform(-80.0, 80.0)),  # far out on both sides: no overflow
    ("Clip", "clip_param { min: -0.5 max: 0.75 }", (2, 3, 4),
     lambda x: clip(x, -0.5, 0.75), away_from((-0.5, 0.75), -2.0, 2.0)),
    ("Clip", "clip_param { min: 0 max: 0 }", (3, 4), lambda x: clip(x, 0.0, 0.0),
     away_from((0.0,), -1.0, 1.0)),
    ("Clip", "clip_param { min: 1 max: 6 }", (2, 5), lambda x: clip(x, 1.0, 6.0),
     away_from((1.0, 6.0), -1.0, 8.0)),
    ("Swish", "", (2, 3, 4), swish, normal(2.0)),
    ("Swish", "swish_param { beta: 2.5 }", (3, 4), lambda x: swish(x, beta=2.5), normal(2.0)),
    ("Swish", "swish_param { beta: -0.5 }", (2, 3, 2), lambda x: swish(x, beta=-0.5), normal()),
    ("Swish", "swish_param { beta: 0 }", (2, 3), lambda x: swish(x, beta=0.0), normal()),
    ("ReLU6", "", (2, 3, 4, 5), relu6, away_from((0.0, 6.0), -4.0, 10.0)),
    ("ReLU6", "", (7,), relu6, away_from((0.0, 6.0), -1.0, 7.0)),
]  # fmt: skip


def layer_text(type_: str, param: str, top: str = "y", bottom: str = "a") -> str:
    return f'layer {{ name: "x" type: "{type_}" bottom: "{bottom}" top: "{top}" {param} }}'


@pytest.mark.parametrize(("type_", "param", "shape", "reference", "draw"), CASES)
def test_elementwise(tmp_path: Path, type_, param, shape, reference, draw) -> None:
    rng = np.random.default_rng(3)
    x = draw(rng, shape)
    net, feed, out, rng = run_case(tmp_path, layer_text(type_, param), {"a": shape}, ["y"],
                                   inputs={"a": x})  # fmt: skip
    np.testing.assert_allclose(out["y"], reference(x), rtol=1e-12, atol=1e-15)
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(("type_", "param", "shape", "reference", "draw"), CASES[::3])
def test_elementwise_in_place(tmp_path: Path, type_, param, shape, reference, draw) -> None:
    """Written over its bottom (after a layer, so that the input keeps its own blob)."""
    net_text = ('layer { name: "copy" type: "Power" bottom: "a" top: "b" }\n'
                + layer_text(type_, param, top="b", bottom="b"))  # fmt: skip
    rng = np.random.default_rng(4)
    x = draw(rng, shape)
    net, feed, out, rng = run_case(tmp_path, net_text, {"a": shape}, ["b"], inputs={"a": x})
    np.testing.assert_allclose(out["b"], reference(x), rtol=1e-12, atol=1e-15)
    check_gradients(net, feed, ["b"], rng)


def test_bnll_and_swish_stay_finite_far_out(tmp_path: Path) -> None:
    x = np.array([-800.0, -100.0, -30.0, 0.0, 30.0, 100.0, 800.0])
    sigmoid = 0.5 + 0.5 * np.tanh(0.5 * x)
    for type_, reference, slope in (
        ("BNLL", bnll, sigmoid),
        ("Swish", swish, sigmoid + x * sigmoid * (1 - sigmoid)),
    ):
        net = one_layer_net(tmp_path, layer_text(type_, ""), {"a": (7,)}, name=type_)
        np.testing.assert_allclose(net.forward(a=x)["y"], reference(x), rtol=1e-12, atol=1e-15)
        grads = net.backward(diffs=["a"], y=np.ones(7))["a"]
        np.testing.assert_allclose(grads, slope, rtol=1e-6, atol=1e-12)


def test_clip_passes_the_gradient_at_both_bounds_and_maps_nan_to_min(tmp_path: Path) -> None:
    """Caffe's Clip: dx = dy where min <= x <= max (ends included); NaN clips to min."""
    net = one_layer_net(tmp_path, layer_text("Clip", "clip_param { min: -1 max: 2 }"), {"a": (6,)})
    x = np.array([-1.5, -1.0, 0.5, 2.0, 2.5, np.nan])
    np.testing.assert_array_equal(net.forward(a=x)["y"], [-1.0, -1.0, 0.5, 2.0, 2.0, -1.0])
    grads = net.backward(diffs=["a"], y=np.full(6, 3.0))["a"]
    np.testing.assert_array_equal(grads, [0.0, 3.0, 3.0, 3.0, 0.0, 0.0])


def test_relu6_passes_the_gradient_inside_zero_to_six_only(tmp_path: Path) -> None:
    net = one_layer_net(tmp_path, layer_text("ReLU6", "", top="a", bottom="a"), {"a": (6,)})
    x = np.array([-1.0, 0.0, 0.5, 5.5, 6.0, 7.0])
    np.testing.assert_array_equal(net.forward(a=x)["a"], [0.0, 0.0, 0.5, 5.5, 6.0, 6.0])
    grads = net.backward(diffs=["a"], a=np.full(6, 2.0))["a"]
    np.testing.assert_array_equal(grads, [0.0, 0.0, 2.0, 2.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("param", "value"), [("", 0.0), ("threshold_param { threshold: 0.5 }", 0.5),
                         ("threshold_param { threshold: -1.25 }", -1.25)]
)  # fmt: skip
def test_threshold(tmp_path: Path, param: str, value: float) -> None:
    """Strictly above the threshold gives 1; force_backward does not ask Threshold for a
    gradient (Caffe's backward is NOT_IMPLEMENTED)."""
    x = np.random.default_rng(5).standard_normal((2, 3, 4))
    x.flat[:3] = value  # at the threshold: 0
    _, _, out, _ = run_case(tmp_path, layer_text("Threshold", param), {"a": x.shape}, ["y"],
                            inputs={"a": x})  # fmt: skip
    np.testing.assert_array_equal(out["y"], threshold(x, value))
    assert not out["y"].flat[:3].any()


def test_threshold_in_place(tmp_path: Path) -> None:
    net = one_layer_net(tmp_path, layer_text("Threshold", "", top="a", bottom="a"), {"a": (5,)})
    x = np.array([-1.0, 0.0, 1e-9, 2.0, -3.0])
    np.testing.assert_array_equal(net.forward(a=x)["a"], [0.0, 0.0, 1.0, 1.0, 0.0])


def test_threshold_has_no_backward(tmp_path: Path) -> None:
    text = ('layer { name: "ip" type: "InnerProduct" bottom: "a" top: "h" '
            "inner_product_param { num_output: 3 } }\n"
            + layer_text("Threshold", "", top="t", bottom="h")
            + '\nlayer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "b" top: "l" }')  # fmt: skip
    with pytest.raises(UserError, match="Threshold layers have no backward pass") as info:
        one_layer_net(tmp_path, text, {"a": (2, 4), "b": (2, 3)})
    assert info.value.layer == "x" and info.value.span is not None


# ----------------------------------------------------------------------------- MVN

MVN_CASES = [
    # (param text, bottom shape, keywords)
    ("", (2, 3, 4, 5), {}),
    ("mvn_param { across_channels: true }", (2, 3, 4, 5), {"across_channels": True}),
    ("mvn_param { normalize_variance: false }", (2, 3, 4, 5), {"normalize_variance": False}),
    ("mvn_param { normalize_variance: false across_channels: true }", (3, 2, 5),
     {"normalize_variance": False, "across_channels": True}),
    ("mvn_param { eps: 0.001 }", (2, 4, 3), {"eps": float(np.float32(0.001))}),
    ("", (3, 7), {}),  # a 2-D bottom: one element per group, every top 0
    ("mvn_param { across_channels: true }", (4, 6), {"across_channels": True}),
    ("mvn_param { across_channels: true }", (5,), {"across_channels": True}),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "kw"), MVN_CASES)
def test_mvn(tmp_path: Path, param: str, shape: tuple, kw: dict) -> None:
    net, feed, out, rng = run_case(tmp_path, layer_text("MVN", param), {"a": shape}, ["y"])
    expected = mvn(feed["a"], **kw)
    assert out["y"].shape == expected.shape  # Caffe's top is 4-D
    np.testing.assert_allclose(out["y"], expected, rtol=1e-10, atol=1e-12)
    if kw.get("eps", 1e-9) < 1e-6:  # Caffe's gradient is exact where eps is negligible
        check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize("across", [False, True])
def test_mvn_backward_is_caffes(tmp_path: Path, across: bool) -> None:
    """With a large eps Caffe's gradient is not the exact one (it leaves out std / (std +
    eps) on the variance term); caffec computes Caffe's."""
    eps = 0.5
    param = f"mvn_param {{ eps: {eps} across_channels: {str(across).lower()} }}"
    net, feed, out, rng = run_case(tmp_path, layer_text("MVN", param), {"a": (2, 3, 4)}, ["y"])
    dy = rng.standard_normal(out["y"].shape)
    grads = net.backward(diffs=["a"], y=dy)["a"]
    groups = mvn_groups(feed["a"], across)
    std = np.sqrt(groups.var(axis=1)) + eps
    expected = mvn_caffe_backward(out["y"], dy, std, across)
    np.testing.assert_allclose(grads, expected.reshape(grads.shape), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("param", ["", "mvn_param { normalize_variance: false }"])
def test_mvn_in_place(tmp_path: Path, param: str) -> None:
    net_text = ('layer { name: "copy" type: "Power" bottom: "a" top: "b" }\n'
                + layer_text("MVN", param, top="b", bottom="b"))  # fmt: skip
    net, feed, out, rng = run_case(tmp_path, net_text, {"a": (2, 3, 4, 2)}, ["b"])
    kw = {"normalize_variance": not param}
    np.testing.assert_allclose(out["b"], mvn(feed["a"], **kw), rtol=1e-10, atol=1e-12)
    check_gradients(net, feed, ["b"], rng)


FLOAT32_LAYERS = [
    # (type, param text, reference)
    ("Exp", "exp_param { base: 3 scale: 0.5 }", lambda x: exp(x, base=3.0, scale=0.5)),
    ("Log", "log_param { shift: 8 }", lambda x: log(x, shift=8.0)),
    ("BNLL", "", bnll),
    ("Clip", "clip_param { min: -1 max: 1.5 }", lambda x: clip(x, -1.0, 1.5)),
    ("Swish", "swish_param { beta: 2 }", lambda x: swish(x, beta=2.0)),
    ("Threshold", "threshold_param { threshold: 0.5 }", lambda x: threshold(x, 0.5)),
    ("ReLU6", "", relu6),
    ("MVN", "", mvn),
]  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", "emulated_gpu"])
def test_float32_builds_of_every_layer(
    tmp_path: Path, device: str, request: pytest.FixtureRequest
) -> None:
    """One float32 net of all of them (float literals and math functions of the real type),
    forward and backward, on the CPU and the emulated GPU."""
    if device != "cpu":
        request.getfixturevalue(device)
    text = "\n".join(
        f'layer {{ name: "{t}" type: "{t}" bottom: "a" top: "{t}" {p} }}'
        for t, p, _ in FLOAT32_LAYERS
    )
    net = one_layer_net(tmp_path, text, {"a": (2, 3, 4, 5)}, dtype="float32")
    assert net.artifact.manifest.target.name == ("c" if device == "cpu" else "cuda")
    x = np.random.default_rng(6).uniform(-8.0, 8.0, (2, 3, 4, 5))
    out = net.forward(a=x.astype(np.float32))
    for type_, _, reference in FLOAT32_LAYERS:
        expected = reference(x.astype(np.float32).astype(np.float64))
        np.testing.assert_allclose(out[type_], expected, rtol=2e-5, atol=1e-5, err_msg=type_)
    seeds = {t: np.ones(out[t].shape, np.float32) for t in net.artifact.manifest.output_diffs}
    assert "Threshold" not in seeds  # no backward, and force_backward does not ask for one
    assert np.isfinite(net.backward(diffs=["a"], **seeds)["a"]).all()


# ----------------------------------------------------------------------------- errors

ERRORS = [
    ("Clip", "", (2, 3), "needs both clip_param.min and clip_param.max"),
    ("Clip", "clip_param { min: 2 max: 1 }", (2, 3), "min 2 is above clip_param.max 1"),
    ("Exp", "exp_param { base: 0 }", (2, 3), "exp_param.base 0 is not a positive number"),
    ("Exp", "exp_param { base: -2 }", (2, 3), "exp_param.base -2 is not a positive number"),
    ("Exp", "exp_param { base: 1e30 shift: 1e30 }", (2, 3), "too large"),
    ("Log", "log_param { base: -0.5 }", (2, 3), "log_param.base -0.5 is not a positive number"),
    ("Log", "log_param { base: 1 }", (2, 3), "log_param.base 1 has no logarithms"),
    ("ReLU6", "relu_param { negative_slope: 0.1 }", (2, 3), "ReLU6 has no negative slope"),
    ("MVN", "", (2, 3, 2, 2, 2), "at most 4 axes, got 2x3x2x2x2"),
]  # fmt: skip


@pytest.mark.parametrize(("type_", "param", "shape", "message"), ERRORS)
def test_bad_fields_name_the_layer(tmp_path: Path, type_, param, shape, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, layer_text(type_, param), {"a": shape})
    assert info.value.layer == "x" and info.value.span is not None and info.value.hint


@pytest.mark.parametrize(("param", "missing"), [("min: 1", "max"), ("max: 1", "min")])
def test_clip_without_a_bound_is_a_parse_error(tmp_path: Path, param: str, missing: str) -> None:
    """Both bounds are required fields: the prototxt reader points at the clip_param."""
    text = layer_text("Clip", f"clip_param {{ {param} }}")
    with pytest.raises(UserError, match=f"missing required field '{missing}'") as info:
        one_layer_net(tmp_path, text, {"a": (2, 3)})
    assert info.value.span is not None
