"""What the fusion pass works on: the instructions of one pass as entries, and the small
questions every rewrite asks of them (:mod:`.fuse`, :mod:`.fuse_copies`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from caffec.compiler.kernels import Buffer, Instr, Kernel, KernelGraph, Operand, kernels_of


@dataclass(eq=False)
class Entry:
    """An instruction of one pass, the step it runs in, and the steps (layers) its work
    came from."""

    instr: Instr
    home: int
    origins: set[int] = field(default_factory=set)


@dataclass(eq=False)
class Scope:
    """One pass being fused: its instructions so far, and the rest of the graph."""

    kgraph: KernelGraph
    direction: str
    pinned: set[Buffer]
    fixed: set[Buffer]  # what the runtime writes: never moved
    entries: list[Entry] = field(default_factory=list)
    moved: set[int] = field(default_factory=set)  # kernels now writing a copy's destination

    def kernels(self) -> list[Kernel]:
        """Every kernel of every pass as things stand, fused kernels opened."""
        instrs = [e.instr for e in self.entries]
        for direction, steps in self.kgraph.steps().items():
            if direction != self.direction:
                instrs += [i for step in steps for i in step.instrs]
        out: list[Kernel] = []
        for instr in instrs:
            for kernel in kernels_of(instr):
                out += kernel.parts()
        return out

    def users(self, buffer: Buffer) -> tuple[list[Kernel], list[Kernel]]:
        """The kernels that read ``buffer`` and the ones that write it."""
        kernels = self.kernels()
        readers = [k for k in kernels if any(o.buffer is buffer for o in k.reads)]
        writers = [k for k in kernels if any(o.buffer is buffer for o in k.writes)]
        return readers, writers


def reader_counts(scope: Scope) -> Counter[Buffer]:
    """How many kernels read each buffer: :meth:`Scope.users` for every buffer at once, for
    a rewrite that asks of many buffers and keeps the counts up to date as it goes."""
    return Counter(b for k in scope.kernels() for b in {o.buffer for o in k.reads})


def fused(parts: list[Kernel]) -> Kernel:
    """One kernel running ``parts`` in order. It reads what a part reads (or accumulates
    into) before an earlier part wrote it, and writes what any part writes."""
    flat = [p for part in parts for p in part.parts()]
    reads: list[Operand] = []
    writes: list[Operand] = []
    for part in flat:
        written = {o.buffer for o in writes}
        inputs = [*part.reads, *(part.writes if part.accumulate else [])]
        reads += [o for o in inputs if o.buffer not in written and o not in reads]
        writes += [o for o in part.writes if o not in writes]
    return Kernel("fused", reads, writes, {"parts": flat})


# --- who touches what ------------------------------------------------------------------------


def is_at(o: Operand, buffer: Buffer, offset: int = 0, step: int = 0) -> bool:
    """Whether ``o`` is ``buffer`` from ``offset`` advancing ``step`` (operands compare by
    identity)."""
    return o.buffer is buffer and o.offset == offset and o.step == step


def is_map(instr: Instr, random_ok: bool = False) -> bool:
    """Whether ``instr`` is a plain elementwise map (``random_ok``: random ones too)."""
    return (
        isinstance(instr, Kernel)
        and instr.prim == "map"
        and not instr.accumulate
        and (random_ok or not instr.attrs["random"])
    )


def loads_of(kernel: Kernel, buffer: Buffer) -> list[tuple[str, int, str]]:
    """A map's loads (name, operand, index expression) of ``buffer``."""
    return [load for load in kernel.attrs["loads"] if kernel.reads[load[1]].buffer is buffer]


def elementwise_only(kernel: Kernel, buffer: Buffer) -> bool:
    """Whether a map reads ``buffer`` (if at all) only at its own element, as a whole."""
    return all(index == "i" for _, _, index in loads_of(kernel, buffer)) and all(
        o.buffer is not buffer or is_at(o, buffer) for o in kernel.reads
    )


# --- 1. copies read through ------------------------------------------------------------------
