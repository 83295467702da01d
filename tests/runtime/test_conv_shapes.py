"""Convolution on random shapes: the optimised build (fused, threaded, partial sums) and the
reference build (-O0) against numpy, forward and backward (tests/reference.py).

Hypothesis draws the batch, channels, groups (depthwise included), kernel, stride, padding
and dilation; a ReLU follows the convolution, so its epilogue is fused at -O2. With few
channels per group the optimised build convolves directly, with more by im2col + GEMM; the
reference build always by im2col + GEMM.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as R
from gradcheck import one_layer_net
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import caffec
from caffec.codegen.toolchain import c_compiler
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    load_layer_graph,
)
from caffec.runtime.compiled_net import CompiledNet


def conv(n: int, c: int, o: int, k: tuple, pad: tuple, hw: tuple, group: int = 1,
         stride: tuple = (1, 1), dilation: int = 1) -> dict:  # fmt: skip
    """A test case: n images of c channels, hw in size, into o channels by a k kernel."""
    return {"n": n, "c": c, "o": o, "group": group, "k": k, "stride": stride, "pad": pad,
            "dilation": dilation, "hw": hw}  # fmt: skip


@st.composite
def convolutions(draw: st.DrawFn) -> dict:
    group = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    per_group_in = 1 if depthwise else draw(st.integers(1, 6))
    case = {
        "n": draw(st.integers(1, 3)),
        "c": group * per_group_in,
        "o": group * (1 if depthwise else draw(st.integers(1, 6))),
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
# GCC 12 -O3 once miscompiled these: rows of an im2col, a depthwise weight gradient
@example(case=conv(1, 1, 1, (1, 1), (1, 0), (4, 7)))
@example(case=conv(1, 2, 2, (1, 1), (2, 0), (1, 2), group=2))
def test_random_convolutions_agree_with_numpy(tmp_path: Path, case: dict) -> None:
    _check(tmp_path, case)


# Large enough for the GEMM's packed path, where -O2 packs the weights once before the loop
# over images (the reference build packs them for every image), and with at most 128 weight
# rows per group unfolds the image as it packs it (an implicit GEMM, forward only): N = 144
# in two groups, implicit; N = 171, implicit, strided, dilated and padded unevenly; N = 49
# computed as C' = op(B)' op(A)' (the weights then are the micro-kernel's B), 190 rows
# (channels that fill no whole vectors of 16: not the direct kernels of the cases below).
PACKED = [
    conv(3, 128, 96, (3, 3), (1, 1), (12, 12), group=2),
    conv(2, 64, 32, (3, 5), (1, 2), (20, 23), stride=(2, 1), dilation=2),
    conv(2, 120, 190, (3, 3), (1, 1), (7, 7)),
]


@pytest.mark.parametrize(
    ("case", "expected"),
    # which operand each GEMM of the convolution (forward; weight and input gradients) has
    # packed before the loop: A, or B where it computes C'; the weight gradient's operands
    # change with every image, and the small input-gradient GEMM of N=144 packs nothing
    [
        (PACKED[0], [["A"], [None, None]]),
        (PACKED[1], [["A"], [None, None]]),
        (PACKED[2], [["B"], [None, "A"]]),
    ],
    ids=["N=144", "N=171", "N=49"],
)
def test_weights_packed_before_the_images_agree_with_numpy(
    tmp_path: Path, case: dict, expected: list
) -> None:
    _check(tmp_path, case)
    kgraph, algorithm = _optimised(tmp_path)
    sides = [[p.attrs["plan"]["prepack"] for k in s.kernels() for p in k.parts() if p.prim == "gemm"]
             for s in kgraph.forward + kgraph.backward if s.layer == "conv"]  # fmt: skip
    assert sides == expected
    assert algorithm == ("implicit_gemm" if case["o"] // case["group"] <= 128 else "im2col_gemm")


# Dense, stride 1, at least 16 input channels, at most 64 output channels, rows of 16, 24
# or 32 outputs, and not the channel blocks below: -O2 runs the forward directly with a
# block of channels' rows in registers (and the weight gradient directly, below). 20
# channels make blocks whose last one is partial; uneven padding, a 1-wide kernel and 64
# channels.
DIRECT_FORWARD = [
    conv(2, 16, 20, (3, 3), (1, 1), (5, 16)),
    conv(3, 17, 7, (2, 5), (0, 2), (4, 32)),
    conv(1, 32, 64, (3, 1), (2, 0), (3, 24)),
]


@pytest.mark.parametrize("case", DIRECT_FORWARD, ids=["partial_block", "wide_row", "64_rows"])
def test_direct_forward_agrees_with_numpy(tmp_path: Path, case: dict) -> None:
    _check(tmp_path, case)
    assert _optimised(tmp_path)[1].startswith("direct_forward+direct_filter")


# Dense, stride 1, at least 3 input channels, at most 128 output channels, not 1x1: -O2
# computes the weight gradient directly, whatever the forward does. 33 channels: a partial
# vector of channels; 11 images of 4x30x30: each thread's images in several chunks, and a
# 4x3 kernel's rows in one block; 100 channels of a 2x7 kernel: several blocks of channels,
# and padding wider than the image; a single image.
DIRECT_FILTER = [
    conv(5, 3, 33, (5, 5), (2, 2), (9, 11)),
    conv(11, 4, 16, (4, 3), (1, 0), (30, 30)),
    conv(2, 5, 100, (2, 7), (0, 4), (6, 5)),
    conv(1, 8, 3, (3, 3), (1, 1), (7, 7)),
]


@pytest.mark.parametrize("case", DIRECT_FILTER, ids=["partial_vector", "chunks", "100_rows",
                                                    "one_image"])  # fmt: skip
def test_direct_weight_gradient_agrees_with_numpy(tmp_path: Path, case: dict) -> None:
    _check(tmp_path, case)
    assert "+direct_filter" in _optimised(tmp_path)[1]


# Dense, stride 1, output channels in whole vectors of 16, rows at most 16 wide or at most
# 16 input channels: -O2 runs the forward as blocks of positions by channels, and the input
# gradient likewise where input and output are the same size and the input's channels fill
# whole vectors. 48 channels: a partial block of channels; 13 wide: a partial block of
# positions; 5 input channels 40 wide; a single image (both threads copy it).
DIRECT_CHANNELS = [
    (conv(2, 16, 48, (5, 3), (2, 1), (7, 13)), "direct_channels+direct_filter+direct_data"),
    (conv(3, 5, 32, (3, 5), (1, 2), (4, 40)), "direct_channels+direct_filter"),
    (conv(1, 32, 16, (3, 3), (1, 1), (5, 16)), "direct_channels+direct_filter+direct_data"),
]


@pytest.mark.parametrize(("case", "algorithm"), DIRECT_CHANNELS,
                         ids=["partial_blocks", "few_channels", "one_image"])  # fmt: skip
def test_channel_blocks_agree_with_numpy(tmp_path: Path, case: dict, algorithm: str) -> None:
    _check(tmp_path, case)
    assert _optimised(tmp_path)[1] == algorithm


@pytest.mark.parametrize("isa", [0, 1])
@pytest.mark.parametrize("case", [DIRECT_FORWARD[0], DIRECT_CHANNELS[0][0]],
                         ids=["rows", "channels"])  # fmt: skip
def test_direct_kernels_on_other_instruction_sets(tmp_path: Path, case: dict, isa: int) -> None:
    """The plain C kernels and the 16-byte-vector ones, built here by forcing them, compute
    what this machine's build does: the blocked direct forwards and gradients."""
    net = _net(tmp_path, case, 2)
    copy = tmp_path / f"isa{isa}"
    shutil.copytree(net.artifact.path, copy)
    command = [c_compiler(), *net.artifact.manifest.compiler_flags,
               f"-DCAFFEC_GEMM_ISA={isa}", "kernels.c", "-o", "kernels.so", "-lm"]  # fmt: skip
    subprocess.run(command, cwd=copy, check=True)
    other = CompiledNet(copy)
    for a, b in zip(net.params["conv"], other.params["conv"], strict=True):
        b.data[...] = a.data
    rng = np.random.default_rng(3)
    x, dy = (rng.standard_normal(net.blobs[name].shape) for name in ("x", "y"))
    for each in (net, other):
        each.forward(x=x)
        each.clear_param_diffs()
        each.backward(y=dy)
    np.testing.assert_allclose(other.blobs["y"].data, net.blobs["y"].data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(other.blobs["x"].diff, net.blobs["x"].diff, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(other.params["conv"][0].diff, net.params["conv"][0].diff,
                               rtol=1e-5, atol=1e-4)  # fmt: skip


def _optimised(tmp_path: Path) -> tuple[Any, str]:
    """The kernel graph of the -O2 net :func:`_check` wrote, and its convolution's algorithm."""
    options = Options(opt_level=2)
    kgraph = build_kernel_graph(load_layer_graph(tmp_path / "O2" / "net.prototxt", options),
                                options)  # fmt: skip
    return kgraph, next(layer["algorithm"] for layer in kgraph.layers if layer["name"] == "conv")


def _check(tmp_path: Path, case: dict) -> None:
    """Both builds against numpy, forward and backward."""
    optimised, reference = _net(tmp_path, case, 2), _net(tmp_path, case, 0)
    for a, b in zip(optimised.params["conv"], reference.params["conv"], strict=True):
        b.data[...] = a.data
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case["n"], case["c"], *case["hw"])).astype(np.float32)
    w, bias = (p.data for p in optimised.params["conv"])
    geometry = {"stride": case["stride"], "pad": case["pad"], "dilation": case["dilation"],
                "group": case["group"]}  # fmt: skip
    before_relu = R.convolution(x, w, bias, **geometry)[0]
    dy = rng.standard_normal(before_relu.shape).astype(np.float32)
    expected = [np.maximum(before_relu, 0),
                *R.convolution_grad(x, w, dy * (before_relu > 0), **geometry)]  # fmt: skip
    for net in (optimised, reference):
        y = net.forward(x=x)["y"].copy()
        net.clear_param_diffs()
        dx = net.backward(y=dy)["x"].copy()
        got = [y, dx, *(p.diff for p in net.params["conv"])]
        for name, value, want in zip(("y", "dx", "dw", "db"), got, expected, strict=True):
            scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-3)
            np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
