"""Reduced precision (``--precision tf32|bf16``): refused where a build cannot have it, the
tensor-core GEMM template (``gemm_mma.cu.j2``) built by nvcc, and what it computes on the
emulated GPU against float64, within the bounds its roundings allow.

The bound, per element of a GEMM's result: operands rounded to a unit roundoff u (tf32:
round to nearest with 10 fraction bits, u = 2^-11; bf16: 7 bits, u = 2^-8) make each product
a b (1 + d) with |d| <= 2u + u^2, and float32 sums of K terms add at most K 2^-24 times the sum
of the terms' magnitudes. So |computed - exact| <= (2u + u^2 + K 2^-24) sum |a| |b|, where the
sum of magnitudes is the same net run in float64 on the magnitudes of every operand.
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO
from cuda_emulator import build
from nets import solver_beside
from test_cli import run

from caffec.codegen import cuda as cuda_codegen
from caffec.codegen.artifact_writer import write_artifact
from caffec.codegen.cuda import CudaRenderer
from caffec.codegen.renderer import kernel_names
from caffec.codegen.toolchain import build_cuda, cuda_flags
from caffec.compiler.kernels import KernelGraph
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.errors import UserError
from caffec.formats.manifest import Manifest
from caffec.frontend.loader import parse_net
from caffec.net import Net
from caffec.runtime import gpu
from caffec.runtime.compiled_net import TEST, CompiledNet

UNIT_ROUNDOFF = {"fp32": 0.0, "tf32": 2.0**-11, "bf16": 2.0**-8}
FLOAT32 = 2.0**-24

# each GEMM reads the net's inputs and writes its outputs (no error feeds another GEMM), and
# together they are every kind: implicit (conv, grouped), plain (1x1), B transposed (the
# InnerProduct), A transposed (the Deconvolution's columns), accumulated over images (the
# weight gradients), batched per group
GEMMS = """
name: "gemms"
force_backward: true
layer { name: "in" type: "Input" top: "data" top: "rows" top: "maps"
        input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } shape { dim: 2 dim: 16 dim: 3 dim: 16 }
                      shape { dim: 2 dim: 8 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "grouped" type: "Convolution" bottom: "rows" top: "grouped"
        convolution_param { num_output: 4 group: 2 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "pointwise" type: "Convolution" bottom: "maps" top: "pointwise"
        convolution_param { num_output: 72 kernel_size: 1 bias_term: false } }
layer { name: "ip" type: "InnerProduct" bottom: "rows" top: "ip"
        inner_product_param { num_output: 5 bias_term: false } }
layer { name: "up" type: "Deconvolution" bottom: "maps" top: "up"
        convolution_param { num_output: 2 kernel_size: 2 stride: 2 bias_term: false } }
"""

# GoogLeNet's inception_3a at 7x7 (its channels; the emulator is slow)
INCEPTION = """
name: "inception"
layer { name: "in" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 192 dim: 7 dim: 7 } } }
layer { name: "1x1" type: "Convolution" bottom: "data" top: "1x1"
        convolution_param { num_output: 64 kernel_size: 1 } }
layer { name: "relu_1x1" type: "ReLU" bottom: "1x1" top: "1x1" }
layer { name: "3x3_reduce" type: "Convolution" bottom: "data" top: "3x3_reduce"
        convolution_param { num_output: 96 kernel_size: 1 } }
layer { name: "relu_3x3_reduce" type: "ReLU" bottom: "3x3_reduce" top: "3x3_reduce" }
layer { name: "3x3" type: "Convolution" bottom: "3x3_reduce" top: "3x3"
        convolution_param { num_output: 128 pad: 1 kernel_size: 3 } }
layer { name: "relu_3x3" type: "ReLU" bottom: "3x3" top: "3x3" }
layer { name: "5x5_reduce" type: "Convolution" bottom: "data" top: "5x5_reduce"
        convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "relu_5x5_reduce" type: "ReLU" bottom: "5x5_reduce" top: "5x5_reduce" }
layer { name: "5x5" type: "Convolution" bottom: "5x5_reduce" top: "5x5"
        convolution_param { num_output: 32 pad: 2 kernel_size: 5 } }
layer { name: "relu_5x5" type: "ReLU" bottom: "5x5" top: "5x5" }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "pool_proj" type: "Convolution" bottom: "pool" top: "pool_proj"
        convolution_param { num_output: 32 kernel_size: 1 } }
layer { name: "relu_pool_proj" type: "ReLU" bottom: "pool_proj" top: "pool_proj" }
layer { name: "output" type: "Concat" bottom: "1x1" bottom: "3x3" bottom: "5x5"
        bottom: "pool_proj" top: "output" }
"""
LENET = REPO / "examples/mnist/lenet.prototxt"  # the deploy net, in the repository


def _kernel_graph(text: str, options: Options) -> KernelGraph:
    net, spans = parse_net(text)
    return build_kernel_graph(layer_graph_of(net, spans, options), options)


def _compiled(text: str, options: Options, folder: Path) -> tuple[CompiledNet, KernelGraph]:
    kgraph = _kernel_graph(text, options)
    return CompiledNet(write_artifact(kgraph, folder), seed=0), kgraph


def _cuda(precision: str, **options: Any) -> Options:
    return Options(target=CudaTarget(), precision=precision, **options)


def _largest_k(kgraph: KernelGraph) -> int:
    return max(p.attrs["K"] for k in kgraph.kernels() for p in k.parts() if p.prim == "gemm")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (lambda: _cuda("fp16"), "loss scaling"),
        (lambda: _cuda("int8"), "no precision 'int8'"),
        (lambda: _cuda("tf32", dtype="float64"), "float64 build"),
        (lambda: Options(target=CpuTarget(), precision="bf16"), "the CPU computes in float32"),
        (lambda: Options(target=CudaTarget(archs=("90", "75")), precision="tf32"), "not 75"),
    ],
)
def test_precisions_a_build_cannot_have_are_refused(options: Any, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        options()
    assert caught.value.hint


def test_cli_refuses_reduced_precision_on_the_cpu(capsys, tmp_path: Path) -> None:
    """`caffec compile` for the C target or in float64, `caffec time` in fp16, `caffec train
    -cpu`: exit 2, nothing written."""
    net = str(LENET)
    status, _, err = run(capsys, "compile", net, "-o", str(tmp_path / "a"), "--precision", "bf16")
    assert status == 2 and "the CPU computes in float32" in err and "--target cuda" in err
    status, _, err = run(capsys, "compile", net, "-o", str(tmp_path / "b"), "--target", "cuda",
                         "--dtype", "float64", "--precision", "tf32")  # fmt: skip
    assert status == 2 and "float64 build" in err
    status, _, err = run(capsys, "time", "-model", net, "--precision", "fp16")
    assert status == 2 and "loss scaling" in err
    solver = solver_beside(tmp_path, LENET.read_text(), "base_lr: 0.01\nmax_iter: 1\n")
    status, _, err = run(capsys, "train", "-solver", str(solver), "-cpu", "--precision", "bf16")
    assert status == 2 and "the CPU computes in float32" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_net_keyword_reaches_the_build_cache(emulated_gpu: Any) -> None:
    """``caffec.Net(..., precision=...)``: each precision its own cached artifact, which says
    which it is; on the CPU (no GPU mode) reduced precision is refused."""
    shapes = {"data": (2, 1, 28, 28)}
    nets = {p: Net(LENET, TEST, shapes=shapes, precision=p) for p in ("fp32", "tf32", "bf16")}
    assert len({net.artifact.path for net in nets.values()}) == 3
    assert {p: n.artifact.manifest.precision for p, n in nets.items()} == {p: p for p in nets}
    gpu.set_mode_cpu()
    with pytest.raises(UserError, match="the CPU computes in float32"):
        Net(LENET, TEST, shapes=shapes, precision="tf32")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_gemm_takes_the_tensor_cores_and_builds_with_nvcc() -> None:
    """In tf32 and bf16 every GEMM function is the WMMA template, launched as mma_geometry
    says, and the source builds for arch 90 (the fp32 source has no WMMA)."""
    options = {"phase": "TRAIN", "backward": True}
    fp32 = CudaRenderer(CudaTarget()).render(_kernel_graph(GEMMS, _cuda("fp32", **options)))
    assert "wmma" not in fp32.source and "mma.h" not in fp32.source
    for precision, fragment in (("tf32", "16, 16, 8, wmma::precision::tf32"),
                                ("bf16", "16, 16, 16, __nv_bfloat16")):  # fmt: skip
        kgraph = _kernel_graph(GEMMS, _cuda(precision, **options))
        rendered = CudaRenderer(kgraph.target).render(kgraph)
        assert rendered.cuda is not None
        names, gemms = kernel_names(kgraph), 0
        for kernel in kgraph.kernels():
            launches = rendered.cuda.functions[names[id(kernel)]]
            for part, launch in zip(kernel.parts(), launches, strict=True):
                if part.prim == "gemm":
                    gemms += 1
                    # grid z: the batch, times the images of a batched loop's launch
                    images = launch.grid[2] // part.attrs["batch"]
                    grid, block = cuda_codegen.mma_geometry(part, 132, images)
                    assert (launch.grid, launch.block) == ([*grid[:2], grid[2] * images], block)
        assert rendered.source.count("wmma::mma_sync") == gemms >= 10
        assert rendered.source.count(fragment) == 2 * gemms  # A's and B's fragments
        assert "#include <mma.h>" in rendered.source
        build_cuda(rendered.source, cuda_flags(("90",)))


def test_the_manifest_records_the_precision(tmp_path: Path) -> None:
    kgraph = _kernel_graph(GEMMS, _cuda("bf16"))
    write_artifact(kgraph, tmp_path / "net")
    assert Manifest.read(tmp_path / "net" / "manifest.json").precision == "bf16"


def test_mma_layout_follows_the_grid_size() -> None:
    """128x128 tiles where they still give each of 132 multiprocessors a block, else 64x64."""

    def layout(m: int, n: int, batch: int) -> tuple[int, int]:
        return cuda_codegen.mma_layout({"M": m, "N": n, "K": 576, "batch": batch}, 132)

    assert layout(192, 3136, 4) == (128, 8)  # 25 x 2 tiles, 4 times
    assert layout(192, 3136, 1) == (64, 4)
    assert layout(10, 5, 1) == (64, 4)


def _rounded(x: np.ndarray, bits: int, ties_away: bool) -> np.ndarray:
    """``x`` (normal float32 values, infinities, NaN) rounded to ``bits`` fraction bits, in
    float64 arithmetic: to nearest, ties away from zero or to even."""
    with np.errstate(all="ignore"):
        finite = np.isfinite(x) & (x != 0)
        ulp = np.where(finite, 2.0 ** (np.floor(np.log2(np.where(finite, np.abs(x), 1))) - bits), 1)
        q = np.abs(x) / ulp
        whole = np.floor(q + 0.5) if ties_away else np.rint(q)
        return np.where(finite, np.sign(x) * whole * ulp, x).astype(np.float32)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_the_emulator_rounds_as_the_tensor_cores_do(tmp_path: Path) -> None:
    """The emulator's __float_to_tf32 (PTX cvt.rna: 10 fraction bits, ties away from zero) and
    __float2bfloat16 (7 bits, ties to even) against float64 arithmetic: ties both ways,
    signs, the largest float (to infinity), infinities and NaN."""
    library = build(
        'extern "C" void convert(const float* x, float* tf32, float* bf16, int count) {\n'
        "    for (int i = 0; i < count; ++i) {\n"
        "        tf32[i] = nvcuda::wmma::__float_to_tf32(x[i]);\n"
        "        bf16[i] = __bfloat162float(__float2bfloat16(x[i]));\n"
        "    }\n}\n",
        tmp_path,
    )
    ties = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8]
    specials = [np.finfo(np.float32).max, np.inf, -np.inf, 0.0, -0.0]
    x = np.array([*ties, *(-t for t in ties), *specials], np.float32)
    x = np.concatenate([x, np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    tf32, bf16 = np.empty_like(x), np.empty_like(x)
    pointer = ctypes.POINTER(ctypes.c_float)
    library.convert(*(a.ctypes.data_as(pointer) for a in (x, tf32, bf16)), ctypes.c_int(x.size))
    np.testing.assert_array_equal(tf32, _rounded(x, 10, ties_away=True))
    np.testing.assert_array_equal(bf16, _rounded(x, 7, ties_away=False))
    assert tf32[0] == 1 + 2.0**-10 and bf16[2] == 1  # a tie: away from zero; to even
    assert np.isinf(tf32[8]) and np.isinf(bf16[8])  # the largest float rounds up
    nan = np.full(1, np.nan, np.float32)
    library.convert(*(a.ctypes.data_as(pointer) for a in (nan, tf32, bf16)), ctypes.c_int(1))
    assert np.isnan(tf32[0]) and np.isnan(bf16[0])


def _run(net: CompiledNet, params: dict, feed: dict, diffs: dict) -> dict[str, np.ndarray]:
    """Every output, input gradient and parameter gradient of one forward and backward."""
    for name, blobs in net.params.items():
        for blob, value in zip(blobs, params[name], strict=True):
            blob.data[...] = value
    net.clear_param_diffs()
    results = {k: np.array(v, np.float64) for k, v in net.forward(**feed).items()}
    results |= {f"{k} diff": np.array(v, np.float64) for k, v in net.backward(**diffs).items()}
    results |= {f"{name} diff": np.array(net.params[name][0].diff, np.float64)
                for name in net.params}  # fmt: skip
    return results


@pytest.mark.parametrize(
    ("precision", "side"), [("fp32", None), ("tf32", 64), ("tf32", 128), ("bf16", 64)]
)
def test_every_gemm_is_within_its_rounding_bound(
    precision: str, side: int | None, tmp_path: Path, emulated_gpu: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Forward and backward of GEMMS on the emulated GPU against float64 (the C target), each
    element within the bound of the module docstring, and (in reduced precision) the
    rounding seen: an error beyond float32's. ``side``: the tensor-core block's tile."""
    if side is not None:
        monkeypatch.setattr(cuda_codegen, "mma_layout", lambda *_, **__: (side, side // 16))
    gpu, kgraph = _compiled(GEMMS, _cuda(precision), tmp_path / "gpu")
    exact, _ = _compiled(GEMMS, Options(dtype="float64"), tmp_path / "exact")
    rng = np.random.default_rng(0)

    def draw(shape: tuple[int, ...]) -> np.ndarray:  # float32 values: no rounding on the way in
        return rng.standard_normal(shape).astype(np.float32).astype(np.float64)

    params = {name: [draw(b.data.shape) for b in blobs] for name, blobs in exact.params.items()}
    feed = {name: draw(exact.blobs[name].data.shape) for name in exact.inputs}
    diffs = {name: draw(exact.blobs[name].data.shape) for name in exact.outputs}
    got, want = _run(gpu, params, feed, diffs), _run(exact, params, feed, diffs)

    def magnitudes(values: dict) -> dict:
        return {k: [np.abs(v) for v in vs] if isinstance(vs, list) else np.abs(vs)
                for k, vs in values.items()}  # fmt: skip

    scale = _run(exact, magnitudes(params), magnitudes(feed), magnitudes(diffs))
    u = UNIT_ROUNDOFF[precision]
    # the largest K twice (weight gradients add two images' GEMMs), an input's two gradients
    gamma = 2 * u + u * u + (2 * _largest_k(kgraph) + 4) * FLOAT32
    worst = 0.0
    for key, value in want.items():
        error = np.abs(got[key] - value)
        assert np.all(error <= gamma * scale[key] + 1e-30), key
        worst = max(worst, float(np.max(error / np.maximum(scale[key], 1e-30))))
    unit = f"2^{np.log2(max(u, FLOAT32)):.0f}"
    print(f"{precision}: the largest error is {worst / max(u, FLOAT32):.3f} x {unit} sum |a||b|")
    if u:
        assert worst > u / 4  # the operands were rounded to the precision


def _relative_errors(
    text: str, shapes: dict, blobs: list[str], precision: str, folder: Path
) -> dict[str, float]:
    """Each of ``blobs``' ||y - y64|| / ||y64|| for a forward at ``precision`` on the emulated GPU
    against float64 on the CPU, with one set of gaussian weights (std 0.1) and inputs."""
    gpu, _ = _compiled(text, _cuda(precision, shapes=shapes), folder / "gpu")
    exact, _ = _compiled(text, Options(dtype="float64", shapes=shapes), folder / "exact")
    rng = np.random.default_rng(1)
    for name, params in exact.params.items():
        for param, dest in zip(params, gpu.params[name], strict=True):
            param.data[...] = (0.1 * rng.standard_normal(param.data.shape)).astype(np.float32)
            dest.data[...] = param.data
    feed = {name: rng.random(exact.blobs[name].data.shape).astype(np.float32)
            for name in exact.inputs}  # fmt: skip
    exact.forward(**feed)
    gpu.forward(**feed)
    return {name: float(np.linalg.norm(gpu.blobs[name].data - exact.blobs[name].data)
                        / np.linalg.norm(exact.blobs[name].data)) for name in blobs}  # fmt: skip


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("net", ["lenet", "inception"])
def test_real_nets_forward_error_against_float64(
    net: str, precision: str, tmp_path: Path, emulated_gpu: Any
) -> None:
    """LeNet (batch 2) and GoogLeNet's inception_3a (batch 2, 7x7) forward: the relative
    error of the outputs, printed for the docs, below 2u per GEMM layer on the way times 4
    (LeNet has 4, the inception block 2)."""
    text, shapes, blobs, layers = (
        (LENET.read_text(), {"data": (2, 1, 28, 28)}, ["ip2", "prob"], 4) if net == "lenet"
        else (INCEPTION, {}, ["output"], 2)
    )  # fmt: skip
    errors = _relative_errors(text, shapes, blobs, precision, tmp_path)
    print(f"{net} {precision}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    u = UNIT_ROUNDOFF[precision]
    assert all(u / 64 < e < 4 * layers * 2 * u for e in errors.values()), errors
