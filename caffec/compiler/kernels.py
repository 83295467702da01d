"""The kernel graph: what will run, as a schedule of primitives over buffers.

Lowering turns each layer into a few *kernels*, each an instance of one
primitive (``gemm``, ``im2col``, ``map``, ``reduce``, ``pool``, ``copy``, ...)
that a template renders for a target. A kernel reads and writes
:class:`Operand` s: a :class:`Buffer` plus an element offset, and a *step*
that advances the offset on each iteration of an enclosing :class:`Loop`
(convolutions run their im2col and GEMM once per image).

Buffers are plain data: a shape, a kind (what owns it and when it lives),
and after planning an index in the pointer table the runtime hands the
generated code. Nothing here knows about Caffe layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Shape = tuple[int, ...]

# What a buffer holds, which decides who allocates it and how long it lives.
KINDS = (
    "input",  # fed by the user or a data layer before forward
    "value",  # an activation (a layer's top), or state a layer keeps for its backward
    "grad",  # the gradient of a value
    "seed",  # the gradient the objective starts from: a loss top's loss_weight
    "param",  # a learnable blob, persistent
    "param_grad",  # its gradient, persistent, accumulated across backward passes
    "workspace",  # scratch inside one kernel or loop (im2col columns)
    "counter",  # int64 scalars the runtime updates: [0] = random seed, [1] = iteration
    "history",  # solver state per parameter (momentum, squared gradients), persistent
    "hyper",  # real scalars the runtime sets each iteration: [0] = the learning rate
    "status",  # a check's result the runtime reads after a pass (labels out of range)
)


@dataclass(eq=False)
class Buffer:
    """A tensor the generated code reads or writes."""

    name: str  # for dumps and the manifest only; never reaches generated source
    shape: Shape
    kind: str
    index: int = -1  # position in the pointer table, set by the kernel graph
    copies: int = 1  # a workspace of a loop run across threads: one copy per thread

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def footprint(self) -> int:
        """The elements it takes in memory: its size, once per copy."""
        return self.size * self.copies

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, {self.shape}, {self.kind}, #{self.index})"


@dataclass(frozen=True, eq=False)
class Operand:
    """A buffer as one kernel sees it: from ``offset``, advancing ``step`` per loop iteration."""

    buffer: Buffer
    offset: int = 0
    step: int = 0
    # every copy of a copied buffer from the first, not the running image's or thread's: the
    # kernels around a loop that zero and add up its partial sums
    every_copy: bool = False


def whole(buffer: Buffer) -> Operand:
    return Operand(buffer)


@dataclass(eq=False)
class Kernel:
    """One primitive instance. ``attrs`` are validated numbers and expressions only."""

    prim: str
    reads: list[Operand]
    writes: list[Operand]
    attrs: dict[str, Any] = field(default_factory=dict)
    accumulate: bool = False  # add into the outputs instead of overwriting them

    def __repr__(self) -> str:
        return f"Kernel({self.prim}, {self.attrs})"

    def parts(self) -> list[Kernel]:
        """The primitives it runs: its parts if it is a fused kernel, else itself."""
        return self.attrs["parts"] if self.prim == "fused" else [self]


@dataclass(eq=False)
class Loop:
    """Run ``body`` ``count`` times; operands advance by their step each time."""

    count: int
    body: list[Kernel]
    threads: int = 1  # iterations are independent: run them on this many threads
    images: int = 1  # iterations are independent: launch this many at once (CUDA)
    # (partial, total): the body adds into ``partial``, one zeroed copy per thread, and
    # the loop adds the copies into ``total`` after its iterations (a weight gradient)
    partial_sums: list[tuple[Buffer, Buffer]] = field(default_factory=list)


Instr = Kernel | Loop


def kernels_of(instr: Instr) -> list[Kernel]:
    """The kernels an instruction runs: a loop's body, or the kernel itself."""
    return instr.body if isinstance(instr, Loop) else [instr]


@dataclass
class Step:
    """The kernels of one layer in one direction: the unit of partial runs and of timing."""

    layer: str
    layer_type: str
    instrs: list[Instr]
    joined: bool = False  # a fused kernel runs this layer with the one before: no partial
    # run may begin here

    def kernels(self) -> list[Kernel]:
        return [kernel for instr in self.instrs for kernel in kernels_of(instr)]


@dataclass
class ParamBinding:
    """A learnable blob: which layer owns it, its buffers, and how the solver treats it."""

    layer: str
    index: int
    data: Buffer
    grad: Buffer | None  # None where nothing needs its gradient (lr_mult 0, TEST builds)
    lr_mult: float
    decay_mult: float
    filler: dict[str, Any] | None
    shared_with: tuple[str, int] | None = None  # (layer, index) owning the data, if shared


@dataclass(frozen=True)
class View:
    """Where a blob lives inside another buffer, once fusion dropped the copy between them
    (a Concat's bottom inside its top, a Flatten's top at its bottom)."""

    offset: int  # elements from the buffer's start
    shape: Shape  # the blob's
    strides: tuple[int, ...]  # in elements, per axis of ``shape``


@dataclass
class BlobBinding:
    """What pycaffe's ``net.blobs[name]`` shows: the last version's data, the first's diff,
    each the whole buffer or, with a view, a part of it."""

    name: str
    data: Buffer
    diff: Buffer | None
    data_view: View | None = None
    diff_view: View | None = None


@dataclass
class KernelGraph:
    """A net ready for code generation: buffers, the forward and backward schedule, bindings."""

    name: str
    phase: str
    dtype: str
    buffers: list[Buffer]
    forward: list[Step]
    backward: list[Step]
    blobs: dict[str, BlobBinding]
    params: list[ParamBinding]
    inputs: dict[str, Buffer]  # blobs the runtime feeds (data layer tops): their first version
    outputs: list[str]
    seeds: list[tuple[Buffer, float]]  # loss tops' gradient buffers and their loss_weight
    loss_tops: list[tuple[str, float]]  # blob name and loss weight of each objective term
    fills: list[tuple[Buffer, dict[str, Any], bool]]  # DummyData: buffer, filler, refill each run
    label_checks: list[dict[str, Any]] = field(default_factory=list)  # see LowerContext
    item_counts: list[dict[str, Any]] = field(default_factory=list)  # see LowerContext
    layers: list[dict[str, Any]] = field(default_factory=list)  # name, type, tops for net.layers
    output_diffs: dict[str, Buffer] = field(default_factory=dict)  # where backward starts from
    feeders: list[dict[str, Any]] = field(default_factory=list)  # data layers the runtime reads
    update: list[Step] = field(default_factory=list)  # the solver step, after backward
    histories: list[tuple[int, Buffer]] = field(default_factory=list)  # (param index, history)
    solver: dict[str, Any] = field(default_factory=dict)  # what the runtime needs of the solver
    memory_plan: Any = None  # the arena layout, from the memory-planning pass
    net_dir: str = "."  # the prototxt's folder: relative data sources are looked for there too
    target: Any = None  # the Target it was lowered for (caffec.compiler.targets)
    opt_level: int = 2  # the -O it was built at (-O0: the reference build)
    precision: str = "fp32"  # the GEMMs' arithmetic (compiler.pipeline.PRECISIONS)

    def number_buffers(self) -> None:
        """Give every buffer its pointer-table index, in creation order."""
        for i, buffer in enumerate(self.buffers):
            buffer.index = i

    def steps(self) -> dict[str, list[Step]]:
        """The entry points, in order: forward, backward, update."""
        return {"forward": self.forward, "backward": self.backward, "update": self.update}

    def kernels(self) -> list[Kernel]:
        return [k for steps in self.steps().values() for step in steps for k in step.kernels()]

    def primitives(self) -> list[Kernel]:
        """The primitive instances: the kernels, with fused kernels opened into their parts."""
        return [p for k in self.kernels() for p in k.parts()]

    def prune(self) -> None:
        """Drop buffers nothing reads, writes or shows (gradients nobody computes). A gradient
        shown as a view into another buffer is used: a Flatten's bottom gradient that fusion
        left inside the output gradient the user writes."""
        used = {id(o.buffer) for k in self.kernels() for o in (*k.reads, *k.writes)}
        used |= {id(b.diff) for b in self.blobs.values() if b.diff_view is not None}
        for param in self.params:
            if param.grad is not None and id(param.grad) not in used:
                param.grad = None
        for blob in self.blobs.values():
            if blob.diff is not None and id(blob.diff) not in used:
                blob.diff = None
        keep = used | {id(b) for b, _ in self.seeds} | {id(b) for b, _, _ in self.fills}
        keep |= {id(b.data) for b in self.blobs.values()}
        keep |= {id(p.data) for p in self.params} | {id(b) for b in self.inputs.values()}
        keep |= {id(b) for b in self.buffers if b.kind in ("counter", "hyper")}
        self.output_diffs = {n: b for n, b in self.output_diffs.items() if id(b) in used | keep}
        self.buffers = [b for b in self.buffers if id(b) in keep]
        self.number_buffers()
