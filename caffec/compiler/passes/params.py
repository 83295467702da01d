"""Parameter blobs: their shapes and fillers per layer, and the checks on sharing them."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format

from caffec.compiler.ir import LayerGraph, Op
from caffec.compiler.registry import ShapeError, lookup
from caffec.errors import UserError, shape_text
from caffec.runtime import fillers
from caffec.runtime.memory_limits import check_size


def filler_dict(filler: Any) -> dict[str, Any] | None:
    """A FillerParameter as the plain dict the runtime's fillers take (Caffe's field names)."""
    if filler is None:
        return None
    spec = json_format.MessageToDict(filler, preserving_proto_field_name=True)
    spec.setdefault("type", filler.type)
    return spec


def create_params(graph: LayerGraph, itemsize: int = 4, budget: int | None = None) -> LayerGraph:
    """``graph`` with every layer's parameter blobs, each within ``budget`` bytes (None:
    this machine's memory) at ``itemsize`` bytes per element."""
    graph = graph.copy()
    owners: dict[str, tuple[Op, int]] = {}  # shared param name -> first owner and blob index
    for op in graph.ops:
        spec = lookup(op.type)
        assert spec is not None, "verify runs first"
        try:
            op.params = spec.params(op.param, [v.shape for v in op.bottoms])
            for blob in op.params:
                check_size(blob.shape, itemsize, budget, f"{op.type}: the {blob.role} blob")
                if blob.filler is not None:
                    fillers.check(filler_dict(blob.filler), blob.shape)
        except (ShapeError, UserError) as err:
            raise UserError(err.message, span=op.span, layer=op.name, hint=err.hint) from None
        specs: Any = op.param.param
        if len(specs) > len(op.params):
            raise UserError(
                f"{len(specs)} param {{}} entries for a layer with "
                f"{len(op.params)} parameter blobs",
                span=op.span,
                layer=op.name,
                hint="remove the extra param entries",
            )
        for i, ps in enumerate(specs):
            if not ps.name:
                continue
            if ps.name not in owners:
                owners[ps.name] = (op, i)
                continue
            owner, j = owners[ps.name]
            mine, theirs = op.params[i].shape, owner.params[j].shape
            strict = ps.DimCheckMode.Name(ps.share_mode) == "STRICT"
            same = mine == theirs if strict else math.prod(mine) == math.prod(theirs)
            if not same:
                raise UserError(
                    f"cannot share param '{ps.name}' with layer '{owner.name}': its shape "
                    f"{shape_text(mine)} differs from {shape_text(theirs)}",
                    span=op.span,
                    layer=op.name,
                )
    return graph
