"""Per-image loops across threads: which loops qualify, how they split, and same results."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.kernels import Loop
from caffec.compiler.passes.parallel_loops import parallelize_loops
from caffec.compiler.passes.plan_memory import plan_memory
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    load_layer_graph,
)
from caffec.runtime.compiled_net import CompiledNet

LENET = Path(__file__).resolve().parents[2] / "examples/mnist/lenet_train_test.prototxt"
OPTIONS = Options(phase="TRAIN", shapes={"data": (6, 1, 28, 28)}, backward=True)


def lenet(threads: int):  # type: ignore[no-untyped-def]
    """LeNet's kernel graph with its loops over images on ``threads``; every convolution by
    im2col + GEMM (conv2's weight gradient would otherwise run direct, in no loop)."""
    options = replace(OPTIONS, skip=frozenset({"parallel_loops"}), choose_algorithms=False)
    kgraph = build_kernel_graph(load_layer_graph(LENET, options), options)
    parallelize_loops(kgraph, threads=threads)
    kgraph.memory_plan = plan_memory(kgraph, blob_of=kgraph.memory_plan.blob_of)
    return kgraph


def loops(steps: list) -> list[tuple[str, Loop]]:
    return [(s.layer, i) for s in steps for i in s.instrs if isinstance(i, Loop)]


def test_convolution_loops_run_across_threads_weight_gradients_in_partial_sums() -> None:
    kgraph = lenet(threads=3)
    forward = loops(kgraph.forward)
    assert [(name, loop.threads) for name, loop in forward] == [("conv1", 3), ("conv2", 3)]
    for _, loop in forward:  # im2col's columns: one copy per thread
        columns = [o.buffer for k in loop.body for p in k.attrs["parts"] for o in p.writes
                   if o.buffer.kind == "workspace"]  # fmt: skip
        assert columns and all(b.copies == 3 for b in columns)
    backward = [(name, loop.threads) for name, loop in loops(kgraph.backward)]
    # conv2: its weight gradient and its input gradient (GEMM, col2im) are two loops on the
    # threads; conv1 has only the weight gradient
    assert backward == [("conv2", 3), ("conv2", 3), ("conv1", 3)]
    for step in (s for s in kgraph.backward if s.layer in ("conv1", "conv2")):
        # the weight gradient: each thread's images into its own zeroed copy, added up after
        loop = next(i for i in step.instrs if isinstance(i, Loop) and i.partial_sums)
        [(partial, total)] = loop.partial_sums
        assert partial.copies == 3 and partial.kind == "workspace"
        assert total.kind == "param_grad"
        assert kgraph.memory_plan.intervals.get(partial), "the planner sees the loop use it"
    arena = [b for b in kgraph.buffers if b.kind == "workspace" and b.copies > 1]
    plan = kgraph.memory_plan
    for b in arena:  # each copy of a workspace has its own bytes
        others = [o for o in plan.offsets if o is not b and plan.intervals.get(o)]
        start, end = plan.offsets[b], plan.offsets[b] + b.footprint * plan.itemsize
        for o in others:
            o_start = plan.offsets[o]
            o_end = o_start + o.footprint * plan.itemsize
            live_a, live_o = plan.intervals[b], plan.intervals[o]
            if live_a and live_o and live_a[0] <= live_o[1] and live_o[0] <= live_a[1]:
                assert end <= o_start or o_end <= start, (b, o)


def test_one_thread_changes_nothing() -> None:
    kgraph = lenet(threads=1)
    assert all(loop.threads == 1 for _, loop in loops(kgraph.forward + kgraph.backward))
    assert all(b.copies == 1 for b in kgraph.buffers)


def test_threaded_loops_compute_what_the_reference_computes(tmp_path: Path) -> None:
    reference_options = replace(OPTIONS, opt_level=0)
    reference = build_kernel_graph(load_layer_graph(LENET, reference_options), reference_options)
    nets = [CompiledNet(write_artifact(k, tmp_path / n), seed=2)
            for k, n in ((reference, "ref"), (lenet(threads=3), "threads"))]  # fmt: skip
    rng = np.random.default_rng(1)
    feed = {"data": rng.random((6, 1, 28, 28)), "label": rng.integers(0, 10, 6)}
    for name, blobs in nets[0].params.items():
        for a, b in zip(blobs, nets[1].params[name], strict=True):
            b.data[...] = a.data
    losses = [float(net.forward(**feed)["loss"]) for net in nets]
    for net in nets:
        net.backward()
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    for name, blobs in nets[0].params.items():
        for a, b in zip(blobs, nets[1].params[name], strict=True):
            np.testing.assert_allclose(b.diff, a.diff, rtol=1e-5, atol=1e-7, err_msg=name)
