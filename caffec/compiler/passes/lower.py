"""Lowering: the layer graph becomes a kernel graph of primitives, one step per layer.

Each value gets a buffer, each parameter blob a persistent buffer (shared
where ``param { name }`` says so), and each layer's registry entry emits its
forward kernels through a :class:`~caffec.compiler.lowering.LowerContext`. :mod:`.autodiff` adds the
backward steps the same way.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from caffec.compiler.ir import LayerGraph, Op
from caffec.compiler.kernels import (
    BlobBinding,
    Buffer,
    KernelGraph,
    ParamBinding,
    Step,
)
from caffec.compiler.lowering import LowerContext, Lowering, at_layer
from caffec.compiler.passes.params import filler_dict
from caffec.compiler.registry import lookup
from caffec.compiler.targets import Target
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
    graph: LayerGraph, target: Target, dtype: str = "float32", choose_algorithms: bool = True
) -> tuple[KernelGraph, Lowering]:
    """The forward kernel graph of ``graph`` (after shape inference and params) for
    ``target``; ``choose_algorithms``: each layer takes its target's fastest (-O2).

    The :class:`Lowering` state comes back too: autodiff continues from it.
    """
    lowering = Lowering(graph, dtype, target, choose_algorithms)
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
        fed = spec.fed_by_runtime
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
        with at_layer(op):
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
        label_checks=lowering.label_checks,
        item_counts=lowering.item_counts,
        feeders=feeders,
        layers=[_layer_entry(op, lowering) for op in graph.ops],
    )
    return kgraph, lowering


def _layer_entry(op: Op, lowering: Lowering) -> dict[str, Any]:
    """What the manifest says of a layer: name, type, blobs, and its algorithm if it chose one."""
    described = type(op.param)()
    described.CopyFrom(op.param)
    described.ClearField("blobs")  # weights travel apart; the rest makes a full snapshot
    entry: dict[str, Any] = {
        "name": op.name, "type": op.type, "tops": [v.blob for v in op.tops],
        "bottoms": [v.blob for v in op.bottoms],
        "param": json_format.MessageToDict(described, preserving_proto_field_name=True),
        # the buffers its tops (this version of each) and, once autodiff ran, its bottoms'
        # gradients live in: what Caffe's debug_info reports after each layer
        "top_buffers": [lowering.data[v] for v in op.tops],
        "bottom_diff_buffers": [None] * len(op.bottoms),
    }  # fmt: skip
    if op.name in lowering.algorithms:
        entry["algorithm"] = lowering.algorithms[op.name]
    return entry
