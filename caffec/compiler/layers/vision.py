"""Spatial layers besides the convolutions: Pooling, LRN, Crop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from caffec.compiler.ir import Op, Shape
from caffec.compiler.kernels import Buffer, Operand
from caffec.compiler.layers.common import SameShape, canonical_axis, require_axes
from caffec.compiler.layers.convolution import hw_names
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import (
    contiguous_strides,
    fill,
    pmap,
    pool,
    pool_attrs,
    pool_grad,
    power,
    strided_copy,
)
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import UserError, shape_text


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    pooled: tuple[int, int]
    method: str


@register_layer("Pooling", tops=(1, 2))
class Pooling:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        g = self.geometry(layer, bottoms[0])
        if len(layer.top) == 2 and g.method != "MAX":
            raise ShapeError(f"only MAX pooling has a second top (the argmax mask), not {g.method}")
        top = (*bottoms[0][:2], *g.pooled)
        return [top] * len(layer.top)

    def geometry(self, layer: LayerParameter, bottom: Shape) -> PoolGeometry:
        p = layer.pooling_param
        require_axes(bottom, 4, "Pooling")
        method = p.PoolMethod.Name(p.pool)
        height, width = bottom[2], bottom[3]
        kernel_given = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
        if p.global_pooling:
            if kernel_given:
                raise ShapeError("global_pooling takes the whole image; do not set a kernel size")
            kernel = (height, width)
        else:
            if not kernel_given:
                raise ShapeError("no kernel size", hint="set kernel_size or global_pooling: true")
            kernel = self._pair(p, "kernel_size", 0)
            if min(kernel) <= 0:
                raise ShapeError(f"kernel sizes must be positive, got {kernel}")
        pad = self._pair(p, "pad", 0)
        stride = self._pair(p, "stride", 1)
        if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
            raise ShapeError("global_pooling needs pad 0 and stride 1")
        if min(stride) <= 0:
            raise ShapeError(f"strides must be positive, got {stride}")
        if pad != (0, 0):
            if method not in ("MAX", "AVE"):
                raise ShapeError(f"padding works only with MAX and AVE pooling, not {method}")
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                raise ShapeError(f"pad {pad} must be smaller than the kernel {kernel}")
        ceil = p.RoundMode.Name(p.round_mode) == "CEIL"
        pooled = (
            self._pooled(height, kernel[0], stride[0], pad[0], ceil),
            self._pooled(width, kernel[1], stride[1], pad[1], ceil),
        )
        return PoolGeometry(kernel, stride, pad, pooled, method)

    @staticmethod
    def _pair(p: Message, name: str, default: int) -> tuple[int, int]:
        h, w = hw_names(name)
        if p.HasField(h) or p.HasField(w):
            if p.HasField(name):
                raise ShapeError(f"give either {name} or {h}/{w}, not both")
            return (getattr(p, h), getattr(p, w))
        value = getattr(p, name) if p.HasField(name) else default
        return (value, value)

    @staticmethod
    def _pooled(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
        """Caffe's output size: rounded up, then the last window kept inside the padded image."""
        span = size + 2 * pad - kernel
        if span < 0:
            raise ShapeError(
                f"the kernel {kernel} is larger than the padded input {size + 2 * pad}"
            )
        pooled = (math.ceil(span / stride) if ceil else span // stride) + 1
        if pad and (pooled - 1) * stride >= size + pad:
            pooled -= 1
        return pooled

    def _attrs(self, op: Op) -> dict[str, Any]:
        bottom = op.bottoms[0].shape
        g = self.geometry(op.param, bottom)
        if g.method not in ("MAX", "AVE"):
            raise UserError(f"caffec does not compile {g.method} pooling yet", span=op.span,
                            layer=op.name)  # fmt: skip
        return pool_attrs(bottom[0] * bottom[1], (bottom[2], bottom[3]), g.pooled, g.kernel,
                          g.stride, g.pad, g.method)  # fmt: skip

    def _mask(self, op: Op, ctx: LowerContext) -> Buffer | None:
        """MAX pooling remembers each output's argmax: in the second top if given, else kept."""
        if op.param.pooling_param.PoolMethod.Name(op.param.pooling_param.pool) != "MAX":
            return None
        return ctx.y(1) if len(op.tops) == 2 else ctx.state("argmax", op.tops[0].shape)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        mask = self._mask(op, ctx)
        ctx.emit(pool(Operand(ctx.x(0)), Operand(ctx.y(0)),
                      Operand(mask) if mask is not None else None, self._attrs(op)))  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        mask = self._mask(op, ctx)
        ctx.emit(pool_grad(Operand(ctx.dy(0)), Operand(mask) if mask is not None else None,
                           Operand(dx), self._attrs(op), accumulate))  # fmt: skip


@register_layer("LRN")
class LRN(SameShape):
    """Local response normalization, y = x * scale^-beta, with Caffe's two regions.

    ACROSS_CHANNELS: scale = k + alpha/n * (sum of x^2 over the n channels
    centred on c, zero beyond the ends): a SUM pooling of x^2 over each image
    viewed as a (channels, height*width) plane, window (n, 1), pad ((n-1)/2, 0),
    whose clipped window is exactly that channel range.
    WITHIN_CHANNEL: Caffe composes square, AVE pooling (kernel n, pad (n-1)/2,
    stride 1; its divisor is always n*n there), Power(1 + alpha*avg, -beta)
    and a product: scale = 1 + alpha * avg, and ``k`` is not used.
    """

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        require_axes(bottoms[0], 4, "LRN")
        size = layer.lrn_param.local_size
        if size % 2 == 0:
            raise ShapeError(f"local_size must be odd, got {size}")
        return [bottoms[0]]

    @staticmethod
    def _plan(op: Op) -> tuple[dict[str, Any], dict[str, float], float]:
        """The pooling that sums (or averages) each window, the constants, and the
        factor of x * (windowed sum of the pooled ratios) in the gradient."""
        p = op.param.lrn_param
        num, channels, height, width = op.bottoms[0].shape
        n, pre = p.local_size, (p.local_size - 1) // 2
        if p.NormRegion.Name(p.norm_region) == "ACROSS_CHANNELS":
            attrs = pool_attrs(num, (channels, height * width), (channels, height * width),
                               (n, 1), (1, 1), (pre, 0), "SUM")  # fmt: skip
            consts = {"k": p.k, "a": p.alpha / n, "beta": p.beta}
            return attrs, consts, 2.0 * p.alpha * p.beta / n
        attrs = pool_attrs(num * channels, (height, width), (height, width), (n, n), (1, 1),
                           (pre, pre), "AVE")  # fmt: skip
        # the adjoint of the AVE pooling already divides by n*n
        return attrs, {"k": 1.0, "a": p.alpha, "beta": p.beta}, 2.0 * p.alpha * p.beta

    def lower(self, op: Op, ctx: LowerContext) -> None:
        shape = op.bottoms[0].shape
        attrs, consts, _ = self._plan(op)
        scale = ctx.state("scale", shape)
        ctx.emit(
            pool(Operand(ctx.x(0)), Operand(scale), None, {**attrs, "square": True}),
            pmap(shape, [(scale, "k + a * s")], {"s": scale}, consts),
            pmap(shape, [(ctx.y(0), f"x * {power('s', 'minus_beta', -consts['beta'])}")],
                 {"x": ctx.x(0), "s": scale}, {**consts, "minus_beta": -consts["beta"]}),
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        shape = op.bottoms[0].shape
        attrs, consts, factor = self._plan(op)
        beta = consts["beta"]
        gradient = (f"dy * {power('s', 'minus_beta', -beta)}"
                    f" - c * y * {power('s', 'beta', beta)} * r")  # fmt: skip
        ratios = ctx.workspace("dy*y/scale", shape)
        windows = ctx.workspace("windowed ratios", shape)
        inputs = {"y": ctx.y(0), "dy": ctx.dy(0), "s": ctx.state("scale", shape), "r": windows}
        ctx.emit(
            pmap(shape, [(ratios, "dy * y / s")], inputs),
            # the adjoint of the window sum: each ratio goes back to every x in its window
            pool_grad(Operand(ratios), None, Operand(windows), attrs, accumulate=False),
            # x is y * scale^beta: reading the top, not the bottom, lets the bottom die after
            # forward (the top is kept anyway, for the next layer's gradient)
            pmap(shape, [(dx, gradient)], inputs, {**consts, "c": factor, "minus_beta": -beta},
                 accumulate=accumulate),
        )  # fmt: skip


@register_layer("Crop", bottoms=2)
class Crop:
    """The second bottom's extent of the first, from ``axis`` on, at the given offsets."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.crop_param
        big, like = bottoms
        if len(big) != len(like):
            raise ShapeError(
                f"both bottoms need the same number of axes, got {shape_text(big)} and "
                f"{shape_text(like)}"
            )
        axis = canonical_axis(p.axis, len(big))
        cropped = len(big) - axis
        offsets = list(p.offset)
        if len(offsets) not in (0, 1, cropped):
            raise ShapeError(
                f"{len(offsets)} offsets given for {cropped} cropped axes",
                hint=f"give 0, 1 or {cropped} offsets",
            )
        top = list(big)
        for i in range(axis, len(big)):
            offset = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
            if offset + like[i] > big[i]:
                raise ShapeError(
                    f"cropping axis {i} to {like[i]} at offset {offset} runs past its size {big[i]}"
                )
            top[i] = like[i]
        return [tuple(top)]

    @staticmethod
    def _layout(op: Op) -> tuple[Shape, list[int], int]:
        """The top's shape, the first bottom's strides, and the crop's start in it."""
        p = op.param.crop_param
        big, top = op.bottoms[0].shape, op.tops[0].shape
        axis = canonical_axis(p.axis, len(big))
        offsets = list(p.offset)
        strides = contiguous_strides(big)
        start = 0
        for i in range(axis, len(big)):
            offset = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
            start += offset * strides[i]
        return top, strides, start

    def lower(self, op: Op, ctx: LowerContext) -> None:
        top, strides, start = self._layout(op)
        ctx.emit(strided_copy(Operand(ctx.x(0), start), Operand(ctx.y(0)), top, strides,
                              contiguous_strides(top)))  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            top, strides, start = self._layout(op)
            if not accumulate:  # what was cropped away gets no gradient
                ctx.emit(fill(dx, 0.0))
            ctx.emit(strided_copy(Operand(ctx.dy(0)), Operand(dx, start), top,
                                  contiguous_strides(top), strides, accumulate))  # fmt: skip
        shape_only = ctx.dx(1)  # the second bottom gives only a shape: its gradient is 0
        if shape_only is not None and not shape_only[1]:
            ctx.emit(fill(shape_only[0], 0.0))
