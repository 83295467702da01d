"""GEMM epilogues on the CUDA target: a fused GEMM and the maps after it as one function.

Which groups become one function (a convolution's bias and ReLU: yes; a map that reads a
neighbouring element of C, covers another size, or writes what the GEMM reads: no), how many
launches GoogLeNet's training step saves, and what the fused functions compute on the
emulated GPU: the C target's values, and in fp32 and tf32 the very bits of the same build
with every part its own launch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nets import same_params
from test_batched_loops import launches

from caffec.codegen import cuda as cuda_codegen
from caffec.codegen.artifact_writer import write_artifact
from caffec.codegen.cuda import CudaRenderer, epilogue
from caffec.codegen.renderer import kernel_names
from caffec.codegen.toolchain import build_cuda, cuda_flags
from caffec.compiler.kernels import Buffer, Kernel, KernelGraph, Loop, Operand
from caffec.compiler.passes import batched_loops
from caffec.compiler.passes.fusion_scope import fused
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of, load_layer_graph
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.frontend.loader import parse_net
from caffec.runtime.compiled_net import CompiledNet

BATCH = 5
# a convolution, a grouped one (a GEMM batched per group) and an InnerProduct, each with its
# bias and a ReLU; Dropout after the last (a random map in the InnerProduct's epilogue)
NET = """
name: "epilogues"
force_backward: true
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 5 dim: 4 dim: 7 dim: 7 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "grouped" type: "Convolution" bottom: "conv" top: "grouped"
        convolution_param { num_output: 4 group: 2 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu2" type: "ReLU" bottom: "grouped" top: "grouped" }
layer { name: "ip" type: "InnerProduct" bottom: "grouped" top: "ip"
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu3" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" dropout_param { dropout_ratio: 0.5 } }
"""


def kernel_graph(
    target: object, precision: str = "fp32", dtype: str = "float32", text: str = NET
) -> KernelGraph:
    """``text``'s training build (forward and backward) for ``target``."""
    net, spans = parse_net(text)
    options = Options(phase="TRAIN", backward=True, target=target, precision=precision,
                      dtype=dtype)  # fmt: skip
    return build_kernel_graph(layer_graph_of(net, spans, options), options)


def epilogues(kgraph: KernelGraph) -> dict[str, list[str]]:
    """Per kernel with an epilogue, its parts, by pass and layer: "forward conv"."""
    return {f"{direction} {step.layer}": [p.prim for p in kernel.parts()]
            for direction, steps in kgraph.steps().items() for step in steps
            for kernel in step.kernels() if epilogue(kernel)}  # fmt: skip


def test_a_gemm_and_its_bias_and_relu_are_one_function() -> None:
    kgraph = kernel_graph(CudaTarget())
    assert epilogues(kgraph) == {
        "forward conv": ["gemm", "map"],
        "forward grouped": ["gemm", "map"],
        "forward ip": ["gemm", "map", "map"],  # the bias and ReLU, then Dropout
        "backward ip": ["gemm", "map"],  # the gradient through relu2
    }
    rendered = CudaRenderer(kgraph.target).render(kgraph)
    assert rendered.cuda is not None
    names = kernel_names(kgraph)
    for kernel in kgraph.kernels():
        functions = [launch.function for launch in rendered.cuda.functions[names[id(kernel)]]]
        if epilogue(kernel):
            assert functions == [names[id(kernel)]]
        elif kernel.prim != "host":
            assert len(functions) == len(kernel.parts())
    # the maps' code follows the GEMM's store: 5 maps, the ReLU's element code among them
    assert rendered.source.count("a map on this element of C */") == 5
    ip = rendered.source.split("with the 2 map(s) after it as its epilogue")[1].split("\n}\n")[0]
    assert "caffec_uniform(seed, iteration, (uint64_t)i)" in ip  # Dropout's numbers
    # the convolution's bias and ReLU take C's element from the thread, and write it in
    # place of C: C is neither loaded back nor stored twice
    conv = rendered.source.split("forward of layer #1 (Convolution), with")[1].split("\n}\n")[0]
    assert "= c_value;" in conv and "real* C" not in conv and "C[row" not in conv


def gemm_group(**changes: Any) -> Kernel:
    """A GEMM (C: 6 x 49, contiguous) fused with a bias add and ReLU on C in place, with
    ``changes``: ``load`` (the index C is loaded at), ``size`` (the map's), ``ldc``,
    ``output`` (the buffer the map writes: "C" or "B") and ``offset`` (where in it)."""
    a, b, c, bias = (Buffer(name, shape, kind) for name, shape, kind in (
        ("A", (6, 36), "param"), ("B", (36, 49), "value"), ("C", (6, 49), "value"),
        ("bias", (6,), "param")))  # fmt: skip
    gemm = Kernel("gemm", [Operand(a), Operand(b)], [Operand(c)],
                  {"M": 6, "N": 49, "K": 36, "batch": 1, "ldc": changes.get("ldc", 49),
                   "stride_c": 0})  # fmt: skip
    output = Operand({"B": b, "C": c}[changes.get("output", "C")], changes.get("offset", 0))
    attrs = {"size": changes.get("size", 6 * 49), "random": False, "coords": {}, "consts": {},
             "loads": [("y", 0, changes.get("load", "i")), ("b", 1, "i / 49")],
             "lets": [], "exprs": ["y + b > 0 ? y + b : 0"]}  # fmt: skip
    relu = Kernel("map", [Operand(c), Operand(bias)], [output], attrs)
    return fused([gemm, relu])


def test_only_maps_over_exactly_the_gemms_elements_are_its_epilogue() -> None:
    group = gemm_group()
    assert epilogue(group) == group.parts()[1:]  # the bias, read by channel: a parameter
    gemm = group.parts()[0]
    refused = {
        "a neighbour": gemm_group(load="i + 1"),
        "another size": gemm_group(size=6 * 48),
        "a strided C": gemm_group(ldc=64),  # within a Concat's output: not the map's i
        "C at another offset": gemm_group(offset=49),
        "what the GEMM reads": gemm_group(output="B"),
    }
    for why, kernel in refused.items():
        assert epilogue(kernel) == [], why
    reduce = Kernel("reduce", [gemm.writes[0]], [Operand(Buffer("s", (6,), "value"))])
    assert epilogue(fused([gemm, group.parts()[1], reduce])) == []  # not all maps
    assert epilogue(fused([group.parts()[1], gemm])) == []  # a prologue is not an epilogue


def test_googlenet_training_step_launches_a_map_less_per_epilogue(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = corpus / "bvlc/models/bvlc_googlenet/train_val.prototxt"
    options = Options(phase="TRAIN", shapes={"data": (32, 3, 224, 224), "label": (32,)},
                      target=CudaTarget())  # fmt: skip
    kgraph = build_kernel_graph(load_layer_graph(path, options), options)
    folded = 0  # the launches the epilogues' maps made on their own
    for step in kgraph.forward + kgraph.backward:
        for instr in step.instrs:
            count, images = (instr.count, instr.images) if isinstance(instr, Loop) else (1, 1)
            body = instr.body if isinstance(instr, Loop) else [instr]
            folded += -(-count // images) * sum(len(epilogue(k)) for k in body)
    fused_launches = launches(kgraph)
    monkeypatch.setattr(cuda_codegen, "epilogue", lambda kernel: [])
    separate = launches(kgraph)
    print(f"GoogLeNet's training step: {separate} launches, {fused_launches} with epilogues")
    assert separate - fused_launches == folded
    # every convolution's and InnerProduct's forward at least (57 + 5 with a bias each)
    assert folded >= 62


def run(net: CompiledNet, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs, input gradients and parameter gradients of one forward and backward."""
    out = {k: np.array(v, np.float64) for k, v in net.forward(**feed).items()}
    net.clear_param_diffs()
    diffs = {k: np.cos(np.arange(v.size)).reshape(v.shape) for k, v in out.items()}
    out |= {f"{k} diff": np.array(v, np.float64) for k, v in net.backward(**diffs).items()}
    out |= {f"{n} {i} diff": np.array(b.diff, np.float64) for n, bs in net.params.items()
            for i, b in enumerate(bs)}  # fmt: skip
    return out


def check_against_separate_and_c(
    text: str, kgraph: KernelGraph, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, np.ndarray]:
    """Run ``kgraph`` (``text``'s CUDA build) on the emulated GPU: the same bits as its build
    whose parts are separate launches, and the C target's values (float64) within fp32's or
    (precision tf32) tf32's rounding; its results."""
    exact = CompiledNet(write_artifact(kernel_graph(CpuTarget(), text=text, dtype="float64"),
                                       folder / "exact"), seed=3)  # fmt: skip
    fused_net = CompiledNet(write_artifact(kgraph, folder / "fused"), seed=3)
    with monkeypatch.context() as patch:
        patch.setattr(cuda_codegen, "epilogue", lambda kernel: [])
        separate = CompiledNet(write_artifact(kgraph, folder / "separate"), seed=3)
    for net in (fused_net, separate):
        same_params(exact, net)
    rng = np.random.default_rng(4)
    feed = {name: rng.standard_normal(exact.blobs[name].data.shape) for name in exact.inputs}
    want = run(exact, feed)
    got, apart = run(fused_net, feed), run(separate, feed)
    assert set(got) == set(want) == set(apart) and len(want) >= 8
    tolerance = 1e-5 if kgraph.precision == "fp32" else 1e-2
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], apart[key], err_msg=key)
        scale = np.max(np.abs(value))
        np.testing.assert_allclose(got[key], value, rtol=0, atol=tolerance * scale, err_msg=key)
    return got


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("grid_limit", [None, 4], ids=["whole batch", "partial launch"])
def test_epilogues_compute_what_separate_launches_and_the_c_target_do(
    precision: str, grid_limit: int | None, tmp_path: Path, emulated_gpu: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """NET (see :func:`check_against_separate_and_c`). A grid limit of 4 blocks along z
    launches the loops over 3 + 2 images (the grouped convolution's, a batch of 2 per image,
    over 2 + 2 + 1): the last launch partial."""
    if grid_limit is not None:
        monkeypatch.setattr(batched_loops, "GRID_LIMIT", grid_limit)
    kgraph = kernel_graph(CudaTarget(archs=(emulated_gpu.arch,)), precision)
    images = {i.images for s in kgraph.forward for i in s.instrs if isinstance(i, Loop)}
    assert images == ({BATCH} if grid_limit is None else {3, 2})
    assert len(epilogues(kgraph)) == 4
    got = check_against_separate_and_c(NET, kgraph, tmp_path, monkeypatch)
    assert np.count_nonzero(got["ip"]) < got["ip"].size  # Dropout (and the ReLU) zeroed some


# "a" feeds two InnerProducts: in backward, "b"'s GEMM adds its part of a's gradient to "c"'s
# (C +=), and the ReLU's gradient after it must see the sum
TWO_READERS = """
name: "two_readers"
force_backward: true
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 5 dim: 12 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
        inner_product_param { num_output: 9 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c" type: "InnerProduct" bottom: "a" top: "c"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
"""


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_an_accumulating_gemms_epilogue_sees_the_sum(
    precision: str, tmp_path: Path, emulated_gpu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kgraph = kernel_graph(CudaTarget(archs=(emulated_gpu.arch,)), precision, text=TWO_READERS)
    accumulating = [k for k in kgraph.kernels() if epilogue(k) and k.parts()[0].accumulate]
    assert len(accumulating) == 1
    check_against_separate_and_c(TWO_READERS, kgraph, tmp_path, monkeypatch)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_a_source_with_epilogues_builds_with_nvcc(precision: str) -> None:
    kgraph = kernel_graph(CudaTarget(), precision)
    source = CudaRenderer(kgraph.target).render(kgraph).source
    assert "a map on this element of C */" in source
    build_cuda(source, cuda_flags(("90",)))
