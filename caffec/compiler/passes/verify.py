"""Checks that every layer is of a known type with the right number of bottoms and tops."""

from __future__ import annotations

from caffec.compiler.ir import LayerGraph
from caffec.compiler.registry import known_types, lookup
from caffec.errors import UserError, did_you_mean


def verify(graph: LayerGraph) -> LayerGraph:
    for op in graph.ops:
        spec = lookup(op.type)
        if spec is None:
            types = known_types()
            if not op.type:
                raise UserError(
                    "the layer has no type",
                    span=op.span,
                    layer=op.name,
                    hint=f"known types: {', '.join(types)}",
                )
            raise UserError(
                f"unknown layer type '{op.type}'",
                span=op.span,
                layer=op.name,
                hint=did_you_mean(op.type, types) or f"known types: {', '.join(types)}",
            )
        for what, arity, got in (
            ("bottom", spec.bottoms, len(op.bottoms)),
            ("top", spec.tops, len(op.tops)),
        ):
            if not arity.accepts(got):
                raise UserError(
                    f"a {op.type} layer takes {arity} {what}s, this one has {got}",
                    span=op.span,
                    layer=op.name,
                )
    return graph
