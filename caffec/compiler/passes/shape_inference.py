"""Shape inference: every value gets its shape, layer by layer, as Caffe's Reshape does.

A shape the generated code cannot index, or one that needs more memory than the
budget, is refused here, at the layer that makes it (:mod:`caffec.runtime.memory_limits`).
"""

from __future__ import annotations

from caffec.compiler.ir import LayerGraph, Op, Shape
from caffec.compiler.registry import InferContext, ShapeError, lookup
from caffec.errors import InternalError, UserError, shape_text
from caffec.runtime.memory_limits import check_size


def infer_shapes(
    graph: LayerGraph, ctx: InferContext | None = None, itemsize: int = 4, budget: int | None = None
) -> LayerGraph:
    """``graph`` with every value's shape; each value fits ``budget`` bytes (None: this
    machine's memory) at ``itemsize`` bytes per element."""
    ctx = ctx or InferContext()
    _check_overrides(graph, ctx)
    graph = graph.copy()
    for op in graph.ops:
        spec = lookup(op.type)
        assert spec is not None, "verify runs first"
        bottoms: list[Shape] = [v.shape for v in op.bottoms]  # type: ignore[misc]
        try:
            tops = spec.infer(op.param, bottoms, ctx)
            _check_tops(op, tops, itemsize, budget)
        except ShapeError as err:
            seen = ", ".join(f"{v.blob} {shape_text(v.shape)}" for v in op.bottoms)  # type: ignore[arg-type]
            message = f"{op.type}: {err.message}" + (f" (bottoms: {seen})" if seen else "")
            raise UserError(message, span=op.span, layer=op.name, hint=err.hint) from None
        except UserError as err:
            raise UserError(err.message, span=op.span, layer=op.name, hint=err.hint) from None
        for value, shape in zip(op.tops, tops, strict=True):
            value.shape = tuple(int(d) for d in shape)
    return graph


def _check_tops(op: Op, tops: list[Shape], itemsize: int, budget: int | None) -> None:
    """One shape per top, none empty, each within the index type and the budget."""
    if len(tops) != len(op.tops):
        raise InternalError(
            f"the {op.type} shape rule gave {len(tops)} shapes for {len(op.tops)} tops "
            "(a caffec bug; please report it)",
            layer=op.name,
        )
    for value, shape in zip(op.tops, tops, strict=True):
        what = f"{op.type}: top '{value.blob}'"
        if any(d <= 0 for d in shape):
            raise UserError(f"{what} would have the empty shape {shape_text(shape)}")
        check_size(shape, itemsize, budget, what)


def _check_overrides(graph: LayerGraph, ctx: InferContext) -> None:
    """Every --shape must name a top of a layer without bottoms (a data layer), or of a layer
    whose items the data decides (Filter: its rule reads the count it is compiled for)."""
    data_tops = [v.blob for op in graph.ops if not op.bottoms for v in op.tops]
    counted = [v.blob for op in graph.ops if op.bottoms and _counted_by_data(op) for v in op.tops]
    for name, shape in ctx.shape_overrides.items():
        if name not in data_tops + counted:
            hint = f"data tops in this net: {', '.join(data_tops) or 'none'}"
            raise UserError(
                f"--shape names '{name}', which is not a top of a data, input or Filter layer",
                hint=hint + (f"; Filter tops: {', '.join(counted)}" if counted else ""),
            )
        if not shape or any(d <= 0 for d in shape):
            raise UserError(f"--shape {name}={shape_text(shape)}: dimensions must be positive")


def _counted_by_data(op: Op) -> bool:
    """Whether the data decides how many items ``op``'s tops hold (its rules say so)."""
    spec = lookup(op.type)
    return spec is not None and bool(getattr(spec.rules, "counted_by_data", False))
