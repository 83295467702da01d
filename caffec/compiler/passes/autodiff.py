"""Autodiff: the backward steps, with Caffe's rules for what needs a gradient.

Which layers run backward follows Caffe's ``Net::Init``: a layer needs
backward when a bottom needs it (subject to ``propagate_down``) or one of its
parameters has a non-zero ``lr_mult``; a layer whose tops reach no loss is
skipped; ``force_backward`` turns backward on everywhere a layer allows it
(loss layers never send a gradient to their labels) and in every layer that
learns (a Parameter layer, an Embed's weights). The objective is the sum
of every top with a non-zero ``loss_weight`` (1 by default for loss layers'
first top), so each such top's gradient starts as its loss weight.
"""

from __future__ import annotations

from caffec.compiler.ir import LayerGraph, Op, Value
from caffec.compiler.kernels import KernelGraph, Step
from caffec.compiler.lowering import LowerContext, Lowering, at_layer
from caffec.compiler.passes.lower import loss_weights
from caffec.compiler.primitives import fill
from caffec.compiler.registry import lookup
from caffec.errors import UserError


def _needs(graph: LayerGraph, lowering: Lowering) -> tuple[dict[Op, bool], dict[Op, set[int]]]:
    """Which layers run backward and which of their bottoms receive a gradient."""
    value_needs: dict[Value, bool] = {}
    layer_needs: dict[Op, bool] = {}
    bottom_needs: dict[Op, set[int]] = {}
    for op in graph.ops:
        need = any(value_needs.get(v, False) for v in op.bottoms)
        need |= any(p.lr_mult != 0 for p in lowering.params[op])
        propagate = list(op.param.propagate_down)
        if propagate and len(propagate) != len(op.bottoms):
            raise UserError(
                f"{len(propagate)} propagate_down values for {len(op.bottoms)} bottoms",
                span=op.span,
                layer=op.name,
            )
        bottom_needs[op] = {
            i
            for i, v in enumerate(op.bottoms)
            if (propagate[i] if propagate else value_needs.get(v, False))
        }
        layer_needs[op] = need
        for v in op.tops:
            value_needs[v] = need

    # Backwards: a layer whose tops reach no loss computes nothing.
    under_loss: set[Value] = set()
    for op in reversed(graph.ops):
        weights = loss_weights(op)
        contributes = any(w != 0 for w in weights) or any(v in under_loss for v in op.tops)
        if not contributes:
            layer_needs[op] = False
        if contributes:
            under_loss.update(op.bottoms)
        else:
            bottom_needs[op] = set()

    if graph.force_backward:
        for op in graph.ops:
            spec = lookup(op.type)
            allowed = {i for i in range(len(op.bottoms)) if spec.allows_force_backward(i)}
            learns = any(p.lr_mult != 0 for p in lowering.params[op])  # Parameter, Embed
            layer_needs[op] = bool(allowed) or learns or layer_needs[op]
            bottom_needs[op] |= allowed
    return layer_needs, bottom_needs


def autodiff(kgraph: KernelGraph, lowering: Lowering) -> KernelGraph:
    """Add the backward steps to ``kgraph``, in reverse layer order."""
    graph = lowering.graph
    layer_needs, bottom_needs = _needs(graph, lowering)

    for op in graph.ops:
        for value, weight in zip(op.tops, loss_weights(op), strict=True):
            if weight != 0:
                seed = lowering.new(f"{value.name} diff", value.shape or (), "seed")
                lowering.grads[value] = seed
                lowering.grad_written.add(value)
                kgraph.seeds.append((seed, float(weight)))

    for value in graph.outputs():  # the user may set an output's gradient (pycaffe's diffs)
        if value not in lowering.grads:
            lowering.grads[value] = lowering.new(f"{value.name} diff", value.shape or (), "seed")
            lowering.grad_written.add(value)
        kgraph.output_diffs[value.blob] = lowering.grads[value]

    backward: list[Step] = []
    for op in reversed(graph.ops):
        if not layer_needs[op]:
            continue
        spec = lookup(op.type)
        ctx = LowerContext(lowering, op, graph.phase, frozenset(bottom_needs[op]))
        wants_params = any(p.lr_mult != 0 for p in lowering.params[op])
        if not ctx.bottoms_needed and not wants_params:
            continue
        if not spec.has_grad:
            raise UserError(
                f"{op.type} layers have no backward pass, but this net needs one here",
                span=op.span,
                layer=op.name,
                hint="set propagate_down: false for its bottoms, or lr_mult: 0 upstream",
            )
        for value in op.tops:
            if value not in lowering.grads:  # nothing downstream sent a gradient: it is zero
                lowering.grads[value] = lowering.new(f"{value.name} diff", value.shape, "grad")
                lowering.grad_written.add(value)
                ctx.emit(fill(lowering.grads[value], 0.0))
        with at_layer(op):
            spec.rules.grad(op, ctx)
        backward.append(Step(op.name, op.type, ctx.instrs))

    kgraph.backward = backward
    kgraph.buffers = lowering.buffers
    for op, entry in zip(graph.ops, kgraph.layers, strict=True):
        entry["bottom_diff_buffers"] = [lowering.grads.get(v) for v in op.bottoms]
    for value, grad in lowering.grads.items():
        binding = kgraph.blobs[value.blob]
        if binding.diff is None or value.name == value.blob:
            binding.diff = grad  # pycaffe shows the first version's gradient
    return kgraph
