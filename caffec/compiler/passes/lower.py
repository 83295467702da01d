"""Lowering: the layer graph becomes a kernel graph of primitives, one step per layer.

Each value gets a buffer, each parameter blob a persistent buffer (shared
where ``param { name }`` says so), and each layer's registry entry emits its
forward kernels through a :class:`LowerContext`. :mod:`.autodiff` adds the
backward steps the same way.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from caffec.compiler.ir import LayerGraph, Op, Value
from caffec.compiler.kernels import (
    BlobBinding,
    Buffer,
    Instr,
    KernelGraph,
    ParamBinding,
    Shape,
    Step,
)
from caffec.compiler.passes.params import filler_dict
from caffec.compiler.registry import lookup
from caffec.errors import InternalError, UserError


def loss_weights(op: Op) -> list[float]:
    """Each top's weight in the objective, as Caffe's SetLossWeights gives them."""
    given = list(op.param.loss_weight)
    if given:
        if len(given) != len(op.tops):
            raise UserError(
                f"{len(given)} loss_weight values for {len(op.tops)} tops",
                span=op.span,
                layer=op.name,
                hint="give one loss_weight per top, or none",
            )
        return given
    spec = lookup(op.type)
    default = 1.0 if spec is not None and spec.loss else 0.0
    return ([default] + [0.0] * len(op.tops))[: len(op.tops)]


class Lowering:
    """The buffers and bindings of a kernel graph while it is being built."""

    def __init__(self, graph: LayerGraph, dtype: str, choose_algorithms: bool = True) -> None:
        self.graph = graph
        self.dtype = dtype
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

    def new(self, name: str, shape: Shape, kind: str) -> Buffer:
        buffer = Buffer(name, tuple(shape), kind)
        self.buffers.append(buffer)
        return buffer


class LowerContext:
    """What a layer rule sees while it emits kernels: its buffers, its phase, an emit function."""

    def __init__(self, lowering: Lowering, op: Op, phase: str) -> None:
        self._lowering = lowering
        self.op = op
        self.phase = phase
        self.instrs: list[Instr] = []
        self.counter = lowering.counter

    @property
    def choose_algorithms(self) -> bool:
        """False in reference builds (-O0): every layer takes its one general algorithm."""
        return self._lowering.choose_algorithms

    def record_algorithm(self, name: str) -> None:
        """Say which of its algorithms the layer runs (shown by ``caffec dump`` and the
        manifest's ``layers``)."""
        self._lowering.algorithms[self.op.name] = name

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
        """Ask the runtime to fill ``buffer`` with ``filler`` (DummyData)."""
        self._lowering.fills.append((buffer, filler_dict(filler) or {}, refill))

    def emit(self, *instrs: Instr) -> None:
        self.instrs.extend(instrs)

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

    bottoms_needed: frozenset[int] = frozenset()


def _param_bindings(lowering: Lowering, op: Op, owners: dict[str, ParamBinding]) -> None:
    bindings = []
    for i, blob in enumerate(op.params):
        spec = op.param.param[i] if i < len(op.param.param) else None
        lr_mult = spec.lr_mult if spec is not None and spec.HasField("lr_mult") else blob.lr_mult
        decay_mult = spec.decay_mult if spec is not None else 1.0
        name = spec.name if spec is not None else ""
        if name and name in owners:
            owner = owners[name]
            bindings.append(
                ParamBinding(op.name, i, owner.data, owner.grad, lr_mult, decay_mult, owner.filler,
                             shared_with=(owner.layer, owner.index))
            )  # fmt: skip
            continue
        data = lowering.new(f"{op.name} param {i}", blob.shape, "param")
        grad = lowering.new(f"{op.name} param {i} diff", blob.shape, "param_grad")
        binding = ParamBinding(
            op.name, i, data, grad, lr_mult, decay_mult, filler_dict(blob.filler)
        )
        if name:
            owners[name] = binding
        bindings.append(binding)
    lowering.params[op] = bindings


def lower(
    graph: LayerGraph, dtype: str = "float32", choose_algorithms: bool = True
) -> tuple[KernelGraph, Lowering]:
    """The forward kernel graph of ``graph`` (after shape inference and params).

    The :class:`Lowering` state comes back too: autodiff continues from it.
    """
    lowering = Lowering(graph, dtype, choose_algorithms)
    owners: dict[str, ParamBinding] = {}
    inputs: dict[str, Buffer] = {}
    feeders: list[dict[str, Any]] = []
    forward: list[Step] = []
    for op in graph.ops:
        spec = lookup(op.type)
        if spec is None or not spec.can_lower:
            raise UserError(
                f"caffec cannot compile {op.type} layers yet",
                span=op.span,
                layer=op.name,
                hint="remove the layer, or see the README for the layer types caffec compiles",
            )
        fed = getattr(spec.rules, "fed_by_runtime", False)
        for value in op.tops:
            if value.shape is None:
                raise InternalError("lowering needs shapes", layer=op.name)
            kind = "input" if fed else "value"
            lowering.data[value] = lowering.new(value.name, value.shape, kind)
            if fed:
                inputs[value.blob] = lowering.data[value]
        if fed and op.type not in ("Input", "MemoryData"):  # the runtime reads their sources
            feeders.append(
                {
                    "layer": op.name,
                    "type": op.type,
                    "tops": [v.blob for v in op.tops],
                    "param": json_format.MessageToDict(op.param, preserving_proto_field_name=True),
                }
            )
        _param_bindings(lowering, op, owners)
        ctx = LowerContext(lowering, op, graph.phase)
        spec.rules.lower(op, ctx)
        forward.append(Step(op.name, op.type, ctx.instrs))

    blobs: dict[str, BlobBinding] = {}
    for value in graph.values.values():
        if value.blob in blobs:
            blobs[value.blob].data = lowering.data[value]  # the latest version's data
        else:
            blobs[value.blob] = BlobBinding(value.blob, lowering.data[value], None)
    kgraph = KernelGraph(
        name=graph.name,
        phase=graph.phase,
        dtype=dtype,
        buffers=lowering.buffers,
        forward=forward,
        backward=[],
        blobs=blobs,
        params=[b for op in graph.ops for b in lowering.params[op]],
        inputs=inputs,
        outputs=sorted(v.blob for v in graph.outputs()),  # Caffe lists them by name
        seeds=[],
        loss_tops=[
            (value.blob, float(weight))
            for op in graph.ops
            for value, weight in zip(op.tops, loss_weights(op), strict=True)
            if weight != 0
        ],
        fills=lowering.fills,
        feeders=feeders,
        layers=[_layer_entry(op, lowering.algorithms) for op in graph.ops],
    )
    return kgraph, lowering


def _layer_entry(op: Op, algorithms: dict[str, str]) -> dict[str, Any]:
    """What the manifest says of a layer: name, type, tops, and its algorithm if it chose one."""
    entry: dict[str, Any] = {"name": op.name, "type": op.type, "tops": [v.blob for v in op.tops]}
    if op.name in algorithms:
        entry["algorithm"] = algorithms[op.name]
    return entry
