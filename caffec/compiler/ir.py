"""The layer graph: what the user wrote, checked, as a networkx graph.

There are two kinds of node. An :class:`Op` is one Caffe layer (its type, its
typed ``LayerParameter`` and where it was written). A :class:`Value` is one
version of a blob. Caffe lets a layer write its top into its own bottom
(``top: "conv1"`` on a ReLU whose bottom is ``conv1``); here that top is a new
value ``conv1'`` so that every value has exactly one producer, and
``Value.blob`` keeps the name the user wrote (pycaffe's ``net.blobs[...]``).
A blob read by several layers is one value with several outgoing edges: no
Split layers are added.

Edges run op → value (a top, ``index`` = position among the op's tops) and
value → op (a bottom, ``index`` = position among the op's bottoms). The
ordered lists ``Op.bottoms``/``Op.tops`` say the same thing in a form that
is quicker to read.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from caffec.errors import Span

Shape = tuple[int, ...]


@dataclass(eq=False)
class Value:
    """One SSA version of a blob."""

    name: str
    blob: str
    shape: Shape | None = None
    dtype: str = "float32"
    span: Span | None = None

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.shape})"


@dataclass(frozen=True)
class ParamBlob:
    """A learnable (or state) blob a layer owns, as Caffe would allocate it."""

    shape: Shape
    filler: Any  # a FillerParameter message, or None where Caffe fills nothing
    role: str  # "weight", "bias", "mean", ... for dumps and later passes
    lr_mult: float = 1.0  # the default when the layer gives no param { lr_mult }


@dataclass(eq=False)
class Op:
    """One Caffe layer."""

    name: str
    type: str
    param: Any  # caffe_pb2.LayerParameter
    index: int  # position in the (filtered, upgraded) net
    span: Span | None = None
    bottoms: list[Value] = field(default_factory=list)
    tops: list[Value] = field(default_factory=list)
    params: list[ParamBlob] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, {self.type})"


@dataclass
class LayerGraph:
    """A checked net: ops in Caffe's execution order, values by SSA name."""

    name: str
    ops: list[Op]
    values: dict[str, Value]
    graph: nx.DiGraph
    phase: str = "TEST"
    force_backward: bool = False

    @classmethod
    def from_ops(
        cls, name: str, ops: list[Op], phase: str, force_backward: bool = False
    ) -> LayerGraph:
        """Build the networkx view and the value table from ops whose edges are set."""
        graph = nx.DiGraph()
        values: dict[str, Value] = {}
        for op in ops:
            graph.add_node(op, kind="op")
            for i, value in enumerate(op.bottoms):
                graph.add_edge(value, op, index=i)
            for i, value in enumerate(op.tops):
                graph.add_node(value, kind="value")
                graph.add_edge(op, value, index=i)
                values[value.name] = value
        return cls(name, ops, values, graph, phase, force_backward)

    def copy(self) -> LayerGraph:
        """A copy whose ops and values can be changed without touching this graph.

        The protobuf parameters are shared: passes treat them as read-only; so are shapes,
        spans and parameter blobs, which nobody changes in place. (A field-by-field copy:
        ``copy.deepcopy`` took seconds on a net of 20,000 layers.)
        """
        values: dict[int, Value] = {}

        def value(v: Value) -> Value:
            if id(v) not in values:
                values[id(v)] = copy.copy(v)
            return values[id(v)]

        ops = [
            dataclasses.replace(op, bottoms=[value(v) for v in op.bottoms],
                                tops=[value(v) for v in op.tops], params=list(op.params))
            for op in self.ops
        ]  # fmt: skip
        return LayerGraph.from_ops(self.name, ops, self.phase, self.force_backward)

    def producer(self, value: Value) -> Op | None:
        """The op whose top ``value`` is (None for nothing, which verify forbids)."""
        for pred in self.graph.predecessors(value):
            return pred
        return None

    def consumers(self, value: Value) -> list[Op]:
        """The ops that read ``value``, in execution order."""
        return sorted(self.graph.successors(value), key=lambda op: op.index)

    def op(self, name: str) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def outputs(self) -> Iterator[Value]:
        """Values nobody reads: the net's outputs, as in Caffe."""
        for value in self.values.values():
            if self.graph.out_degree(value) == 0:
                yield value
