"""BatchNorm, MVN and the per-channel affine layers Scale and Bias."""

from __future__ import annotations

from google.protobuf.message import Message

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.kernels import Buffer
from caffec.compiler.layers.common import SameShape, canonical_axis, count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import shape_text
from caffec.formats import caffe_pb2

ROW: Shape = (1, 1, 1)  # a 1-element buffer broadcast over an (outer, mid, inner) view


@register_layer("BatchNorm", in_place=True)
class BatchNorm(SameShape):
    """Caffe's BatchNorm: y = (x - mean) / sqrt(var + eps) per channel (axis 1), no affine.

    With ``use_global_stats`` (the default in TEST) mean and var come from the
    running blobs, divided by the factor blob; otherwise they are the batch's
    (biased) statistics over the batch and spatial axes, and the forward pass
    folds them into the running blobs as Caffe does.

    With global statistics the normalisation is an affine map per channel, so
    it is lowered as one: a map over the channels computes each channel's
    scale and shift, once per forward, and the per-element map is one
    multiply-add, which fusion puts into the producing convolution's or inner
    product's epilogue beside its bias. That is what folding BatchNorm into
    the weights buys, while the parameters stay the live blobs a user edits.
    """

    BLOBS = ("mean", "variance", "factor")

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        for i, spec in enumerate(layer.param[: len(self.BLOBS)]):
            if spec.HasField("lr_mult") and spec.lr_mult != 0:
                raise ShapeError(
                    f"param {i} (the running {self.BLOBS[i]}) has lr_mult {spec.lr_mult:g}: "
                    "BatchNorm's statistics are not learnable parameters",
                    hint="remove the lr_mult, or set it to 0; the forward pass in TRAIN "
                    "updates these blobs itself",
                )
        channels = bottoms[0][1] if len(bottoms[0]) > 1 else 1
        zero = caffe_pb2.FillerParameter(type="constant", value=0.0)
        # Caffe's three blobs: running mean, running variance, and the factor
        # that undoes the moving average's bias (mean = blob / factor). None is
        # learned: their lr_mult is 0, and Caffe rejects any other value.
        return [
            ParamBlob((channels,), zero, "mean", lr_mult=0.0),
            ParamBlob((channels,), zero, "variance", lr_mult=0.0),
            ParamBlob((1,), zero, "factor", lr_mult=0.0),
        ]

    @staticmethod
    def _view(op: Op) -> Shape:
        """The bottom as (num, channels, spatial); a 1-D bottom is one channel."""
        shape = op.bottoms[0].shape
        if len(shape) == 1:
            return (shape[0], 1, 1)
        return (shape[0], shape[1], count(shape, 2))

    @staticmethod
    def _global(op: Op, ctx: LowerContext) -> bool:
        p = op.param.batch_norm_param
        return p.use_global_stats if p.HasField("use_global_stats") else ctx.phase == "TEST"

    def _coefficients(self, op: Op, ctx: LowerContext) -> tuple[Buffer, Buffer]:
        """Each channel's scale and shift under the running statistics, as ``y = x * a + c``
        (the factor blob scales the running sums; a factor of 0 reads as 0, as in Caffe)."""
        channels = self._view(op)[1]
        scale = ctx.state("scale", (channels,))
        shift = ctx.state("shift", (channels,))
        inputs = {"mb": ctx.w(0), "vb": ctx.w(1), "fb": (ctx.w(2), "0")}
        lets = [("f", "fb == 0 ? 0 : 1 / fb"), ("a", "1 / sqrt(vb * f + eps)")]
        ctx.emit(
            pmap((channels,), [(scale, "a"), (shift, "-mb * f * a")], inputs,
                 {"eps": op.param.batch_norm_param.eps}, lets=lets)
        )  # fmt: skip
        return scale, shift

    def lower(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.batch_norm_param
        view = self._view(op)
        num, channels, spatial = view
        channel = (1, channels, 1)
        eps = {"eps": p.eps}
        if self._global(op, ctx):
            scale, shift = self._coefficients(op, ctx)
            inputs = {"x": ctx.x(0), "a": (scale, channel), "c": (shift, channel)}
            ctx.emit(pmap(view, [(ctx.y(0), "x * a + c")], inputs))
            return
        m = num * spatial
        mean = ctx.state("batch mean", (channels,))
        inv = ctx.state("inverse std", (channels,))
        var = ctx.workspace("batch variance", (channels,))
        squares = ctx.workspace("centred squares", view)
        stats = {"x": ctx.x(0), "u": (mean, channel), "s": (inv, channel)}
        maf = p.moving_average_fraction
        ctx.emit(
            reduce(ctx.x(0), mean, view, [0, 2], scale=1.0 / m),
            pmap(view, [(squares, "(x - u) * (x - u)")], stats),
            reduce(squares, var, view, [0, 2], scale=1.0 / m),
            pmap((channels,), [(inv, "1 / sqrt(v + eps)")], {"v": var}, eps),
            pmap(view, [(ctx.y(0), "(x - u) * s")], stats),
            # the running sums, as Caffe keeps them (m/(m-1): the unbiased variance)
            pmap((channels,), [(ctx.w(0), "u + maf * mb"), (ctx.w(1), "corr * v + maf * vb")],
                 {"u": mean, "v": var, "mb": ctx.w(0), "vb": ctx.w(1)},
                 {"maf": maf, "corr": m / (m - 1) if m > 1 else 1.0}),
            pmap((1,), [(ctx.w(2), "fb * maf + 1")], {"fb": ctx.w(2)}, {"maf": maf}),
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        view = self._view(op)
        num, channels, spatial = view
        channel = (1, channels, 1)
        if self._global(op, ctx):
            scale = ctx.state("scale", (channels,))
            inputs = {"dy": ctx.dy(0), "a": (scale, channel)}
            ctx.emit(pmap(view, [(dx, "dy * a")], inputs, accumulate=accumulate))
            return
        # dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), means per channel
        m = num * spatial
        mean_dy = ctx.workspace("mean of dy", (channels,))
        mean_dyy = ctx.workspace("mean of dy*y", (channels,))
        products = ctx.workspace("dy*y", view)
        inputs = {
            "dy": ctx.dy(0),
            "y": ctx.y(0),
            "a": (mean_dy, channel),
            "b": (mean_dyy, channel),
            "s": (ctx.state("inverse std", (channels,)), channel),
        }
        ctx.emit(
            reduce(ctx.dy(0), mean_dy, view, [0, 2], scale=1.0 / m),
            pmap(view, [(products, "dy * y")], inputs),
            reduce(products, mean_dyy, view, [0, 2], scale=1.0 / m),
            pmap(view, [(dx, "(dy - a - b * y) * s")], inputs, accumulate=accumulate),
        )


@register_layer("MVN", in_place=True)
class MVN:
    """Caffe's mean-variance normalization: y = (x - mean) / (std + eps) over each (num,
    channel) plane, or over each item with ``across_channels``; the mean only without
    ``normalize_variance``. Caffe adds eps to the standard deviation, not the variance.

    Caffe's backward is dx = (dy - mean(dy) - mean(dy * y) * y) / (std + eps), which reads
    the top and the kept std only (the exact gradient when eps is 0).
    """

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        shape = bottoms[0]
        if len(shape) > 4:
            raise ShapeError(
                f"MVN takes a bottom of at most 4 axes, got {shape_text(shape)}",
                hint="Caffe's MVN reads num, channels, height and width; Reshape the bottom",
            )
        # Caffe reshapes the top with the legacy accessors: (num, channels, height, width)
        return [tuple(shape) + (1,) * (4 - len(shape))]

    @staticmethod
    def _view(op: Op) -> Shape:
        """The bottom as (groups, elements per group)."""
        shape = op.bottoms[0].shape
        axes = 1 if op.param.mvn_param.across_channels else 2
        return (count(shape, 0, axes), count(shape, axes))

    def lower(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.mvn_param
        view = groups, size = self._view(op)
        mean = ctx.workspace("mean", (groups,))
        inputs = {"x": ctx.x(0), "u": (mean, (groups, 1))}
        ctx.emit(reduce(ctx.x(0), mean, view, [1], scale=1.0 / size))
        if not p.normalize_variance:
            ctx.emit(pmap(view, [(ctx.y(0), "x - u")], inputs))
            return
        centred = ctx.workspace("centred", view)
        variance = ctx.workspace("variance", (groups,))
        std = ctx.state("std plus eps", (groups,))
        ctx.emit(
            pmap(view, [(centred, "x - u")], inputs),
            reduce(centred, variance, view, [1], op="sumsq", scale=1.0 / size),
            pmap((groups,), [(std, "sqrt(v) + eps")], {"v": variance}, {"eps": p.eps}),
            pmap(view, [(ctx.y(0), "c / s")], {"c": centred, "s": (std, (groups, 1))}),
        )

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        view = groups, size = self._view(op)
        mean_dy = ctx.workspace("mean of dy", (groups,))
        inputs = {"dy": ctx.dy(0), "y": ctx.y(0), "a": (mean_dy, (groups, 1))}
        ctx.emit(reduce(ctx.dy(0), mean_dy, view, [1], scale=1.0 / size))
        if not op.param.mvn_param.normalize_variance:
            ctx.emit(pmap(view, [(dx, "dy - a")], inputs, accumulate=accumulate))
            return
        mean_dyy = ctx.workspace("mean of dy*y", (groups,))
        products = ctx.workspace("dy*y", view)
        inputs |= {"b": (mean_dyy, (groups, 1)),
                   "s": (ctx.state("std plus eps", (groups,)), (groups, 1))}  # fmt: skip
        ctx.emit(
            pmap(view, [(products, "dy * y")], inputs),
            reduce(products, mean_dyy, view, [1], scale=1.0 / size),
            pmap(view, [(dx, "(dy - a - b * y) / s")], inputs, accumulate=accumulate),
        )


def affine_shape(p: Message, bottoms: list[Shape]) -> tuple[int, Shape]:
    """The axis and the shape of the operand Scale/Bias apply from that axis on.

    With one bottom the operand is a learned blob covering ``num_axes`` axes
    (-1: all the rest); with two the second bottom is the operand.
    """
    bottom = bottoms[0]
    if len(bottoms) == 2:
        operand = bottoms[1]
        axis = 0 if not operand else canonical_axis(p.axis, len(bottom))
    else:
        axis = canonical_axis(p.axis, len(bottom))
        if p.num_axes < -1:
            raise ShapeError(f"num_axes must be -1 or more, got {p.num_axes}")
        end = len(bottom) if p.num_axes == -1 else axis + p.num_axes
        if end > len(bottom):
            raise ShapeError(
                f"axis {axis} + num_axes {p.num_axes} runs past the bottom {shape_text(bottom)}"
            )
        operand = bottom[axis:end]
    if tuple(bottom[axis : axis + len(operand)]) != tuple(operand):
        raise ShapeError(
            f"the operand {shape_text(operand)} does not match the bottom {shape_text(bottom)} "
            f"from axis {axis}"
        )
    return axis, tuple(operand)


def affine_view(p: Message, op: Op) -> tuple[Shape, Shape]:
    """The bottom as (outer, operand, inner) and the operand's broadcast shape in that view."""
    bottom = op.bottoms[0].shape
    axis, operand = affine_shape(p, [v.shape for v in op.bottoms])
    mid = count(operand)
    view = (count(bottom, 0, axis), mid, count(bottom, axis + len(operand)))
    return view, (1, mid, 1)


def emit_operand_grad(
    ctx: LowerContext, terms: Buffer, view: Shape, target: tuple[Buffer, bool] | None
) -> None:
    """An operand's gradient: ``terms`` summed over the outer and inner axes of ``view``."""
    if target is not None:
        out, accumulate = target
        ctx.emit(reduce(terms, out, view, [0, 2], accumulate=accumulate))


@register_layer("Scale", bottoms=(1, 2), in_place=True)
class Scale(SameShape):
    """y = x * s (+ b): s is the second bottom or a learned blob, b a learned blob."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        affine_shape(layer.scale_param, bottoms)
        return [bottoms[0]]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.scale_param
        _, shape = affine_shape(p, bottoms)
        blobs = []
        if len(bottoms) == 1:
            filler = p.filler
            if not p.HasField("filler"):
                filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
            blobs.append(ParamBlob(shape, filler, "scale"))
        if p.bias_term:
            blobs.append(ParamBlob(shape, p.bias_filler, "bias"))
        return blobs

    @staticmethod
    def _operands(op: Op, ctx: LowerContext) -> tuple[Buffer, Buffer]:
        """The scale's buffer and the bias's (or None)."""
        two = len(op.bottoms) == 2
        scale = ctx.x(1) if two else ctx.w(0)
        bias = ctx.w(0 if two else 1) if op.param.scale_param.bias_term else None
        return scale, bias

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view, operand = affine_view(op.param.scale_param, op)
        scale, bias = self._operands(op, ctx)
        inputs = {"x": ctx.x(0), "s": (scale, operand)}
        expr = "x * s"
        if bias is not None:
            inputs["b"] = (bias, operand)
            expr = "x * s + b"
        ctx.emit(pmap(view, [(ctx.y(0), expr)], inputs))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        view, operand = affine_view(op.param.scale_param, op)
        scale, bias = self._operands(op, ctx)
        two = len(op.bottoms) == 2
        inputs = {"x": ctx.x(0), "dy": ctx.dy(0), "s": (scale, operand)}
        if bias is not None:
            dbias = ctx.dw(0 if two else 1)
            if dbias is not None:
                ctx.emit(reduce(ctx.dy(0), dbias, view, [0, 2], accumulate=True))
        dscale = ctx.dx(1) if two else ctx.dw(0)
        if dscale is not None:
            target = dscale if two else (dscale, True)
            terms = ctx.workspace("dy*x", view)
            ctx.emit(pmap(view, [(terms, "dy * x")], inputs))
            emit_operand_grad(ctx, terms, view, target)
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            ctx.emit(pmap(view, [(dx, "dy * s")], inputs, accumulate=accumulate))


@register_layer("Bias", bottoms=(1, 2), in_place=True)
class Bias(SameShape):
    """y = x + b: b is the second bottom or a learned blob."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        affine_shape(layer.bias_param, bottoms)
        return [bottoms[0]]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        if len(bottoms) == 2:
            return []
        p = layer.bias_param
        _, shape = affine_shape(p, bottoms)
        return [ParamBlob(shape, p.filler, "bias")]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view, operand = affine_view(op.param.bias_param, op)
        bias = ctx.x(1) if len(op.bottoms) == 2 else ctx.w(0)
        ctx.emit(pmap(view, [(ctx.y(0), "x + b")], {"x": ctx.x(0), "b": (bias, operand)}))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        view, _ = affine_view(op.param.bias_param, op)
        if len(op.bottoms) == 2:
            emit_operand_grad(ctx, ctx.dy(0), view, ctx.dx(1))
        else:
            dbias = ctx.dw(0)
            emit_operand_grad(ctx, ctx.dy(0), view, (dbias, True) if dbias is not None else None)
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            ctx.emit(pmap(view, [(dx, "dy")], {"dy": ctx.dy(0)}, accumulate=accumulate))
