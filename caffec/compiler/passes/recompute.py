"""Recomputation: drop a state forward keeps for backward when backward can find it again.

MAX pooling's forward records, for each output, where in its window the
maximum was (the argmax mask, as large as the output), and its backward
routes each gradient there. The same position can be found again in
backward by scanning the window of the input, as forward did, with the same
comparison and so the same answer, ties and all.

**The cost rule.** Scanning the window again costs one pass over the input,
cheap next to the convolutions around a pooling layer; keeping the mask costs
its memory from forward until backward. The pass therefore recomputes
exactly when that saves memory: when the pooling's input is live at its
backward kernel anyway (the user sees it, or another kernel reads it there or
later, as a convolution's weight gradient reads its input, or a ReLU's
gradient its output). Then the mask is dropped and nothing is kept in its
place. Where the input would die after forward (LeNet's first pooling reads
a convolution's output that nothing else needs), the mask is smaller than the
input and stays. A mask that is a top of the layer (the user asked for it)
always stays; one that nothing reads (a build without backward) is not
written at all.
"""

from __future__ import annotations

from caffec.compiler.kernels import Buffer, Kernel, KernelGraph, Operand, kernels_of
from caffec.compiler.passes.plan_memory import liveness, pinned_buffers, schedule


def recompute(kgraph: KernelGraph, keep_blobs: bool = True) -> KernelGraph:
    """Replace the MAX pooling masks that are cheaper to find again (see above)."""
    bound = {b.data for b in kgraph.blobs.values()}
    masks: dict[Buffer, tuple[Kernel, Operand]] = {}  # mask -> (forward kernel, its input)
    for step in kgraph.forward:
        for kernel in step.kernels():
            if kernel.prim == "pool" and len(kernel.writes) == 2:
                mask = kernel.writes[1].buffer
                if mask not in bound:
                    masks[mask] = (kernel, kernel.reads[0])
    if not masks:
        return kgraph
    touched, _, _ = liveness(kgraph, repeat=keep_blobs)
    pinned = pinned_buffers(kgraph, keep_blobs)
    readers: dict[Buffer, list[tuple[int, Kernel]]] = {}
    for position, instr in enumerate(schedule(kgraph), start=1):
        for kernel in kernels_of(instr):
            for read in kernel.reads:
                if read.buffer in masks:
                    readers.setdefault(read.buffer, []).append((position, kernel))
    for mask, (forward, source) in masks.items():
        uses = readers.get(mask, [])
        if not uses:  # no backward reads it (a TEST build): forward need not write it
            forward.writes.pop()
            continue
        if any(k.prim != "pool_grad" for _, k in uses):
            continue
        last = max(position for position, _ in uses)
        if source.buffer not in pinned and touched.get(source.buffer, (0, 0))[1] < last:
            continue  # the input would die before backward: keeping the mask costs less
        for _, kernel in uses:
            kernel.reads[1] = source
            kernel.attrs["recompute"] = True
        forward.writes.pop()
    kgraph.prune()
    return kgraph
