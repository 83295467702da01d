"""Layers that pick rows by an index bottom: Embed (rows of its weights) and BatchReindex
(items of its data).

An index bottom holds integers as reals. Forward reads the row it names, clamped into
range so that no kernel reads outside a buffer, and counts the indices out of range (or
fractional) for the runtime, which refuses the batch after forward as it refuses a bad
label. The gradient that would scatter rows (row n of the top's gradient added into the
row index n names) is a GEMM with the one-hot matrix of the indices instead: sums in a
fixed order, and no two threads adding into one place.
"""

from __future__ import annotations

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.kernels import Buffer
from caffec.compiler.layers.common import count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import gemm, pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import UserError, shape_text


def row_of(index: str, rows: int) -> str:
    """The row that index input ``index`` names, clamped into [0, rows)."""
    return f"({index} >= 0 && {index} < {rows} ? (long){index} : 0)"


def refuse_index_gradient(op: Op, ctx: LowerContext, bottom: int) -> None:
    """Caffe stops when a gradient is asked of an index bottom; so does caffec, with the fix."""
    if bottom in ctx.bottoms_needed:
        raise UserError(
            f"{op.type} cannot send a gradient to its indices (bottom {bottom})",
            hint="set propagate_down: false for that bottom, or feed the indices from a "
            "layer that needs no gradient",
        )


def add_rows_at(
    ctx: LowerContext, indices: Buffer, rows: int, dy: Buffer, out: Buffer, accumulate: bool
) -> None:
    """out[indices[n], :] += dy[n, :] for each n, as out (+)= onehot' dy, where onehot is
    (len(indices), rows) and out (rows, width)."""
    picks = indices.size
    width = dy.size // picks
    onehot = ctx.workspace("one-hot indices", (picks, rows))
    ctx.emit(
        pmap((picks, rows), [(onehot, "l == r ? 1 : 0")], {"l": (indices, (picks, 1))},
             coords={"r": 1}),
        gemm(onehot, dy, out, rows, width, picks, trans_a=True, accumulate=accumulate),
    )  # fmt: skip


@register_layer("Embed")
class Embed:
    """A lookup table: each index of the bottom (any shape) becomes row ``index`` of the
    (input_dim, num_output) weights, plus the bias; the top has the bottom's shape and one
    more axis of num_output. Gradients go to the weights and bias only."""

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the bottom holds indices

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.embed_param
        for field in ("num_output", "input_dim"):
            if getattr(p, field) <= 0:
                raise ShapeError(f"{field} must be positive", hint=f"set embed_param.{field}")
        return [(*bottoms[0], p.num_output)]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.embed_param
        blobs = [ParamBlob((p.input_dim, p.num_output), p.weight_filler, "weight")]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler, "bias"))
        return blobs

    @staticmethod
    def _view(op: Op) -> tuple[int, int, int]:
        """(indices, input_dim, num_output)."""
        p = op.param.embed_param
        return count(op.bottoms[0].shape), p.input_dim, p.num_output

    def lower(self, op: Op, ctx: LowerContext) -> None:
        picks, rows, width = self._view(op)
        ctx.check_labels(ctx.x(0), rows, None, "index")
        inputs = {
            "l": (ctx.x(0), (picks, 1)),
            "w": (ctx.w(0), f"{row_of('l', rows)} * {width} + o"),
        }
        expr = "w"
        if op.param.embed_param.bias_term:
            inputs["b"] = (ctx.w(1), (1, width))
            expr = "w + b"
        ctx.emit(pmap((picks, width), [(ctx.y(0), expr)], inputs, coords={"o": 1}))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        refuse_index_gradient(op, ctx, 0)
        picks, rows, width = self._view(op)
        dweight = ctx.dw(0)
        if dweight is not None:
            add_rows_at(ctx, ctx.x(0), rows, ctx.dy(0), dweight, accumulate=True)
        if op.param.embed_param.bias_term and ctx.dw(1) is not None:
            ctx.emit(reduce(ctx.dy(0), ctx.dw(1), (picks, width), [0], accumulate=True))


@register_layer("BatchReindex", bottoms=2)
class BatchReindex:
    """The items of bottom 0 in the order (and number) bottom 1's indices give: item n of
    the top is item indices[n] of the data. The data's gradient adds each top item's
    gradient into the item it came from."""

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0  # bottom 1 holds indices

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        data, indices = bottoms
        if len(indices) != 1:
            raise ShapeError(f"the indices (bottom 1) must be 1-D, got {shape_text(indices)}",
                             hint="reshape them: reshape_param { shape { dim: -1 } }")  # fmt: skip
        if not data:
            raise ShapeError("the data (bottom 0) has no batch axis to pick from")
        return [(indices[0], *data[1:])]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        data = op.bottoms[0].shape
        picks, inner = op.tops[0].shape[0], count(data, 1)
        ctx.check_labels(ctx.x(1), data[0], None, "index")
        inputs = {"l": (ctx.x(1), (picks, 1)),
                  "x": (ctx.x(0), f"{row_of('l', data[0])} * {inner} + j")}  # fmt: skip
        ctx.emit(pmap((picks, inner), [(ctx.y(0), "x")], inputs, coords={"j": 1}))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        refuse_index_gradient(op, ctx, 1)
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            add_rows_at(ctx, ctx.x(1), op.bottoms[0].shape[0], ctx.dy(0), dx, accumulate)
