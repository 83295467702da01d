"""Convolution and Deconvolution: shapes, weights, and lowering to GEMMs or direct kernels.

Both layers are a GEMM per image and group against the image unfolded into
columns (im2col), or a direct convolution where the target says it pays
(:meth:`caffec.compiler.targets.Target.conv_algorithms`). The *image side* is
the blob of the larger spatial size (the convolution's bottom, the
deconvolution's top) and the *column side* the other; Deconvolution's forward
pass is Convolution's backward-data pass. Convolutions over other than two
spatial axes (and 2-D ones with ``force_nd_im2col``) run im2col + GEMM over
all their axes on every target. Several bottoms each go through the same
weights, as in Caffe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.kernels import Buffer, Kernel, Loop, Operand
from caffec.compiler.layers.common import canonical_axis, count, require_same_shapes
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import (
    col2im,
    col2im_nd,
    conv_attrs,
    conv_nd_attrs,
    direct_conv,
    gemm,
    im2col,
    im2col_nd,
    pmap,
    reduce,
    winograd,
    winograd_attrs,
)
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.compiler.targets import DIRECT_BLOCKING, ConvAlgorithms, ConvShape


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


def hw_names(name: str) -> tuple[str, str]:
    """The 2-D spellings of a field: kernel_size → kernel_h/kernel_w, pad → pad_h/pad_w."""
    stem = "kernel" if name == "kernel_size" else name
    return f"{stem}_h", f"{stem}_w"


def _h_w(p: Message, name: str, default: int, n: int) -> tuple[int, ...]:
    """The field ``name``, or its ``_h``/``_w`` pair (2-D only)."""
    h, w = hw_names(name)
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


def conv_geometry(layer: LayerParameter, bottom: Shape) -> ConvGeometry:
    """Kernel, stride, pad and dilation per spatial axis (every axis after ``axis``). As in
    Caffe, a bottom may have none (the channel axis last), and then needs no kernel size:
    the weights combine each image's channels, a grouped inner product."""
    p = layer.convolution_param
    axis = canonical_axis(p.axis, len(bottom))
    n = len(bottom) - axis - 1
    kernel = _h_w(p, "kernel_size", 0, n)
    if n and not len(p.kernel_size) and not p.HasField("kernel_h"):
        raise ShapeError("no kernel size", hint="set kernel_size (or kernel_h and kernel_w)")
    if any(k <= 0 for k in kernel):
        raise ShapeError(f"kernel sizes must be positive, got {kernel}")
    stride = _h_w(p, "stride", 1, n)
    if any(s <= 0 for s in stride):
        raise ShapeError(f"strides must be positive, got {stride}")
    pad = _h_w(p, "pad", 0, n)
    dilation = _per_axis("dilation", p.dilation, 1, n)
    return ConvGeometry(axis, kernel, stride, pad, dilation)


def _check_groups(layer: LayerParameter, channels: int) -> tuple[int, int]:
    p = layer.convolution_param
    if p.num_output <= 0:
        raise ShapeError("num_output must be positive", hint="set convolution_param.num_output")
    if p.group <= 0 or channels % p.group or p.num_output % p.group:
        raise ShapeError(
            f"group {p.group} must divide both the input channels ({channels}) "
            f"and num_output ({p.num_output})"
        )
    return p.num_output, p.group


@dataclass(frozen=True)
class ConvPlan:
    """One (de)convolution as its lowering runs it on each bottom: the images (``batch``:
    every axis before the channel axis counts), the chosen algorithms, im2col's geometry
    (2-D: :func:`conv_attrs`; N-D: :func:`conv_nd_attrs`), and the GEMM of one group: M
    weight rows, K = image channels per group times the taps, P column-side positions.
    ``shape`` is what the target chose 2-D algorithms from; None on the N-D path, which is
    im2col + GEMM on every target."""

    axis: int
    batch: int
    group: int
    m: int
    k: int
    p: int
    image_size: int  # numbers in one image of the image side
    col_size: int  # numbers in one image of the column side
    pointwise: bool  # every kernel axis 1, stride 1, no padding: the GEMM reads the image
    algorithms: ConvAlgorithms
    geometry: dict[str, Any]
    shape: ConvShape | None

    @property
    def nd(self) -> bool:
        return self.shape is None


class _ConvolutionBase:
    """Shared rules of Convolution and Deconvolution; they differ in output size and weights."""

    deconv = False

    def out_size(self, size: int, k: int, s: int, p: int, d: int) -> int:
        raise NotImplementedError

    def weight_shape(self, channels: int, num_output: int, group: int) -> tuple[int, int]:
        raise NotImplementedError

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        if len(layer.top) != len(bottoms):
            raise ShapeError(
                f"{len(bottoms)} bottoms but {len(layer.top)} tops: each bottom goes through "
                "the same weights to the top at its position",
                hint="give exactly one top per bottom",
            )
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

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.convolution_param
        g = conv_geometry(layer, bottoms[0])
        first, second = self.weight_shape(bottoms[0][g.axis], p.num_output, p.group)
        blobs = [ParamBlob((first, second, *g.kernel), p.weight_filler, "weight")]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler, "bias"))
        return blobs

    def _plan(self, op: Op, ctx: LowerContext) -> ConvPlan:
        """2-D convolutions (unless ``force_nd_im2col``) get the target's algorithms; any
        other number of spatial axes im2col + GEMM over all of them (Caffe's im2col_nd)."""
        param = op.param.convolution_param
        g = conv_geometry(op.param, op.bottoms[0].shape)
        bottom, top = op.bottoms[0].shape, op.tops[0].shape
        image, cols = (top, bottom) if self.deconv else (bottom, top)
        channels, size = image[g.axis], image[g.axis + 1 :]
        col_channels, out = cols[g.axis], cols[g.axis + 1 :]
        batch, group = count(bottom, 0, g.axis), param.group
        pointwise = set(g.kernel + g.stride) <= {1} and not any(g.pad)  # Caffe's is_1x1
        shape: ConvShape | None = None
        if len(g.kernel) == 2 and not param.force_nd_im2col:
            shape = ConvShape(batch=batch, group=group, image=(channels, *size),
                              cols=(col_channels, *out), kernel=(g.kernel[0], g.kernel[1]),
                              stride=(g.stride[0], g.stride[1]), pad=(g.pad[0], g.pad[1]),
                              dilation=(g.dilation[0], g.dilation[1]),
                              deconv=self.deconv)  # fmt: skip
            algorithms = ctx.conv_algorithms(shape)
            geometry = conv_attrs(channels, (size[0], size[1]), g.kernel, g.stride, g.pad,
                                  g.dilation, out)  # fmt: skip
        else:
            algorithms = ConvAlgorithms("gemm_1x1" if pointwise else "im2col_nd_gemm")
            ctx.name_algorithm(algorithms)
            geometry = {} if pointwise else conv_nd_attrs(channels, size, g.kernel, g.stride,
                                                          g.pad, g.dilation, out)  # fmt: skip
        return ConvPlan(axis=g.axis, batch=batch, group=group, m=col_channels // group,
                        k=channels // group * count(g.kernel), p=count(out),
                        image_size=count(image, g.axis), col_size=count(cols, g.axis),
                        pointwise=pointwise, algorithms=algorithms, geometry=geometry,
                        shape=shape)  # fmt: skip

    def _direct(
        self, plan: ConvPlan, mode: str, accumulate: bool, blocking: str | None,
        **operands: Buffer,
    ) -> Kernel:  # fmt: skip
        """The direct convolution kernel in ``mode`` over whole buffers (see primitives)."""
        return direct_conv(mode, {name: Operand(b) for name, b in operands.items()},
                           plan.geometry, plan.batch, plan.m * plan.group, plan.group,
                           accumulate, blocking)  # fmt: skip

    def _columns(
        self, ctx: LowerContext, plan: ConvPlan, image: Buffer, name: str
    ) -> tuple[list[Kernel], Operand]:
        """The kernels that unfold image n (none for 1x1 kernels) and the unfolded operand."""
        source = Operand(image, 0, plan.image_size)
        if plan.pointwise:
            return [], source
        col = ctx.workspace(name, (plan.group * plan.k, plan.p))
        unfold = im2col_nd if plan.nd else im2col
        return [unfold(source, Operand(col), plan.geometry)], Operand(col)

    def _unfolded_gemm(
        self, plan: ConvPlan, weight: Buffer, cols: Operand, out: Operand, accumulate: bool = False
    ) -> Kernel:
        """out[n] (K-side) = W' cols, per group: the deconvolution forward / conv backward-data."""
        m, k, p, g = plan.m, plan.k, plan.p, plan.group
        return gemm(weight, cols, out, k, p, m, trans_a=True, accumulate=accumulate, batch=g,
                    strides=(m * k, m * p, k * p), invariant="a")  # fmt: skip

    def _folded_gemm(
        self, plan: ConvPlan, weight: Buffer, cols: Operand, out: Operand, accumulate: bool = False
    ) -> Kernel:
        """out[n] (M-side) = W cols, per group: the convolution forward / deconv backward-data.
        In an implicit GEMM ``cols`` is the image itself."""
        m, k, p, g = plan.m, plan.k, plan.p, plan.group
        geometry, cols_stride = None, k * p
        if plan.algorithms.forward == "implicit_gemm":
            geometry = {**plan.geometry, "C": plan.geometry["C"] // g}  # one group's
            cols_stride = geometry["C"] * geometry["H"] * geometry["W"]
        return gemm(weight, cols, out, m, p, k, accumulate=accumulate, batch=g,
                    strides=(m * k, cols_stride, m * p), invariant="a",
                    implicit=geometry)  # fmt: skip

    def _fold(
        self, ctx: LowerContext, plan: ConvPlan, cols: Callable[[Operand, bool], Kernel],
        image: Buffer, accumulate: bool, name: str,
    ) -> list[Kernel]:  # fmt: skip
        """Write columns computed for image n back into the image (col2im, or a plain copy)."""
        target = Operand(image, 0, plan.image_size)
        if plan.pointwise:
            return [cols(target, accumulate)]
        col = ctx.workspace(name, (plan.group * plan.k, plan.p))
        fold = col2im_nd if plan.nd else col2im
        return [cols(Operand(col), False), fold(Operand(col), target, plan.geometry,
                                                accumulate)]  # fmt: skip

    def _bias_view(self, op: Op, plan: ConvPlan) -> tuple[int, int, int]:
        """A top as (images, channels, positions), the axes a bias broadcasts over."""
        top = op.tops[0].shape
        return count(top, 0, plan.axis), top[plan.axis], count(top, plan.axis + 1)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        """Each bottom through the same weights and bias into the top at its position."""
        plan = self._plan(op, ctx)
        for i in range(len(op.bottoms)):
            self._forward(op, ctx, plan, ctx.x(i), ctx.y(i))

    def _forward(self, op: Op, ctx: LowerContext, plan: ConvPlan, x: Buffer, y: Buffer) -> None:
        forward = plan.algorithms.forward
        weight = ctx.w(0)
        if forward in DIRECT_BLOCKING:
            image, cols = (y, x) if self.deconv else (x, y)
            mode = "data" if self.deconv else "forward"
            ctx.emit(self._direct(plan, mode, False, DIRECT_BLOCKING[forward],
                                  image=image, cols=cols, weight=weight))  # fmt: skip
        elif forward == "winograd":
            self._winograd(ctx, plan, x, y, weight)
        elif not self.deconv:
            if forward == "implicit_gemm":
                unfold, cols = [], Operand(x, 0, plan.image_size)
            else:
                unfold, cols = self._columns(ctx, plan, x, "columns")
            out = Operand(y, 0, plan.col_size)
            ctx.emit(Loop(plan.batch, [*unfold, self._folded_gemm(plan, weight, cols, out)]))
        else:
            source = Operand(x, 0, plan.col_size)
            body = self._fold(
                ctx, plan,
                lambda out, acc: self._unfolded_gemm(plan, weight, source, out, acc),
                y, False, "columns",
            )  # fmt: skip
            ctx.emit(Loop(plan.batch, body))
        if op.param.convolution_param.bias_term:
            view = self._bias_view(op, plan)
            ctx.emit(pmap(view, [(y, "y + b")], {"y": y, "b": (ctx.w(1), (1, view[1], 1))}))

    def _winograd(
        self, ctx: LowerContext, plan: ConvPlan, x: Buffer, y: Buffer, weight: Buffer
    ) -> None:
        """The forward by Winograd's F(4x4, 3x3) (see primitives.winograd): the weights
        transformed once, then for each image its input transformed, a GEMM per point of the
        6x6 block and group (the transformed weights their loop-invariant operand, which the
        target may pack once before the loop), and the products transformed back into the
        output."""
        a = winograd_attrs(plan.geometry, plan.m * plan.group, plan.group)
        points = a["SPAN"] ** 2
        u = ctx.workspace("winograd weights", (points, a["M"], a["CG"]))
        v = ctx.workspace("winograd input", (points, a["C"], a["T"]))
        products = ctx.workspace("winograd products", (points, a["M"], a["T"]))
        ctx.emit(winograd("weights", Operand(weight), Operand(u), a))
        m, k, n = a["MG"], a["CG"], a["T"]
        ctx.emit(Loop(plan.batch, [
            winograd("input", Operand(x, 0, plan.image_size), Operand(v), a),
            gemm(u, v, products, m, n, k, batch=points * plan.group,
                 strides=(m * k, k * n, m * n), invariant="a"),
            winograd("output", Operand(products), Operand(y, 0, plan.col_size), a),
        ]))  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        """Each top's gradient to the bottom at its position; the weight and bias gradients
        sum over all of them."""
        plan = self._plan(op, ctx)
        for i in range(len(op.bottoms)):
            self._backward(op, ctx, plan, i)

    def _backward(self, op: Op, ctx: LowerContext, plan: ConvPlan, i: int) -> None:
        x, dy = ctx.x(i), ctx.dy(i)
        if op.param.convolution_param.bias_term and ctx.dw(1) is not None:
            ctx.emit(reduce(dy, ctx.dw(1), self._bias_view(op, plan), [0, 2], accumulate=True))
        dweight, target = ctx.dw(0), ctx.dx(i)
        if plan.algorithms.forward == "direct":
            self._direct_grad(plan, ctx, x, dy, dweight, target)
            return
        body: list[Kernel] = []
        m, k, p, g = plan.m, plan.k, plan.p, plan.group
        # the M-side blob (conv top / deconv bottom) and the image-side blob for image n
        m_side, image_side = (x, dy) if self.deconv else (dy, x)
        m_step = plan.col_size
        if dweight is not None and plan.algorithms.direct_filter:
            ctx.emit(self._direct(plan, "filter", True, "channels", image=x, cols=dy,
                                  weight=dweight))  # fmt: skip
        elif dweight is not None:
            unfold, cols = self._columns(ctx, plan, image_side, "columns")
            body += unfold
            body.append(gemm(Operand(m_side, 0, m_step), cols, dweight, m, k, p, trans_b=True,
                             accumulate=True, batch=g, strides=(m * p, k * p, m * k)))  # fmt: skip
        if target is not None:
            dx, accumulate = target
            if plan.algorithms.direct_data:
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
            ctx.emit(Loop(plan.batch, body))

    def _direct_grad(
        self, plan: ConvPlan, ctx: LowerContext, x: Buffer, dy: Buffer,
        dweight: Buffer | None, target: tuple[Buffer, bool] | None,
    ) -> None:  # fmt: skip
        image, cols = (dy, x) if self.deconv else (x, dy)
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
