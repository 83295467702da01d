"""Pooling on random shapes: the optimised build against numpy, forward (with MAX's mask top)
and backward (tests/reference.py).

Hypothesis draws the method, batch, channels, kernel, stride, padding and image size,
including windows that hang over the padding and outputs whose window lies wholly in it
(Caffe's ceil rounding), which the templates' row-at-a-time loops handle by tap ranges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import reference as R
from gradcheck import one_layer_net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@st.composite
def poolings(draw: st.DrawFn) -> dict:
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    case = {
        "method": draw(st.sampled_from(["MAX", "AVE"])),
        "n": draw(st.integers(1, 2)),
        "c": draw(st.integers(1, 3)),
        "kernel": kernel,
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "pad": tuple(draw(st.integers(0, k - 1)) for k in kernel),  # Caffe: pad < kernel
    }
    case["hw"] = tuple(max(1, k - 2 * p) + draw(st.integers(0, 6))
                       for k, p in zip(kernel, case["pad"], strict=True))  # fmt: skip
    return case


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=poolings())
def test_random_poolings_agree_with_numpy(tmp_path: Path, case: dict) -> None:
    (kh, kw), (sh, sw), (ph, pw) = case["kernel"], case["stride"], case["pad"]
    mask_top = ' top: "mask"' if case["method"] == "MAX" else ""
    layer = (
        f'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y"{mask_top} pooling_param {{ '
        f"pool: {case['method']} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
        f"pad_h: {ph} pad_w: {pw} }} }}"
    )
    shape = (case["n"], case["c"], *case["hw"])
    net = one_layer_net(tmp_path, layer, {"x": shape}, dtype="float32")
    geometry = {"method": case["method"], "kernel": case["kernel"],
                "stride": case["stride"], "pad": case["pad"]}  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 8  # no ties
    expected = R.pooling(x, **geometry)
    out = net.forward(x=x)
    np.testing.assert_allclose(out["y"], expected[0], rtol=1e-6)
    if mask_top:
        np.testing.assert_array_equal(out["mask"], expected[1])
    dy = rng.standard_normal(expected[0].shape).astype(np.float32)
    dx = net.backward(y=dy)["x"]
    np.testing.assert_allclose(dx, R.pooling_grad(x, dy, **geometry)[0], rtol=1e-5, atol=1e-6)
