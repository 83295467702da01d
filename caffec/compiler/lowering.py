"""The state of a lowering, and what a layer rule sees of it while it emits kernels.

:class:`Lowering` holds the buffers and bindings of a kernel graph being built
(the :mod:`~caffec.compiler.passes.lower` pass makes it; autodiff continues
from it). A layer rule's ``lower`` and ``grad`` get a :class:`LowerContext`:
its layer's buffers by position (``x(i)``, ``y(i)``, ``w(i)``, and in
backward ``dy(i)``, ``dx(i)``, ``dw(i)``), scratch buffers, the target's
choice of algorithms, and ``emit``, which hands each instruction to the
target (:meth:`caffec.compiler.targets.Target.emit`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from caffec.compiler.ir import LayerGraph, Op, Value
from caffec.compiler.kernels import Buffer, Instr, ParamBinding, Shape
from caffec.compiler.passes.params import filler_dict
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.targets import ConvAlgorithms, ConvShape, Target, general_algorithms
from caffec.errors import UserError


@contextmanager
def at_layer(op: Op) -> Iterator[None]:
    """A UserError a layer's rule raises without saying where (a NaN constant) is placed at
    the layer: its ``file:line:col`` and its name."""
    try:
        yield
    except UserError as err:
        err.span = err.span or op.span
        err.layer = err.layer or op.name
        raise


class Lowering:
    """The buffers and bindings of a kernel graph while it is being built."""

    def __init__(
        self, graph: LayerGraph, dtype: str, target: Target, choose_algorithms: bool = True
    ) -> None:
        self.graph = graph
        self.dtype = dtype
        self.target = target
        self.choose_algorithms = choose_algorithms
        self.algorithms: dict[str, str] = {}  # layer name -> the algorithm its rule chose
        self.buffers: list[Buffer] = []
        self.data: dict[Value, Buffer] = {}
        self.grads: dict[Value, Buffer] = {}
        self.grad_written: set[Value] = set()
        self.params: dict[Op, list[ParamBinding]] = {}
        self.states: dict[tuple[Op, str], Buffer] = {}
        self.counter = self.new("random seed and iteration", (2,), "counter")
        self.fills: list[tuple[Buffer, dict[str, Any], bool]] = []
        self.label_checks: list[dict[str, Any]] = []
        self.item_counts: list[dict[str, Any]] = []

    def new(self, name: str, shape: Shape, kind: str) -> Buffer:
        buffer = Buffer(name, tuple(shape), kind)
        self.buffers.append(buffer)
        return buffer


class LowerContext:
    """What a layer rule sees while it emits kernels: its buffers, its phase, an emit function."""

    def __init__(
        self, lowering: Lowering, op: Op, phase: str, bottoms_needed: frozenset[int] = frozenset()
    ) -> None:
        self._lowering = lowering
        self.op = op
        self.phase = phase
        self.bottoms_needed = bottoms_needed  # backward: the bottoms that need a gradient
        self.instrs: list[Instr] = []
        self.counter = lowering.counter
        self.target = lowering.target

    @property
    def choose_algorithms(self) -> bool:
        """Whether layers take their target's fastest algorithms (-O2); else each takes its
        one general algorithm."""
        return self._lowering.choose_algorithms

    def conv_algorithms(self, shape: ConvShape) -> ConvAlgorithms:
        """The algorithms a convolution of ``shape`` runs on this build's target (shown by
        ``caffec dump`` and the manifest's ``layers``)."""
        chosen = (self.target.conv_algorithms(shape) if self.choose_algorithms
                  else general_algorithms(shape))  # fmt: skip
        self._lowering.algorithms[self.op.name] = str(chosen)
        return chosen

    def name_algorithm(self, chosen: ConvAlgorithms) -> None:
        """Record the algorithms of a convolution that no target chooses (an N-D one), for
        ``caffec dump`` and the manifest as :meth:`conv_algorithms` records its own."""
        self._lowering.algorithms[self.op.name] = str(chosen)

    # forward ------------------------------------------------------------------
    def x(self, i: int) -> Buffer:
        """The data of bottom ``i``."""
        return self._lowering.data[self.op.bottoms[i]]

    def y(self, i: int) -> Buffer:
        """The data of top ``i``."""
        return self._lowering.data[self.op.tops[i]]

    def w(self, i: int) -> Buffer:
        """Parameter blob ``i``."""
        return self._lowering.params[self.op][i].data

    def state(self, name: str, shape: Shape) -> Buffer:
        """A buffer the forward pass fills and the backward pass reads (a pooling mask...)."""
        key = (self.op, name)
        if key not in self._lowering.states:
            self._lowering.states[key] = self._lowering.new(
                f"{self.op.name} {name}", shape, "value"
            )
        return self._lowering.states[key]

    def workspace(self, name: str, shape: Shape) -> Buffer:
        return self._lowering.new(f"{self.op.name} {name}", shape, "workspace")

    def fill_each_run(self, buffer: Buffer, filler: Any, refill: bool) -> None:
        """Ask the runtime to fill ``buffer`` with ``filler`` (DummyData), a FillerParameter
        or the runtime's spec as a dict (``{"blobproto": path}``: a layer's constant blob)."""
        spec = filler if isinstance(filler, dict) else filler_dict(filler) or {}
        self._lowering.fills.append((buffer, spec, refill))

    def check_labels(
        self, labels: Buffer, classes: int, ignore: float | None, what: str = "label"
    ) -> None:
        """Count the labels outside [0, classes) (and not ``ignore``, nor fractional) into a
        status buffer the runtime reads after forward, to name the bad label: a loss or
        accuracy never computes on one (Caffe reads past its blob, or counts it correct).
        ``what``: "index" for a layer that picks rows by its bottom's values (Embed)."""
        count = labels.size
        flags = self.workspace("labels out of range", (count,))
        status = self._lowering.new(f"{self.op.name} labels out of range", (1,), "status")
        self.emit(
            pmap((count,), [(flags, "l != ignore && (l < 0 || l >= classes || l != floor(l))"
                                    " ? 1 : 0")],
                 {"l": labels}, {"ignore": -1.5 if ignore is None else ignore,
                                 "classes": classes}),
            reduce(flags, status, (count,), [0]),
        )  # fmt: skip
        self._lowering.label_checks.append({"layer": self.op.name, "status": status,
                                            "labels": labels, "classes": classes,
                                            "ignore": ignore, "what": what})  # fmt: skip

    def item_count(self, every: int) -> Buffer:
        """A one-number buffer for how many items this layer's tops hold in this forward, where
        the data decides it (Filter; ``every``: the most, which a build assumes by default):
        the layer's kernels write it, and the runtime reads it once the layer's step has run
        and compiles the net again for another count."""
        count = self._lowering.new(f"{self.op.name} items", (1,), "status")
        self._lowering.item_counts.append({"layer": self.op.name, "count": count, "items": every,
                                           "tops": [v.blob for v in self.op.tops],
                                           "shapes": [v.shape for v in self.op.tops]})  # fmt: skip
        return count

    @property
    def forces_backward(self) -> bool:
        """Whether the net sets ``force_backward``: a rule that refuses a gradient to an index
        bottom can tell that request from one the net's layers make."""
        return self._lowering.graph.force_backward

    def emit(self, *instrs: Instr) -> None:
        """Add instructions to the layer's step, as the target runs them."""
        for instr in instrs:
            self.instrs += self.target.emit(instr, self.workspace, self.choose_algorithms)

    # backward -----------------------------------------------------------------
    def dy(self, i: int) -> Buffer:
        """The gradient of top ``i`` (zero-filled if nothing downstream produced one)."""
        return self._lowering.grads[self.op.tops[i]]

    def dx(self, i: int) -> tuple[Buffer, bool] | None:
        """Where to write bottom ``i``'s gradient and whether to add to it; None: not needed."""
        value = self.op.bottoms[i]
        if i not in self.bottoms_needed:
            return None
        buffer = self._lowering.grads.get(value)
        if buffer is None:
            buffer = self._lowering.new(f"{value.name} diff", value.shape or (), "grad")
            self._lowering.grads[value] = buffer
        accumulate = value in self._lowering.grad_written
        self._lowering.grad_written.add(value)
        return buffer, accumulate

    def dw(self, i: int) -> Buffer | None:
        """Parameter ``i``'s gradient (always accumulated into), or None if not learned."""
        binding = self._lowering.params[self.op][i]
        return binding.grad if binding.lr_mult != 0 else None
