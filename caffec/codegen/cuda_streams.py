"""Which CUDA stream each instruction of a pass runs on, and which earlier ones it waits for.

A captured pass (see :mod:`caffec.runtime.device_executor`) need not run its
instructions one after another: two that touch different memory may run at once
(an inception module's four branches). Whether two instructions may is decided on
the bytes they read and write, not on the layer graph's data flow: the memory plan
gives one arena's bytes to buffers whose lives do not overlap in the sequential
order, and an in-place kernel reads and writes one buffer, so two branches that
never exchange a value may still share bytes. Two instructions *conflict* when one
writes bytes the other reads or writes; every conflicting pair keeps its sequential
order, through the order of one stream or an event the later one waits for.

The memory an instruction touches (:func:`instr_accesses`): arena buffers as byte
ranges at their planned offsets, every other buffer (parameters, their gradients,
solver histories, counters) by its slot, being an allocation of its own. A write
covers what its primitive stores from the operand's pointer, per launch and per
image of a per-image loop, where that is known (a value written into its Concat's
output covers its own channels of each image, so the branches of an inception
module do not conflict there), else its whole buffer; a read covers its whole
buffer, but for a map's input read element for element (the bias and ReLU after
a GEMM, in place in the Concat's output).

The assignment (:func:`assign_streams`) is greedy and deterministic: an
instruction continues the stream of one it depends on where that stream's last
instruction must finish before it anyway (the main stream, 0, first), else takes
a stream whose last instruction must, else the stream whose last instruction is
oldest. It waits for each instruction it conflicts with unless the stream's order
or an earlier wait already implies it (a vector clock per instruction). A host
instruction (a Python layer, which the runtime calls between launches) joins
every stream: it waits for all of them, and everything after waits for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caffec.compiler.kernels import Buffer, Instr, Kernel, KernelGraph, Loop, Operand, kernels_of
from caffec.formats.manifest import CUDA_STREAMS


@dataclass(frozen=True)
class Span:
    """Bytes of one allocation: ``count`` runs of ``length`` bytes, ``period`` apart, from
    ``start``. ``memory`` is None for the arena, else the slot of a buffer of its own."""

    memory: int | None
    start: int
    length: int
    period: int = 0
    count: int = 1

    @property
    def end(self) -> int:
        """One past the last byte of the last run."""
        return self.start + (self.count - 1) * self.period + self.length

    def meets(self, other: Span) -> bool:
        """Whether the two share a byte."""
        if self.memory != other.memory or self.end <= other.start or other.end <= self.start:
            return False
        few, many = sorted((self, other), key=lambda s: s.count)
        return any(many._meets_range(few.start + k * few.period, few.length)
                   for k in range(few.count))  # fmt: skip

    def _meets_range(self, start: int, length: int) -> bool:
        """Whether a run shares a byte with [start, start + length)."""
        if self.count == 1 or self.period == 0:
            return self.start < start + length and start < self.start + self.length
        # runs k with self.start + k * period in (start - self.length, start + length)
        first = max(0, (start - self.start - self.length) // self.period + 1)
        last = min(self.count - 1, -(-(start + length - self.start) // self.period) - 1)
        return first <= last


@dataclass(frozen=True)
class Access:
    """What one instruction reads and writes; ``host``: the runtime runs it (a join)."""

    reads: tuple[Span, ...]
    writes: tuple[Span, ...]
    host: bool = False

    def conflicts(self, other: Access) -> bool:
        """Whether one writes bytes the other reads or writes (a host instruction conflicts
        with everything)."""
        if self.host or other.host:
            return True
        return any(w.meets(s) for w in self.writes for s in (*other.reads, *other.writes)) or any(
            w.meets(r) for w in other.writes for r in self.reads
        )


@dataclass(frozen=True)
class Placement:
    """An instruction's stream and the positions (in its pass) of the instructions it waits
    for: each of them ran on another stream, and records an event after it."""

    stream: int
    waits: tuple[int, ...]


def assign_streams(accesses: Sequence[Access], streams: int = CUDA_STREAMS) -> list[Placement]:
    """Streams and waits for a pass's instructions, given in order (see the module
    docstring): every conflicting pair is ordered, others may run at once."""
    assignment = _Assignment(accesses, streams)
    return [assignment.place(position) for position in range(len(accesses))]


class _Assignment:
    """The placements so far, with a vector clock per instruction: per stream, the last
    instruction that finishes before it (itself on its own stream)."""

    def __init__(self, accesses: Sequence[Access], streams: int) -> None:
        self.accesses = accesses
        self.placements: list[Placement] = []
        self.clocks: list[list[int]] = []
        self.tails = [-1] * streams  # the last instruction on each stream
        self.joined = -1  # the last host instruction: everything before it finished

    def place(self, position: int) -> Placement:
        """The next instruction's placement (they come in order)."""
        host = self.accesses[position].host
        if host:
            deps, stream = [t for t in self.tails if t >= 0], 0
        else:
            deps, before = self._dependencies(position)
            stream = self._stream(before)
        tail = self.tails[stream]
        clock = list(self.clocks[tail]) if tail >= 0 else [-1] * len(self.tails)
        waits = []
        for j in sorted(deps, reverse=True):  # a later one's wait may imply an earlier one's
            if clock[self.placements[j].stream] < j:
                waits.append(j)
                clock = _latest(clock, self.clocks[j])
        clock[stream] = position
        self.placements.append(Placement(stream, tuple(waits)))
        self.clocks.append(clock)
        self.tails[stream] = position
        self.joined = position if host else self.joined
        return self.placements[-1]

    def _dependencies(self, position: int) -> tuple[list[int], list[int]]:
        """The earlier instructions (since the last host one, which is one) that the one at
        ``position`` must follow, leaving out those one of them follows already; and per
        stream the last instruction that must finish before it."""
        joined = self.joined
        deps = [joined] if joined >= 0 else []
        before = self.clocks[joined] if joined >= 0 else [-1] * len(self.tails)
        access = self.accesses[position]
        for j in range(position - 1, joined, -1):  # the latest first: theirs imply earlier ones
            if before[self.placements[j].stream] < j and self.accesses[j].conflicts(access):
                deps.append(j)
                before = _latest(before, self.clocks[j])
        return deps, before

    def _stream(self, before: list[int]) -> int:
        """The stream for an instruction after ``before`` (per stream, the last instruction
        that must finish before it): one whose last instruction is among them (the main
        stream first, else the latest: a chain stays on its stream), else the one whose last
        instruction is oldest."""
        tails = self.tails
        free = [s for s, tail in enumerate(tails) if tail <= before[s]]
        if 0 in free:
            return 0
        if free:
            return max(free, key=lambda s: (tails[s], -s))
        return min(range(len(tails)), key=lambda s: tails[s])


def _latest(a: list[int], b: list[int]) -> list[int]:
    return [max(x, y) for x, y in zip(a, b, strict=True)]


# --- the memory of the kernel graph's instructions -------------------------------------------


def instr_accesses(kgraph: KernelGraph, instrs: Sequence[Instr]) -> list[Access]:
    """What each of ``instrs`` (planned: see :mod:`~caffec.compiler.passes.plan_memory`)
    reads and writes, for :func:`assign_streams`."""
    plan = kgraph.memory_plan
    itemsize = plan.itemsize

    def span(buffer: Buffer, run: tuple[int, int, int, int] | None = None) -> Span | None:
        """``buffer``'s bytes, or ``run`` (elements: start, length, period, count) of them."""
        if buffer.footprint == 0:
            return None
        base, memory = (plan.offsets[buffer], None) if buffer in plan.offsets else (0, buffer.index)
        start, length, period, count = run or (0, buffer.footprint, 0, 1)
        return Span(memory, base + start * itemsize, length * itemsize, period * itemsize, count)

    accesses = []
    for instr in instrs:
        images = instr.count if isinstance(instr, Loop) else 1
        parts = [p for k in kernels_of(instr) for p in k.parts()]
        reads = [span(o.buffer, _touched(p, o, images, _read(p, o))) for p in parts
                 for o in p.reads]  # fmt: skip
        writes = [span(o.buffer, _touched(p, o, images, _written(p))) for p in parts
                  for o in p.writes]  # fmt: skip
        if isinstance(instr, Loop):  # what a loop adds its partial sums into, after its images
            writes += [span(b) for pair in instr.partial_sums for b in pair]
        accesses.append(Access(tuple(s for s in reads if s), tuple(s for s in writes if s),
                               host=any(p.prim == "host" for p in parts)))  # fmt: skip
    return accesses


def _touched(
    part: Kernel, operand: Operand, images: int, extent: tuple[int, int, int] | None
) -> tuple[int, int, int, int] | None:
    """The elements of its buffer ``part`` reaches through ``operand``, as (start, length,
    period, count), over ``images`` images of its loop, given what one launch reaches from
    the operand's pointer (``extent``); None: not known (the whole buffer)."""
    if operand.buffer.copies != 1 or extent is None:
        return None
    length, period, count = extent
    if images > 1 and operand.step:
        if count > 1:  # runs within runs: their hull per image
            length, period, count = (count - 1) * period + length, 0, 1
        period, count = operand.step, images
    if count > 1 and period <= length:  # the runs touch: one run
        length, period, count = (count - 1) * period + length, 0, 1
    return operand.offset, length, period, count


def _read(part: Kernel, operand: Operand) -> tuple[int, int, int] | None:
    """What one launch of ``part`` reads from ``operand``'s pointer, where it is known: a
    map's input loaded element for element (the epilogue of a GEMM written into a Concat's
    output reads it there, in place)."""
    if part.prim != "map":
        return None
    loads = [index for _, slot, index in part.attrs["loads"] if part.reads[slot] is operand]
    return (part.attrs["size"], 0, 1) if loads and set(loads) == {"i"} else None


def _written(part: Kernel) -> tuple[int, int, int] | None:
    """What one launch of ``part`` writes from an output pointer: (length, period, count)
    in elements; None where the primitive's stores are not described here."""
    a = part.attrs
    if part.prim == "gemm":  # C: M rows of N, ldc apart, per batch item
        return (a["M"] - 1) * a["ldc"] + a["N"], a["stride_c"], a["batch"]
    if part.prim == "map":
        return a["size"], 0, 1
    if part.prim == "copy" and min(a["dst_strides"], default=0) >= 0:
        hull = 1 + sum((n - 1) * s for n, s in zip(a["shape"], a["dst_strides"], strict=True))
        return hull, 0, 1
    if part.prim == "pool":
        return a["P"] * a["OH"] * a["OW"], 0, 1
    if part.prim == "reduce":
        return a["out_size"], 0, 1
    if part.prim == "conv" and a["mode"] != "filter":
        side = (a["M"], a["OH"], a["OW"]) if a["mode"] == "forward" else (a["C"], a["H"], a["W"])
        return a["N"] * side[0] * side[1] * side[2], 0, 1
    return None


def pass_placements(kgraph: KernelGraph, direction: str) -> list[Placement]:
    """Streams and waits for every instruction of pass ``direction``, in order."""
    instrs = [instr for step in kgraph.steps()[direction] for instr in step.instrs]
    return assign_streams(instr_accesses(kgraph, instrs))
