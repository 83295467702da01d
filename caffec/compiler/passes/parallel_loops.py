"""Per-image loops across threads (the C target): images of a batch are independent where
the loop says so.

A convolution runs its im2col, GEMM and epilogue once per image. Each of those
kernels may be threaded inside, but for small images (LeNet, CIFAR-10, the
7x7 maps of GoogLeNet) the work per image is too small for that to pay, and the
fused epilogues run on one thread. Running the images themselves on the threads
does pay, where iterations touch disjoint memory: which loops qualify, how a
convolution's backward loop is split in two, and which buffers need copies or
partial sums is :mod:`~caffec.compiler.passes.loop_independence`'s analysis.
Here a loop's ``threads`` is set, its workspaces get one copy per thread, and
its weight gradients go into per-thread partial sums (the loop's
``partial_sums``: the generated loop zeroes them before its iterations and adds
them into the gradient after).

The arena holds each workspace, and each partial sum, once per thread a loop may
run on: the CPU target's ``threads`` (the CPUs of the compiling machine, at most
eight), and no more than images. How many threads it does run on is the
runtime's choice (:mod:`caffec.runtime.threads`), up to that many: the
generated loop takes the smaller of the two, zeroes and adds up only the
partial sums of the threads it runs on, and wakes no other thread where the
runtime gives it one. Each image is computed exactly as before; only
the partial sums add a weight gradient's terms in another order, the same one
for the same thread count.
"""

from __future__ import annotations

from caffec.compiler.kernels import Buffer, KernelGraph, Loop, Step
from caffec.compiler.passes.loop_independence import (
    buffer_owners,
    copy_workspaces,
    split_loop,
    use_partial_sums,
)


def parallelize_loops(kgraph: KernelGraph, threads: int) -> KernelGraph:
    """Split and mark the loops of ``kgraph`` that may run across ``threads`` threads (see
    above)."""
    if threads < 2:
        return kgraph
    steps = [s for steps in kgraph.steps().values() for s in steps]
    owners = buffer_owners(steps)
    for step in steps:
        _split_and_mark(step, owners, threads, kgraph.buffers)
    kgraph.number_buffers()  # the partial sums' buffers are new
    return kgraph


def _split_and_mark(
    step: Step, owners: dict[Buffer, set[int]], threads: int, buffers: list[Buffer]
) -> None:
    """Mark ``step``'s loops that may run across threads, splitting or giving them partial
    sums where that makes them so; new buffers go to ``buffers``."""
    instrs = []
    for instr in step.instrs:
        if not isinstance(instr, Loop):
            instrs.append(instr)
            continue
        for split in split_loop(instr, owners):
            loop, count = split.loop, min(threads, split.loop.count)
            instrs.append(loop)
            if not split.independent or count < 2:
                continue
            if split.accumulated:
                loop.partial_sums = use_partial_sums(split, count)
                buffers += [partial for partial, _ in loop.partial_sums]
            loop.threads = count
            copy_workspaces(split, count)
    step.instrs = instrs
