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
Only with ``keep_blobs=False`` (the lean build ``caffec train`` uses, where
every backward follows its own forward and the runtime refuses a second one)
does such a buffer die at its last use.

**In place.** A ``map`` kernel (or a map part of a fused kernel: then the
input is not touched by a later part, nor the output by an earlier one) may
write an output over the bytes of an input when that input dies there: the
input is read only element for element
(index ``i``, same size), nothing reads it later (a rerun of the pass
included: a dropout mask read by the last backward kernel stays), nothing
outside the kernels reads it, and the output is new at that kernel and is not a buffer
the runtime writes. The two then form one *storage* whose interval is the
union of theirs; a chain of such maps (a ReLU after a bias, a gradient
scaled in place) is one storage. This is how a ReLU's top takes its
bottom's bytes, as Caffe's in-place layers do.

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
partial run reads what an earlier run left only in bound buffers. An earlier
version of an in-place blob (``ip1`` before ``relu1`` makes ``ip1'``) is
usually written in place (below), in the bytes of the version the binding
shows, so partial runs see what Caffe's in-place layers give:
``forward(end="ip1")`` leaves the unrectified values in ``ip1``, and
``forward(start="relu1")`` rectifies what is there. Where it is not written
in place, a run starting at such a layer reads bytes a later layer may have
reused.
A buffer nothing touches and nothing pins may share bytes with anything
unpinned.

**Offsets.** Greedy by size with best fit, over storages (a buffer not
written in place is a storage of its own, and a storage is pinned when one
of its buffers is): pinned storages first, one after another in buffer order
at the bottom of the arena; then the rest from the largest to the smallest
(ties: the earlier first use, then buffer order).
Each one goes into the smallest gap, between the buffers already placed
whose intervals overlap its own, that holds it (ties: the lowest offset),
or above the highest of them when no gap does. Every size is rounded up to
:data:`ALIGN` bytes, so every offset is 64-byte aligned. The result depends
only on the kernel graph: no hashing, no randomness.

With ``share=False`` the layout is the reference one (every arena buffer its
own bytes, in buffer order): what ``-O0`` builds.

**The naive size** is what Caffe allocates for the same net: for every blob
its data, and its diff where backward computes one (Caffe allocates memory
on first touch: a forward-only net touches no diff, and nothing writes the
data layer's diff), with the in-place versions of a blob counted once at
their largest; plus, once each, the workspaces and
the layer states (Caffe's ``col_buffer_``, ``max_idx_``, ``prob_``...), but not
the weights caffec packs for its GEMM (``pack`` kernels), which Caffe does not
make. The workspaces are those of the algorithms caffec chose: at ``-O2`` an
implicit GEMM's forward has no columns, where Caffe's layer would have its
``col_buffer_`` (its gradient's columns are counted). No alignment padding is
counted there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caffec.compiler.kernels import Buffer, Instr, Kernel, KernelGraph, kernels_of

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
    in_place: dict[Buffer, Buffer] = field(default_factory=dict)  # output -> input it overwrites

    def summary(self) -> dict[str, Any]:
        """What the artifact's manifest records about the plan."""
        return {
            "shared": self.share,
            "keep_blobs": self.keep_blobs,
            "unshared_bytes": self.unshared_bytes,
            "in_place": len(self.in_place),
            "pinned_bytes": sum(aligned(b.footprint * self.itemsize) for b in self.pinned),
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


def liveness(
    kgraph: KernelGraph, repeat: bool = True
) -> tuple[dict[Buffer, Interval], set[Buffer], set[Buffer]]:
    """Each touched arena buffer's interval (the first instruction is position 1), the
    buffers whose first access reads them (or accumulates into them): they carry state in,
    and the buffers a rerun of a pass reads again.

    With ``repeat``, a buffer used in more than one pass lives to the end of the last pass
    that uses it: pycaffe may run that pass again (two backward passes after one forward
    accumulate the parameter gradients twice), and the rerun reads it again, so it is also
    never overwritten in place, not even by the last kernel of that pass.
    """
    intervals: dict[Buffer, Interval] = {}
    passes: dict[Buffer, set[int]] = {}
    carried: set[Buffer] = set()
    pass_end = [0, 0, 0]
    for position, (pass_, instr) in enumerate(_passes(kgraph), start=1):
        pass_end[pass_] = position
        # a loop zeroes its partial sums before its kernels add into them
        accesses = [(p, False) for p, _ in getattr(instr, "partial_sums", ())]
        for kernel in kernels_of(instr):
            reads = [o.buffer for o in kernel.reads]
            if kernel.accumulate:
                reads += [o.buffer for o in kernel.writes]
            accesses += [(b, True) for b in reads] + [(o.buffer, False) for o in kernel.writes]
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
    rerun = {b for b, used in passes.items() if repeat and len(used) > 1}
    for buffer in rerun:
        intervals[buffer] = (intervals[buffer][0], pass_end[max(passes[buffer])])
    return intervals, carried, rerun


def runtime_written(kgraph: KernelGraph) -> set[Buffer]:
    """The buffers the runtime writes before a pass: inputs, seeds, output diffs, fills."""
    written = {b for b in kgraph.buffers if b.kind in ("input", "seed")}
    written |= set(kgraph.inputs.values())
    written |= {b for b, _ in kgraph.seeds}
    written |= set(kgraph.output_diffs.values())
    written |= {b for b, _, _ in kgraph.fills}
    return written


def pinned_buffers(kgraph: KernelGraph, keep_blobs: bool = True) -> set[Buffer]:
    """The buffers the user or the runtime reads or writes outside the kernels (see above)."""
    pinned = runtime_written(kgraph)
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


def in_place_links(
    kgraph: KernelGraph, touched: dict[Buffer, Interval], pinned: set[Buffer], fixed: set[Buffer]
) -> dict[Buffer, Buffer]:
    """Output -> input pairs of ``map`` kernels where the output may take the input's bytes
    (see the module docstring). ``fixed`` are the buffers an output must not be: the ones
    the runtime writes, and the ones that carry state from one run to the next."""
    links: dict[Buffer, Buffer] = {}
    sources: set[Buffer] = set()
    for position, (_, instr) in enumerate(_passes(kgraph), start=1):
        if not isinstance(instr, Kernel):
            continue
        parts = instr.parts()
        for number, kernel in enumerate(parts):
            if kernel.prim != "map" or kernel.accumulate:
                continue
            # inside a fused kernel: the input is not touched after this part, nor the output
            # before it
            after = {o.buffer for k in parts[number + 1 :] for o in (*k.reads, *k.writes)}
            before = {o.buffer for k in parts[:number] for o in (*k.reads, *k.writes)}
            size = kernel.attrs["size"]
            index_of = {slot: index for _, slot, index in kernel.attrs["loads"]}
            elementwise: dict[Buffer, bool] = {}
            for slot, read in enumerate(kernel.reads):
                plain = index_of.get(slot) == "i" and read.offset == 0 and read.step == 0
                elementwise[read.buffer] = elementwise.get(read.buffer, True) and plain
            candidates = [
                b for b, ok in elementwise.items()
                if ok and b.size == size and b not in pinned and b not in sources
                and b not in after and b.kind in ARENA_KINDS
                and touched.get(b, (0, 0))[1] == position
            ]  # fmt: skip
            for write in kernel.writes:
                out = write.buffer
                if not candidates:
                    break
                if (write.offset or write.step or out.size != size or out in fixed
                        or out in links or out in before or out.kind not in ARENA_KINDS
                        or touched.get(out, (0, 0))[0] != position):  # fmt: skip
                    continue
                source = candidates.pop(0)
                links[out] = source
                sources.add(source)
    return links


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
            offsets[i] = _best_fit(starts[order], ends[order], nbytes[i], base)
            first[count], last[count] = interval
            start[count], end[count] = offsets[i], offsets[i] + nbytes[i]
            count += 1
        top = max(top, offsets[i] + nbytes[i])
    return offsets, top


def _best_fit(starts: np.ndarray, ends: np.ndarray, size: int, floor: int = 0) -> int:
    """The start of the smallest gap at or above ``floor`` among the byte ranges taken
    (``starts``, ``ends``, by start) that holds ``size`` bytes, the lowest such; above all of
    them when none does. In numpy: thousands of ranges can be live at once (every value of
    a long chain kept for backward)."""
    cursors = np.maximum.accumulate(np.concatenate(([floor], ends)))  # the end of what
    gaps = starts - cursors[:-1]  # lies below each range
    fits = np.flatnonzero(gaps >= size)
    if not fits.size:
        return int(cursors[-1])
    return int(cursors[fits[np.argmin(gaps[fits])]])  # the first of the smallest


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
    data: dict[str, int] = {}
    diff: dict[str, int] = {}
    other = 0
    steps = (step for steps in kgraph.steps().values() for step in steps)
    packed = {o.buffer for step in steps for k in step.kernels() if k.prim == "pack"
              for o in k.writes}  # fmt: skip
    for buffer in kgraph.buffers:
        if buffer.kind not in ARENA_KINDS or buffer in packed:
            continue
        blob = blob_of.get(buffer)
        if blob is None:
            other += buffer.size  # a workspace or a layer's own state
        else:
            sizes = data if buffer.kind in ("input", "value") else diff
            sizes[blob] = max(sizes.get(blob, 0), buffer.size)
    return (sum(data.values()) + sum(diff.values()) + other) * itemsize


def plan_memory(
    kgraph: KernelGraph,
    lowering: Any = None,
    *,
    share: bool = True,
    keep_blobs: bool = True,
    itemsize: int | None = None,
    blob_of: dict[Buffer, str] | None = None,
    naive: int | None = None,
) -> MemoryPlan:
    """The arena layout of ``kgraph`` (see the module docstring).

    ``lowering`` (what :func:`~caffec.compiler.passes.lower.lower` returned) tells which
    buffers are versions of one blob, for the naive size; ``blob_of`` gives that directly.
    ``naive`` is the naive size measured before passes that drop buffers Caffe allocates
    (a pooling mask found again in backward); by default it is measured on ``kgraph``.
    """
    itemsize = itemsize or ITEMSIZE[kgraph.dtype]
    if blob_of is None:
        blob_of = blob_versions(lowering) if lowering is not None else {}
    arena = [b for b in kgraph.buffers if b.kind in ARENA_KINDS]
    touched, carried, rerun = liveness(kgraph, repeat=keep_blobs)
    pinned = pinned_buffers(kgraph, keep_blobs) | carried
    end = len(schedule(kgraph)) + 1
    intervals: dict[Buffer, Interval | None] = {
        b: (0, end) if b in pinned else touched.get(b) for b in arena
    }
    sizes = [b.footprint * itemsize for b in arena]
    unshared = sum(aligned(s) for s in sizes)
    links: dict[Buffer, Buffer] = {}
    offsets: dict[Buffer, int] = {}
    if share:
        links = in_place_links(kgraph, touched, pinned | rerun, runtime_written(kgraph) | carried)
        groups = storages(arena, links)
        spans = [_hull([intervals[b] for b in group]) for group in groups]
        starts, top = assign_offsets(
            [max(b.footprint for b in group) * itemsize for group in groups],
            spans,
            [i for i, group in enumerate(groups) if any(b in pinned for b in group)],
        )
        offsets = {b: start for group, start in zip(groups, starts, strict=True) for b in group}
    else:
        top = 0
        for buffer, size in zip(arena, sizes, strict=True):
            offsets[buffer] = top
            top += aligned(size)
    return MemoryPlan(
        offsets={b: offsets[b] for b in arena},
        intervals=intervals,
        pinned={b for b in arena if b in pinned},
        arena_bytes=top,
        naive_bytes=naive if naive is not None else naive_bytes(kgraph, blob_of, itemsize),
        unshared_bytes=unshared,
        itemsize=itemsize,
        share=share,
        keep_blobs=keep_blobs,
        blob_of=blob_of,
        in_place=links,
    )


def storages(arena: list[Buffer], links: dict[Buffer, Buffer]) -> list[list[Buffer]]:
    """The arena buffers grouped by in-place chains, in buffer order (by first member)."""

    roots: dict[Buffer, Buffer] = {}  # found so far: a chain of n links is followed once

    def root(buffer: Buffer) -> Buffer:
        path = []
        while buffer in links and buffer not in roots:
            path.append(buffer)
            buffer = links[buffer]
        found = roots.get(buffer, buffer)
        roots.update(dict.fromkeys(path, found))
        return found

    groups: dict[Buffer, list[Buffer]] = {}
    for buffer in arena:
        groups.setdefault(root(buffer), []).append(buffer)
    return list(groups.values())


def _hull(intervals: list[Interval | None]) -> Interval | None:
    known = [i for i in intervals if i is not None]
    return (min(i[0] for i in known), max(i[1] for i in known)) if known else None


def conflicts(plan: MemoryPlan) -> Iterator[tuple[Buffer, Buffer]]:
    """Pairs of buffers whose bytes and intervals both overlap (none, in a correct plan)."""
    by_offset = sorted(plan.offsets, key=lambda b: plan.offsets[b])
    for i, a in enumerate(by_offset):
        a_end = plan.offsets[a] + a.footprint * plan.itemsize
        for b in by_offset[i + 1 :]:
            if plan.offsets[b] >= a_end:
                break
            if plan.in_place.get(a) is b or plan.in_place.get(b) is a:
                continue
            if b.size and a.size and overlaps(plan.intervals[a], plan.intervals[b]):
                yield a, b
