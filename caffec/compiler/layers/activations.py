"""Elementwise layers: the top has the bottom's shape, and may overwrite it.

Each is a ``map`` forward and a ``map`` backward; the expressions are C, over
the bottom ``x``, the top ``y`` and the top's gradient ``dy``.
"""

from __future__ import annotations

import math

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.layers.common import SameShape, count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import shape_text
from caffec.formats import caffe_pb2


class Elementwise(SameShape):
    """A layer that is one expression forward and one backward, with constants from its params.

    ``backward_lets`` are named temporaries the backward expression may use.
    """

    forward: str
    backward: str
    backward_lets: tuple[tuple[str, str], ...] = ()

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        return {}

    def backward_expr(self, layer: LayerParameter) -> str:
        return self.backward

    def lower(self, op: Op, ctx: LowerContext) -> None:
        ctx.emit(
            pmap(op.tops[0].shape, [(ctx.y(0), self.forward)], {"x": ctx.x(0)},
                 self.consts(op.param))
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        inputs = {"x": ctx.x(0), "y": ctx.y(0), "dy": ctx.dy(0)}
        ctx.emit(
            pmap(op.tops[0].shape, [(dx, self.backward_expr(op.param))], inputs,
                 self.consts(op.param), lets=self.backward_lets, accumulate=accumulate)
        )  # fmt: skip


@register_layer("ReLU", in_place=True)
class ReLU(Elementwise):
    forward = "x > 0 ? x : x * slope"
    backward = "x > 0 ? dy : dy * slope"

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        return {"slope": layer.relu_param.negative_slope}

    def backward_expr(self, layer: LayerParameter) -> str:
        """With a slope of 0 or more, y > 0 exactly where x > 0: the gradient then reads the
        top, so the bottom need not outlive the forward pass and the top can take its bytes."""
        return "y > 0 ? dy : dy * slope" if layer.relu_param.negative_slope >= 0 else self.backward


@register_layer("Sigmoid", in_place=True)
class Sigmoid(Elementwise):
    forward = "1 / (1 + exp(-x))"
    backward = "dy * y * (1 - y)"


@register_layer("TanH", in_place=True)
class TanH(Elementwise):
    forward = "tanh(x)"
    backward = "dy * (1 - y * y)"


@register_layer("AbsVal")
class AbsVal(Elementwise):
    forward = "fabs(x)"
    backward = "x > 0 ? dy : (x < 0 ? -dy : 0)"


@register_layer("Power", in_place=True)
class Power(Elementwise):
    forward = "pow(shift + scale * x, power)"
    backward = "dy * power * scale * pow(shift + scale * x, power - 1)"

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        p = layer.power_param
        return {"power": p.power, "scale": p.scale, "shift": p.shift}


@register_layer("ELU", in_place=True)
class ELU(Elementwise):
    forward = "x > 0 ? x : alpha * (exp(x) - 1)"
    backward = "x > 0 ? dy : dy * (y + alpha)"

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        return {"alpha": layer.elu_param.alpha}


def log_of_base(base: float, field: str) -> float:
    """The natural log of an Exp or Log layer's ``base`` (``field`` names it in errors); -1
    (the default) stands for e."""
    if base == -1:
        return 1.0
    if not (base > 0 and math.isfinite(base)):
        raise ShapeError(
            f"{field} {base:g} is not a positive number",
            hint="give a base above 0, or -1 (the default) for e",
        )
    return math.log(base)


@register_layer("Exp", in_place=True)
class Exp(Elementwise):
    """y = base ^ (shift + scale * x), computed as Caffe does: outer * exp(inner * x) with
    inner = ln(base) * scale and outer = base ^ shift. The gradient reads the top only."""

    forward = "outer * exp(inner * x)"
    backward = "dy * y * inner"

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        self.consts(layer)  # raises for a bad base or shift
        return [bottoms[0]]

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        p = layer.exp_param
        log_base = log_of_base(p.base, "exp_param.base")
        try:
            outer = (math.e if p.base == -1 else p.base) ** p.shift
        except OverflowError:
            raise ShapeError(
                f"base ^ shift ({p.base:g} ^ {p.shift:g}) is too large for a number",
                hint="use a smaller shift",
            ) from None
        return {"inner": log_base * p.scale, "outer": outer}


@register_layer("Log")
class Log(Elementwise):
    """y = log_base(shift + scale * x); the gradient reads the bottom, as Caffe's does."""

    forward = "to_base * log(scale * x + shift)"
    backward = "dy * scale * to_base / (scale * x + shift)"

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        if log_of_base(layer.log_param.base, "log_param.base") == 0:
            raise ShapeError("log_param.base 1 has no logarithms", hint="give a base other than 1")
        return [bottoms[0]]

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        p = layer.log_param
        return {
            "to_base": 1.0 / log_of_base(p.base, "log_param.base"),
            "scale": p.scale,
            "shift": p.shift,
        }


@register_layer("BNLL")
class BNLL(Elementwise):
    """y = log(1 + exp(x)) in Caffe's stable form; the gradient caps exp's argument at 50,
    as Caffe does (the slope is 1 there to double precision)."""

    forward = "x > 0 ? x + log(1 + exp(-x)) : log(1 + exp(x))"
    backward = "dy * e / (e + 1)"
    backward_lets = (("e", "exp(fmin(x, 50))"),)


@register_layer("Clip")
class Clip(Elementwise):
    """y = x clamped to [min, max] (NaN gives min, as Caffe's std::max and std::min do); the
    gradient passes where min <= x <= max, both ends included as in Caffe."""

    forward = "x > hi ? hi : (x > lo ? x : lo)"
    backward = "x >= lo && x <= hi ? dy : 0"

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise ShapeError(
                "Clip needs both clip_param.min and clip_param.max",
                hint="write clip_param { min: LOW max: HIGH }",
            )
        if p.min > p.max:
            raise ShapeError(
                f"clip_param.min {p.min:g} is above clip_param.max {p.max:g}",
                hint="swap them: min is the lower bound",
            )
        return [bottoms[0]]

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        return {"lo": layer.clip_param.min, "hi": layer.clip_param.max}


@register_layer("Swish")
class Swish(Elementwise):
    """y = x * sigmoid(beta * x). The gradient is Caffe's, beta * y + s * (1 - beta * y) with
    s the sigmoid, with y written as x * s so that it reads the bottom only."""

    forward = "x / (1 + exp(-beta * x))"
    backward = "dy * (s + beta * x * s * (1 - s))"
    backward_lets = (("s", "1 / (1 + exp(-beta * x))"),)

    def consts(self, layer: LayerParameter) -> dict[str, float]:
        return {"beta": layer.swish_param.beta}


@register_layer("ReLU6", in_place=True)
class ReLU6(Elementwise):
    """A fork layer (Caffe ports of MobileNet-v2): y = min(max(x, 0), 6). 0 < y < 6 exactly
    where 0 < x < 6, the only place a gradient passes, so the gradient reads the top."""

    forward = "x > 0 ? (x < 6 ? x : 6) : 0"
    backward = "y > 0 && y < 6 ? dy : 0"

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        slope = layer.relu_param.negative_slope
        if slope != 0:
            raise ShapeError(
                f"ReLU6 has no negative slope, got relu_param.negative_slope {slope:g}",
                hint="remove the relu_param (some forks read a slope; caffec's ReLU6 is "
                "min(max(x, 0), 6))",
            )
        return [bottoms[0]]


@register_layer("Threshold", in_place=True)
class Threshold(SameShape):
    """y = 1 where x > threshold, else 0. Caffe's backward is NOT_IMPLEMENTED: a net that
    needs a gradient through it is an error, and ``force_backward`` does not ask for one."""

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def lower(self, op: Op, ctx: LowerContext) -> None:
        threshold = {"threshold": op.param.threshold_param.threshold}
        ctx.emit(
            pmap(op.tops[0].shape, [(ctx.y(0), "x > threshold ? 1 : 0")], {"x": ctx.x(0)},
                 threshold)
        )  # fmt: skip


@register_layer("Dropout", in_place=True)
class Dropout(SameShape):
    """Caffe's dropout: in TRAIN keep each unit with probability 1 - ratio and scale it up."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        ratio = layer.dropout_param.dropout_ratio
        if not 0.0 <= ratio < 1.0:
            raise ShapeError(
                f"dropout_ratio {ratio} is outside [0, 1)",
                hint="the fraction of units dropped must be at least 0 and below 1",
            )
        return [bottoms[0]]

    @staticmethod
    def _consts(layer: LayerParameter) -> dict[str, float]:
        keep = 1.0 - layer.dropout_param.dropout_ratio
        return {"keep": keep, "scale": 1.0 / keep}

    def lower(self, op: Op, ctx: LowerContext) -> None:
        shape = op.tops[0].shape
        consts = self._consts(op.param)
        if ctx.phase == "TRAIN":
            mask = ctx.state("mask", shape)
            ctx.emit(
                pmap(shape, [(mask, "uniform() < keep ? 1 : 0"), (ctx.y(0), "x * m * scale")],
                     {"x": ctx.x(0)}, consts, lets=[("m", "uniform() < keep ? 1 : 0")],
                     counter=ctx.counter)
            )  # fmt: skip
        else:
            ctx.emit(pmap(shape, [(ctx.y(0), "x")], {"x": ctx.x(0)}))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        shape = op.tops[0].shape
        consts = self._consts(op.param)
        if ctx.phase == "TRAIN":
            inputs = {"dy": ctx.dy(0), "m": ctx.state("mask", shape)}
            expr = "dy * m * scale"
        else:
            inputs, expr = {"dy": ctx.dy(0)}, "dy"
        ctx.emit(pmap(shape, [(dx, expr)], inputs, consts, accumulate=accumulate))


@register_layer("PReLU", in_place=True)
class PReLU(SameShape):
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        if len(bottoms[0]) < 2:
            raise ShapeError(
                f"PReLU needs a bottom of at least 2 axes, got {shape_text(bottoms[0])}"
            )
        return [bottoms[0]]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.prelu_param
        shape = (1,) if p.channel_shared else (bottoms[0][1],)
        filler = p.filler
        if not p.HasField("filler"):
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        return [ParamBlob(shape, filler, "slope")]

    @staticmethod
    def _view(op: Op) -> tuple[Shape, Shape]:
        """The bottom as (N, C, rest) and the slope's broadcast shape in that view."""
        shape = op.bottoms[0].shape
        view = (shape[0], shape[1], count(shape, 2))
        shared = op.param.prelu_param.channel_shared
        return view, ((1, 1, 1) if shared else (1, view[1], 1))

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view, slope = self._view(op)
        ctx.emit(
            pmap(view, [(ctx.y(0), "x > 0 ? x : x * a")], {"x": ctx.x(0), "a": (ctx.w(0), slope)})
        )

    def grad(self, op: Op, ctx: LowerContext) -> None:
        view, slope = self._view(op)
        inputs = {"x": ctx.x(0), "dy": ctx.dy(0), "a": (ctx.w(0), slope)}
        dslope = ctx.dw(0)
        if dslope is not None:
            terms = ctx.workspace("slope terms", view)
            axes = [0, 1, 2] if slope == (1, 1, 1) else [0, 2]
            ctx.emit(
                pmap(view, [(terms, "x > 0 ? 0 : x * dy")], inputs),
                reduce(terms, dslope, view, axes, accumulate=True),
            )
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            ctx.emit(pmap(view, [(dx, "x > 0 ? dy : dy * a")], inputs, accumulate=accumulate))
