"""Per-image loops across threads: images of a batch are independent where the loop says so.

A convolution runs its im2col, GEMM and epilogue once per image. Each of those
kernels may be threaded inside, but for small images (LeNet, CIFAR-10, the
7x7 maps of GoogLeNet) the work per image is too small for that to pay, and the
fused epilogues run on one thread. Running the images themselves on the threads
does pay, where iterations touch disjoint memory:

* every output of a kernel in the loop is a per-image slice (it advances with
  the image), or a *workspace of the loop* (im2col's columns: nothing outside
  the loop touches it, and each iteration writes it before reading it), which
  then gets one copy per thread;
* nothing the loop writes is read from a slice other than the image's own.

A loop that also accumulates into one buffer for every image (a convolution's
weight gradient) is first split in two where its kernels do not depend on each
other: the weight-gradient kernels and the input-gradient kernels (GEMM,
col2im) become two loops. The input-gradient loop runs across threads as is;
the weight-gradient loop does too, each thread adding its images into a
zeroed copy of its own (*partial sums*, the loop's ``partial_sums``: the loop
zeroes them before its iterations and adds them into the gradient after). Only
the order of that sum's terms changes.

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

from caffec.compiler.kernels import (
    Buffer,
    Kernel,
    KernelGraph,
    Loop,
    Operand,
    Step,
    kernels_of,
)


def parallelize_loops(kgraph: KernelGraph, threads: int) -> KernelGraph:
    """Split and mark the loops of ``kgraph`` that may run across ``threads`` threads (see
    above)."""
    if threads < 2:
        return kgraph
    steps = [s for steps in kgraph.steps().values() for s in steps]
    owners: dict[Buffer, set[int]] = {}  # the instructions that touch each buffer
    for instr in (i for s in steps for i in s.instrs):
        for kernel in kernels_of(instr):
            for o, _ in _operands(kernel):
                owners.setdefault(o.buffer, set()).add(id(instr))
    for step in steps:
        _split_and_mark(step, owners, threads, kgraph.buffers)
    kgraph.number_buffers()  # the partial sums' buffers are new
    return kgraph


def _operands(kernel: Kernel) -> list[tuple[Operand, bool]]:
    """(operand, written) for every operand of every part of ``kernel``."""
    out = []
    for part in kernel.parts():
        out += [(o, False) for o in part.reads]
        out += [(o, True) for o in part.writes]
    return out


def _local_workspaces(loop: Loop, owners: dict[Buffer, set[int]]) -> set[Buffer]:
    """Workspaces only this loop touches, each iteration writing before it reads."""
    local = set()
    for kernel in loop.body:
        for part in kernel.parts():
            for o in part.writes:
                if o.buffer.kind == "workspace" and not part.accumulate and not o.step:
                    local.add(o.buffer)
    seen: set[Buffer] = set()
    for kernel in loop.body:  # first access must be a write
        for part in kernel.parts():
            for o in part.reads:
                if o.buffer in local and o.buffer not in seen:
                    local.discard(o.buffer)
            seen |= {o.buffer for o in part.writes}
    return {b for b in local if owners[b] == {id(loop)}}


def _independent(kernel: Kernel, written_in_loop: dict[Buffer, set[tuple[int, int]]],
                 local: set[Buffer]) -> bool:  # fmt: skip
    """Whether ``kernel``'s iterations touch disjoint memory (see the module docstring)."""
    for o, written in _operands(kernel):
        if o.buffer in local:
            continue
        if written and not o.step:
            return False  # one buffer for all images: a race
        if not written and o.buffer in written_in_loop:
            if written_in_loop[o.buffer] != {(o.offset, o.step)}:
                return False  # reads another image's slice, or all of it
    return True


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
        local = _local_workspaces(instr, owners)
        written: dict[Buffer, set[tuple[int, int]]] = {}
        for kernel in instr.body:
            for o, is_write in _operands(kernel):
                if is_write and o.buffer not in local:
                    written.setdefault(o.buffer, set()).add((o.offset, o.step))
        free, bound = [], []
        for kernel in instr.body:
            (free if _independent(kernel, written, local) else bound).append(kernel)
        if free and bound and not _depends(free, bound) and not _depends(bound, free):
            instrs.append(_with_partial_sums(Loop(instr.count, bound), written, local, threads,
                                             buffers))  # fmt: skip
            instrs.append(_threaded(Loop(instr.count, free), local, threads))
        elif not bound:
            instrs.append(_threaded(instr, local, threads))
        else:
            instrs.append(_with_partial_sums(instr, written, local, threads, buffers))
    step.instrs = instrs


def _with_partial_sums(
    loop: Loop,
    written: dict[Buffer, set[tuple[int, int]]],
    local: set[Buffer],
    threads: int,
    buffers: list[Buffer],
) -> Loop:
    """``loop`` across threads, its whole-buffer accumulations into per-thread partial sums
    (zeroed before, added up after), where those are all that keeps its images apart;
    else ``loop`` as it is."""
    count = min(threads, loop.count)
    sums = {}  # the accumulated buffer -> its partial sums
    for kernel in loop.body:
        for part in kernel.parts():
            for o in part.writes:
                if o.buffer in local or o.step:
                    continue
                if not part.accumulate or o.offset or written[o.buffer] != {(0, 0)}:
                    return loop
                sums[o.buffer] = Buffer(f"{o.buffer.name} partial sums", o.buffer.shape,
                                        "workspace", copies=count)  # fmt: skip
    read = {o.buffer for k in loop.body for o, w in _operands(k) if not w}
    if count < 2 or not sums or read & set(sums):
        return loop
    for kernel in loop.body:  # a fused kernel lists its parts' operands too
        for operands in (o for k in {kernel, *kernel.parts()} for o in (k.reads, k.writes)):
            operands[:] = [Operand(sums[o.buffer]) if o.buffer in sums else o for o in operands]
    buffers += sums.values()
    loop.partial_sums = [(partial, total) for total, partial in sums.items()]
    return _threaded(loop, local | set(sums.values()), threads)


def _depends(later: list[Kernel], earlier: list[Kernel]) -> bool:
    """Whether any kernel of ``later`` touches what a kernel of ``earlier`` writes, or writes
    what it reads (then the two groups cannot be run as separate loops)."""
    written = {o.buffer for k in earlier for o, w in _operands(k) if w}
    read = {o.buffer for k in earlier for o, w in _operands(k) if not w}
    for k in later:
        for o, w in _operands(k):
            if o.buffer in written or (w and o.buffer in read):
                return True
    return False


def _threaded(loop: Loop, local: set[Buffer], threads: int) -> Loop:
    loop.threads = min(threads, loop.count)
    if loop.threads > 1:
        for kernel in loop.body:
            for o, _ in _operands(kernel):
                if o.buffer in local:
                    o.buffer.copies = max(o.buffer.copies, loop.threads)
    return loop
