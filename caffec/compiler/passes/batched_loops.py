"""Per-image loops as launches over many images (the CUDA target).

A convolution runs its kernels once per image: on a GPU, one launch per kernel
and image, each a small grid that leaves most multiprocessors idle and costs a
launch's overhead (GoogLeNet's training step at batch 32 made 9,600 of them).
Where a loop's images are independent (:mod:`~caffec.compiler.passes.loop_independence`:
the same analysis that runs them across CPU threads), one launch of each of its
kernels covers ``images`` images: the loop's ``images``, which code generation
turns into a grid axis over the images (:mod:`caffec.codegen.cuda`). Each image
running at once has its own copy of the loop's workspaces; a loop that adds
every image into one buffer (a weight gradient) adds them into one zeroed copy
per image of the launch instead, and after the loop a reduction adds the copies
into the buffer, always in copy order, so that a run gives the same bits every
time.

How many images a launch covers: all of the loop's, unless its copies would
take more than :data:`LOOP_COPIES_BUDGET` bytes, or its grid more than CUDA's
65,535 blocks along y or z. A loop whose count is not a multiple ends with a
partial launch; the launches are made as even as their number allows (32 images
in launches of at most 12: 11, 11, 10).
"""

from __future__ import annotations

from caffec.compiler.kernels import Buffer, Instr, KernelGraph, Loop, Operand
from caffec.compiler.passes.loop_independence import (
    LoopSplit,
    buffer_owners,
    copy_workspaces,
    split_loop,
    use_partial_sums,
)
from caffec.compiler.primitives import fill, reduce

# The bytes one loop's copies (of its workspaces and partial sums, one per image of a
# launch) may take. The copies of two loops are never live at once, so memory planning gives
# them the same bytes: the arena grows by about one loop's copies (GoogLeNet's training step
# at batch 32: 1678 -> 1702 MiB), little beside the activations, while eight images of
# GoogLeNet's largest columns (conv2/3x3: 576 x 3136 reals, 7.2 MB each) still go in one
# launch, a grid that fills a GPU.
LOOP_COPIES_BUDGET = 64 << 20
GRID_LIMIT = 65535  # blocks along a grid's y or z axis


def batch_loops(
    kgraph: KernelGraph, itemsize: int, budget: int = LOOP_COPIES_BUDGET
) -> KernelGraph:
    """Give every loop of ``kgraph`` whose images are independent its images per launch,
    splitting it and adding partial sums where that makes them so (see above)."""
    steps = [s for steps in kgraph.steps().values() for s in steps]
    owners = buffer_owners(steps)
    for step in steps:
        instrs: list[Instr] = []
        for instr in step.instrs:
            if not isinstance(instr, Loop):
                instrs.append(instr)
                continue
            for split in split_loop(instr, owners):
                instrs += _batched(split, itemsize, budget, kgraph.buffers)
        step.instrs = instrs
    kgraph.number_buffers()  # the partial sums' buffers are new
    return kgraph


def images_per_launch(split: LoopSplit, itemsize: int, budget: int) -> int:
    """How many of ``split``'s images one launch covers (1: image after image)."""
    loop = split.loop
    if not split.independent:
        return 1
    per_image = sum(b.size for b in split.workspaces) + sum(b.size for b in split.accumulated)
    most = min(loop.count, budget // (per_image * itemsize)) if per_image else loop.count
    # a GEMM's grid z counts its batch for each image
    batches = [p.attrs["batch"] for k in loop.body for p in k.parts() if p.prim == "gemm"]
    most = min(most, GRID_LIMIT // max([1, *batches]))
    if most < 2:
        return 1
    launches = -(-loop.count // most)
    return -(-loop.count // launches)


def _batched(split: LoopSplit, itemsize: int, budget: int, buffers: list[Buffer]) -> list[Instr]:
    """``split``'s loop with its images per launch, and the kernels that zero its partial sums
    before it and add them up after it; new buffers go to ``buffers``."""
    loop = split.loop
    loop.images = images_per_launch(split, itemsize, budget)
    if loop.images < 2:
        return [loop]
    copy_workspaces(split, loop.images)
    sums = use_partial_sums(split, loop.images)
    buffers += [partial for partial, _ in sums]
    zero = [fill(Operand(p, every_copy=True), 0.0, size=p.footprint) for p, _ in sums]
    # the copies added in copy order: the same sum on every run
    add = [reduce(Operand(p, every_copy=True), t, (p.copies, t.size), [0], accumulate=True)
           for p, t in sums]  # fmt: skip
    return [*zero, loop, *add]
