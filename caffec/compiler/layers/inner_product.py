"""InnerProduct: a fully connected layer over the axes from ``axis`` on.

The bottom is an M x K matrix (M rows of K inputs), the weight N x K (or
K x N with ``transpose``), the top M x N: one GEMM, then the bias.
"""

from __future__ import annotations

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.layers.common import canonical_axis, count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import gemm, pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer


def _geometry(op: Op) -> tuple[int, int, int, bool]:
    """(M, N, K, transpose)."""
    p = op.param.inner_product_param
    bottom = op.bottoms[0].shape
    axis = canonical_axis(p.axis, len(bottom))
    return count(bottom, 0, axis), p.num_output, count(bottom, axis), p.transpose


@register_layer("InnerProduct")
class InnerProduct:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.inner_product_param
        if p.num_output <= 0:
            raise ShapeError(
                "num_output must be positive", hint="set inner_product_param.num_output"
            )
        axis = canonical_axis(p.axis, len(bottoms[0]))
        return [(*bottoms[0][:axis], p.num_output)]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.inner_product_param
        fan_in = count(bottoms[0], canonical_axis(p.axis, len(bottoms[0])))
        shape = (fan_in, p.num_output) if p.transpose else (p.num_output, fan_in)
        blobs = [ParamBlob(shape, p.weight_filler, "weight")]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler, "bias"))
        return blobs

    def lower(self, op: Op, ctx: LowerContext) -> None:
        m, n, k, transpose = _geometry(op)
        ctx.emit(gemm(ctx.x(0), ctx.w(0), ctx.y(0), m, n, k, trans_b=not transpose))
        if op.param.inner_product_param.bias_term:
            ctx.emit(pmap((m, n), [(ctx.y(0), "y + b")], {"y": ctx.y(0), "b": (ctx.w(1), (1, n))}))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        m, n, k, transpose = _geometry(op)
        dy = ctx.dy(0)
        dweight = ctx.dw(0)
        if dweight is not None:
            if transpose:  # W is K x N: dW += x' dy
                ctx.emit(gemm(ctx.x(0), dy, dweight, k, n, m, trans_a=True, accumulate=True))
            else:  # W is N x K: dW += dy' x
                ctx.emit(gemm(dy, ctx.x(0), dweight, n, k, m, trans_a=True, accumulate=True))
        if op.param.inner_product_param.bias_term and ctx.dw(1) is not None:
            ctx.emit(reduce(dy, ctx.dw(1), (m, n), [0], accumulate=True))
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            ctx.emit(gemm(dy, ctx.w(0), dx, m, k, n, trans_b=transpose, accumulate=accumulate,
                          weights_b=True))  # fmt: skip
