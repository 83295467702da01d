"""MAX pooling's gradient in the C target: the argmax found again in the input (-O2) against
the mask kept from forward (-O0) and against Caffe's rule in numpy, bit for bit.

At stride 1 the -O2 kernel routes the gradients by selects over padded copies of the plane
(templates/c/pool_grad.c.j2) instead of scattering them; each input must still take its
windows' gradients in the order of the outputs, ties (one input the maximum of several
windows) included, so that its sum is the scatter's to the last bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of
from caffec.frontend.loader import parse_net
from caffec.runtime.compiled_net import CompiledNet

NET = """
name: "pool_grad"
force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}
{second}
"""
# a second pooling of the same input, whose gradient the first one's is added to
SECOND = """layer { name: "other" type: "Pooling" bottom: "data" top: "other"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }"""


def _net(shape: tuple[int, ...], kernel: int, stride: int, pad: int, second: bool,
         level: int, out: Path) -> CompiledNet:  # fmt: skip
    text = NET.format(dims=" ".join(f"dim: {d}" for d in shape), kernel=kernel, stride=stride,
                      pad=pad, second=SECOND if second else "")  # fmt: skip
    net, spans = parse_net(text, "pool_grad.prototxt")
    options = Options(phase="TRAIN", backward=True, opt_level=level)
    return CompiledNet(write_artifact(build_kernel_graph(layer_graph_of(net, spans, options),
                                                         options), out))  # fmt: skip


def _reference(x: np.ndarray, g: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Caffe's MAX gradient: each output's gradient added, in output order, to the first
    maximum of its window (rows in order, columns in order), in float32."""
    dx = np.zeros_like(x)
    height, width = x.shape[2:]
    for n, c, oh, ow in np.ndindex(g.shape):
        h0, w0 = oh * stride - pad, ow * stride - pad
        rows = range(max(h0, 0), min(h0 + kernel, height))
        cols = range(max(w0, 0), min(w0 + kernel, width))
        best, where = -np.finfo(np.float32).max, None
        for h in rows:
            for w in cols:
                if x[n, c, h, w] > best:
                    best, where = x[n, c, h, w], (h, w)
        if where is not None:
            dx[n, c, where[0], where[1]] += g[n, c, oh, ow]
    return dx


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "pad", "selects"),
    [
        ((2, 3, 28, 28), 3, 1, 1, True),  # GoogLeNet's inception pooling, rows of 28
        ((2, 2, 7, 7), 3, 1, 1, True),  # shorter than a vector
        ((1, 2, 9, 33), 5, 1, 2, True),  # wider than two vectors, a wide window
        ((1, 2, 6, 17), 2, 1, 0, True),  # no padding, windows past the last column
        ((1, 1, 20, 20), 3, 2, 1, False),  # strided: the scatter
        ((1, 1, 130, 130), 3, 1, 1, False),  # a plane too large for the stack: the scatter
    ],
)
@pytest.mark.parametrize("second", [False, True])
def test_max_gradient_is_the_scatter_bit_for_bit(
    tmp_path: Path, shape: tuple[int, ...], kernel: int, stride: int, pad: int, selects: bool,
    second: bool,
) -> None:  # fmt: skip
    rng = np.random.default_rng(sum(shape) + kernel + pad)
    # few distinct values: many windows share their maximum, and many windows tie
    x = rng.integers(0, 4, shape).astype(np.float32)
    nets = [_net(shape, kernel, stride, pad, second, level, tmp_path / str(level))
            for level in (0, 2)]  # fmt: skip
    source = (tmp_path / "2" / "kernels.c").read_text()
    assert ("as the windows see them" in source) == selects
    g = rng.standard_normal(nets[0].blobs["pool"].data.shape).astype(np.float32)
    grads = []
    for net in nets:
        net.blobs["data"].data[...] = x
        net.forward()
        tops = {"pool": g}
        if second:
            tops["other"] = np.ones(net.blobs["other"].data.shape, np.float32)
        grads.append(net.backward(**tops)["data"].copy())
    expected = _reference(x, g, kernel, stride, pad)
    if second:
        expected += _reference(x, np.ones_like(nets[0].blobs["other"].data), 2, 2, 0)
        np.testing.assert_array_equal(grads[1], grads[0])
    else:
        np.testing.assert_array_equal(grads[0].view(np.uint32), expected.view(np.uint32))
        np.testing.assert_array_equal(grads[1].view(np.uint32), expected.view(np.uint32))


def test_levels_agree_on_random_inputs(tmp_path: Path) -> None:
    """Continuous inputs (no ties), a batch whose planes spread over the threads."""
    shape = (4, 5, 14, 14)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    nets = [_net(shape, 3, 1, 1, False, level, tmp_path / str(level)) for level in (0, 2)]
    g = rng.standard_normal(nets[0].blobs["pool"].data.shape).astype(np.float32)
    grads = []
    for net in nets:
        net.blobs["data"].data[...] = x
        net.forward()
        grads.append(net.backward(pool=g)["data"].copy())
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_array_equal(grads[1], _reference(x, g, 3, 1, 1))
