"""Memory planning: liveness over the whole schedule, and arena offsets that share memory.

Every buffer of an *arena kind* (``input``, ``value``, ``grad``, ``seed``,
``workspace``) lives in one allocation, the arena; parameters, their
gradients, solver histories, hyper and counter buffers are persistent and
are not planned here.

**Positions.** The schedule is the forward steps, then the backward steps,
then the update steps, each instruction one position (1, 2, ...): a kernel
is one position, and a :class:`Loop` is one position as a whole, so every
operand of its body is live for the whole loop. A buffer's *interval* is
[first position that reads or writes it, last one], closed; two buffers may
share bytes only when their intervals are disjoint. Touching at one
position counts as overlapping, so a kernel never finds one of its outputs
in the bytes of one of its inputs (writing in place is a separate decision,
not this pass's). The three passes are separate entry points, and pycaffe
may run one again without the one before (``backward()`` twice after one
``forward()`` accumulates the parameter gradients twice), so a buffer used
in more than one pass lives to the end of the last pass that uses it: a
pooling mask forward writes stays intact through the whole backward pass.

**Pinned buffers** live for the whole run (interval [0, last + 1]) and so
never share bytes with anything. A buffer is pinned when something outside
the kernels reads or writes it:

* ``input`` buffers (the runtime writes them before forward), ``seed``
  buffers and ``output_diffs`` (written before backward), DummyData fills;
* the blob-bound buffers: every ``data`` and ``diff`` buffer of
  ``kgraph.blobs``, because pycaffe's ``net.blobs[name].data`` and ``.diff``
  show them after forward and backward, and a partial ``forward(start=...)``
  reads them as an earlier forward left them. This is the ``keep_blobs``
  rule (the default). With ``keep_blobs=False`` only what ``forward()`` and
  ``backward()`` return stays pinned: the outputs' data (all ``caffec run``
  and the solver read) and the inputs' diffs; other blobs then show whatever
  shares their bytes, and partial runs are not supported;
* a buffer the schedule reads (or accumulates into) before it writes it:
  it carries its contents from one run to the next.

Everything else is shared: workspaces, the layer states no binding exposes
(pooling masks, softmax probabilities, ...), the earlier versions of in-place
blobs (``ip1`` before ReLU makes ``ip1'``) and gradients nobody binds. So a
partial run reads what an earlier run left only in bound buffers: one that
starts where a layer reads an earlier version of an in-place blob
(``forward(start="relu1")`` reads ``ip1``, which no binding shows) reads
bytes a later layer may have reused. (Caffe's in-place layers would read
the later version there; the reference layout does not give that either.)
A buffer nothing touches and nothing pins may share bytes with anything
unpinned.

**Offsets.** Greedy by size with best fit: pinned buffers first, one after
another in buffer order at the bottom of the arena; then the rest from the
largest to the smallest (ties: the earlier first use, then buffer order).
Each one goes into the smallest gap, between the buffers already placed
whose intervals overlap its own, that holds it (ties: the lowest offset),
or above the highest of them when no gap does. Every size is rounded up to
:data:`ALIGN` bytes, so every offset is 64-byte aligned. The result depends
only on the kernel graph: no hashing, no randomness.

With ``share=False`` the layout is the reference one (every arena buffer its
own bytes, in buffer order): what ``Options(plan_memory=False)`` builds.

**The naive size** is what Caffe allocates for the same net: for every blob
its data, and its diff when the net runs backward (Caffe allocates diffs on
first touch, and a forward-only net touches none), with the in-place versions
of a blob counted once at their largest; plus, once each, the workspaces and
the layer states (Caffe's ``col_buffer_``, ``max_idx_``, ``prob_``...). No
alignment padding is counted there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caffec.compiler.kernels import Buffer, Instr, Kernel, KernelGraph, Loop

ALIGN = 64  # bytes; every arena buffer starts on a cache line
ARENA_KINDS = ("input", "value", "grad", "seed", "workspace")
ITEMSIZE = {"float32": 4, "float64": 8}

Interval = tuple[int, int]


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(eq=False)
class MemoryPlan:
    """Where each arena buffer lives, and why: intervals, pinned buffers, sizes."""

    offsets: dict[Buffer, int]  # byte offset in the arena
    intervals: dict[Buffer, Interval | None]  # None: nothing touches it and it is not pinned
    pinned: set[Buffer]
    arena_bytes: int
    naive_bytes: int  # what Caffe would allocate (see the module docstring)
    unshared_bytes: int  # the reference layout's arena: every buffer its own bytes
    itemsize: int
    share: bool = True
    keep_blobs: bool = True
    blob_of: dict[Buffer, str] = field(default_factory=dict)  # blob versions and gradients

    def summary(self) -> dict[str, Any]:
        """What the artifact's manifest records about the plan."""
        return {
            "shared": self.share,
            "keep_blobs": self.keep_blobs,
            "unshared_bytes": self.unshared_bytes,
            "pinned_bytes": sum(aligned(b.size * self.itemsize) for b in self.pinned),
        }


# --- liveness ------------------------------------------------------------------------------


def schedule(kgraph: KernelGraph) -> list[Instr]:
    """The instructions in the order they run: forward, backward, update."""
    return [instr for _, instr in _passes(kgraph)]


def _passes(kgraph: KernelGraph) -> list[tuple[int, Instr]]:
    """Each instruction in order with its pass: 0 forward, 1 backward, 2 update."""
    return [
        (i, instr)
        for i, steps in enumerate(kgraph.steps().values())
        for step in steps
        for instr in step.instrs
    ]


def _kernels(instr: Instr) -> list[Kernel]:
    return instr.body if isinstance(instr, Loop) else [instr]


def liveness(kgraph: KernelGraph) -> tuple[dict[Buffer, Interval], set[Buffer]]:
    """Each touched arena buffer's interval (the first instruction is position 1), and the
    buffers whose first access reads them (or accumulates into them): they carry state in.

    A buffer used in more than one pass lives to the end of the last pass that uses it:
    pycaffe may run that pass again (two backward passes after one forward accumulate
    the parameter gradients twice), and the rerun reads it again.
    """
    intervals: dict[Buffer, Interval] = {}
    passes: dict[Buffer, set[int]] = {}
    carried: set[Buffer] = set()
    pass_end = [0, 0, 0]
    for position, (pass_, instr) in enumerate(_passes(kgraph), start=1):
        pass_end[pass_] = position
        for kernel in _kernels(instr):
            reads = [o.buffer for o in kernel.reads]
            if kernel.accumulate:
                reads += [o.buffer for o in kernel.writes]
            accesses = [(b, True) for b in reads] + [(o.buffer, False) for o in kernel.writes]
            for buffer, read in accesses:
                if buffer.kind not in ARENA_KINDS:
                    continue
                passes.setdefault(buffer, set()).add(pass_)
                if buffer in intervals:
                    intervals[buffer] = (intervals[buffer][0], position)
                else:
                    intervals[buffer] = (position, position)
                    if read:
                        carried.add(buffer)
    for buffer, used in passes.items():
        if len(used) > 1:
            intervals[buffer] = (intervals[buffer][0], pass_end[max(used)])
    return intervals, carried


def pinned_buffers(kgraph: KernelGraph, keep_blobs: bool = True) -> set[Buffer]:
    """The buffers the user or the runtime reads or writes outside the kernels (see above)."""
    pinned = {b for b in kgraph.buffers if b.kind in ("input", "seed")}
    pinned |= set(kgraph.inputs.values())
    pinned |= {b for b, _ in kgraph.seeds}
    pinned |= set(kgraph.output_diffs.values())
    pinned |= {b for b, _, _ in kgraph.fills}
    if keep_blobs:
        for blob in kgraph.blobs.values():
            pinned.add(blob.data)
            if blob.diff is not None:
                pinned.add(blob.diff)
    else:  # what forward() and backward() return: the outputs' data, the inputs' diffs
        pinned |= {kgraph.blobs[name].data for name in kgraph.outputs if name in kgraph.blobs}
        for name in kgraph.inputs:
            diff = kgraph.blobs[name].diff if name in kgraph.blobs else None
            if diff is not None:
                pinned.add(diff)
    return {b for b in pinned if b.kind in ARENA_KINDS}


# --- offsets -------------------------------------------------------------------------------


def overlaps(a: Interval | None, b: Interval | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def assign_offsets(
    sizes: Sequence[int], intervals: Sequence[Interval | None], pinned: Iterable[int] = ()
) -> tuple[list[int], int]:
    """Byte offsets for items of ``sizes`` bytes live over ``intervals`` (None: never), such
    that items whose intervals overlap get disjoint bytes; and the total. Items in ``pinned``
    (indices) share bytes with nothing: they go first, one after another. Sizes are rounded up
    to :data:`ALIGN`."""
    n = len(sizes)
    nbytes = [aligned(s) for s in sizes]
    offsets = [0] * n
    base = 0
    pinned_set = set(pinned)
    for i in sorted(pinned_set):
        offsets[i] = base
        base += nbytes[i]
    rest = sorted(
        (i for i in range(n) if i not in pinned_set),
        key=lambda i: (-nbytes[i], intervals[i][0] if intervals[i] is not None else -1, i),
    )
    # the items placed so far, as columns: first and last position, first and end byte
    first = np.empty(n, dtype=np.int64)
    last = np.empty(n, dtype=np.int64)
    start = np.empty(n, dtype=np.int64)
    end = np.empty(n, dtype=np.int64)
    count = 0
    top = base
    for i in rest:
        interval = intervals[i]
        if interval is None:  # nothing touches it: it may share bytes with anything unpinned
            offsets[i] = base
        else:
            live = (first[:count] <= interval[1]) & (interval[0] <= last[:count])
            starts, ends = start[:count][live], end[:count][live]
            order = np.argsort(starts, kind="stable")
            taken = zip(starts[order].tolist(), ends[order].tolist(), strict=True)
            offsets[i] = _best_fit(taken, nbytes[i], base)
            first[count], last[count] = interval
            start[count], end[count] = offsets[i], offsets[i] + nbytes[i]
            count += 1
        top = max(top, offsets[i] + nbytes[i])
    return offsets, top


def _best_fit(taken: Iterable[tuple[int, int]], size: int, floor: int = 0) -> int:
    """The start of the smallest gap at or above ``floor`` among ``taken`` (byte ranges by
    start) that holds ``size`` bytes, the lowest such; above all of them when none does."""
    best: tuple[int, int] | None = None  # (gap size, start)
    cursor = floor
    for first, end in taken:
        gap = first - cursor
        if gap >= size and (best is None or gap < best[0]):
            best = (gap, cursor)
        cursor = max(cursor, end)
    return cursor if best is None else best[1]


# --- the plan ------------------------------------------------------------------------------


def blob_versions(lowering: Any) -> dict[Buffer, str]:
    """Which blob each value buffer (a version) and each gradient buffer belongs to."""
    blob_of = {buffer: value.blob for value, buffer in lowering.data.items()}
    blob_of.update({buffer: value.blob for value, buffer in lowering.grads.items()})
    return blob_of


def naive_bytes(kgraph: KernelGraph, blob_of: dict[Buffer, str], itemsize: int) -> int:
    """What Caffe allocates for this net (see the module docstring)."""
    if not blob_of:  # a kernel graph built by hand: each blob's bound buffers are its versions
        blob_of = {b.data: name for name, b in kgraph.blobs.items()}
        blob_of.update({b.diff: name for name, b in kgraph.blobs.items() if b.diff is not None})
    blob_count: dict[str, int] = {}
    other = 0
    for buffer in kgraph.buffers:
        if buffer.kind not in ARENA_KINDS:
            continue
        blob = blob_of.get(buffer)
        if blob is None:
            other += buffer.size  # a workspace or a layer's own state
        elif buffer.kind in ("input", "value"):
            blob_count[blob] = max(blob_count.get(blob, 0), buffer.size)
    diffs = 2 if kgraph.backward else 1
    return (sum(blob_count.values()) * diffs + other) * itemsize


def plan_memory(
    kgraph: KernelGraph,
    lowering: Any = None,
    *,
    share: bool = True,
    keep_blobs: bool = True,
    itemsize: int | None = None,
    blob_of: dict[Buffer, str] | None = None,
) -> MemoryPlan:
    """The arena layout of ``kgraph`` (see the module docstring).

    ``lowering`` (what :func:`~caffec.compiler.passes.lower.lower` returned) tells which
    buffers are versions of one blob, for the naive size; ``blob_of`` gives that directly.
    """
    itemsize = itemsize or ITEMSIZE[kgraph.dtype]
    if blob_of is None:
        blob_of = blob_versions(lowering) if lowering is not None else {}
    arena = [b for b in kgraph.buffers if b.kind in ARENA_KINDS]
    touched, carried = liveness(kgraph)
    pinned = pinned_buffers(kgraph, keep_blobs) | carried
    end = len(schedule(kgraph)) + 1
    intervals: dict[Buffer, Interval | None] = {
        b: (0, end) if b in pinned else touched.get(b) for b in arena
    }
    sizes = [b.size * itemsize for b in arena]
    unshared = sum(aligned(s) for s in sizes)
    if share:
        spans = [intervals[b] for b in arena]
        starts, top = assign_offsets(sizes, spans, [i for i, b in enumerate(arena) if b in pinned])
    else:
        starts, top = [], 0
        for size in sizes:
            starts.append(top)
            top += aligned(size)
    return MemoryPlan(
        offsets=dict(zip(arena, starts, strict=True)),
        intervals=intervals,
        pinned={b for b in arena if b in pinned},
        arena_bytes=top,
        naive_bytes=naive_bytes(kgraph, blob_of, itemsize),
        unshared_bytes=unshared,
        itemsize=itemsize,
        share=share,
        keep_blobs=keep_blobs,
        blob_of=blob_of,
    )


def replan(kgraph: KernelGraph, itemsize: int) -> MemoryPlan:
    """The plan of ``kgraph`` as it is now, with the settings its planning pass chose.

    Planning is cheap, so the artifact writer plans again rather than trust a plan a later
    change to the graph may have made stale; a graph the pass never saw gets the reference
    layout (no sharing).
    """
    earlier: MemoryPlan | None = getattr(kgraph, "memory_plan", None)
    if earlier is None:
        return plan_memory(kgraph, share=False, itemsize=itemsize)
    return plan_memory(
        kgraph,
        share=earlier.share,
        keep_blobs=earlier.keep_blobs,
        itemsize=itemsize,
        blob_of=earlier.blob_of,
    )


def conflicts(plan: MemoryPlan) -> Iterator[tuple[Buffer, Buffer]]:
    """Pairs of buffers whose bytes and intervals both overlap (none, in a correct plan)."""
    by_offset = sorted(plan.offsets, key=lambda b: plan.offsets[b])
    for i, a in enumerate(by_offset):
        a_end = plan.offsets[a] + a.size * plan.itemsize
        for b in by_offset[i + 1 :]:
            if plan.offsets[b] >= a_end:
                break
            if b.size and a.size and overlaps(plan.intervals[a], plan.intervals[b]):
                yield a, b
