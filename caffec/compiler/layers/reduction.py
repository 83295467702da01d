"""Caffe's Reduction: one number per item, from every axis at and after ``axis``."""

from __future__ import annotations

from caffec.compiler.ir import Op, Shape
from caffec.compiler.layers.common import canonical_axis, count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, register_layer
from caffec.formats import caffe_pb2

OPS = caffe_pb2.ReductionParameter

# each operation's per-element derivative (before coeff and the incoming gradient)
DERIVATIVES = {
    OPS.SUM: "1",
    OPS.MEAN: "1",  # the 1/n is in the scale
    OPS.ASUM: "x > 0 ? 1 : (x < 0 ? -1 : 0)",
    OPS.SUMSQ: "2 * x",
}


@register_layer("Reduction")
class Reduction:
    """SUM, ASUM (sum of absolute values), SUMSQ or MEAN of each item's values, times
    ``coeff``; the top keeps the axes before ``axis`` (a scalar for the default 0)."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        bottom = bottoms[0]
        axis = canonical_axis(layer.reduction_param.axis, len(bottom))
        return [tuple(bottom[:axis])]

    @staticmethod
    def _view(op: Op) -> tuple[int, int]:
        """The bottom as (items, values per item)."""
        shape = op.bottoms[0].shape
        axis = canonical_axis(op.param.reduction_param.axis, len(shape))
        return count(shape, 0, axis), count(shape, axis)

    @staticmethod
    def _scale(op: Op, inner: int) -> float:
        p = op.param.reduction_param
        return p.coeff / inner if p.operation == OPS.MEAN else p.coeff

    def lower(self, op: Op, ctx: LowerContext) -> None:
        outer, inner = self._view(op)
        p = op.param.reduction_param
        source, kind = ctx.x(0), "sumsq" if p.operation == OPS.SUMSQ else "sum"
        if p.operation == OPS.ASUM:
            source = ctx.workspace("absolute values", (outer, inner))
            ctx.emit(pmap((outer, inner), [(source, "fabs(x)")], {"x": ctx.x(0)}))
        ctx.emit(reduce(source, ctx.y(0), (outer, inner), [1], kind, self._scale(op, inner)))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        outer, inner = self._view(op)
        derivative = DERIVATIVES[op.param.reduction_param.operation]
        inputs = {"x": ctx.x(0), "dy": (ctx.dy(0), (outer, 1))}
        ctx.emit(
            pmap((outer, inner), [(dx, f"c * dy * ({derivative})")], inputs,
                 {"c": self._scale(op, inner)}, accumulate=accumulate)
        )  # fmt: skip
