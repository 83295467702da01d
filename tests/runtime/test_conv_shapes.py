"""Convolution on random shapes: the optimised build (fused, threaded, partial sums) against
the reference build (-O0) and the numpy reference, forward and backward.

Hypothesis draws the batch, channels, groups (depthwise included), kernel, stride, padding
and dilation; a ReLU follows the convolution, so its epilogue is fused at -O2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import reference as R
from gradcheck import one_layer_net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import caffec


@st.composite
def convolutions(draw: st.DrawFn) -> dict:
    group = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    per_group_in = 1 if depthwise else draw(st.integers(1, 3))
    case = {
        "n": draw(st.integers(1, 3)),
        "c": group * per_group_in,
        "o": group * draw(st.integers(1, 3)),
        "group": group,
        "k": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "pad": (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        "dilation": draw(st.integers(1, 2)),
    }
    pairs = zip(case["k"], case["pad"], strict=True)
    reach = [case["dilation"] * (k - 1) + 1 - 2 * p for k, p in pairs]
    case["hw"] = tuple(max(1, r) + draw(st.integers(0, 6)) for r in reach)
    return case


def _net(tmp_path: Path, case: dict, level: int) -> caffec.Net:
    (kh, kw), (sh, sw), (ph, pw) = case["k"], case["stride"], case["pad"]
    layer = (
        f'layer {{ name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: {case['o']} group: {case['group']} kernel_h: {kh} kernel_w: {kw} "
        f"stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw} dilation: {case['dilation']} "
        f'weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" }} }} }}\n'
        'layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }'
    )
    shape = (case["n"], case["c"], *case["hw"])
    path = tmp_path / f"O{level}"
    path.mkdir(exist_ok=True)
    return one_layer_net(path, layer, {"x": shape}, dtype="float32", opt_level=level)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=convolutions())
def test_random_convolutions_agree_with_the_reference(tmp_path: Path, case: dict) -> None:
    optimised, reference = _net(tmp_path, case, 2), _net(tmp_path, case, 0)
    for a, b in zip(optimised.params["conv"], reference.params["conv"], strict=True):
        b.data[...] = a.data
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case["n"], case["c"], *case["hw"])).astype(np.float32)
    w, bias = (p.data for p in optimised.params["conv"])
    expected = np.maximum(R.convolution(x, w, bias, stride=case["stride"], pad=case["pad"],
                                        dilation=case["dilation"], group=case["group"])[0], 0)  # fmt: skip
    results = []
    for net in (optimised, reference):
        y = net.forward(x=x)["y"].copy()
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        net.clear_param_diffs()
        dx = net.backward(y=dy)["x"].copy()
        results.append([y, dx, *(p.diff.copy() for p in net.params["conv"])])
    for name, got, want in zip(("y", "dx", "dw", "db"), *results, strict=True):
        scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
