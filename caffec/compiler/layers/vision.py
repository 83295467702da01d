"""Spatial layers: Convolution, Deconvolution, Pooling, LRN, Crop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.kernels import Loop, Operand
from caffec.compiler.layers.common import (
    SameShape,
    canonical_axis,
    count,
    require_axes,
    require_same_shapes,
)
from caffec.compiler.primitives import (
    col2im,
    contiguous_strides,
    conv_attrs,
    direct_conv,
    fill,
    gemm,
    gemm_plan,
    im2col,
    pmap,
    pool,
    pool_attrs,
    pool_grad,
    power,
    prepack,
    reduce,
    strided_copy,
)
from caffec.compiler.registry import ShapeError, register_layer
from caffec.errors import UserError, shape_text


@dataclass(frozen=True)
class ConvGeometry:
    """Per-spatial-axis kernel, stride, pad and dilation of a (de)convolution."""

    axis: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]


def _per_axis(name: str, values: Any, default: int, n: int) -> tuple[int, ...]:
    """Expand a repeated conv field to one value per spatial axis, as Caffe does."""
    values = list(values)
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (values[0],) * n
    if len(values) != n:
        raise ShapeError(
            f"{name} has {len(values)} values but the bottom has {n} spatial axes",
            hint=f"give one {name} for all axes or exactly {n}",
        )
    return tuple(values)


def _hw_names(name: str) -> tuple[str, str]:
    """The 2-D spellings of a field: kernel_size → kernel_h/kernel_w, pad → pad_h/pad_w."""
    stem = "kernel" if name == "kernel_size" else name
    return f"{stem}_h", f"{stem}_w"


def _h_w(p: Any, name: str, default: int, n: int) -> tuple[int, ...]:
    """The field ``name``, or its ``_h``/``_w`` pair (2-D only)."""
    h, w = _hw_names(name)
    has_h, has_w = p.HasField(h), p.HasField(w)
    if not (has_h or has_w):
        return _per_axis(name, getattr(p, name), default, n)
    if n != 2:
        raise ShapeError(f"{h}/{w} only work for 2-D spatial bottoms, this one has {n}")
    if not (has_h and has_w):
        raise ShapeError(f"give both {h} and {w}, or neither")
    if len(getattr(p, name)):
        raise ShapeError(f"give either {name} or {h}/{w}, not both")
    return (getattr(p, h), getattr(p, w))


def conv_geometry(layer: Any, bottom: Shape) -> ConvGeometry:
    p = layer.convolution_param
    axis = canonical_axis(p.axis, len(bottom))
    n = len(bottom) - axis - 1
    if n < 1:
        raise ShapeError(f"the bottom {shape_text(bottom)} has no spatial axes after axis {axis}")
    kernel = _h_w(p, "kernel_size", 0, n)
    if not len(p.kernel_size) and not p.HasField("kernel_h"):
        raise ShapeError("no kernel size", hint="set kernel_size (or kernel_h and kernel_w)")
    if min(kernel) <= 0:
        raise ShapeError(f"kernel sizes must be positive, got {kernel}")
    stride = _h_w(p, "stride", 1, n)
    if min(stride) <= 0:
        raise ShapeError(f"strides must be positive, got {stride}")
    pad = _h_w(p, "pad", 0, n)
    dilation = _per_axis("dilation", p.dilation, 1, n)
    return ConvGeometry(axis, kernel, stride, pad, dilation)


def _check_groups(layer: Any, channels: int) -> tuple[int, int]:
    p = layer.convolution_param
    if p.num_output <= 0:
        raise ShapeError("num_output must be positive", hint="set convolution_param.num_output")
    if p.group <= 0 or channels % p.group or p.num_output % p.group:
        raise ShapeError(
            f"group {p.group} must divide both the input channels ({channels}) "
            f"and num_output ({p.num_output})"
        )
    return p.num_output, p.group


class _ConvolutionBase:
    """Shared rules of Convolution and Deconvolution; they differ in output size and weights."""

    def out_size(self, size: int, k: int, s: int, p: int, d: int) -> int:
        raise NotImplementedError

    def weight_shape(self, channels: int, num_output: int, group: int) -> tuple[int, int]:
        raise NotImplementedError

    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        require_same_shapes(bottoms)
        bottom = bottoms[0]
        g = conv_geometry(layer, bottom)
        num_output, _ = _check_groups(layer, bottom[g.axis])
        spatial = []
        for i, size in enumerate(bottom[g.axis + 1 :]):
            out = self.out_size(size, g.kernel[i], g.stride[i], g.pad[i], g.dilation[i])
            if out <= 0:
                extent = g.dilation[i] * (g.kernel[i] - 1) + 1
                raise ShapeError(
                    f"spatial axis {i} of size {size} with pad {g.pad[i]} is smaller than "
                    f"the kernel extent {extent}; the output would be empty"
                )
            spatial.append(out)
        top = (*bottom[: g.axis], num_output, *spatial)
        return [top] * len(bottoms)

    def params(self, layer: Any, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.convolution_param
        g = conv_geometry(layer, bottoms[0])
        first, second = self.weight_shape(bottoms[0][g.axis], p.num_output, p.group)
        blobs = [ParamBlob((first, second, *g.kernel), p.weight_filler, "weight")]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler, "bias"))
        return blobs

    # Lowering. Both layers are a GEMM against an unfolded image, per image and
    # group, or (few channels per group, -O2) a direct convolution over the batch.
    # The "image side" is the blob of the larger spatial size (the convolution's
    # bottom, the deconvolution's top) and the "column side" the other;
    # Deconvolution's forward pass is Convolution's backward-data pass.
    deconv = False

    def _plan(self, op: Op, ctx: Any) -> dict[str, Any]:
        g = conv_geometry(op.param, op.bottoms[0].shape)
        if g.axis != 1 or len(g.kernel) != 2:
            raise UserError(
                "caffec compiles 2-D convolutions over axis 1 only so far",
                span=op.span,
                layer=op.name,
            )
        bottom, top = op.bottoms[0].shape, op.tops[0].shape
        image, cols = (top, bottom) if self.deconv else (bottom, top)
        group = op.param.convolution_param.group
        kernel_size = g.kernel[0] * g.kernel[1]
        positions = cols[2] * cols[3]
        geometry = conv_attrs(image[1], (image[2], image[3]), g.kernel, g.stride, g.pad,
                              g.dilation, (cols[2], cols[3]))  # fmt: skip
        # the GEMM of one group: M weight rows, K = (image channels / group) * kernel size
        rows = cols[1] // group
        depth = image[1] // group * kernel_size
        pointwise = g.kernel == (1, 1) and g.stride == (1, 1) and g.pad == (0, 0)
        if ctx.choose_algorithms and _direct_pays(group, image[1] // group, rows, kernel_size,
                                                  cols[3]):  # fmt: skip
            algorithm = "direct"
        elif pointwise:
            algorithm = "gemm_1x1"
        elif (
            ctx.choose_algorithms
            and not self.deconv
            and _dense(group, g)
            and _channel_blocks_pay(image[1], rows, cols[2:], g.kernel)
        ):
            algorithm = "direct_channels"
        elif (
            ctx.choose_algorithms
            and not self.deconv
            and _direct_forward_pays(group, image[1], rows, g.stride, g.dilation, cols[3])
        ):
            algorithm = "direct_forward"
        elif ctx.choose_algorithms and not self.deconv and _implicit_pays(rows, depth, positions,
                                                                          group):  # fmt: skip
            algorithm = "implicit_gemm"
        else:
            algorithm = "im2col_gemm"
        # the gradients, apart: direct where it pays, else as the algorithm does it (a 1x1
        # convolution's products unfold nothing)
        dense = (ctx.choose_algorithms and not self.deconv and _dense(group, g)
                 and algorithm not in ("direct", "gemm_1x1"))  # fmt: skip
        # one image's copies in the weight gradient: the output gradient transposed (its
        # channels padded to vectors of 16) and the input padded
        padded_in = image[1] * (cols[2] + g.kernel[0] - 1) * (cols[3] + g.kernel[1] - 1)
        filter_copies = positions * -(-rows // 16) * 16 + padded_in
        direct_filter = (dense and rows <= DIRECT_FILTER_MAX_ROWS
                         and image[1] >= DIRECT_FILTER_MIN_CHANNELS
                         and filter_copies <= DIRECT_FILTER_MAX_COPIES)  # fmt: skip
        # the input gradient is a forward from the output gradient's channels to the
        # input's, over the output padded by what the forward's padding leaves of the
        # kernel: as much work as the forward only where the two are the same size
        direct_data = (dense and image[2:] == cols[2:]
                       and _channel_blocks_pay(rows, image[1], image[2:], g.kernel))  # fmt: skip
        return {
            "batch": bottom[0], "group": group, "M": rows, "K": depth, "P": positions,
            "geometry": geometry, "pointwise": pointwise, "algorithm": algorithm,
            "image_size": count(image, 1), "col_size": count(cols, 1), "channels": cols[1],
            "direct_filter": direct_filter, "direct_data": direct_data,
            # the weights are the same for every image: packed once before the loop (-O2)
            "weights": "a" if ctx.choose_algorithms and bottom[0] > 1 else None,
        }  # fmt: skip

    def _direct(
        self, plan: dict[str, Any], mode: str, accumulate: bool, blocking: str | None,
        **operands: Any,
    ) -> Any:  # fmt: skip
        """The direct convolution kernel in ``mode`` over whole buffers (see primitives)."""
        return direct_conv(mode, {name: Operand(b) for name, b in operands.items()},
                           plan["geometry"], plan["batch"], plan["channels"], plan["group"],
                           accumulate, blocking)  # fmt: skip

    def _columns(self, ctx: Any, plan: dict[str, Any], image: Any, name: str) -> tuple[list, Any]:
        """The kernels that unfold image n (none for 1x1 kernels) and the unfolded operand."""
        source = Operand(image, 0, plan["image_size"])
        if plan["pointwise"]:
            return [], source
        col = ctx.workspace(name, (plan["group"] * plan["K"], plan["P"]))
        return [im2col(source, Operand(col), plan["geometry"])], Operand(col)

    def _unfolded_gemm(
        self, plan: dict[str, Any], weight: Any, cols: Any, out: Any, accumulate: bool = False
    ) -> Any:
        """out[n] (K-side) = W' cols, per group: the deconvolution forward / conv backward-data."""
        m, k, p, g = plan["M"], plan["K"], plan["P"], plan["group"]
        return gemm(weight, cols, out, k, p, m, trans_a=True, accumulate=accumulate, batch=g,
                    strides=(m * k, m * p, k * p), invariant=plan["weights"])  # fmt: skip

    def _folded_gemm(
        self, plan: dict[str, Any], weight: Any, cols: Any, out: Any, accumulate: bool = False
    ) -> Any:
        """out[n] (M-side) = W cols, per group: the convolution forward / deconv backward-data.
        In an implicit GEMM ``cols`` is the image itself."""
        m, k, p, g = plan["M"], plan["K"], plan["P"], plan["group"]
        geometry, cols_stride = None, k * p
        if plan["algorithm"] == "implicit_gemm":
            geometry = {**plan["geometry"], "C": plan["geometry"]["C"] // g}  # one group's
            cols_stride = geometry["C"] * geometry["H"] * geometry["W"]
        return gemm(weight, cols, out, m, p, k, accumulate=accumulate, batch=g,
                    strides=(m * k, cols_stride, m * p), invariant=plan["weights"],
                    implicit=geometry)  # fmt: skip

    def _loop(self, ctx: Any, plan: dict[str, Any], body: list) -> list:
        """The loop over images running ``body``, after the kernels that pack its GEMMs'
        weights where their plans say so."""
        before, kernels = [], []
        for kernel in body:
            if kernel.prim == "gemm":
                packs, kernel = prepack(kernel, ctx.workspace)
                before += packs
            kernels.append(kernel)
        return [*before, Loop(plan["batch"], kernels)]

    def _fold(
        self, ctx: Any, plan: dict[str, Any], cols: Any, image: Any, accumulate: bool, name: str
    ) -> list:
        """Write columns computed for image n back into the image (col2im, or a plain copy)."""
        target = Operand(image, 0, plan["image_size"])
        if plan["pointwise"]:
            return [cols(target, accumulate)]
        col = ctx.workspace(name, (plan["group"] * plan["K"], plan["P"]))
        return [cols(Operand(col), False), col2im(Operand(col), target, plan["geometry"],
                                                  accumulate)]  # fmt: skip

    def lower(self, op: Op, ctx: Any) -> None:
        if len(op.bottoms) > 1:
            raise UserError("caffec compiles convolutions with one bottom only so far",
                            span=op.span, layer=op.name)  # fmt: skip
        plan = self._plan(op, ctx)
        extras = [name for name in ("direct_filter", "direct_data") if plan[name]]
        ctx.record_algorithm("+".join([plan["algorithm"], *extras]))
        weight = ctx.w(0)
        if plan["algorithm"] in DIRECT_BLOCKING:
            image, cols = (ctx.y(0), ctx.x(0)) if self.deconv else (ctx.x(0), ctx.y(0))
            mode = "data" if self.deconv else "forward"
            ctx.emit(self._direct(plan, mode, False, DIRECT_BLOCKING[plan["algorithm"]],
                                  image=image, cols=cols, weight=weight))  # fmt: skip
        elif not self.deconv:
            if plan["algorithm"] == "implicit_gemm":
                unfold, cols = [], Operand(ctx.x(0), 0, plan["image_size"])
            else:
                unfold, cols = self._columns(ctx, plan, ctx.x(0), "columns")
            out = Operand(ctx.y(0), 0, plan["col_size"])
            ctx.emit(*self._loop(ctx, plan, [*unfold, self._folded_gemm(plan, weight, cols, out)]))
        else:
            source = Operand(ctx.x(0), 0, plan["col_size"])
            body = self._fold(
                ctx, plan,
                lambda out, acc: self._unfolded_gemm(plan, weight, source, out, acc),
                ctx.y(0), False, "columns",
            )  # fmt: skip
            ctx.emit(*self._loop(ctx, plan, body))
        if op.param.convolution_param.bias_term:
            top = op.tops[0].shape
            view = (top[0], top[1], count(top, 2))
            ctx.emit(pmap(view, [(ctx.y(0), "y + b")],
                          {"y": ctx.y(0), "b": (ctx.w(1), (1, top[1], 1))}))  # fmt: skip

    def grad(self, op: Op, ctx: Any) -> None:
        plan = self._plan(op, ctx)
        top = op.tops[0].shape
        dy = ctx.dy(0)
        if op.param.convolution_param.bias_term and ctx.dw(1) is not None:
            ctx.emit(reduce(dy, ctx.dw(1), (top[0], top[1], count(top, 2)), [0, 2],
                            accumulate=True))  # fmt: skip
        dweight, target = ctx.dw(0), ctx.dx(0)
        if plan["algorithm"] == "direct":
            self._direct_grad(plan, ctx, dweight, target)
            return
        body: list = []
        m, k, p, g = plan["M"], plan["K"], plan["P"], plan["group"]
        # the M-side blob (conv top / deconv bottom) and the image-side blob for image n
        m_side, image_side = (ctx.x(0), dy) if self.deconv else (dy, ctx.x(0))
        m_step = plan["col_size"]
        if dweight is not None and plan["direct_filter"]:
            ctx.emit(self._direct(plan, "filter", True, "channels", image=ctx.x(0), cols=dy,
                                  weight=dweight))  # fmt: skip
        elif dweight is not None:
            unfold, cols = self._columns(ctx, plan, image_side, "columns")
            body += unfold
            body.append(gemm(Operand(m_side, 0, m_step), cols, dweight, m, k, p, trans_b=True,
                             accumulate=True, batch=g, strides=(m * p, k * p, m * k)))  # fmt: skip
        if target is not None:
            dx, accumulate = target
            if plan["direct_data"]:
                ctx.emit(self._direct(plan, "data", accumulate, "channels", image=dx, cols=dy,
                                      weight=ctx.w(0)))  # fmt: skip
            elif not self.deconv:
                body += self._fold(
                    ctx, plan,
                    lambda out, acc: self._unfolded_gemm(plan, ctx.w(0), Operand(dy, 0, m_step),
                                                         out, acc),
                    dx, accumulate, "column gradients",
                )  # fmt: skip
            else:
                unfold, cols = self._columns(ctx, plan, dy, "top columns")
                body += unfold
                body.append(self._folded_gemm(plan, ctx.w(0), cols, Operand(dx, 0, m_step),
                                              accumulate))  # fmt: skip
        if body:
            ctx.emit(*self._loop(ctx, plan, body))

    def _direct_grad(self, plan: dict[str, Any], ctx: Any, dweight: Any, target: Any) -> None:
        image, cols = (ctx.dy(0), ctx.x(0)) if self.deconv else (ctx.x(0), ctx.dy(0))
        if dweight is not None:
            ctx.emit(self._direct(plan, "filter", True, None, image=image, cols=cols,
                                  weight=dweight))  # fmt: skip
        if target is not None:
            dx, accumulate = target
            if self.deconv:  # the deconvolution's bottom is the column side
                ctx.emit(self._direct(plan, "forward", accumulate, None, image=image, cols=dx,
                                      weight=ctx.w(0)))  # fmt: skip
            else:
                ctx.emit(self._direct(plan, "data", accumulate, None, image=dx, cols=cols,
                                      weight=ctx.w(0)))  # fmt: skip


# Direct convolution, where the im2col + GEMM path wastes its work: the GEMM of one group
# has too few rows (output channels per group) and too short a K (input channels per group
# times the kernel) for its register tiles, while im2col still copies every tap.
# Measured (3x3, 32x64x28x28, forward + backward): with one channel per group in and out
# (MobileNet's depthwise layers) direct takes 0.7x the time of im2col + GEMM; with two in
# and out already 1.2x, with four 2x, and a channel multiplier of 2 (1 in, 2 out) 1.16x.
DIRECT_MAX_CHANNELS_IN = 1  # image channels per group
DIRECT_MAX_CHANNELS_OUT = 1  # column channels per group
DIRECT_MAX_SUMS = 16384  # KH * KW * OW: the weight gradient's row of sums per tap, on the stack


# Up to this many weight rows per group, the forward GEMM unfolds the image as it packs it
# (an implicit GEMM). Measured on a 2-core AVX2 machine, forward at -O2, ms implicit / with
# columns: GoogLeNet conv1 (64 rows) 101 / 143, inception 3a 3x3 (128) 51 / 57, CaffeNet
# conv1 (96) 27.4 / 29.9, conv2 (128 per group) 42 / 47; with more rows the columns' cost is
# spread over more products and the two are within noise (CaffeNet conv3, 384 rows, and
# inception 4a 3x3, 208), or the columns win (GoogLeNet conv2, 192 rows: 201 / 192).
IMPLICIT_MAX_ROWS = 128


def _implicit_pays(rows: int, depth: int, positions: int, group: int) -> bool:
    """Whether a convolution's forward GEMM (``rows`` x ``positions`` x ``depth`` per group)
    runs implicitly, unfolding the image as it packs B instead of through columns in memory:
    for few weight rows (see above), where the GEMM packs B as it lies (gemm_plan: the
    packed path, not swapped)."""
    plan = gemm_plan(rows, positions, depth, False, False, group)
    return rows <= IMPLICIT_MAX_ROWS and plan["path"] == "packed" and not plan["swap"]


# A dense convolution with few output channels at stride 1 runs its forward directly, a
# block of channels' output rows in registers (templates/c/conv.c.j2), its gradients by
# im2col + GEMM: with few weight rows every unfolded element feeds few products, so the
# unfolding costs about what the products do. Measured on a 2-core AVX2 machine, forward
# with bias and ReLU, ms direct / by columns (implicit GEMM or im2col): CIFAR-10 quick at
# batch 100, conv2 (32 -> 32 channels, 16x16, 5x5) 15.6 / 19.8, conv3 (32 -> 64, 8x8)
# 8.5 / 10.0, conv1 (3 -> 32, 32x32) 11.4 / 9.7 (few input channels: copying each padded
# row costs too much); LeNet conv2 (20 -> 50, 8x8) 2.9 / 2.0 (one vector per row: each
# weight loaded feeds one product); GoogLeNet's 5x5 inception layers at batch 32, 28 and 14
# wide (partial vectors), 3a 10.2 / 6.9, 4b 5.2 / 4.7, 4d 6.8 / 6.1, 4a 2.6 / 3.1. So: rows
# of two to four whole AVX2 vectors.
DIRECT_FORWARD_MAX_ROWS = 64  # output channels
DIRECT_FORWARD_MIN_CHANNELS = 16  # input channels
DIRECT_FORWARD_WIDTHS = (16, 24, 32)  # output columns: two to four whole 8-lane vectors


def _direct_forward_pays(
    group: int, channels_in: int, rows: int, stride: tuple, dilation: tuple, out_width: int
) -> bool:
    """Whether a convolution's forward runs direct with its rows' sums in registers."""
    return (group == 1 and rows <= DIRECT_FORWARD_MAX_ROWS
            and channels_in >= DIRECT_FORWARD_MIN_CHANNELS
            and out_width in DIRECT_FORWARD_WIDTHS
            and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1))  # fmt: skip


# A dense convolution with few output channels at stride 1 computes its weight gradient
# directly (templates/c/conv.c.j2): a product over every output position whose operands
# are the output gradient, transposed, and the input, padded, neither unfolded. Measured on
# a 2-core AVX-512 machine (and built for AVX2 on it), CIFAR-10 quick at batch 100, ms
# direct / im2col + GEMM: conv2 (32 -> 32 channels, 16x16, 5x5) 6.5 / 16.2 (AVX2 7.6 /
# 15.2), conv3 (32 -> 64, 8x8) 3.2 / 6.7 (5.2 / 7.3), conv1 (3 -> 32, 32x32) 3.8 / 4.2
# (3.9 / 6.0); LeNet at batch 64, conv2 (20 -> 50, 8x8) 1.38 / 1.85, but conv1 (1 -> 20,
# 24x24) 0.52 / 0.35: one input channel unfolds into few columns, cheaply. GoogLeNet at
# batch 32: its 5x5 inception layers (32 to 128 rows) all gain (3a 3.4 / 6.2, 3b 18.7 /
# 24.7, 4e 6.8 / 9.5), 3a's 3x3 (128 rows) is even, the 3x3s of 192 rows and more lose
# (3b 3x3 138 / 120 for its whole backward, conv2 292 / 275): with many rows the columns
# are spread over many products.
DIRECT_FILTER_MAX_ROWS = 128  # output channels
DIRECT_FILTER_MIN_CHANNELS = 3  # input channels
# reals in one image's two copies (1 MB, an L2 cache): VGG's first layer (3 -> 64 channels,
# 224 wide, 3.4 million) at batch 8 took 36.4 ms instead of 23.7; GoogLeNet's 3b 5x5
# (108 thousand) gains
DIRECT_FILTER_MAX_COPIES = 262144


# A dense convolution at stride 1 may also run its forward, and its input gradient, as
# blocks of output positions by output channels in registers (templates/c/conv.c.j2,
# `direct_channels`; the input gradient as `direct_data`), each tap's weights a vector of
# the channels and each position's input broadcast from a zero-padded copy of the image.
# Measured on a 2-core AVX-512 machine, ms per step (forward, or the whole backward)
# direct / before: CIFAR-10 quick at batch 100, forward conv1 (3 -> 32, 32 wide) 4.3 /
# 4.9, conv2 (32 -> 32, 16 wide) 6.8 / 8.7, conv3 (32 -> 64, 8 wide) 3.4 / 5.3;
# backward conv2 13.2 / 15.6, conv3 6.3 / 7.0; GoogLeNet at batch 32, the 14 and 7 wide
# inception layers all gain (forward 4e 3x3 30.1 / 35.3, 5b 3x3 10.6 / 14.0, 4d 5x5 3.3 /
# 5.2; backward 4e 3x3 58.0 / 64.7), and the 28 wide 3a 5x5 (16 input channels, forward
# 4.0 / 5.4), but the 28 and 56 wide layers with more input channels lose (forward 3b
# 3x3 106 / 61, conv2 3x3 160 / 139; backward 3a 3x3 78 / 58): the rows of the copy each
# block reads no longer stay in L1. CaffeNet's conv3 at batch 10 (256 -> 384, 13 wide) is
# even (17.1 and 20.3 / 17.9 and 18.5 in two runs). LeNet's channels (20, 50) fill vectors
# partly, and lose (forward conv2 1.39 / 1.31). Its input gradient (12 wide from 8) would
# be a forward over a bigger image than the output's: 4.7 / 2.4 ms.
DIRECT_CHANNELS_MULTIPLE = 16  # channels out: whole vectors of 16
DIRECT_CHANNELS_MAX_WIDTH = 16  # output columns, unless ...
DIRECT_CHANNELS_MAX_CHANNELS_IN = 16  # ... there are at most this many input channels
# reals in the padded copy of one image: the layers above that gain copy at most 41
# thousand (GoogLeNet 4e 3x3); VGG's first layer (3 channels, 224 wide: 153 thousand) at
# batch 8 loses (forward 28.8 ms instead of 25.5)
DIRECT_CHANNELS_MAX_COPY = 65536
DIRECT_MAX_KERNEL_WIDTH = 12  # kernel columns (a block of the weight gradient's taps)

# the forward algorithms that are direct convolutions, and their kernels' blocking
DIRECT_BLOCKING = {"direct": None, "direct_forward": "rows", "direct_channels": "channels"}


def _dense(group: int, g: Any) -> bool:
    """Whether a convolution is one the blocked direct kernels compute: one group, stride
    and dilation 1, a kernel row's taps fitting in registers."""
    return (group == 1 and g.kernel[1] <= DIRECT_MAX_KERNEL_WIDTH
            and tuple(g.stride) == (1, 1) and tuple(g.dilation) == (1, 1))  # fmt: skip


def _channel_blocks_pay(
    channels_in: int, channels_out: int, out_size: tuple, kernel: tuple
) -> bool:
    """Whether a dense convolution from ``channels_in`` to ``channels_out`` with an output
    of ``out_size`` (rows, columns) runs as blocks of positions by channels (see above)."""
    copy = channels_in * (out_size[0] + kernel[0] - 1) * (out_size[1] + kernel[1] - 1)
    return (channels_out % DIRECT_CHANNELS_MULTIPLE == 0 and copy <= DIRECT_CHANNELS_MAX_COPY
            and (out_size[1] <= DIRECT_CHANNELS_MAX_WIDTH
                 or channels_in <= DIRECT_CHANNELS_MAX_CHANNELS_IN))  # fmt: skip


def _direct_pays(
    group: int, channels_in: int, channels_out: int, kernel_size: int, out_width: int
) -> bool:
    """Whether a grouped convolution with these per-group channels runs direct."""
    return (group > 1 and channels_in <= DIRECT_MAX_CHANNELS_IN
            and channels_out <= DIRECT_MAX_CHANNELS_OUT
            and kernel_size * out_width <= DIRECT_MAX_SUMS)  # fmt: skip


@register_layer("Convolution", bottoms=(1, None), tops=(1, None))
class Convolution(_ConvolutionBase):
    def out_size(self, size: int, k: int, s: int, p: int, d: int) -> int:
        return (size + 2 * p - (d * (k - 1) + 1)) // s + 1

    def weight_shape(self, channels: int, num_output: int, group: int) -> tuple[int, int]:
        return num_output, channels // group


@register_layer("Deconvolution", bottoms=(1, None), tops=(1, None))
class Deconvolution(_ConvolutionBase):
    deconv = True

    def out_size(self, size: int, k: int, s: int, p: int, d: int) -> int:
        return s * (size - 1) + d * (k - 1) + 1 - 2 * p

    def weight_shape(self, channels: int, num_output: int, group: int) -> tuple[int, int]:
        return channels, num_output // group


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    pooled: tuple[int, int]
    method: str


@register_layer("Pooling", tops=(1, 2))
class Pooling:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        g = self.geometry(layer, bottoms[0])
        if len(layer.top) == 2 and g.method != "MAX":
            raise ShapeError(f"only MAX pooling has a second top (the argmax mask), not {g.method}")
        top = (*bottoms[0][:2], *g.pooled)
        return [top] * len(layer.top)

    def geometry(self, layer: Any, bottom: Shape) -> PoolGeometry:
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
    def _pair(p: Any, name: str, default: int) -> tuple[int, int]:
        h, w = _hw_names(name)
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

    def _mask(self, op: Op, ctx: Any) -> Any:
        """MAX pooling remembers each output's argmax: in the second top if given, else kept."""
        if op.param.pooling_param.PoolMethod.Name(op.param.pooling_param.pool) != "MAX":
            return None
        return ctx.y(1) if len(op.tops) == 2 else ctx.state("argmax", op.tops[0].shape)

    def lower(self, op: Op, ctx: Any) -> None:
        mask = self._mask(op, ctx)
        ctx.emit(pool(Operand(ctx.x(0)), Operand(ctx.y(0)),
                      Operand(mask) if mask is not None else None, self._attrs(op)))  # fmt: skip

    def grad(self, op: Op, ctx: Any) -> None:
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

    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
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

    def lower(self, op: Op, ctx: Any) -> None:
        shape = op.bottoms[0].shape
        attrs, consts, _ = self._plan(op)
        scale = ctx.state("scale", shape)
        ctx.emit(
            pool(Operand(ctx.x(0)), Operand(scale), None, {**attrs, "square": True}),
            pmap(shape, [(scale, "k + a * s")], {"s": scale}, consts),
            pmap(shape, [(ctx.y(0), f"x * {power('s', 'minus_beta', -consts['beta'])}")],
                 {"x": ctx.x(0), "s": scale}, {**consts, "minus_beta": -consts["beta"]}),
        )  # fmt: skip

    def grad(self, op: Op, ctx: Any) -> None:
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

    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
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

    def lower(self, op: Op, ctx: Any) -> None:
        top, strides, start = self._layout(op)
        ctx.emit(strided_copy(Operand(ctx.x(0), start), Operand(ctx.y(0)), top, strides,
                              contiguous_strides(top)))  # fmt: skip

    def grad(self, op: Op, ctx: Any) -> None:
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
