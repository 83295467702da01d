"""Fusion: fewer kernels, fewer trips through memory, over layer boundaries.

The pass rewrites the forward and backward schedules in five steps, then
groups the solver's updates:

1. **Copies read through.** A ``copy`` whose destination only one ``map``
   reads (Concat's and Slice's gradients, split into the branches) is
   dropped: the map reads the copy's source at the strided position
   instead, and the destination is never allocated.
2. **Map chains.** A map that reads only parameters (BatchNorm's per-channel
   scale and shift under its running statistics) moves ahead of the layer
   before it where the map using its result reads that layer's output, so
   the two maps around it meet. Two adjacent ``map`` kernels where the second
   reads the first's output element for element become one map: the first's
   result is a temporary of the second's loop (a bias add and the ReLU after
   it). The intermediate is still written where something else reads it.
3. **Maps into loops.** A map right after a per-image loop (a convolution's
   bias and ReLU after its im2col + GEMM per image) moves into the loop,
   working on each image's slice right after the GEMM wrote it, while it is
   still in cache.
4. **Copies written through.** A ``copy`` of a whole value is dropped where
   the value can live inside the other side: a Concat's bottom inside its
   top (each branch's per-image GEMM writes its channels of the joined
   blob), a Flatten's, Reshape's, Split's or Slice's top at its bottom. The
   kernels that write and read the value use its place there instead. Where
   that place is strided (Concat over channels with more than one image),
   only per-image slices and element-for-element maps can be moved. A blob
   the user can read (``net.blobs``) stays readable as a numpy view of where
   it now lives, as Caffe's Flatten, Reshape and Split share their bottom's
   memory.
5. **Groups.** Adjacent kernels that form producer -> consumer chains become
   one ``fused`` kernel that runs its parts in order: at most one *anchor*
   (``gemm``, ``conv``, ``reduce``, ``pool``, ``pool_grad``, ``copy``), ``map`` s
   before it whose outputs it reads (prologues) and after it that read what
   the group wrote (epilogues), ``im2col`` before a GEMM that reads its
   columns, ``col2im`` after the GEMM whose output it folds. Two anchors are
   never fused: a GEMM after a GEMM is not fusion. Where an anchor writes a
   value that only an epilogue map reads, element for element, into a
   value of the same layout, the anchor writes the map's output directly
   and the map works in place: the convolution's pre-ReLU output is never
   stored.
6. **Solver.** Every parameter's update (and the gradient-norm reduction of
   ``clip_gradients``) is one kernel.

Nothing here changes what is computed, only where and when: the fused and
the reference (``-O0``) builds agree to rounding (tested on every corpus net).
Fused kernels may span layers. Their steps are marked ``joined``: a partial
run (``forward(start=...)``) may not begin between two layers one kernel runs
together, and says so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from caffec.compiler.kernels import (
    Buffer,
    Instr,
    Kernel,
    KernelGraph,
    Loop,
    Operand,
    Step,
    kernels_of,
)
from caffec.compiler.passes.fuse_copies import read_through_copies, write_into_copies
from caffec.compiler.passes.fusion_scope import (
    Entry,
    Scope,
    elementwise_only,
    fused,
    is_at,
    is_map,
    loads_of,
    reader_counts,
)
from caffec.compiler.passes.plan_memory import pinned_buffers, runtime_written
from caffec.errors import InternalError

ANCHORS = frozenset({"gemm", "conv", "reduce", "pool", "pool_grad", "copy"})
# At most this many maps become one: a longer chain (thousands of in-place layers) gains
# nothing more from one pass over memory, and C compilers take time and memory growing
# faster than a function's length (gcc -O3: 20 s and 0.7 GB for 4,000 ReLUs in one loop).
MAX_COMPOSED_MAPS = 64
MAX_FUSED_PARTS = 8  # the same for a fused kernel's parts (real nets' groups have up to 4)
_NAME = re.compile(r"(?<![A-Za-z0-9_.])[A-Za-z_][A-Za-z0-9_]*")
_FLAT_INDEX = re.compile(r"(?<![A-Za-z0-9_.])i(?![A-Za-z0-9_])")


def fuse(kgraph: KernelGraph, keep_blobs: bool = True) -> KernelGraph:
    """Fuse the kernels of ``kgraph`` in place (see the module docstring)."""
    fixed = runtime_written(kgraph)
    pinned = pinned_buffers(kgraph, keep_blobs) | fixed
    for direction in ("forward", "backward"):
        steps: list[Step] = getattr(kgraph, direction)
        scope = Scope(kgraph, direction, pinned, fixed)
        scope.entries = [Entry(i, s, {s}) for s, step in enumerate(steps) for i in step.instrs]
        rewrites = (read_through_copies, _hoist_parameter_maps, _compose_adjacent_maps,
                    _sink_maps_into_loops, write_into_copies)  # fmt: skip
        for rewrite in rewrites:
            rewrite(scope)
        _rebuild(steps, _group(scope))
    if kgraph.update and sum(len(s.instrs) for s in kgraph.update) > 1:
        parts = [k for step in kgraph.update for k in step.kernels()]
        kgraph.update = [Step(kgraph.update[0].layer, kgraph.update[0].layer_type, [fused(parts)])]
    kgraph.prune()
    return kgraph


def _hoist_parameter_maps(scope: Scope) -> None:
    """Move a map that reads only parameters (BatchNorm's per-channel coefficients) ahead of
    the layer before it, where the map after it reads that layer's output element for
    element: that map can then join the layer's kernels."""
    entries = scope.entries
    for position in range(1, len(entries) - 1):
        kernel, after, last = (entries[p].instr for p in (position, position + 1, position - 1))
        home, previous = entries[position].home, entries[position - 1].home
        if previous == home or not (is_map(kernel) and is_map(after)):
            continue
        if any(o.buffer.kind != "param" for o in kernel.reads):
            continue
        first = position - 1
        while first > 0 and entries[first - 1].home == previous:
            first -= 1
        layer = [k for e in entries[first:position] for k in kernels_of(e.instr)]
        touched = {o.buffer for k in layer for o in (*k.reads, *k.writes)}
        if any(o.buffer in touched for o in (*kernel.reads, *kernel.writes)):
            continue
        output = {o.buffer for k in kernels_of(last) for o in k.writes}
        assert isinstance(after, Kernel)
        if not any(o.buffer in output and elementwise_only(after, o.buffer) for o in after.reads):
            continue
        moved = entries.pop(position)
        moved.home = previous
        moved.origins.add(previous)
        entries.insert(first, moved)


def _compose_adjacent_maps(scope: Scope) -> None:
    readers = reader_counts(scope)
    out: list[Entry] = []
    chain: _Composed | None = None  # the last entry's map, where composed here
    for entry in scope.entries:
        composed = _compose(scope, readers, chain or out[-1].instr, entry.instr) if out else None
        if composed is None:
            out.append(entry)
        else:
            out[-1].instr = composed.kernel
            out[-1].origins |= entry.origins
        chain = composed
    scope.entries = out


@dataclass(eq=False)
class _Composed:
    """A map this pass composed, with what composing one more map into it needs, kept up to
    date so that each composition costs what the added map holds: a chain of n in-place
    layers (ReLUs) composes in O(n), not O(n^2)."""

    kernel: Kernel  # made here, so extended in place
    names: set[str]  # every name its expressions use
    numbers: dict[str, int]  # per name, the number after which fresh() finds it free
    reads: set[Buffer]
    gathered: set[Buffer]  # what it loads at an index other than its own element
    maps: int = 1  # how many maps it is made of

    @classmethod
    def of(cls, kernel: Kernel) -> _Composed:
        """A copy of ``kernel`` to compose into."""
        a = kernel.attrs
        attrs = {**a, "loads": list(a["loads"]), "consts": dict(a["consts"]),
                 "coords": dict(a["coords"]), "lets": list(a["lets"]), "exprs": list(a["exprs"]),
                 "random": False}  # fmt: skip
        names = {n for n, _, _ in a["loads"]} | set(a["consts"]) | set(a["coords"])
        return cls(
            Kernel("map", list(kernel.reads), list(kernel.writes), attrs),
            names | {n for n, _ in a["lets"]},
            {},
            {o.buffer for o in kernel.reads},
            {kernel.reads[slot].buffer for _, slot, index in a["loads"] if index != "i"},
        )

    def fresh(self, name: str) -> str:
        """``name``, or ``name`` with the smallest number after it that no one uses; taken now."""
        number = self.numbers.get(name, 0)
        fresh = f"{name}{number}" if number else name
        while fresh in self.names:
            number += 1
            fresh = f"{name}{number}"
        self.numbers[name] = number
        self.names.add(fresh)
        return fresh

    def absorb(self, second: Kernel, middle: Buffer, keep: bool) -> None:
        """Compose ``second`` after this map: this map's result (``middle``) becomes a
        temporary of the loop. Names stay as the layers wrote them; only the second's names
        that this map already uses are renamed."""
        a, b = self.kernel.attrs, second.attrs
        self.maps += 1
        names_b = {n for n, _, _ in b["loads"]} | set(b["consts"]) | set(b["coords"])
        names_b |= {n for n, _ in b["lets"]}
        clashes = names_b & self.names
        self.names |= names_b
        temp = self.fresh("t")
        renames = {n: self.fresh(n) for n in sorted(clashes)}

        def rb(text: str) -> str:
            if not renames:
                return text
            return _NAME.sub(lambda m: renames.get(m.group(0), m.group(0)), text)

        a["lets"].append((temp, a["exprs"][0]))
        reads = self.kernel.reads
        for name, slot, index in b["loads"]:
            if second.reads[slot].buffer is middle:
                a["lets"].append((rb(name), temp))
                continue
            reads.append(second.reads[slot])
            a["loads"].append((rb(name), len(reads) - 1, rb(index)))
            if index != "i":
                self.gathered.add(second.reads[slot].buffer)
        a["lets"] += [(rb(n), rb(e)) for n, e in b["lets"]]
        a["consts"].update({rb(k): v for k, v in b["consts"].items()})
        a["coords"].update({rb(k): v for k, v in b["coords"].items()})
        a["exprs"] = [rb(e) for e in b["exprs"]] + ([temp] if keep else [])
        self.kernel.writes[:] = [*second.writes, *(self.kernel.writes if keep else [])]
        self.reads |= {o.buffer for o in second.reads if o.buffer is not middle}


def _compose(
    scope: Scope, readers: Counter[Buffer], first: Instr | _Composed, second: Instr
) -> _Composed | None:
    """``first`` (a map, or one composed here) with ``second`` composed into it, where that
    may be done; ``readers`` (kernels reading each buffer) follows the change."""
    if isinstance(first, _Composed):
        if first.maps >= MAX_COMPOSED_MAPS:
            return None
        composed: _Composed | None = first
        first = first.kernel
    else:
        composed = None
    if not (is_map(first) and is_map(second)):
        return None
    assert isinstance(first, Kernel) and isinstance(second, Kernel)
    if len(first.writes) != 1 or first.attrs["size"] != second.attrs["size"]:
        return None
    middle = first.writes[0]
    if not is_at(middle, middle.buffer) or not loads_of(second, middle.buffer):
        return None
    if not elementwise_only(second, middle.buffer):
        return None
    written = {o.buffer for o in second.writes}
    if middle.buffer in written:
        return None
    composed = composed or _Composed.of(first)
    if composed.gathered & written:  # the second must not overwrite what the first reads
        return None  # elsewhere
    others = readers[middle.buffer] - 1 - (middle.buffer in composed.reads)
    keep = middle.buffer in scope.pinned or others > 0
    read_by_second = {o.buffer for o in second.reads}
    for buffer in read_by_second:  # the two kernels become one
        readers[buffer] -= buffer is middle.buffer or buffer in composed.reads
    composed.absorb(second, middle.buffer, keep)
    return composed


# --- 3. maps into loops --------------------------------------------------------------------


def _sink_maps_into_loops(scope: Scope) -> None:
    entries = scope.entries
    position = 0
    while position + 1 < len(entries):
        loop, kernel = entries[position].instr, entries[position + 1].instr
        if isinstance(loop, Loop) and is_map(kernel):
            assert isinstance(kernel, Kernel)
            sliced = _sliced(kernel, loop)
            if sliced is not None:
                loop.body.append(sliced)
                entries[position].origins |= entries[position + 1].origins
                del entries[position + 1]
                continue
        position += 1


def _sliced(kernel: Kernel, loop: Loop) -> Kernel | None:
    """``kernel`` as one iteration's share of ``loop``: image n's slice, if each image's
    elements depend only on what the loop has written for that image."""
    a = kernel.attrs
    if a["size"] % loop.count:
        return None
    step = a["size"] // loop.count
    written: dict[Buffer, list[Operand]] = {}
    read_in_loop: set[Buffer] = set()
    for body in loop.body:
        for o in body.writes:
            written.setdefault(o.buffer, []).append(o)
        read_in_loop |= {o.buffer for o in body.reads}
    if not any(read.buffer in written for read in kernel.reads):
        return None  # nothing to gain: the map does not read what the loop wrote
    whole = {slot: index == "i" for _, slot, index in a["loads"]}
    for slot, read in enumerate(kernel.reads):
        if read.buffer in written:
            if not whole.get(slot) or not is_at(read, read.buffer):
                return None
            if any(not is_at(o, read.buffer, 0, step) for o in written[read.buffer]):
                return None
    for write in kernel.writes:
        if not is_at(write, write.buffer) or write.buffer in read_in_loop:
            return None
        if any(not is_at(o, write.buffer, 0, step) for o in written.get(write.buffer, [])):
            return None

    def shifted(index: str) -> str:
        return _FLAT_INDEX.sub(f"(n * {step} + i)", index)

    reads = [Operand(r.buffer, 0, step) if whole.get(s) else r for s, r in enumerate(kernel.reads)]
    loads = [(n, s, "i" if whole[s] else shifted(index)) for n, s, index in a["loads"]]
    attrs = {
        **a,
        "size": step,
        "loads": loads,
        "coords": {name: shifted(index) for name, index in a["coords"].items()},
    }
    writes = [Operand(w.buffer, 0, step) for w in kernel.writes]
    return Kernel("map", reads, writes, attrs)


# --- 4. copies written through ---------------------------------------------------------------


def _joins(group: list[Kernel], kernel: Kernel) -> bool:
    """Whether ``kernel`` may join ``group`` (the kernels just before it; see above)."""
    if any(k.prim == "host" for k in (*group, kernel)):
        return False  # a Python layer runs between compiled code, never inside it
    if sum(len(k.parts()) for k in (*group, kernel)) > MAX_FUSED_PARTS:
        return False
    anchors = [k for k in group if k.prim in ANCHORS]
    written = {o.buffer for k in group for o in k.writes}
    reads_group = any(o.buffer in written for o in kernel.reads)
    if kernel.prim == "map":
        return reads_group
    if kernel.prim in ANCHORS:
        return not anchors and reads_group and all(k.prim in ("map", "im2col") for k in group)
    if kernel.prim == "col2im":
        return len(anchors) == 1 and anchors[0].prim == "gemm" and reads_group
    return False


def _grouped(kernels: list[Kernel]) -> list[list[int]]:
    """Runs of positions in ``kernels`` that form groups."""
    runs: list[list[int]] = []
    for position, kernel in enumerate(kernels):
        if runs and _joins([kernels[i] for i in runs[-1]], kernel):
            runs[-1].append(position)
        else:
            runs.append([position])
    return runs


def _group(scope: Scope) -> list[Entry]:
    """The pass's instructions with each group (see above) one fused kernel."""
    entries = scope.entries
    for entry in entries:  # inside the per-image loops first
        if isinstance(entry.instr, Loop):
            body = entry.instr.body
            entry.instr.body = [_fuse_run([body[i] for i in run], scope) for run in _grouped(body)]
    out: list[Entry] = []
    run: list[Entry] = []

    def flush() -> None:
        if run:
            kernel = _fuse_run([e.instr for e in run], scope)  # type: ignore[misc]
            out.append(Entry(kernel, run[0].home, set().union(*(e.origins for e in run))))
            run.clear()

    for entry in entries:
        if isinstance(entry.instr, Loop):
            flush()
            out.append(entry)
        elif run and _joins([e.instr for e in run], entry.instr):  # type: ignore[misc]
            run.append(entry)
        else:
            flush()
            run.append(entry)
    flush()
    return out


def _fuse_run(kernels: list[Kernel], scope: Scope) -> Kernel:
    if len(kernels) == 1:
        return kernels[0]
    _write_through(kernels, scope)
    return fused(kernels)


def _write_through(kernels: list[Kernel], scope: Scope) -> None:
    """Where an anchor's output is read only by an epilogue map of the group, element for
    element over exactly what the anchor writes, let the anchor write the map's output and
    the map work there in place."""
    for anchor in (k for k in kernels if k.prim in ANCHORS):
        for write in anchor.writes:
            middle = write.buffer
            if middle in scope.pinned or anchor.accumulate:
                continue
            readers, writers = scope.users(middle)
            epilogue = [k for k in readers if k.prim == "map"]
            if writers != [anchor] or len(readers) != 1 or not epilogue:
                continue
            reader = epilogue[0]
            if reader not in kernels or reader.accumulate:
                continue
            slots = [s for s, o in enumerate(reader.reads) if o.buffer is middle]
            if any(not is_at(reader.reads[s], middle, write.offset, write.step) for s in slots):
                continue
            if any(index != "i" for _, s, index in reader.attrs["loads"] if s in slots):
                continue
            if _extent(anchor) != reader.attrs["size"]:
                continue  # the map does not cover exactly what the anchor writes, in order
            target = reader.writes[0]
            if any(
                o.buffer is target.buffer
                for k in kernels
                for o in (*k.reads, *(k.writes if k is not reader else ()))
            ):
                continue  # something in the group reads the map's output as it was before
            anchor.writes[anchor.writes.index(write)] = target
            for s in slots:
                reader.reads[s] = target


def _extent(anchor: Kernel) -> int | None:
    """How many elements an anchor writes one after another from its output pointer (per
    iteration), or None where they are not contiguous."""
    a = anchor.attrs
    if anchor.prim == "gemm" and (a["batch"] == 1 or a["stride_c"] == a["M"] * a["N"]):
        return int(a["M"] * a["N"] * a["batch"])
    if anchor.prim == "pool":
        return int(a["P"] * a["OH"] * a["OW"])
    if anchor.prim == "reduce":
        return int(a["out_size"])
    if anchor.prim == "conv" and a["mode"] != "filter":
        side = ("M", "OH", "OW") if a["mode"] == "forward" else ("C", "H", "W")
        return int(a["N"] * math.prod(a[d] for d in side))
    return None


# --- rebuilding the steps ------------------------------------------------------------------


def _rebuild(steps: list[Step], entries: list[Entry]) -> None:
    """Put each instruction in its step, and mark the steps a fused instruction's work spans
    as joined to the one before."""
    for step in steps:
        step.instrs = []
    for before, entry in zip(entries, entries[1:], strict=False):
        if entry.home < before.home:
            raise InternalError("fusion moved an instruction ahead of one it follows")
    for entry in entries:
        steps[entry.home].instrs.append(entry.instr)
        for s in range(min(entry.origins) + 1, max(entry.origins) + 1):
            steps[s].joined = True
