"""Reductions: Caffe's Reduction (one number per item, from every axis at and after
``axis``) and ArgMax (the positions of the largest values)."""

from __future__ import annotations

import math
from typing import Any

from caffec.compiler.ir import Op, Shape
from caffec.compiler.kernels import Buffer, Operand
from caffec.compiler.layers.common import canonical_axis, count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
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


@register_layer("ArgMax")
class ArgMax:
    """The ``top_k`` largest values of each item (all its values, or those along ``axis``),
    as their indices or, with ``out_max_val``, their values (without an axis: both).

    Caffe ranks (value, index) pairs with ``std::greater``, so of equal values the one at
    the larger index comes first. The primitives have no sort, so the ranks are found one
    after another: rank j is the largest pair below rank j-1's, a max-reduction for its
    value and one for its index. NaN values rank nowhere in particular (Caffe's sort is
    undefined with them); -inf ties with the lowest finite number.
    """

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # Caffe's ArgMax has no backward pass

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.argmax_param
        bottom = bottoms[0]
        if p.top_k < 1:
            raise ShapeError("top_k must be at least 1", hint="set argmax_param.top_k to 1 or more")
        if p.HasField("axis"):
            axis = canonical_axis(p.axis, len(bottom))
            if p.top_k > bottom[axis]:
                raise ShapeError(f"top_k {p.top_k} exceeds axis {axis}'s size {bottom[axis]}",
                                 hint=f"set top_k to at most {bottom[axis]}")  # fmt: skip
            return [(*bottom[:axis], p.top_k, *bottom[axis + 1 :])]
        per_item = count(bottom, 1)
        if p.top_k > per_item:
            raise ShapeError(f"top_k {p.top_k} exceeds the {per_item} values per item",
                             hint=f"set top_k to at most {per_item}, or give an axis")  # fmt: skip
        top = [1] * max(len(bottom), 3)  # Caffe's shape: (num, 1 or 2, top_k, 1...)
        top[0] = bottom[0]
        top[1] = 2 if p.out_max_val else 1
        top[2] = p.top_k
        return [tuple(top)]

    @staticmethod
    def _view(op: Op) -> tuple[int, int, int]:
        """The bottom as (outer, ranked, inner): the values ranked together lie along the
        middle axis."""
        p = op.param.argmax_param
        bottom = op.bottoms[0].shape
        if not p.HasField("axis"):
            return bottom[0], count(bottom, 1), 1
        axis = canonical_axis(p.axis, len(bottom))
        return count(bottom, 0, axis), bottom[axis], count(bottom, axis + 1)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view = outer, dim, inner = self._view(op)
        top_k = op.param.argmax_param.top_k
        rows = outer * inner
        ranked = ctx.workspace("indices by rank", (top_k, rows))
        largest = ctx.workspace("largest candidate", (rows,))
        candidates = ctx.workspace("candidate values", view)
        flags = ctx.workspace("candidate indices", view)
        coords = {"o": 0, "m": 1, "q": 2}
        row = (outer, 1, inner)
        for rank in range(top_k):
            inputs: dict[str, Any] = {"x": ctx.x(0)}
            candidate, values = "1", ctx.x(0)
            if rank:  # below the previous rank's pair (p, its index; v, its value)
                inputs["p"] = (Operand(ranked, (rank - 1) * rows), row)
                inputs["v"] = (ctx.x(0), _element(dim, inner, "p"))
                candidate, values = "(x < v || (x == v && m < p))", candidates
                ctx.emit(pmap(view, [(candidates, f"{candidate} ? x : ninf")], inputs,
                              {"ninf": -math.inf}, coords))  # fmt: skip
            inputs["b"] = (largest, row)
            ctx.emit(
                reduce(values, largest, view, [1], "max"),
                pmap(view, [(flags, f"{candidate} && fmax(x, -REAL_MAX) >= b ? m : -1")],
                     inputs, coords=coords),
                reduce(flags, Operand(ranked, rank * rows), view, [1], "max"),
            )  # fmt: skip
        self._write_top(op, ctx, ranked, view)

    @staticmethod
    def _write_top(op: Op, ctx: LowerContext, ranked: Buffer, view: Shape) -> None:
        """Lay the ranks out as Caffe's top: along the axis, or per item the indices then
        (with out_max_val) the values."""
        outer, dim, inner = view
        p = op.param.argmax_param
        rows = outer * inner
        if p.HasField("axis"):
            shape, coords = (outer, p.top_k, inner), {"o": 0, "j": 1, "q": 2}
            expr = "v" if p.out_max_val else "t"
            rank_at = f"j * {rows} + o * {inner} + q"
        else:
            shape, coords = (outer, 2 if p.out_max_val else 1, p.top_k), {"o": 0, "c": 1, "j": 2}
            expr = "c == 0 ? t : v" if p.out_max_val else "t"
            rank_at = f"j * {rows} + o"
        inputs = {"t": (ranked, rank_at), "v": (ctx.x(0), _element(dim, inner, "t"))}
        ctx.emit(pmap(shape, [(ctx.y(0), expr)], inputs, coords=coords))


def _element(dim: int, inner: int, index: str) -> str:
    """Where the value at position ``index`` (a name; -1 reads position 0) of row (o, q)
    lies in the bottom viewed as (outer, dim, inner)."""
    at = f"({index} < 0 ? 0 : (long){index})"
    return f"o * {dim * inner} + {at} * {inner}" + (" + q" if inner > 1 else "")
