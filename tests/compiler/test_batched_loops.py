"""CUDA launches over many images of a per-image loop: how many launches, what they compute.

The ``batched_loops`` pass gives a loop whose images are independent its images per
launch; GoogLeNet's training step must then make a tenth of the launches or fewer, and
the batched loops (whole batches, and launches of a few images ending with a partial
one) must compute on the emulated GPU what the C target computes, weight gradients
(partial sums) the same bits on every run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from nets import same_params

from caffec.codegen.artifact_writer import write_artifact
from caffec.codegen.cuda import CudaRenderer
from caffec.compiler.kernels import KernelGraph, Loop
from caffec.compiler.passes.batched_loops import LOOP_COPIES_BUDGET, batch_loops
from caffec.compiler.passes.plan_memory import plan_memory
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of, load_layer_graph
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.frontend.loader import parse_net
from caffec.runtime.compiled_net import CompiledNet

BATCH = 5
# one convolution with two bottoms, a grouped one, a deconvolution, a 1x1 one; force_backward
# gives every input its gradient
NET = """
name: "batched"
force_backward: true
layer { name: "in" type: "Input" top: "data" top: "data2"
        input_param { shape { dim: 5 dim: 4 dim: 7 dim: 7 } shape { dim: 5 dim: 4 dim: 7 dim: 7 } } }
layer { name: "two" type: "Convolution" bottom: "data" bottom: "data2" top: "a" top: "b"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "grouped" type: "Convolution" bottom: "a" top: "g"
        convolution_param { num_output: 4 group: 2 kernel_size: 3 stride: 2
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "up" type: "Deconvolution" bottom: "g" top: "up"
        convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "point" type: "Convolution" bottom: "b" top: "p"
        convolution_param { num_output: 5 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
"""
TOPS = ("up", "p")
# two images of the copies of "two"'s weight-gradient loop: columns (36 x 49) and a partial
# sum (6 x 36) in float64
SMALL_BUDGET = 2 * 8 * (36 * 49 + 6 * 36)


def kernel_graph(target: object, budget: int | None = None) -> KernelGraph:
    """NET's kernel graph for ``target`` in float64, with its loops batched under ``budget``
    bytes of copies where one is given (else as the pipeline batches them)."""
    options = Options(phase="TRAIN", backward=True, dtype="float64", target=target)
    if budget is not None:
        options = replace(options, skip=frozenset({"batched_loops"}))
    net, spans = parse_net(NET)
    kgraph = build_kernel_graph(layer_graph_of(net, spans, options), options)
    if budget is not None:
        batch_loops(kgraph, 8, budget)
        kgraph.memory_plan = plan_memory(kgraph, blob_of=kgraph.memory_plan.blob_of)
    return kgraph


def loops(kgraph: KernelGraph) -> list[Loop]:
    steps = kgraph.forward + kgraph.backward
    return [i for s in steps for i in s.instrs if isinstance(i, Loop)]


def launches(kgraph: KernelGraph) -> int:
    """The launches one forward and backward make."""
    cuda = CudaRenderer(kgraph.target).render(kgraph).cuda
    assert cuda is not None
    return sum(-(-instr.count // instr.images) * len(cuda.functions[k])
               for d in ("forward", "backward") for step in cuda.steps[d] for instr in step
               for k in instr.kernels)  # fmt: skip


def test_googlenet_training_step_makes_a_tenth_of_the_launches(corpus: Path) -> None:
    path = corpus / "bvlc/models/bvlc_googlenet/train_val.prototxt"
    options = Options(phase="TRAIN", shapes={"data": (32, 3, 224, 224), "label": (32,)},
                      target=CudaTarget())  # fmt: skip
    graph = load_layer_graph(path, options)
    batched = build_kernel_graph(graph, options)
    per_image = build_kernel_graph(graph, replace(options, skip=frozenset({"batched_loops"})))
    assert launches(per_image) >= 10 * launches(batched)
    # no convolution loop runs image after image: 64 MiB holds every one's copies
    conv = {s.layer for s in batched.forward + batched.backward if "Convolution" in s.layer_type}
    batched_conv = [i for s in batched.forward + batched.backward if s.layer in conv
                    for i in s.instrs if isinstance(i, Loop)]  # fmt: skip
    assert batched_conv and all(loop.images > 1 for loop in batched_conv)
    # the copies live one loop at a time: the arena grows by less than one loop's budget
    growth = batched.memory_plan.arena_bytes - per_image.memory_plan.arena_bytes
    assert 0 < growth <= LOOP_COPIES_BUDGET


def copied(loop: Loop) -> bool:
    """Whether ``loop`` needs a copy of something per image of a launch (a workspace, or a
    whole-buffer accumulation: a weight gradient)."""
    return any(o.buffer.kind == "workspace" or (not o.step and o.buffer.kind == "param_grad")
               for k in loop.body for p in k.parts() for o in p.writes)  # fmt: skip


def test_loops_launch_whole_batches_or_even_groups_with_partial_sums() -> None:
    whole = loops(kernel_graph(CudaTarget()))
    assert whole and all(loop.images == loop.count == BATCH for loop in whole)
    # no room for copies: only the loops that need none launch over images
    tight = loops(kernel_graph(CudaTarget(), budget=1))
    assert {(copied(loop), loop.images) for loop in tight} == {(True, 1), (False, BATCH)}
    # room for two images of the largest loop's copies: launches of 2, 2 and 1 images
    small = kernel_graph(CudaTarget(), budget=SMALL_BUDGET)
    assert {loop.images for loop in loops(small)} == {2, BATCH}
    sums = 0
    for step in small.backward:
        for number, instr in enumerate(step.instrs):
            partials = [o.buffer for k in getattr(instr, "body", []) for p in k.parts()
                        for o in p.writes if o.buffer.name.endswith("partial sums")]  # fmt: skip
            if not partials:
                continue
            # zeroed before the loop, added up after it in copy order: a copy per image
            zero, add = step.instrs[number - 1], step.instrs[number + 1]
            assert zero.prim == "map" and zero.writes[0].buffer is partials[0]
            assert add.prim == "reduce" and add.accumulate and add.reads[0].buffer is partials[0]
            assert partials[0].copies == instr.images
            assert add.attrs["red"] == [(instr.images, partials[0].size)]
            sums += 1
    assert sums == 5  # the weight gradients: two for "two", one each for the others


@pytest.mark.parametrize("budget", [None, SMALL_BUDGET], ids=["whole batch", "partial"])
def test_batched_loops_compute_what_the_c_target_does(
    budget: int | None, tmp_path: Path, any_gpu
) -> None:
    c = CompiledNet(write_artifact(kernel_graph(CpuTarget()), tmp_path / "c"), seed=3)
    target = CudaTarget(archs=(any_gpu.arch,))
    cuda = CompiledNet(write_artifact(kernel_graph(target, budget), tmp_path / "cuda"), seed=3)
    same_params(c, cuda)
    rng = np.random.default_rng(4)
    feed = {name: rng.standard_normal((BATCH, 4, 7, 7)) for name in ("data", "data2")}
    results = []
    for net in (c, cuda):
        out = {k: v.copy() for k, v in net.forward(**feed).items()}
        net.clear_param_diffs()
        diffs = {top: np.cos(np.arange(out[top].size)).reshape(out[top].shape) for top in TOPS}
        out |= {f"{k} diff": v.copy() for k, v in net.backward(**diffs).items()}
        out |= {f"{n} {i} diff": b.diff.copy() for n, bs in net.params.items()
                for i, b in enumerate(bs)}  # fmt: skip
        results.append(out)
        if net is cuda:  # the partial sums add up in one order: the same bits again
            net.clear_param_diffs()
            net.backward(**diffs)
            for n, bs in net.params.items():
                for i, b in enumerate(bs):
                    assert np.array_equal(b.diff, out[f"{n} {i} diff"]), (n, i)
    assert set(results[0]) == set(results[1]) and len(results[0]) > 8
    # each loop launched from its first image and every images-th after it, by pass or kernel
    # by kernel (caffec time --kernels)
    executor, cuda_steps = cuda._exec, cuda.artifact.manifest.cuda.steps
    instrs = [i for d in ("forward", "backward", "update") for s in cuda_steps[d] for i in s]
    assert {(i.count, i.images) for i in instrs if i.count > 1} == (
        {(BATCH, BATCH)} if budget is None else {(BATCH, 2), (BATCH, BATCH)}
    )
    by_pass = [call for d in ("forward", "backward", "update")
               for call in executor._launches(d, 0, len(cuda_steps[d]))]  # fmt: skip
    assert executor._launches("kernels", 0, sum(len(i.kernels) for i in instrs)) == by_pass
    if budget is not None:
        assert {call[3] for call in by_pass} == {0, 2, 4}
    for key, value in results[0].items():
        np.testing.assert_allclose(results[1][key], value, rtol=1e-10, atol=1e-12, err_msg=key)
