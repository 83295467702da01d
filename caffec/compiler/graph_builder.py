"""Building the layer graph from a (filtered, upgraded) NetParameter.

This is where blob names become values: each top is a new value, a top that
reuses its bottom's name (Caffe's in-place computation) becomes a new SSA
version of that blob, and a bottom that no earlier layer produced is an
error that names the layer and where it was written.
"""

from __future__ import annotations

from typing import Any

from caffec.compiler.ir import LayerGraph, Op, Value
from caffec.compiler.registry import lookup
from caffec.errors import UserError, did_you_mean
from caffec.formats.source_map import SourceMap


def _layer_label(param: Any, index: int) -> str:
    return param.name or f"#{index} ({param.type or 'no type'})"


def version_name(blob: str, version: int) -> str:
    """The name of a blob's ``version``-th value (0: the blob's own name), primed as
    derivatives are written: x', x'', x''', then x'4, x'5: a name stays short however many
    in-place layers rewrite the blob, so building, dumps and manifests grow linearly."""
    return blob + ("'" * version if version <= 3 else f"'{version}")


def _with_automatic_top(param: Any) -> Any:
    """A loss layer written without tops gets one, as Caffe gives it (named "(automatic)")."""
    spec = lookup(param.type)
    if param.top or spec is None or not spec.loss:
        return param
    completed = type(param)()
    completed.CopyFrom(param)
    completed.top.append("(automatic)")
    return completed


def build_layer_graph(net: Any, spans: SourceMap | None = None, phase: str = "TEST") -> LayerGraph:
    """The layer graph of ``net`` (a current-format NetParameter, already filtered)."""
    spans = spans or SourceMap()
    current: dict[str, Value] = {}  # blob name -> its latest version
    taken: set[str] = set()  # every value's name so far
    versions: dict[str, int] = {}  # blob name -> the version its next value tries first
    ops: list[Op] = []
    for index, param in enumerate(net.layer):
        param = _with_automatic_top(param)
        span = spans.get(("layer", index))
        name = _layer_label(param, index)
        op = Op(name=name, type=param.type, param=param, index=index, span=span)
        for b, blob in enumerate(param.bottom):
            if blob not in current:
                known = did_you_mean(blob, current)
                raise UserError(
                    f"bottom '{blob}' is not produced by any earlier layer",
                    span=spans.get(("layer", index, "bottom", b)),
                    layer=name,
                    hint=known
                    or "a layer's bottoms must be tops of layers written above it "
                    "(and kept in this phase)",
                )
            op.bottoms.append(current[blob])
        for t, blob in enumerate(param.top):
            top_span = spans.get(("layer", index, "top", t))
            in_place = t < len(param.bottom) and param.bottom[t] == blob
            if blob in current and not in_place:
                raise UserError(
                    f"top '{blob}' is already produced by another layer",
                    span=top_span,
                    layer=name,
                    hint="give the top a new name; a layer may only reuse a name as an in-place "
                    "top at the same position as its bottom",
                )
            if blob in [op_top.blob for op_top in op.tops]:
                raise UserError(f"top '{blob}' is listed twice", span=top_span, layer=name)
            version = versions.get(blob, 0)
            while version_name(blob, version) in taken:
                version += 1
            versions[blob] = version + 1
            value = Value(name=version_name(blob, version), blob=blob, span=top_span)
            taken.add(value.name)
            op.tops.append(value)
        for value in op.tops:
            current[value.blob] = value
        ops.append(op)
    return LayerGraph.from_ops(net.name, ops, phase, net.force_backward)
