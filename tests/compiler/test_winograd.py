"""Winograd's F(4x4, 3x3) for stride-1 3x3 convolutions: its transforms, where the CPU
target chooses it, and what it computes against numpy's direct convolution.

Its error is rounding in the transforms, which grows with the channels summed over: the
tests hold it to 1e-4 of the output's range in float32 (1e-11 in float64), on random shapes
and on every stride-1 3x3 layer of the corpus' deploy nets. The cost model chooses it only
for large layers; ``forced`` makes it choose it for every stride-1 3x3 convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as R

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.kernels import Loop
from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph
from caffec.compiler.primitives import winograd_transforms
from caffec.compiler.targets import ConvAlgorithms, ConvShape
from caffec.compiler.targets import cpu as cpu_target
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.runtime.compiled_net import CompiledNet

# Relative to the output's range (max - min), the largest error allowed against numpy's
# convolution in float64.
TOLERANCE = {"float32": 1e-4, "float64": 1e-11}


def _correlate(d: list, g: list) -> list:
    return [sum(d[i + k] * g[k] for k in range(len(g))) for i in range(len(d) - len(g) + 1)]


def _times(matrix: list[list[Fraction]], vector: list) -> list:
    return [sum(m * v for m, v in zip(row, vector, strict=True)) for row in matrix]


def test_the_transforms_compute_the_correlation_exactly() -> None:
    """In exact arithmetic, A' ((G g) * (B' d)) is the correlation of 6 inputs with 3 taps,
    and nested over two axes the 4x4 outputs of a 6x6 block; the matrices are Lavin and
    Gray's for the points 0, 1, -1, 2, -2."""
    t = winograd_transforms()
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = [Fraction(int(v)) for v in rng.integers(-9, 10, 6)]
        g = [Fraction(int(v)) for v in rng.integers(-9, 10, 3)]
        product = [x * y for x, y in zip(_times(t["G"], g), _times(t["BT"], d), strict=True)]
        assert _times(t["AT"], product) == _correlate(d, g)
    block = rng.integers(-9, 10, (6, 6)).astype(object)
    kernel = rng.integers(-9, 10, (3, 3)).astype(object)
    bt, g, at = (np.array(t[name], dtype=object) for name in ("BT", "G", "AT"))
    outputs = at @ ((g @ kernel @ g.T) * (bt @ block @ bt.T)) @ at.T
    expected = [[np.sum(block[i : i + 3, j : j + 3] * kernel) for j in range(4)] for i in range(4)]
    assert (outputs == np.array(expected, dtype=object)).all()
    assert t["BT"][0] == [4, 0, -5, 0, 1, 0] and t["AT"][3] == [0, 1, -1, 8, -8, 1]
    assert t["G"][3] == [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)]


def _shape(c: int, o: int, size: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
           group: int = 1) -> ConvShape:  # fmt: skip
    out = (size + 2 - dilation * (kernel - 1) - 1) // stride + 1
    return ConvShape(batch=1, group=group, image=(c, size, size), cols=(o, out, out),
                     kernel=(kernel, kernel), stride=(stride, stride), pad=(1, 1),
                     dilation=(dilation, dilation), deconv=False)  # fmt: skip


def test_the_cpu_target_chooses_winograd_for_large_stride_1_3x3_layers() -> None:
    """Where the measurements say it pays (docs/performance.md): enough channels on both
    sides, enough 4x4 blocks of output per image, and enough of both."""
    target = CpuTarget()
    chosen = {
        "googlenet 3a (96 to 128, 28 wide)": _shape(96, 128, 28),
        "vgg conv3 (256 to 256, 56 wide)": _shape(256, 256, 56),
        "grouped (2 x 128 to 2 x 128, 56 wide)": _shape(256, 256, 56, group=2),
        "64 to 64, 56 wide": _shape(64, 64, 56),
        "32 to 64, 56 wide: too few products": _shape(32, 64, 56),
        "64 to 64, 28 wide: too few products": _shape(64, 64, 28),
        "128 channels, 20 wide: too few blocks": _shape(128, 128, 20),
        "14 wide: too few blocks": _shape(128, 256, 14),
        "16 input channels": _shape(16, 256, 56),
        "5x5": _shape(96, 128, 28, kernel=5),
        "stride 2": _shape(96, 128, 28, stride=2),
        "dilation 2": _shape(96, 128, 28, dilation=2),
    }
    algorithms = {name: target.conv_algorithms(shape).forward for name, shape in chosen.items()}
    assert [name for name, forward in algorithms.items() if forward == "winograd"] == [
        "googlenet 3a (96 to 128, 28 wide)",
        "vgg conv3 (256 to 256, 56 wide)",
        "grouped (2 x 128 to 2 x 128, 56 wide)",
        "64 to 64, 56 wide",
    ]


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU target chooses Winograd for every stride-1 3x3 convolution."""
    monkeypatch.setattr(cpu_target, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(cpu_target, "WINOGRAD_MIN_BLOCKS", 1)
    monkeypatch.setattr(cpu_target, "WINOGRAD_MIN_PRODUCTS", 1)


@dataclass(frozen=True)
class Case:
    n: int
    c: int
    o: int
    hw: tuple[int, int]
    pad: tuple[int, int] = (1, 1)
    group: int = 1


# Odd sizes (partial blocks at the bottom and right), outputs smaller than one block,
# padding of 0, 2 and unequal, channels that fill no vector, several images, groups.
CASES = {
    "one_image": Case(1, 16, 32, (8, 8)),
    "odd": Case(2, 5, 7, (13, 11), (1, 0)),
    "one_output": Case(1, 3, 4, (3, 3), (0, 0)),
    "pad_2": Case(3, 17, 9, (6, 9), (2, 2)),
    "tall": Case(1, 8, 20, (23, 5), (0, 1)),
    "groups": Case(2, 12, 18, (10, 10), group=3),
}


def _compile(tmp_path: Path, case: Case, dtype: str, phase: str = "TEST",
             target: Any = None) -> CompiledNet:  # fmt: skip
    """The convolution of ``case`` into ``tmp_path`` (not the build cache, whose key does
    not see ``forced``), its weights and bias random."""
    path = tmp_path / "net.prototxt"
    path.write_text(
        "force_backward: true\n"
        f'input: "x" input_shape {{ dim: {case.n} dim: {case.c} dim: {case.hw[0]} '
        f"dim: {case.hw[1]} }}\n"
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { '
        f"num_output: {case.o} group: {case.group} kernel_size: 3 pad_h: {case.pad[0]} "
        f'pad_w: {case.pad[1]} weight_filler {{ type: "gaussian" std: 0.5 }} '
        'bias_filler { type: "gaussian" } } }\n'
    )
    options = Options(phase=phase, dtype=dtype, backward=phase == "TRAIN",
                      target=target or CpuTarget())  # fmt: skip
    kgraph = build_kernel_graph(load_layer_graph(path, options), options)
    backward = {p.prim for step in kgraph.backward for k in step.kernels() for p in k.parts()}
    assert "winograd" not in backward  # the forward only
    out = tmp_path / f"{dtype}_{phase}_{(target or CpuTarget()).name}"
    return CompiledNet(write_artifact(kgraph, out), seed=1)


def _algorithm(net: CompiledNet) -> str:
    return next(layer.algorithm for layer in net.artifact.manifest.layers if layer.name == "conv")


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / (np.max(want) - np.min(want)))


@pytest.mark.usefixtures("forced")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_winograd_forward_agrees_with_direct_convolution(
    tmp_path: Path, case: Case, dtype: str
) -> None:
    net = _compile(tmp_path, case, dtype)
    assert _algorithm(net).startswith("winograd")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((case.n, case.c, *case.hw))
    w, b = (p.data for p in net.params["conv"])
    (want,) = R.convolution(x, w, b, pad=case.pad, group=case.group)
    got = net.forward(x=x)["y"]
    assert got.shape == want.shape
    assert _relative_error(got, want) <= TOLERANCE[dtype]


@pytest.mark.usefixtures("forced")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_training_net_runs_winograd_forward_and_its_own_gradients(
    tmp_path: Path, dtype: str
) -> None:
    """Winograd is the forward only: the gradients run as they would without it."""
    case = CASES["odd"]
    net = _compile(tmp_path, case, dtype, phase="TRAIN")
    assert _algorithm(net).startswith("winograd")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((case.n, case.c, *case.hw))
    w, b = (p.data for p in net.params["conv"])
    (y,) = R.convolution(x, w, b, pad=case.pad)
    dy = rng.standard_normal(y.shape)
    assert _relative_error(net.forward(x=x)["y"], y) <= TOLERANCE[dtype]
    net.clear_param_diffs()
    dx = net.backward(y=dy)["x"]
    for got, want in zip((dx, net.params["conv"][0].diff, net.params["conv"][1].diff),
                         R.convolution_grad(x, w, dy, pad=case.pad), strict=True):  # fmt: skip
        assert _relative_error(got, want) <= TOLERANCE[dtype] * 10


def _deploy_layers(corpus: Path) -> list[tuple[str, tuple[int, ...], Any]]:
    """Every stride-1, dilation-1 3x3 Convolution of the corpus' deploy nets: (net and
    layer, its bottom's shape for one image, its parameters)."""
    found = []
    for path in sorted((corpus / "bvlc" / "models").glob("*/deploy.prototxt")):
        graph = load_layer_graph(path, Options(phase="TEST"))
        for op in graph.ops:
            p = op.param.convolution_param
            square = op.type == "Convolution" and list(p.kernel_size) == [3]
            if square and list(p.stride) in ([], [1]) and list(p.dilation) in ([], [1]):
                shape = (1, *op.bottoms[0].shape[1:])
                found.append((f"{path.parent.name}/{op.name}", shape, p))
    return found


@pytest.mark.usefixtures("forced")
def test_the_deploy_nets_3x3_layers_within_tolerance(tmp_path: Path, corpus: Path) -> None:
    """GoogLeNet's, CaffeNet's, AlexNet's ... 3x3 layers at batch 1, float32, weights drawn as
    MSRA's filler does and inputs as after a ReLU, against numpy's convolution."""
    layers = _deploy_layers(corpus)
    assert len(layers) >= 10
    text = []
    for number, (_, shape, p) in enumerate(layers):
        dims = " ".join(f"dim: {d}" for d in shape)
        text.append(
            f'input: "x{number}" input_shape {{ {dims} }}\n'
            f'layer {{ name: "conv{number}" type: "Convolution" bottom: "x{number}" '
            f'top: "y{number}" convolution_param {{ num_output: {p.num_output} '
            f"group: {p.group} kernel_size: 3 pad: {p.pad[0] if p.pad else 0} "
            f'weight_filler {{ type: "msra" }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}\n'
        )
    path = tmp_path / "deploy_3x3.prototxt"
    path.write_text("".join(text))
    options = Options(phase="TEST")
    kgraph = build_kernel_graph(load_layer_graph(path, options), options)
    assert all(layer["algorithm"].startswith("winograd") for layer in kgraph.layers
               if layer["name"].startswith("conv"))  # fmt: skip
    net = CompiledNet(write_artifact(kgraph, tmp_path / "deploy_3x3.caffec"), seed=4)
    rng = np.random.default_rng(4)
    inputs = {f"x{i}": rng.random(shape) for i, (_, shape, _) in enumerate(layers)}
    outputs = net.forward(**inputs)
    errors = {}
    for number, (name, _, p) in enumerate(layers):
        w, b = (blob.data for blob in net.params[f"conv{number}"])
        (want,) = R.convolution(inputs[f"x{number}"], w, b, pad=p.pad[0] if p.pad else 0,
                                group=p.group)  # fmt: skip
        errors[name] = _relative_error(outputs[f"y{number}"], want)
    assert max(errors.values()) <= TOLERANCE["float32"], errors


@dataclass(frozen=True)
class WinogradCuda(CudaTarget):
    """The CUDA target, running Winograd where the CPU target (forced) would."""

    def conv_algorithms(self, shape: ConvShape) -> ConvAlgorithms:
        if cpu_target._winograd_pays(shape):
            return ConvAlgorithms("winograd")
        return super().conv_algorithms(shape)


@pytest.mark.usefixtures("forced")
@pytest.mark.parametrize("case", [CASES["odd"], CASES["groups"]], ids=["odd", "groups"])
def test_the_cuda_templates_agree_with_direct_convolution(
    tmp_path: Path, case: Case, any_gpu: Any
) -> None:
    """(The CUDA target does not choose Winograd; its templates are there for every
    primitive, and run here on the emulated GPU.)"""
    cuda = _compile(tmp_path, case, "float64", target=WinogradCuda(archs=(any_gpu.arch,)))
    assert _algorithm(cuda) == "winograd"
    rng = np.random.default_rng(5)
    x = rng.standard_normal((case.n, case.c, *case.hw))
    w, b = (p.data for p in cuda.params["conv"])
    (want,) = R.convolution(x, w, b, pad=case.pad, group=case.group)
    assert _relative_error(cuda.forward(x=x)["y"], want) <= TOLERANCE["float64"]


BATCHNORM = """
input: "x" input_shape { dim: 2 dim: 8 dim: 9 dim: 9 }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" batch_norm_param { eps: 0.01 } }
layer { name: "scale" type: "Scale" bottom: "y" top: "y"
        scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
"""


@pytest.mark.usefixtures("forced")
def test_batchnorm_scale_and_relu_run_in_the_output_transforms_epilogue(tmp_path: Path) -> None:
    """A deploy net's Convolution + BatchNorm + Scale + ReLU (tests/compiler/
    test_inference_folding.py): the per-channel multiply-add and the ReLU run in the same
    kernel as the output transform, image by image."""
    path = tmp_path / "net.prototxt"
    path.write_text(BATCHNORM)
    options = Options(phase="TEST")
    kgraph = build_kernel_graph(load_layer_graph(path, options), options)
    loops = [
        i for s in kgraph.forward if s.layer == "conv" for i in s.instrs if isinstance(i, Loop)
    ]
    assert [[p.prim for p in k.parts()] for k in loops[0].body] == [
        ["winograd"],
        ["gemm"],
        ["winograd", "map"],
    ]
    net = CompiledNet(write_artifact(kgraph, tmp_path / "net.caffec"), seed=6)
    rng = np.random.default_rng(6)
    mean, variance, factor = net.params["bn"]
    factor.data[...] = 2.0
    mean.data[...], variance.data[...] = rng.normal(size=6), rng.uniform(0.5, 2.0, size=6)
    x = rng.standard_normal((2, 8, 9, 9))
    (y,) = R.convolution(x, net.params["conv"][0].data, net.params["conv"][1].data, pad=1)
    channel = (1, -1, 1, 1)
    y = (y - (mean.data / 2).reshape(channel)) / np.sqrt(
        (variance.data / 2).reshape(channel) + 0.01
    )
    gamma, beta = (p.data.reshape(channel) for p in net.params["scale"])
    want = np.maximum(y * gamma + beta, 0)
    assert _relative_error(net.forward(x=x)["y"], want) <= TOLERANCE["float32"]
