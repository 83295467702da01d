"""Pooling's corners (the fork's ceil_mode, Caffe 1.0's STOCHASTIC pooling and SPP) and the
forks' resizing layers (Upsample, Interp): forwards against numpy references written here (or
tests/reference.py's pooling), backwards by finite differences, in float64."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import reference as R
from conftest import graph_from_text
from gradcheck import check_gradients, input_layers, one_layer_net, run_case

import caffec
from caffec.errors import UserError

FLT_MIN = float(np.finfo(np.float32).tiny)


def pooling(params: str, tops: str = 'top: "y"') -> str:
    return f'layer {{ name: "x" type: "Pooling" bottom: "a" {tops} pooling_param {{ {params} }} }}'


def refused(tmp_path: Path, layer: str, shape: tuple, match: str) -> UserError:
    """The error compiling a one-layer net stops with (it names the layer)."""
    with pytest.raises(UserError, match=match) as info:
        one_layer_net(tmp_path, layer, {"a": shape})
    assert "layer 'x'" in str(info.value)
    return info.value


# --- ceil_mode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "fields", "rounding"),
    [("MAX", "", "CEIL"), ("MAX", "ceil_mode: false", "FLOOR"), ("MAX", "ceil_mode: true", "CEIL"),
     ("AVE", "ceil_mode: false", "FLOOR"), ("AVE", "round_mode: FLOOR ceil_mode: false", "FLOOR"),
     ("AVE", "round_mode: CEIL ceil_mode: true", "CEIL"), ("AVE", "round_mode: FLOOR", "FLOOR")],
)  # fmt: skip
def test_ceil_mode_rounds_the_output_size(
    tmp_path: Path, method: str, fields: str, rounding: str
) -> None:
    # 8x6 with window 3, stride 2, pad 1 pools to 5x4 rounded up and 4x3 rounded down
    layer = pooling(f"pool: {method} kernel_size: 3 stride: 2 pad: 1 {fields}")
    net, feed, out, rng = run_case(tmp_path, layer, {"a": (2, 2, 8, 6)}, ["y"])
    expected = R.pooling(feed["a"], method=method, kernel=3, stride=2, pad=1, round_mode=rounding)
    assert out["y"].shape == ((2, 2, 5, 4) if rounding == "CEIL" else (2, 2, 4, 3))
    np.testing.assert_allclose(out["y"], expected[0], rtol=1e-12)
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize("fields", ["round_mode: CEIL ceil_mode: false",
                                    "round_mode: FLOOR ceil_mode: true"])  # fmt: skip
def test_contradicting_round_mode_and_ceil_mode_are_refused(tmp_path: Path, fields: str) -> None:
    error = refused(tmp_path, pooling(f"pool: MAX kernel_size: 2 {fields}"), (1, 1, 4, 4),
                    "contradicts round_mode")  # fmt: skip
    assert "ceil_mode: false is round_mode: FLOOR" in (error.hint or "")


def densenet121(ceil_mode: bool) -> str:
    """DenseNet-121 as the public DenseNet-Caffe deploy files write it: a 7x7/2 convolution
    and a 3x3/2 MAX pooling, dense blocks of 6, 12, 24 and 16 layers (BN, Scale, ReLU, 1x1
    convolution to 128 channels, BN, Scale, ReLU, 3x3 convolution to 32, Concat), 2x2/2 AVE
    transitions halving the channels, a global pooling and a 1x1 convolution as classifier:
    121 convolutions."""
    rounding = "" if ceil_mode else " ceil_mode: false"
    lines = [input_layers({"data": (1, 3, 224, 224)})]

    def conv(name: str, bottom: str, outputs: int, kernel: int, stride: int = 1) -> None:
        lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" '
                     f'top: "{name}" convolution_param {{ num_output: {outputs} '
                     f"kernel_size: {kernel} stride: {stride} pad: {kernel // 2} "
                     "bias_term: false } }")  # fmt: skip

    def bn_relu(name: str, bottom: str) -> str:
        lines.append(f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{bottom}" '
                     f'top: "{name}/bn" }}\n'
                     f'layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}/bn" '
                     f'top: "{name}/bn" scale_param {{ bias_term: true }} }}\n'
                     f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}/bn" '
                     f'top: "{name}/bn" }}')  # fmt: skip
        return f"{name}/bn"

    def pool(name: str, bottom: str, params: str) -> None:
        lines.append(f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
                     f"pooling_param {{ {params} }} }}")  # fmt: skip

    conv("conv1", "data", 64, 7, 2)
    pool("pool1", bn_relu("conv1", "conv1"), f"pool: MAX kernel_size: 3 stride: 2 pad: 1{rounding}")
    blob, channels = "pool1", 64
    for stage, depth in zip(range(2, 6), (6, 12, 24, 16), strict=True):
        for i in range(1, depth + 1):
            name = f"conv{stage}_{i}"
            conv(f"{name}/x1", bn_relu(f"{name}/x1", blob), 128, 1)
            conv(f"{name}/x2", bn_relu(f"{name}/x2", f"{name}/x1"), 32, 3)
            lines.append(f'layer {{ name: "concat_{stage}_{i}" type: "Concat" bottom: "{blob}" '
                         f'bottom: "{name}/x2" top: "concat_{stage}_{i}" }}')  # fmt: skip
            blob, channels = f"concat_{stage}_{i}", channels + 32
        if stage < 5:
            channels //= 2
            conv(f"conv{stage}_blk", bn_relu(f"conv{stage}_blk", blob), channels, 1)
            pool(
                f"pool{stage}", f"conv{stage}_blk", f"pool: AVE kernel_size: 2 stride: 2{rounding}"
            )
            blob = f"pool{stage}"
    pool("pool5", bn_relu("conv5_blk", blob), "pool: AVE global_pooling: true")
    conv("fc6", "pool5", 1000, 1)
    return "\n".join(lines) + "\n"


def test_densenet121_pools_to_56_28_14_7() -> None:
    graph = graph_from_text(densenet121(ceil_mode=False))
    assert sum(op.type == "Convolution" for op in graph.ops) == 121
    shapes = {name: graph.op(name).tops[0].shape for name in
              ("pool1", "pool2", "pool3", "pool4", "concat_5_16", "fc6")}  # fmt: skip
    assert shapes == {"pool1": (1, 64, 56, 56), "pool2": (1, 128, 28, 28),
                      "pool3": (1, 256, 14, 14), "pool4": (1, 512, 7, 7),
                      "concat_5_16": (1, 1024, 7, 7), "fc6": (1, 1000, 1, 1)}  # fmt: skip
    # Caffe's rounding up would make the stem's 112 pool to 57, and the stages 29, 15, 8
    rounded_up = graph_from_text(densenet121(ceil_mode=True))
    assert [rounded_up.op(f"pool{i}").tops[0].shape[2] for i in range(1, 5)] == [57, 29, 15, 8]


def test_densenet_stem_and_transition_against_numpy(tmp_path: Path) -> None:
    """The stem (convolution 7x7/2, BN, Scale, ReLU, MAX 3x3/2 rounding down) and a
    transition (BN, Scale, ReLU, 1x1 convolution, AVE 2x2/2 rounding down) at batch 2, on a
    36x36 input where rounding down pools 18 to 9 (not 10) and 9 to 4 (not 5)."""
    stem = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 7 stride: 2 pad: 3 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "pool1" top: "bn2" }
layer { name: "scale2" type: "Scale" bottom: "bn2" top: "bn2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "bn2" top: "bn2" }
layer { name: "conv2" type: "Convolution" bottom: "bn2" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 ceil_mode: false } }
"""
    path = tmp_path / "stem.prototxt"
    path.write_text(input_layers({"data": (2, 3, 36, 36)}) + stem)
    net = caffec.Net(str(path), caffec.TEST, dtype="float64")
    rng = np.random.default_rng(3)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.uniform(0.5, 1.5, blob.shape)  # variances and factor positive
    data = rng.standard_normal((2, 3, 36, 36))
    out = net.forward(blobs=["pool1"], data=data)

    def bn_scale_relu(x: np.ndarray, bn: str, scale: str) -> np.ndarray:
        mean, var, factor = (np.array(b.data) for b in net.params[bn])
        y = R.batch_norm(x, mean, var, factor, use_global_stats=True)[0]
        gamma, beta = (np.array(b.data) for b in net.params[scale])
        return np.maximum(R.scale(y, gamma, beta)[0], 0)

    conv1 = bn_scale_relu(R.convolution(data, net.params["conv1"][0].data, stride=2, pad=3)[0],
                          "bn1", "scale1")  # fmt: skip
    pool1 = R.pooling(conv1, method="MAX", kernel=3, stride=2, pad=1, round_mode="FLOOR")[0]
    conv2 = R.convolution(bn_scale_relu(pool1, "bn2", "scale2"), net.params["conv2"][0].data)[0]
    pool2 = R.pooling(conv2, method="AVE", kernel=2, stride=2, round_mode="FLOOR")[0]
    assert pool1.shape == (2, 4, 9, 9) and pool2.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(out["pool1"], pool1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["pool2"], pool2, rtol=1e-10, atol=1e-12)


# --- STOCHASTIC -----------------------------------------------------------------------------


def stochastic_test_reference(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Caffe's TEST-phase STOCHASTIC pooling: sum(x^2) / (FLT_MIN + sum(x)) over each window,
    which starts at a multiple of the stride (no padding) and is cut at the image's end."""
    n, c, h, w = x.shape
    oh, ow = (R.pooled_extent(h, kernel, stride, 0), R.pooled_extent(w, kernel, stride, 0))
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * stride : i * stride + kernel, j * stride : j * stride + kernel]
            y[:, :, i, j] = (window**2).sum(axis=(2, 3)) / (FLT_MIN + window.sum(axis=(2, 3)))
    return y


@pytest.mark.parametrize(("kernel", "stride", "shape"),
                         [(2, 1, (2, 3, 4, 5)), (3, 2, (1, 2, 6, 7)), (2, 2, (2, 1, 4, 4))])  # fmt: skip
def test_stochastic_test_phase_weights_windows_by_their_values(
    tmp_path: Path, kernel: int, stride: int, shape: tuple
) -> None:
    rng = np.random.default_rng(kernel)
    x = rng.uniform(0.1, 2.0, shape)
    x[0, 0, :2, :2] = 0.0  # a window of zeros pools to 0
    layer = pooling(f"pool: STOCHASTIC kernel_size: {kernel} stride: {stride}")
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"], inputs={"a": x})
    np.testing.assert_allclose(out["y"], stochastic_test_reference(x, kernel, stride), rtol=1e-12)
    if stride == 2 and kernel == 2:
        assert out["y"][0, 0, 0, 0] == 0.0
    else:  # finite differences away from the all-zero window, where the quotient has a kink
        check_gradients(net, {"a": rng.uniform(0.1, 2.0, shape)}, ["y"], rng)


def sampled(net: caffec.Net, x: np.ndarray, iteration: int) -> np.ndarray:
    """One TRAIN forward's outputs with the random numbers of ``iteration``."""
    net._exec.counter[1] = iteration
    return np.array(net.forward(a=x)["y"])


def test_stochastic_train_samples_in_proportion_to_the_values(tmp_path: Path) -> None:
    # 500 planes of one 2x2 window [0, 1; 2, 5] and a window [6; 4] cut at the edge, drawn 8
    # times: 4000 draws each, so each frequency lies within 0.03 of its probability (3.8
    # standard errors at worst)
    plane = np.array([[0.0, 1.0, 6.0], [2.0, 5.0, 4.0]])
    x = np.broadcast_to(plane, (2, 250, 2, 3)).copy()
    net = one_layer_net(tmp_path, pooling("pool: STOCHASTIC kernel_size: 2 stride: 2"),
                        {"a": x.shape}, phase=caffec.TRAIN)  # fmt: skip
    draws = np.concatenate([sampled(net, x, iteration).reshape(-1, 2) for iteration in range(8)])
    first, cut = draws[:, 0], draws[:, 1]
    for values, drawn in (([1.0, 2.0, 5.0], first), ([6.0, 4.0], cut)):
        assert set(np.unique(drawn)) <= set(values), "a sample is not an element of its window"
        for value in values:
            assert abs(np.mean(drawn == value) - value / sum(values)) < 0.03, (value, values)
    assert not np.any(first == 0.0), "an element of value 0 has probability 0"


def test_stochastic_train_is_repeatable_within_an_iteration_and_varies_across(
    tmp_path: Path,
) -> None:
    x = np.random.default_rng(0).uniform(0.5, 1.5, (2, 3, 6, 6))
    net = one_layer_net(tmp_path, pooling("pool: STOCHASTIC kernel_size: 3 stride: 3"),
                        {"a": x.shape}, phase=caffec.TRAIN)  # fmt: skip
    np.testing.assert_array_equal(sampled(net, x, 4), sampled(net, x, 4))
    assert np.mean(sampled(net, x, 4) != sampled(net, x, 5)) > 0.5


def test_stochastic_train_gradient_goes_to_the_sampled_elements(tmp_path: Path) -> None:
    """Overlapping windows (3x3, stride 1) of distinct values: each output names the element
    it took, and backward adds its gradient there (and only there)."""
    rng = np.random.default_rng(1)
    shape = (2, 2, 5, 6)
    x = rng.permutation(np.prod(shape)).reshape(shape) / 10.0 + 0.5  # distinct, positive
    net = one_layer_net(tmp_path, pooling("pool: STOCHASTIC kernel_size: 3 stride: 1"),
                        {"a": shape}, phase=caffec.TRAIN)  # fmt: skip
    y = sampled(net, x, 9)
    dy = rng.standard_normal(y.shape)
    dx = net.backward(y=dy)["a"]
    expected = np.zeros(shape)
    for n, c, i, j in np.ndindex(y.shape):
        window = x[n, c, i : i + 3, j : j + 3]
        [(h, w)] = np.argwhere(window == y[n, c, i, j])
        expected[n, c, i + h, j + w] += dy[n, c, i, j]
    np.testing.assert_allclose(dx, expected, rtol=1e-12)
    check_gradients(net, {"a": x}, ["y"], rng)  # the samples do not move under small changes


@pytest.mark.parametrize(("params", "match"), [
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "padding works only with MAX and AVE"),
    ("pool: AVE kernel_size: 3 pad: 3", r"pad \(3, 3\) must be smaller than the kernel"),
])  # fmt: skip
def test_bad_pooling_fields_are_refused(tmp_path: Path, params: str, match: str) -> None:
    refused(tmp_path, pooling(params), (1, 1, 5, 5), match)


def test_only_max_pooling_has_a_mask_top(tmp_path: Path) -> None:
    refused(tmp_path, pooling("pool: STOCHASTIC kernel_size: 2", 'top: "y" top: "m"'),
            (1, 1, 4, 4), "only MAX pooling has a second top")  # fmt: skip


# --- SPP ------------------------------------------------------------------------------------


def spp_reference(x: np.ndarray, height: int, method: str) -> np.ndarray:
    """Level l pools into 2^l bins a side: kernel ceil(size / bins), stride the kernel, and
    the padding (kernel * bins - size + 1) // 2; levels flattened per image and joined."""
    levels = []
    for level in range(height):
        bins = 2**level
        kernel = [math.ceil(size / bins) for size in x.shape[2:]]
        pad = [(k * bins - size + 1) // 2 for k, size in zip(kernel, x.shape[2:], strict=True)]
        levels.append(R.pooling(x, method=method, kernel=kernel, stride=kernel, pad=pad)[0])
    if height == 1:
        return levels[0]
    return np.concatenate([y.reshape(len(x), -1) for y in levels], axis=1)


@pytest.mark.parametrize(("height", "method", "shape", "top"), [
    (3, "MAX", (2, 3, 8, 7), (2, 3 * 21)),
    (2, "AVE", (1, 2, 5, 6), (1, 2 * 5)),
    (4, "MAX", (1, 1, 16, 16), (1, 85)),
    (1, "AVE", (2, 2, 3, 5), (2, 2, 1, 1)),  # one level: the pooling's 4-D top, as in Caffe
])  # fmt: skip
def test_spp_pools_every_level_and_joins_them(
    tmp_path: Path, height: int, method: str, shape: tuple, top: tuple
) -> None:
    layer = (f'layer {{ name: "x" type: "SPP" bottom: "a" top: "y" '
             f"spp_param {{ pyramid_height: {height} pool: {method} }} }}")  # fmt: skip
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    assert out["y"].shape == top
    np.testing.assert_allclose(out["y"], spp_reference(feed["a"], height, method), rtol=1e-12)
    check_gradients(net, feed, ["y"], rng)


def test_spp_stochastic_test_phase(tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(0.2, 1.0, (2, 2, 4, 4))
    layer = ('layer { name: "x" type: "SPP" bottom: "a" top: "y" '
             "spp_param { pyramid_height: 2 pool: STOCHASTIC } }")  # fmt: skip
    net, feed, out, rng = run_case(tmp_path, layer, {"a": x.shape}, ["y"], inputs={"a": x})
    expected = [stochastic_test_reference(x, 4, 4), stochastic_test_reference(x, 2, 2)]
    np.testing.assert_allclose(out["y"], np.concatenate([e.reshape(2, -1) for e in expected], 1),
                               rtol=1e-12)  # fmt: skip
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(("params", "shape", "match"), [
    ("", (1, 1, 8, 8), "pyramid_height must be at least 1"),
    ("pyramid_height: 3", (1, 1, 3, 8), r"pyramid level 2 \(4x4 bins of 1x1x3x8\): pad"),
    ("pyramid_height: 2 pool: STOCHASTIC", (1, 1, 5, 4), "padding works only with MAX and AVE"),
])  # fmt: skip
def test_bad_spp_fields_are_refused(tmp_path: Path, params: str, shape: tuple, match: str) -> None:
    layer = f'layer {{ name: "x" type: "SPP" bottom: "a" top: "y" spp_param {{ {params} }} }}'
    refused(tmp_path, layer, shape, match)


# --- Upsample -------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "scale"), [("upsample_param { scale: 2 }", 2),
                                               ("upsample_param { scale: 3 }", 3), ("", 1)])  # fmt: skip
def test_upsample_repeats_each_pixel(tmp_path: Path, params: str, scale: int) -> None:
    layer = f'layer {{ name: "x" type: "Upsample" bottom: "a" top: "y" {params} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": (2, 3, 3, 4)}, ["y"])
    expected = feed["a"].repeat(scale, axis=2).repeat(scale, axis=3)
    np.testing.assert_array_equal(out["y"], expected)
    check_gradients(net, feed, ["y"], rng)


def test_upsample_scale_below_one_is_refused(tmp_path: Path) -> None:
    layer = 'layer { name: "x" type: "Upsample" bottom: "a" top: "y" upsample_param { scale: 0 } }'
    refused(tmp_path, layer, (1, 1, 2, 2), "scale must be at least 1")


# --- Interp ---------------------------------------------------------------------------------


def interp_reference(x: np.ndarray, out: tuple[int, int], pad_beg: int, pad_end: int) -> np.ndarray:
    """DeepLab's caffe_cpu_interp2 over the input cropped by -pad_beg and -pad_end: output
    pixel (r, q) samples the cropped input at (r * rh, q * rw), rh = (in - 1) / (out - 1) in
    single precision (0 for one output), the products in single precision too, bilinearly
    between the pixel at the position's integer part and the next (the same at the end)."""
    crop = x[:, :, -pad_beg : x.shape[2] + pad_end, -pad_beg : x.shape[3] + pad_end]

    def taps(size: int, count: int) -> list[tuple[int, int, float]]:
        ratio = np.float32(size - 1) / np.float32(count - 1) if count > 1 else np.float32(0)
        found = []
        for r in range(count):
            position = np.float32(ratio * np.float32(r))
            low = int(position)
            found.append((low, low + 1 if low < size - 1 else low, float(position - low)))
        return found

    y = np.zeros((*x.shape[:2], *out))
    for r, (top, bottom, down) in enumerate(taps(crop.shape[2], out[0])):
        for q, (left, right, across) in enumerate(taps(crop.shape[3], out[1])):
            y[:, :, r, q] = ((1 - down) * ((1 - across) * crop[:, :, top, left]
                                           + across * crop[:, :, top, right])
                             + down * ((1 - across) * crop[:, :, bottom, left]
                                       + across * crop[:, :, bottom, right]))  # fmt: skip
    return y


@pytest.mark.parametrize(("params", "shape", "out"), [
    ("zoom_factor: 2", (2, 3, 4, 5), (7, 9)),
    ("zoom_factor: 8", (1, 2, 3, 3), (17, 17)),
    ("shrink_factor: 2", (1, 2, 7, 6), (4, 3)),
    ("shrink_factor: 2 zoom_factor: 3", (1, 2, 7, 6), (10, 7)),
    ("height: 7 width: 3", (2, 2, 4, 6), (7, 3)),
    ("height: 4 width: 6", (1, 2, 4, 6), (4, 6)),  # the same size: a copy
    ("height: 1 width: 1", (1, 2, 4, 6), (1, 1)),  # one output: the first pixel
    ("zoom_factor: 3 pad_beg: -1 pad_end: -2", (1, 2, 6, 7), (7, 10)),
    ("height: 5 width: 5 zoom_factor: 2", (1, 1, 3, 4), (5, 7)),  # a factor wins, as in Caffe
])  # fmt: skip
def test_interp_resizes_bilinearly_with_the_corners_aligned(
    tmp_path: Path, params: str, shape: tuple, out: tuple
) -> None:
    layer = f'layer {{ name: "x" type: "Interp" bottom: "a" top: "y" interp_param {{ {params} }} }}'
    net, feed, found, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    fields = dict(zip(params.split()[::2], params.split()[1::2], strict=True))
    pads = (int(fields.get("pad_beg:", 0)), int(fields.get("pad_end:", 0)))
    expected = interp_reference(feed["a"], out, *pads)
    assert found["y"].shape == expected.shape
    # Caffe rounds the sampling positions to single precision; caffec keeps the products exact
    np.testing.assert_allclose(found["y"], expected, rtol=1e-6, atol=1e-6)
    check_gradients(net, feed, ["y"], rng)


def test_interp_in_single_precision_matches_caffe(tmp_path: Path) -> None:
    layer = (
        'layer { name: "x" type: "Interp" bottom: "a" top: "y" interp_param { zoom_factor: 7 } }'  # noqa: E501
    )
    x = np.random.default_rng(5).standard_normal((1, 3, 5, 6)).astype(np.float32)
    net = one_layer_net(tmp_path, layer, {"a": x.shape}, dtype="float32")
    np.testing.assert_allclose(net.forward(a=x)["y"], interp_reference(x, (29, 36), 0, 0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(("params", "match"), [
    ("", "Interp needs the output's size"),
    ("height: 5", "Interp needs the output's size"),
    ("zoom_factor: 0", "zoom_factor must be at least 1"),
    ("shrink_factor: -1", "shrink_factor must be at least 1"),
    ("zoom_factor: 2 pad_beg: 1", "must not be positive"),
    ("zoom_factor: 2 pad_beg: -2 pad_end: -2", "leaves nothing of the 4x6 input"),
    ("height: 0 width: 3", "height and width must be positive"),
])  # fmt: skip
def test_bad_interp_fields_are_refused(tmp_path: Path, params: str, match: str) -> None:
    layer = f'layer {{ name: "x" type: "Interp" bottom: "a" top: "y" interp_param {{ {params} }} }}'
    refused(tmp_path, layer, (1, 1, 4, 6), match)
