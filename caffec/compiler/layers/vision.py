"""Spatial layers besides the convolutions: Pooling, SPP, LRN, Crop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from caffec.compiler.ir import Op, Shape
from caffec.compiler.kernels import Buffer, Operand
from caffec.compiler.layers.common import SameShape, canonical_axis, count, require_axes
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
from caffec.errors import shape_text

# Caffe's TEST-phase STOCHASTIC pooling starts its window sum at FLT_MIN, whatever its Dtype,
# so that an all-zero window pools to 0 instead of dividing by zero.
FLT_MIN = 1.1754943508222875e-38


@dataclass(frozen=True)
class PoolGeometry:
    """One pooling's windows over a (num, channels, height, width) bottom."""

    bottom: Shape
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    pooled: tuple[int, int]
    method: str

    @property
    def top(self) -> Shape:
        return (*self.bottom[:2], *self.pooled)

    def attrs(self, method: str | None = None) -> dict[str, Any]:
        """The pool primitive's attributes (``method`` overrides the layer's)."""
        return pool_attrs(self.bottom[0] * self.bottom[1], (self.bottom[2], self.bottom[3]),
                          self.pooled, self.kernel, self.stride, self.pad,
                          method or self.method)  # fmt: skip


def pool_geometry(
    bottom: Shape,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    method: str,
    ceil: bool,
) -> PoolGeometry:
    """Caffe's checks on a pooling's windows and its output size (Pooling and SPP's levels)."""
    if min(stride) <= 0:
        raise ShapeError(f"strides must be positive, got {stride}")
    if pad != (0, 0):
        if method not in ("MAX", "AVE"):
            raise ShapeError(f"padding works only with MAX and AVE pooling, not {method}")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise ShapeError(f"pad {pad} must be smaller than the kernel {kernel}")
    pooled = (_pooled(bottom[2], kernel[0], stride[0], pad[0], ceil),
              _pooled(bottom[3], kernel[1], stride[1], pad[1], ceil))  # fmt: skip
    return PoolGeometry(tuple(bottom), kernel, stride, pad, pooled, method)


def _pooled(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Caffe's output size: rounded up (or down), then the last window kept inside the padded
    image."""
    span = size + 2 * pad - kernel
    if span < 0:
        raise ShapeError(f"the kernel {kernel} is larger than the padded input {size + 2 * pad}")
    pooled = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _kept(ctx: LowerContext, g: PoolGeometry, level: int | None) -> Buffer:
    """What the forward of a MAX or TRAIN STOCHASTIC pooling keeps for backward: where each
    output came from (the layer's, or one level's of SPP)."""
    name = "argmax" if g.method == "MAX" else "sampled"
    return ctx.state(name if level is None else f"{name} of level {level}", g.top)


def emit_pool(
    ctx: LowerContext,
    g: PoolGeometry,
    x: Buffer,
    y: Buffer,
    level: int | None = None,
    mask: Buffer | None = None,
) -> None:
    """The forward of one pooling of ``x`` into ``y`` (one ``level`` of SPP's). Where each
    output came from is kept for backward (MAX's argmax in ``mask`` where the layer has a
    mask top); each level samples its own random numbers."""
    if g.method in ("MAX", "AVE"):
        if g.method == "MAX" and mask is None:
            mask = _kept(ctx, g, level)
        ctx.emit(pool(Operand(x), Operand(y), Operand(mask) if mask is not None else None,
                      g.attrs()))  # fmt: skip
    elif ctx.phase == "TRAIN":
        # Caffe's sampling: u * (window sum) with u uniform, then the first element at which
        # the running sum reaches it; the pool kernel finds the positions, a gather reads them
        sampled = _kept(ctx, g, level)
        planes, area, outputs = g.bottom[0] * g.bottom[1], g.bottom[2] * g.bottom[3], g.pooled
        stream = {"stream": ctx.op.index * 64 + (0 if level is None else level + 1)}
        ctx.emit(
            pool(Operand(x), Operand(sampled), None, {**g.attrs(), **stream}, ctx.counter),
            pmap((planes, outputs[0] * outputs[1]), [(y, "t >= 0 ? v : 0")],  # -1: no window
                 {"t": sampled, "v": (x, f"p * {area} + (t >= 0 ? (long)t : 0)")},
                 coords={"p": 0}),
        )  # fmt: skip
    else:  # TEST: each window's values weighted by themselves, sum(x^2) / sum(x)
        sums, squares = _window_sums(ctx, g, x), ctx.workspace("window sums of squares", g.top)
        ctx.emit(
            pool(Operand(x), Operand(squares), None, {**g.attrs("SUM"), "square": True}),
            pmap(g.top, [(y, "q / (s + tiny)")], {"q": squares, "s": sums}, {"tiny": FLT_MIN}),
        )  # fmt: skip


def emit_pool_grad(
    ctx: LowerContext,
    g: PoolGeometry,
    x: Buffer,
    y: Buffer,
    dy: Buffer,
    dx: Buffer,
    accumulate: bool,
    level: int | None = None,
    mask: Buffer | None = None,
) -> None:
    """The gradient of :func:`emit_pool`'s pooling into ``dx`` (added to it with
    ``accumulate``)."""
    if g.method == "AVE":
        ctx.emit(pool_grad(Operand(dy), None, Operand(dx), g.attrs(), accumulate))
    elif g.method == "MAX" or ctx.phase == "TRAIN":  # to the argmax, or to the sampled element
        if mask is None:
            mask = _kept(ctx, g, level)
        ctx.emit(pool_grad(Operand(dy), Operand(mask), Operand(dx), g.attrs(), accumulate))
    else:
        # TEST STOCHASTIC, y = Q/S per window: dx_j = sum over j's windows of dy (2 x_j - y) / S,
        # two window sums of per-output ratios (Caffe's backward reads TRAIN's samples here)
        sums = _window_sums(ctx, g, x)
        ratio, weighted = ctx.workspace("dy/sum", g.top), ctx.workspace("dy*y/sum", g.top)
        spread, spread_weighted = (ctx.workspace("windowed dy/sum", g.bottom),
                                   ctx.workspace("windowed dy*y/sum", g.bottom))  # fmt: skip
        ctx.emit(
            pmap(g.top, [(ratio, "r"), (weighted, "r * y")], {"dy": dy, "s": sums, "y": y},
                 {"tiny": FLT_MIN}, lets=[("r", "s != 0 ? dy / (s + tiny) : 0")]),
            pool_grad(Operand(ratio), None, Operand(spread), g.attrs("SUM"), False),
            pool_grad(Operand(weighted), None, Operand(spread_weighted), g.attrs("SUM"), False),
            pmap(g.bottom, [(dx, "2 * x * a - b")], {"x": x, "a": spread, "b": spread_weighted},
                 accumulate=accumulate),
        )  # fmt: skip


def _window_sums(ctx: LowerContext, g: PoolGeometry, x: Buffer) -> Buffer:
    sums = ctx.workspace("window sums", g.top)
    ctx.emit(pool(Operand(x), Operand(sums), None, g.attrs("SUM")))
    return sums


@register_layer("Pooling", tops=(1, 2))
class Pooling:
    """MAX, AVE and STOCHASTIC pooling (Caffe runs STOCHASTIC on the GPU only; caffec on both
    targets). TRAIN STOCHASTIC samples one element of each window with probability
    proportional to its value; TEST weights each window by its values. Both assume
    non-negative inputs (after a ReLU), as Caffe does."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        g = self.geometry(layer, bottoms[0])
        if len(layer.top) == 2 and g.method != "MAX":
            raise ShapeError(f"only MAX pooling has a second top (the argmax mask), not {g.method}")
        return [g.top] * len(layer.top)

    def geometry(self, layer: LayerParameter, bottom: Shape) -> PoolGeometry:
        p = layer.pooling_param
        require_axes(bottom, 4, "Pooling")
        kernel_given = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
        if p.global_pooling:
            if kernel_given:
                raise ShapeError("global_pooling takes the whole image; do not set a kernel size")
            kernel = (bottom[2], bottom[3])
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
        return pool_geometry(bottom, kernel, stride, pad, p.PoolMethod.Name(p.pool),
                             self._rounds_up(p))  # fmt: skip

    @staticmethod
    def _rounds_up(p: Message) -> bool:
        """Whether the output size rounds up: BVLC's ``round_mode`` (default CEIL) or the
        fork's ``ceil_mode`` (default true; false in DenseNet's files). Either alone decides;
        given together they must agree."""
        floor = p.RoundMode.Name(p.round_mode) == "FLOOR"
        if not p.HasField("ceil_mode"):
            return not floor
        if p.HasField("round_mode") and p.ceil_mode == floor:
            raise ShapeError(
                f"ceil_mode: {str(p.ceil_mode).lower()} contradicts round_mode: "
                f"{p.RoundMode.Name(p.round_mode)}",
                hint="give only one of them (ceil_mode: false is round_mode: FLOOR)",
            )
        return bool(p.ceil_mode)

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
    def _mask_top(op: Op, ctx: LowerContext) -> Buffer | None:
        return ctx.y(1) if len(op.tops) == 2 else None

    def lower(self, op: Op, ctx: LowerContext) -> None:
        g = self.geometry(op.param, op.bottoms[0].shape)
        emit_pool(ctx, g, ctx.x(0), ctx.y(0), mask=self._mask_top(op, ctx))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        g = self.geometry(op.param, op.bottoms[0].shape)
        emit_pool_grad(ctx, g, ctx.x(0), ctx.y(0), ctx.dy(0), *target,
                       mask=self._mask_top(op, ctx))  # fmt: skip


@register_layer("SPP")
class SPP:
    """Spatial pyramid pooling: level l pools the image into 2^l x 2^l bins (kernel, stride and
    padding as Caffe's SPPLayer chooses them), each level flattened per image and the levels
    concatenated; with one level the top is that pooling's 4-D top, as in Caffe."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        levels = self.levels(layer, bottoms[0])
        if len(levels) == 1:
            return [levels[0].top]
        return [(bottoms[0][0], sum(count(g.top, 1) for g in levels))]

    @staticmethod
    def levels(layer: LayerParameter, bottom: Shape) -> list[PoolGeometry]:
        p = layer.spp_param
        require_axes(bottom, 4, "SPP")
        if p.pyramid_height < 1:
            raise ShapeError("pyramid_height must be at least 1",
                             hint="set spp_param.pyramid_height")  # fmt: skip
        method = p.PoolMethod.Name(p.pool)
        levels = []
        for level in range(p.pyramid_height):
            bins = 2**level
            kernel = (-(-bottom[2] // bins), -(-bottom[3] // bins))
            pad = ((kernel[0] * bins - bottom[2] + 1) // 2, (kernel[1] * bins - bottom[3] + 1) // 2)
            try:
                levels.append(pool_geometry(bottom, kernel, kernel, pad, method, ceil=True))
            except ShapeError as err:
                raise ShapeError(
                    f"pyramid level {level} ({bins}x{bins} bins of {shape_text(bottom)}): "
                    f"{err.message}",
                    hint=err.hint or "lower pyramid_height, or pool a larger input",
                ) from None
        return levels

    def lower(self, op: Op, ctx: LowerContext) -> None:
        levels = self.levels(op.param, op.bottoms[0].shape)
        if len(levels) == 1:
            emit_pool(ctx, levels[0], ctx.x(0), ctx.y(0))
            return
        for level, g, (shape, flat, rows, offset) in self._places(op, levels):
            pooled = ctx.workspace(f"level {level}", g.top)
            emit_pool(ctx, g, ctx.x(0), pooled, level)
            ctx.emit(strided_copy(Operand(pooled), Operand(ctx.y(0), offset), shape, flat, rows))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        levels = self.levels(op.param, op.bottoms[0].shape)
        if len(levels) == 1:
            emit_pool_grad(ctx, levels[0], ctx.x(0), ctx.y(0), ctx.dy(0), dx, accumulate)
            return
        for level, g, (shape, flat, rows, offset) in self._places(op, levels):
            grad = ctx.workspace(f"level {level} diff", g.top)
            pooled = ctx.workspace(f"level {level}", g.top)
            ctx.emit(strided_copy(Operand(ctx.dy(0), offset), Operand(grad), shape, rows, flat))
            if g.method == "STOCHASTIC" and ctx.phase != "TRAIN":  # its gradient reads the top
                ctx.emit(strided_copy(Operand(ctx.y(0), offset), Operand(pooled), shape, rows,
                                      flat))  # fmt: skip
            emit_pool_grad(ctx, g, ctx.x(0), pooled, grad, dx, accumulate, level)
            accumulate = True

    @staticmethod
    def _places(
        op: Op, levels: list[PoolGeometry]
    ) -> list[tuple[int, PoolGeometry, tuple[Shape, list[int], list[int], int]]]:
        """Each level, its geometry, and how its pooled values lie in the top: one row per
        image, (num, values) with the level's strides, the top's, and its first column."""
        total = op.tops[0].shape[1]
        places, offset = [], 0
        for level, g in enumerate(levels):
            width = count(g.top, 1)
            places.append((level, g, ((g.top[0], width), [width, 1], [total, 1], offset)))
            offset += width
        return places


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
