"""Which algorithm each convolution runs, and where the choice is recorded.

The numbers themselves are checked elsewhere: against numpy and finite differences in
tests/runtime/test_layers.py, against the reference build on random shapes in
tests/runtime/test_conv_shapes.py, and the CUDA templates in test_cuda_emulated.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caffec.codegen.cuda import CudaRenderer
from caffec.codegen.toolchain import build_cuda, cuda_flags
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    load_layer_graph,
)
from caffec.compiler.targets import Target
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget

NET = """name: "mobile" force_backward: true
input: "data" input_shape { dim: 2 dim: 8 dim: 12 dim: 12 }
layer { name: "depthwise" type: "Convolution" bottom: "data" top: "dw"
  convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 } }
layer { name: "pointwise" type: "Convolution" bottom: "dw" top: "pw"
  convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "grouped" type: "Convolution" bottom: "pw" top: "g"
  convolution_param { num_output: 16 group: 2 kernel_size: 3 } }
layer { name: "up" type: "Deconvolution" bottom: "g" top: "up"
  convolution_param { num_output: 16 group: 16 kernel_size: 2 stride: 2 } }
"""


def _kernel_graph(tmp_path: Path, level: int, net: str = NET, target: Target | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "net.prototxt"
    path.write_text(net)
    options = Options(opt_level=level, target=target or CpuTarget())
    return build_kernel_graph(load_layer_graph(path, options), options)


def test_optimised_builds_convolve_depthwise_layers_directly(tmp_path: Path) -> None:
    kgraph = _kernel_graph(tmp_path, 2)
    chosen = {layer["name"]: layer.get("algorithm") for layer in kgraph.layers}
    assert chosen == {"input": None, "depthwise": "direct", "pointwise": "gemm_1x1",
                      "grouped": "im2col_gemm", "up": "direct"}  # fmt: skip
    for step in kgraph.forward + kgraph.backward:
        prims = {p.prim for k in step.kernels() for p in k.parts()}
        if step.layer in ("depthwise", "up"):
            assert "conv" in prims and not prims & {"im2col", "col2im", "gemm"}, step.layer
        else:
            assert "conv" not in prims, step.layer
    modes = sorted(p.attrs["mode"] for s in kgraph.backward if s.layer == "depthwise"
                   for k in s.kernels() for p in k.parts() if p.prim == "conv")  # fmt: skip
    assert modes == ["data", "filter"]


STEM = """name: "stem" force_backward: true
input: "data" input_shape { dim: 2 dim: 3 dim: 64 dim: 64 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 7 stride: 2 pad: 3 } }
"""


DENSE = """name: "dense" force_backward: true
input: "data" input_shape { dim: 2 dim: 3 dim: 224 dim: 224 }
input: "small" input_shape { dim: 2 dim: 16 dim: 14 dim: 14 }
layer { name: "first" type: "Convolution" bottom: "data" top: "first"
  convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
layer { name: "same" type: "Convolution" bottom: "small" top: "same"
  convolution_param { num_output: 32 kernel_size: 5 pad: 2 } }
layer { name: "valid" type: "Convolution" bottom: "same" top: "valid"
  convolution_param { num_output: 48 kernel_size: 3 } }
layer { name: "partial" type: "Convolution" bottom: "valid" top: "partial"
  convolution_param { num_output: 20 kernel_size: 3 pad: 1 } }
layer { name: "strided" type: "Convolution" bottom: "partial" top: "strided"
  convolution_param { num_output: 32 kernel_size: 3 stride: 2 } }
"""


def test_dense_convolutions_run_direct_where_the_measured_rules_say(tmp_path: Path) -> None:
    chosen = {layer["name"]: layer.get("algorithm")
              for layer in _kernel_graph(tmp_path, 2, DENSE).layers}  # fmt: skip
    assert chosen == {
        "input": None,
        # a 224-wide image: its copies would not stay in cache
        "first": "implicit_gemm",
        # 14 wide, channels in whole vectors, the input gradient the same size as the output
        "same": "direct_channels+direct_filter+direct_data",
        # 12 wide from 14: the input gradient as a forward would do more work
        "valid": "direct_channels+direct_filter",
        # 20 output channels fill vectors partly: the forward by columns, but the gradients
        # (to 48 input channels) run direct
        "partial": "im2col_gemm+direct_filter+direct_data",
        "strided": "im2col_gemm",
    }
    assert {
        layer["name"]: layer.get("algorithm") for layer in _kernel_graph(tmp_path, 1, DENSE).layers
    }["same"] == "im2col_gemm"


def test_few_weight_rows_unfold_the_image_as_the_gemm_packs_it(tmp_path: Path) -> None:
    """(What it computes: tests/runtime/test_conv_shapes.py and test_cuda_emulated.py.)"""
    for level, algorithm in ((2, "implicit_gemm"), (0, "im2col_gemm")):
        kgraph = _kernel_graph(tmp_path, level, STEM)
        assert kgraph.layers[1]["algorithm"] == algorithm
        forward = [p for s in kgraph.forward for k in s.kernels() for p in k.parts()]
        gemms = [p for p in forward if p.prim == "gemm"]
        assert [p.attrs["implicit"] is not None for p in gemms] == [level == 2]
        assert ("im2col" in {p.prim for p in forward}) == (level == 0)
        backward = {p.prim for s in kgraph.backward for k in s.kernels() for p in k.parts()}
        assert "im2col" in backward  # the weight gradient still reads columns


def test_the_reference_build_always_takes_im2col_and_gemm(tmp_path: Path) -> None:
    kgraph = _kernel_graph(tmp_path, 0)
    chosen = [layer.get("algorithm") for layer in kgraph.layers[1:]]
    assert chosen == ["im2col_gemm", "gemm_1x1", "im2col_gemm", "im2col_gemm"]
    assert not any(k.prim == "conv" for k in kgraph.primitives())


def test_dump_and_manifest_record_the_choice(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    caffec = [sys.executable, "-m", "caffec"]
    dump = subprocess.run([*caffec, "dump", str(path), "--after", "fuse"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "forward depthwise (Convolution, direct)" in dump
    assert "forward grouped (Convolution, im2col_gemm)" in dump
    assert "forward up (Deconvolution, direct)" in dump
    out = tmp_path / "net.caffec"
    subprocess.run([*caffec, "compile", str(path), "-o", str(out)], check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = {layer["name"]: layer.get("algorithm") for layer in manifest["layers"]}
    assert chosen["depthwise"] == "direct" and chosen["pointwise"] == "gemm_1x1"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_the_direct_convolutions_cuda_builds_with_nvcc(tmp_path: Path) -> None:
    """(No corpus net has a depthwise layer; what the CUDA kernels compute is checked by
    test_cuda_emulated.py.)"""
    kgraph = _kernel_graph(tmp_path, 2, target=CudaTarget())
    source = CudaRenderer(CudaTarget()).render(kgraph).source
    assert all(f"convolution, {mode}:" in source for mode in ("forward", "data", "filter"))
    assert build_cuda(source, cuda_flags()).stat().st_size > 0


def test_the_cuda_target_makes_its_own_choices(tmp_path: Path) -> None:
    """The GPU reads images in its GEMMs (implicit GEMMs: no columns), convolves depthwise
    layers directly, packs nothing ahead and runs per-image loops one image at a time; none
    of the C target's register-blocked direct kernels."""
    chosen = {
        name: algorithm
        for net in (NET, DENSE)
        for name, algorithm in _algorithms(_kernel_graph(tmp_path, 2, net, CudaTarget()))
    }
    assert chosen == {
        "depthwise": "direct", "pointwise": "gemm_1x1", "grouped": "implicit_gemm",
        "up": "direct", "first": "implicit_gemm", "same": "implicit_gemm",
        "valid": "implicit_gemm", "partial": "implicit_gemm", "strided": "implicit_gemm",
    }  # fmt: skip
    kgraph = _kernel_graph(tmp_path, 2, DENSE, CudaTarget())
    primitives = kgraph.primitives()
    assert not any(p.prim == "pack" for p in primitives)
    assert not any(p.attrs.get("blocking") for p in primitives if p.prim == "conv")
    loops = [i for s in kgraph.forward + kgraph.backward for i in s.instrs if hasattr(i, "body")]
    assert loops and all(loop.threads == 1 and not loop.partial_sums for loop in loops)
    assert not any("plan" in p.attrs for p in primitives if p.prim == "gemm")


def _algorithms(kgraph) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(layer["name"], layer["algorithm"]) for layer in kgraph.layers if "algorithm" in layer]
