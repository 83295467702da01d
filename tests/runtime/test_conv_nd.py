"""Convolution and Deconvolution beyond one 2-D bottom over axis 1: several bottoms through
the same weights (a repeated one too), 1-D, 3-D and 4-D convolutions (Caffe's im2col_nd),
a channel axis other than 1, and ``force_nd_im2col``.

Forward against numpy references written here (a sum over the kernel's taps of strided
windows of the padded input; Deconvolution as a scatter of each input into a padded output),
gradients by finite differences, both in float64 at -O0 and -O2; the CUDA target on the
emulated GPU against the C target; and the errors for settings Caffe refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from cuda_emulator import EmulatedDevice
from gradcheck import check_gradients, input_layers, one_layer_net, randomize_params
from nets import same_params

import caffec
from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.errors import UserError
from caffec.frontend.loader import parse_net
from caffec.runtime.compiled_net import CompiledNet


@dataclass(frozen=True)
class Conv:
    """One layer "x" under test: its type, the bottom shape, the geometry per spatial axis,
    and the bottoms it reads (the blob "a", or "a", "b", ... of that shape; a name may
    repeat). Each field is written once when all its axes agree, else once per axis."""

    type: str
    shape: tuple[int, ...]
    num_output: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    pad: tuple[int, ...] | None = None
    dilation: tuple[int, ...] | None = None
    group: int = 1
    axis: int = 1
    bias: bool = True
    bottoms: tuple[str, ...] = ("a",)
    extra: str = ""
    id: str = field(default="", compare=False)

    @property
    def spatial(self) -> int:
        return len(self.kernel)

    def per_axis(self, values: tuple[int, ...] | None, default: int) -> tuple[int, ...]:
        return values if values is not None else (default,) * self.spatial

    def layer(self) -> str:
        fields = [f"num_output: {self.num_output}", f"group: {self.group}", f"axis: {self.axis}",
                  f"bias_term: {str(self.bias).lower()}", self.extra]  # fmt: skip
        for name, values in (("kernel_size", self.kernel), ("stride", self.stride),
                             ("pad", self.pad), ("dilation", self.dilation)):  # fmt: skip
            if values is not None:
                written = values[:1] if len(set(values)) == 1 else values
                fields += [f"{name}: {v}" for v in written]
        wiring = " ".join(f'bottom: "{b}"' for b in self.bottoms)
        wiring += " " + " ".join(f'top: "y{i}"' for i in range(len(self.bottoms)))
        return (f'layer {{ name: "x" type: "{self.type}" {wiring} '
                f"convolution_param {{ {' '.join(fields)} }} }}")  # fmt: skip

    def inputs(self) -> dict[str, tuple[int, ...]]:
        return {name: self.shape for name in dict.fromkeys(self.bottoms)}

    def tops(self) -> list[str]:
        return [f"y{i}" for i in range(len(self.bottoms))]

    def reference(self, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
        w, b = params[0], params[1] if self.bias else None
        geometry = (self.axis % len(self.shape), self.per_axis(self.stride, 1),
                    self.per_axis(self.pad, 0), self.per_axis(self.dilation, 1),
                    self.group)  # fmt: skip
        run = convolve if self.type == "Convolution" else deconvolve
        return run(x, w, b, *geometry)


def _images(x: np.ndarray, axis: int) -> np.ndarray:
    """x as (images, channels, *spatial): every axis before the channel axis is an image."""
    return x.reshape((-1, *x.shape[axis:]))


def _taps(
    kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...],
    positions: tuple[int, ...],
) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:  # fmt: skip
    """For each kernel tap, the strided window of the padded image its outputs read."""
    for tap in np.ndindex(*kernel):
        axes = zip(tap, dilation, stride, positions, strict=True)
        yield tap, tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in axes)


def convolve(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, axis: int,
             stride: tuple[int, ...], pad: tuple[int, ...], dilation: tuple[int, ...],
             group: int) -> np.ndarray:  # fmt: skip
    """Caffe's convolution: per group, the weights times each tap's window, summed."""
    images = _images(x, axis)
    size, kernel = images.shape[2:], w.shape[2:]
    axes = zip(size, kernel, stride, pad, dilation, strict=True)
    out = tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1 for n, k, s, p, d in axes)
    padded = np.pad(images, [(0, 0), (0, 0), *((p, p) for p in pad)])
    m, cg = w.shape[0], w.shape[1]
    mg = m // group
    y = np.zeros((images.shape[0], m, *out))
    for tap, window in _taps(kernel, dilation, stride, out):
        patch = padded[(slice(None), slice(None), *window)]
        for g in range(group):
            taps = w[(slice(g * mg, (g + 1) * mg), slice(None), *tap)]
            y[:, g * mg : (g + 1) * mg] += np.einsum("mc,nc...->nm...", taps,
                                                     patch[:, g * cg : (g + 1) * cg])  # fmt: skip
    if b is not None:
        y += b.reshape((1, m) + (1,) * len(out))
    return y.reshape((*x.shape[:axis], m, *out))


def deconvolve(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, axis: int,
               stride: tuple[int, ...], pad: tuple[int, ...], dilation: tuple[int, ...],
               group: int) -> np.ndarray:  # fmt: skip
    """Caffe's deconvolution: each input times its weights added into a window of the padded
    output (per group), the padding then cut off."""
    images = _images(x, axis)
    size, kernel = images.shape[2:], w.shape[2:]
    full = tuple(s * (n - 1) + d * (k - 1) + 1
                 for n, k, s, d in zip(size, kernel, stride, dilation, strict=True))  # fmt: skip
    c, mg = w.shape[0], w.shape[1]
    cg = c // group
    y = np.zeros((images.shape[0], mg * group, *full))
    for tap, window in _taps(kernel, dilation, stride, size):
        for g in range(group):
            taps = w[(slice(g * cg, (g + 1) * cg), slice(None), *tap)]
            y[(slice(None), slice(g * mg, (g + 1) * mg), *window)] += np.einsum(
                "cm,nc...->nm...", taps, images[:, g * cg : (g + 1) * cg]
            )
    y = y[(slice(None), slice(None), *(slice(p, n - p) for p, n in zip(pad, full, strict=True)))]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * len(full))
    return y.reshape((*x.shape[:axis], *y.shape[1:]))


CASES = [
    Conv("Convolution", (2, 3, 4, 5, 6), 4, (3, 3, 3), pad=(1, 1, 1), id="3d"),
    Conv("Convolution", (2, 4, 5, 4, 6), 6, (3, 2, 2), stride=(2, 1, 1), pad=(1, 0, 1),
         dilation=(1, 2, 1), group=2, id="3d_per_axis_grouped"),
    Conv("Convolution", (2, 2, 3, 3, 3, 3), 3, (2, 2, 2, 2), stride=(1, 2, 1, 1), id="4d"),
    Conv("Convolution", (3, 2, 9), 3, (3,), stride=(2,), pad=(2,), dilation=(2,), id="1d"),
    Conv("Convolution", (2, 3, 4, 7), 2, (3,), axis=-2, id="1d_axis_-2"),
    Conv("Convolution", (2, 3, 2, 5, 5), 4, (3, 3), pad=(1, 0), axis=2, id="2d_axis_2"),
    Conv("Convolution", (2, 3, 3, 4, 2), 5, (1, 1, 1), bias=False, id="3d_pointwise"),
    Conv("Deconvolution", (2, 3, 3, 2, 4), 4, (2, 2, 2), stride=(2, 2, 2), id="3d"),
    Conv("Deconvolution", (2, 4, 3, 4, 2), 6, (3, 2, 2), stride=(2, 1, 2), pad=(1, 0, 1),
         dilation=(1, 2, 1), group=2, id="3d_per_axis_grouped"),
    Conv("Deconvolution", (2, 3, 5), 2, (3,), stride=(2,), pad=(1,), id="1d"),
    Conv("Convolution", (3, 6), 4, (), group=2, id="0d"),
    Conv("Deconvolution", (3, 4, 2), 6, (), group=2, axis=-1, bottoms=("a", "b"),
         id="0d_axis_-1_two_bottoms"),
    Conv("Convolution", (2, 3, 5, 5), 4, (3, 3), stride=(2, 2), bottoms=("a", "b"),
         id="two_bottoms"),
    Conv("Convolution", (2, 2, 4, 3, 5), 3, (2, 2, 3), pad=(0, 1, 1), bottoms=("a", "b", "c"),
         id="3d_three_bottoms"),
    Conv("Convolution", (2, 3, 5, 4), 4, (3, 3), pad=(1, 1), bottoms=("a", "a"),
         id="repeated_bottom"),
    Conv("Convolution", (2, 4, 5, 5), 4, (3, 3), pad=(1, 1), group=4, bottoms=("a", "b"),
         id="depthwise_two_bottoms"),
    Conv("Deconvolution", (2, 3, 4, 4), 2, (2, 2), stride=(2, 2), bottoms=("a", "b", "a"),
         id="three_bottoms_one_repeated"),
]  # fmt: skip


def _build(tmp_path: Path, case: Conv, level: int) -> caffec.Net:
    return one_layer_net(tmp_path, case.layer(), case.inputs(), name=f"O{level}",
                         opt_level=level)  # fmt: skip


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.type}-{c.id}" for c in CASES])
def test_agrees_with_numpy_and_finite_differences(tmp_path: Path, case: Conv, level: int) -> None:
    net = _build(tmp_path, case, level)
    rng = np.random.default_rng(level)
    randomize_params(net, rng)
    inputs = {name: rng.standard_normal(shape) for name, shape in case.inputs().items()}
    out = net.forward(blobs=case.tops(), **inputs)
    params = [np.array(blob.data) for blob in net.params["x"]]
    for bottom, top in zip(case.bottoms, case.tops(), strict=True):
        np.testing.assert_allclose(out[top], case.reference(inputs[bottom], params),
                                   rtol=1e-10, atol=1e-10, err_msg=top)  # fmt: skip
    check_gradients(net, inputs, case.tops(), rng, max_checks=12)


def test_weight_gradients_sum_over_bottoms_that_need_no_gradient(tmp_path: Path) -> None:
    """``propagate_down: false`` on one bottom spares its gradient, not its share of the
    weight and bias gradients (Caffe computes those from every top)."""
    case = Conv("Convolution", (2, 3, 4, 2, 5), 4, (2, 2, 3), pad=(1, 0, 1), bottoms=("a", "b"))
    text = case.layer().replace('top: "y0"', 'top: "y0" propagate_down: true '
                                'propagate_down: false')  # fmt: skip
    net = one_layer_net(tmp_path, text, case.inputs())
    rng = np.random.default_rng(3)
    randomize_params(net, rng)
    inputs = {name: rng.standard_normal(shape) for name, shape in case.inputs().items()}
    check_gradients(net, inputs, case.tops(), rng, wrt=["a"], max_checks=20)


def _algorithm(net: caffec.Net) -> str | None:
    return {layer.name: layer.algorithm for layer in net.artifact.manifest.layers}["x"]


@pytest.mark.parametrize("type_", ["Convolution", "Deconvolution"])
def test_force_nd_im2col_computes_what_the_2d_path_does(tmp_path: Path, type_: str) -> None:
    """The forced N-D path runs Caffe's im2col_nd over both axes: the same numbers, outputs
    and gradients, as the 2-D algorithms the target chose."""
    case = Conv(type_, (2, 4, 6, 5), 6, (3, 2), stride=(2, 1), pad=(1, 0), group=2)
    results, algorithms = [], []
    for name, extra in (("plain", ""), ("forced", "force_nd_im2col: true")):
        net = one_layer_net(tmp_path, replace(case, extra=extra).layer(), case.inputs(),
                            name=name)  # fmt: skip
        rng = np.random.default_rng(5)
        randomize_params(net, rng)
        x = rng.standard_normal(case.shape)
        y = np.array(net.forward(a=x)["y0"])
        net.clear_param_diffs()
        dx = np.array(net.backward(diffs=["a"], y0=rng.standard_normal(y.shape))["a"])
        results.append([y, dx, *(np.array(b.diff) for b in net.params["x"])])
        algorithms.append(_algorithm(net))
    for plain, forced in zip(*results, strict=True):
        np.testing.assert_allclose(forced, plain, rtol=1e-12, atol=1e-12)
    assert algorithms[1] == "im2col_nd_gemm" and algorithms[0] != algorithms[1]


def test_nd_convolutions_name_their_algorithm(tmp_path: Path) -> None:
    """im2col + GEMM over every axis, or the GEMM alone for a kernel of 1s at stride 1
    without padding (Caffe's is_1x1; no spatial axes too), as caffec dump and the manifest
    show; two spatial axes after a channel axis other than 1 keep the 2-D algorithms."""
    chosen = {}
    for case in CASES:
        if case.type == "Convolution" and case.bottoms == ("a",):
            folder = tmp_path / case.id
            folder.mkdir()
            chosen[case.id] = _algorithm(_build(folder, case, 2))
    assert chosen.pop("3d_pointwise") == chosen.pop("0d") == "gemm_1x1"
    assert chosen.pop("2d_axis_2") in ("im2col_gemm", "implicit_gemm")
    assert set(chosen) == {"3d", "3d_per_axis_grouped", "4d", "1d", "1d_axis_-2"}
    assert set(chosen.values()) == {"im2col_nd_gemm"}


NET = (
    "force_backward: true\n"
    + input_layers({"v": (2, 4, 3, 4, 5), "s": (2, 3, 7)})
    + """
layer { name: "c3" type: "Convolution" bottom: "v" bottom: "v" top: "c3a" top: "c3b"
  convolution_param { num_output: 4 kernel_size: 3 kernel_size: 2 kernel_size: 3 pad: 1
    stride: 2 stride: 1 stride: 1 group: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "d3" type: "Deconvolution" bottom: "c3a" top: "d3"
  convolution_param { num_output: 2 kernel_size: 2 stride: 2 dilation: 1 dilation: 1
    dilation: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c1" type: "Convolution" bottom: "s" top: "c1"
  convolution_param { num_output: 5 kernel_size: 3 pad: 2 dilation: 2
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "d1" type: "Deconvolution" bottom: "c1" bottom: "c1" top: "d1a" top: "d1b"
  convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } } }
"""
)


@pytest.mark.parametrize("level", [0, 2])
def test_the_cuda_target_computes_what_the_c_target_does(
    tmp_path: Path, level: int, emulated_gpu: EmulatedDevice
) -> None:
    """The N-D im2col and col2im (C: a loop per row, CUDA: a thread per entry or pixel) and
    several bottoms, forward and backward, on the emulated GPU."""
    options = Options(dtype="float64", opt_level=level, backward=True)
    net, spans = parse_net(NET)
    built = []
    for target in (CpuTarget(), CudaTarget(archs=(emulated_gpu.arch,))):
        target_options = replace(options, target=target)
        kgraph = build_kernel_graph(layer_graph_of(net, spans, target_options), target_options)
        built.append(CompiledNet(write_artifact(kgraph, tmp_path / target.name), seed=3))
    rng = np.random.default_rng(2)
    randomize_params(built[0], rng)
    same_params(built[0], built[1])
    feed = {"v": rng.standard_normal((2, 4, 3, 4, 5)), "s": rng.standard_normal((2, 3, 7))}
    results = []
    for compiled in built:
        out = {k: np.array(v) for k, v in compiled.forward(**feed).items()}
        compiled.clear_param_diffs()
        diffs = {name: np.cos(np.arange(v.size)).reshape(v.shape) for name, v in out.items()}
        grads = compiled.backward(diffs=["v", "s"], **diffs)
        out |= {f"{n} diff": np.array(g) for n, g in grads.items()}
        out |= {f"{n} {i} diff": np.array(b.diff) for n, bs in compiled.params.items()
                for i, b in enumerate(bs)}  # fmt: skip
        results.append(out)
    assert set(results[0]) == set(results[1]) and len(results[0]) == 14
    for key, value in results[0].items():
        np.testing.assert_allclose(results[1][key], value, rtol=1e-10, atol=1e-10, err_msg=key)


# Settings Caffe refuses: (id, the convolution_param, the bottom's shape, the error's words).
# Every layer reads bottom "a" into top "y"; "tops" reads it twice into one top.
REFUSED = [
    ("tops", "num_output: 2 kernel_size: 3", (2, 3, 5, 5), "2 bottoms but 1 tops"),
    ("kernel_count", "num_output: 2 kernel_size: 3 kernel_size: 2", (2, 3, 5, 5, 5),
     "kernel_size has 2 values but the bottom has 3"),
    ("kernel_h_3d", "num_output: 2 kernel_h: 3 kernel_w: 2", (2, 3, 5, 5, 5),
     "kernel_h/kernel_w only work for 2-D"),
    ("stride_zero", "num_output: 2 kernel_size: 3 stride: 1 stride: 2 stride: 0",
     (2, 3, 5, 5, 5), "strides must be positive"),
    ("axis", "num_output: 2 kernel_size: 3 axis: 4", (2, 3, 5, 5), "axis 4 is out of range"),
    ("kernel_0d", "num_output: 2 kernel_size: 3 kernel_size: 3 axis: -1", (2, 3, 5, 5),
     "kernel_size has 2 values but the bottom has 0"),
    ("too_small", "num_output: 2 kernel_size: 4", (2, 3, 3, 5, 5), "spatial axis 0 of size 3"),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "message"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])  # fmt: skip
def test_settings_caffe_refuses_are_clear_errors(
    tmp_path: Path, param: str, shape: tuple[int, ...], message: str
) -> None:
    bottoms = 'bottom: "a" bottom: "a"' if message.endswith("tops") else 'bottom: "a"'
    text = f'layer {{ name: "x" type: "Convolution" {bottoms} top: "y" '
    text += f"convolution_param {{ {param} }} }}"
    with pytest.raises(UserError, match=message) as raised:
        one_layer_net(tmp_path, text, {"a": shape})
    assert raised.value.layer == "x"


def test_bottoms_of_different_shapes_are_an_error(tmp_path: Path) -> None:
    text = ('layer { name: "x" type: "Deconvolution" bottom: "a" bottom: "b" top: "y" top: "z" '
            "convolution_param { num_output: 2 kernel_size: 2 } }")  # fmt: skip
    with pytest.raises(UserError, match="all bottoms must have the same shape"):
        one_layer_net(tmp_path, text, {"a": (2, 3, 4, 4, 4), "b": (2, 3, 4, 4, 5)})
