"""Which images of a per-image loop are independent: the analysis both targets' loop passes use.

A convolution runs its im2col, GEMM and epilogue once per image. Two iterations
may run at the same time (on two CPU threads, or in one CUDA launch) where they
touch disjoint memory:

* every output of a kernel in the loop is a per-image slice (it advances with
  the image), or a *workspace of the loop* (im2col's columns: nothing outside
  the loop touches it, and each iteration writes it before reading it), which
  then needs one copy per image running at once;
* nothing the loop writes is read from a slice other than the image's own.

A loop that also accumulates into one buffer for every image (a convolution's
weight gradient) is first split in two where its kernels do not depend on each
other: the weight-gradient kernels and the input-gradient kernels (GEMM,
col2im) become two loops. The input-gradient loop is independent as is; the
weight-gradient loop is where each of its whole-buffer accumulations goes into
*partial sums* instead, one zeroed copy per image running at once, added into
the buffer after the loop (:func:`use_partial_sums`). Only the order of that
sum's terms changes. How the copies are made and added up is the target's:
:mod:`~caffec.compiler.passes.parallel_loops` (C, threads) and
:mod:`~caffec.compiler.passes.batched_loops` (CUDA, images per launch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffec.compiler.kernels import Buffer, Kernel, Loop, Operand, Step, kernels_of


@dataclass(eq=False)
class LoopSplit:
    """A loop and what lets its images run at once: ``independent`` (else it runs image after
    image), the workspaces that need a copy per image running at once, and the buffers it
    accumulates into whole, which need partial sums."""

    loop: Loop
    independent: bool
    workspaces: set[Buffer] = field(default_factory=set)
    accumulated: list[Buffer] = field(default_factory=list)


def buffer_owners(steps: list[Step]) -> dict[Buffer, set[int]]:
    """The instructions (by id) that touch each buffer."""
    owners: dict[Buffer, set[int]] = {}
    for instr in (i for s in steps for i in s.instrs):
        for kernel in kernels_of(instr):
            for o, _ in operands(kernel):
                owners.setdefault(o.buffer, set()).add(id(instr))
    return owners


def operands(kernel: Kernel) -> list[tuple[Operand, bool]]:
    """(operand, written) for every operand of every part of ``kernel``."""
    out = []
    for part in kernel.parts():
        out += [(o, False) for o in part.reads]
        out += [(o, True) for o in part.writes]
    return out


def split_loop(loop: Loop, owners: dict[Buffer, set[int]]) -> list[LoopSplit]:
    """``loop`` as one loop, or two where its whole-buffer accumulations and its other kernels
    do not depend on each other, each with what makes its images independent (see above)."""
    local = _local_workspaces(loop, owners)
    written: dict[Buffer, set[tuple[int, int]]] = {}
    for kernel in loop.body:
        for o, is_write in operands(kernel):
            if is_write and o.buffer not in local:
                written.setdefault(o.buffer, set()).add((o.offset, o.step))
    free, bound = [], []
    for kernel in loop.body:
        (free if _independent(kernel, written, local) else bound).append(kernel)
    parts = [loop]
    if free and bound and not _depends(free, bound) and not _depends(bound, free):
        parts = [Loop(loop.count, bound), Loop(loop.count, free)]
    return [_split(part, written, local) for part in parts]


def use_partial_sums(split: LoopSplit, copies: int) -> list[tuple[Buffer, Buffer]]:
    """Make ``split``'s loop accumulate into new partial-sum workspaces of ``copies`` copies
    instead of its accumulated buffers; (partial, total) for each. The caller zeroes the
    partial sums before the loop and adds them into the totals after it."""
    sums = {total: Buffer(f"{total.name} partial sums", total.shape, "workspace", copies=copies)
            for total in split.accumulated}  # fmt: skip
    for kernel in split.loop.body:  # a fused kernel lists its parts' operands too
        for listed in (o for k in {kernel, *kernel.parts()} for o in (k.reads, k.writes)):
            listed[:] = [Operand(sums[o.buffer]) if o.buffer in sums else o for o in listed]
    return [(partial, total) for total, partial in sums.items()]


def copy_workspaces(split: LoopSplit, copies: int) -> None:
    """Give each workspace of ``split``'s loop at least ``copies`` copies."""
    for kernel in split.loop.body:
        for o, _ in operands(kernel):
            if o.buffer in split.workspaces:
                o.buffer.copies = max(o.buffer.copies, copies)


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
    for o, written in operands(kernel):
        if o.buffer in local:
            continue
        if written and not o.step:
            return False  # one buffer for all images: a race
        if not written and o.buffer in written_in_loop:
            if written_in_loop[o.buffer] != {(o.offset, o.step)}:
                return False  # reads another image's slice, or all of it
    return True


def _split(
    loop: Loop, written: dict[Buffer, set[tuple[int, int]]], local: set[Buffer]
) -> LoopSplit:
    """What makes ``loop``'s images independent: its workspaces' copies and partial sums for
    whole-buffer accumulations at offset 0 that the loop never reads; else not independent."""
    accumulated: list[Buffer] = []
    for kernel in loop.body:
        for part in kernel.parts():
            for o in part.writes:
                if o.buffer in local or o.step or o.buffer in accumulated:
                    continue
                if not part.accumulate or o.offset or written[o.buffer] != {(0, 0)}:
                    return LoopSplit(loop, False)
                accumulated.append(o.buffer)
    read = {o.buffer for k in loop.body for o, w in operands(k) if not w}
    summed = local | set(accumulated)
    if read & set(accumulated) or not all(_independent(k, written, summed) for k in loop.body):
        return LoopSplit(loop, False)
    touched = {o.buffer for k in loop.body for o, _ in operands(k)}
    return LoopSplit(loop, True, local & touched, accumulated)


def _depends(later: list[Kernel], earlier: list[Kernel]) -> bool:
    """Whether any kernel of ``later`` touches what a kernel of ``earlier`` writes, or writes
    what it reads (then the two groups cannot be run as separate loops)."""
    written = {o.buffer for k in earlier for o, w in operands(k) if w}
    read = {o.buffer for k in earlier for o, w in operands(k) if not w}
    for k in later:
        for o, w in operands(k):
            if o.buffer in written or (w and o.buffer in read):
                return True
    return False
