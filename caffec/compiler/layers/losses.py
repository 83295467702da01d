"""Softmax, the loss layers, and Accuracy."""

from __future__ import annotations

from caffec.compiler.ir import Op, Shape
from caffec.compiler.kernels import Buffer
from caffec.compiler.layers.common import SameShape, canonical_axis, count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import shape_text

SCALAR: Shape = ()


def same_batch(bottoms: list[Shape]) -> None:
    """Caffe's LossLayer check: data and label agree on the first axis."""
    if bottoms[0][:1] != bottoms[1][:1]:
        raise ShapeError(
            f"the data {shape_text(bottoms[0])} and the label {shape_text(bottoms[1])} "
            "must have the same first (batch) axis"
        )


def labels_per_prediction(scores: Shape, labels: Shape, axis: int) -> None:
    """One label per prediction: per position of every axis but the class axis."""
    expected = count(scores, 0, axis) * count(scores, axis + 1)
    if count(labels) != expected:
        raise ShapeError(
            f"{count(labels)} labels for predictions of shape {shape_text(scores)}: with the "
            f"class axis {axis} there must be one label per prediction, {expected} in all"
        )


def class_view(shape: Shape, axis_field: int) -> Shape:
    """A blob as (outer, classes, inner) around its class axis."""
    axis = canonical_axis(axis_field, len(shape))
    return (count(shape, 0, axis), shape[axis], count(shape, axis + 1))


def emit_softmax(ctx: LowerContext, x: Buffer, prob: Buffer, view: Shape, name: str) -> None:
    """prob = exp(x - max) / sum, along the middle axis of ``view``."""
    outer, _, inner = view
    row = (outer, 1, inner)
    peak = ctx.workspace(f"{name} max", (outer, inner))
    total = ctx.workspace(f"{name} sum", (outer, inner))
    ctx.emit(
        reduce(x, peak, view, [1], op="max"),
        pmap(view, [(prob, "exp(x - m)")], {"x": x, "m": (peak, row)}),
        reduce(prob, total, view, [1]),
        pmap(view, [(prob, "e / s")], {"e": prob, "s": (total, row)}),
    )


@register_layer("Softmax")
class Softmax(SameShape):
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        canonical_axis(layer.softmax_param.axis, len(bottoms[0]))
        return [bottoms[0]]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view = class_view(op.bottoms[0].shape, op.param.softmax_param.axis)
        emit_softmax(ctx, ctx.x(0), ctx.y(0), view, "softmax")

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        view = class_view(op.bottoms[0].shape, op.param.softmax_param.axis)
        outer, _, inner = view
        products = ctx.workspace("dy*y", view)
        dots = ctx.workspace("sum dy*y", (outer, inner))
        inputs = {"dy": ctx.dy(0), "y": ctx.y(0), "d": (dots, (outer, 1, inner))}
        ctx.emit(
            pmap(view, [(products, "dy * y")], inputs),
            reduce(products, dots, view, [1]),
            pmap(view, [(dx, "(dy - d) * y")], inputs, accumulate=accumulate),
        )


def normalization(layer: LayerParameter) -> str:
    """Caffe's loss normalization, with the legacy ``normalize`` flag honoured."""
    p = layer.loss_param
    if not p.HasField("normalization") and p.HasField("normalize"):
        return "VALID" if p.normalize else "BATCH_SIZE"
    return p.NormalizationMode.Name(p.normalization)


def ignore_label(layer: LayerParameter) -> float | None:
    p = layer.loss_param
    return float(p.ignore_label) if p.HasField("ignore_label") else None


def emit_normalized_sum(
    ctx: LowerContext, terms: Buffer, valid: Buffer | None, loss: Buffer, view: Shape, mode: str
) -> Buffer:
    """loss = sum(terms) / Caffe's normalizer; returns the 1-element normalizer buffer."""
    outer, _, inner = view
    norm = ctx.state("normalizer", (1,))
    if mode == "VALID":
        ctx.emit(reduce(valid, norm, (outer * inner,), [0]))
        ctx.emit(pmap((1,), [(norm, "fmax(1, n)")], {"n": norm}))
    else:
        fixed = {"FULL": outer * inner, "BATCH_SIZE": outer, "NONE": 1}[mode]
        ctx.emit(pmap((1,), [(norm, "v")], consts={"v": max(1.0, fixed)}))
    ctx.emit(
        reduce(terms, loss, (outer * inner,), [0]),
        pmap((1,), [(loss, "l / n")], {"l": loss, "n": norm}),
    )
    return norm


def label_index(view: Shape) -> str:
    """The index of item i's score for class ``l`` in an (outer, classes, inner) blob."""
    _, classes, inner = view
    if inner == 1:
        return f"i * {classes} + (long)l"
    return f"(i / {inner}) * {classes * inner} + (long)l * {inner} + i % {inner}"


@register_layer("SoftmaxWithLoss", bottoms=2, tops=(1, 2), loss=True)
class SoftmaxWithLoss:
    """-log(softmax(x)[label]), averaged by Caffe's normalization; labels may be ignored."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        same_batch(bottoms)
        axis = canonical_axis(layer.softmax_param.axis, len(bottoms[0]))
        labels_per_prediction(bottoms[0], bottoms[1], axis)
        return [SCALAR, bottoms[0]][: len(layer.top)]

    def _prob(self, op: Op, ctx: LowerContext) -> Buffer:
        return ctx.y(1) if len(op.tops) == 2 else ctx.state("prob", op.bottoms[0].shape)

    def _consts(self, op: Op, view: Shape) -> dict[str, float]:
        ignore = ignore_label(op.param)
        # with no ignore_label, no label equals the sentinel (labels are class indices)
        return {"ignore": -1.5 if ignore is None else ignore, "classes": view[1]}

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view = class_view(op.bottoms[0].shape, op.param.softmax_param.axis)
        outer, classes, inner = view
        prob = self._prob(op, ctx)
        ctx.check_labels(ctx.x(1), classes, ignore_label(op.param))
        emit_softmax(ctx, ctx.x(0), prob, view, "softmax")
        terms = ctx.workspace("log terms", (outer * inner,))
        valid = ctx.workspace("valid", (outer * inner,))
        at = label_index(view)
        # out-of-range labels give NaN (and read a clamped index): never memory past the blob
        safe = f"(l >= 0 && l < {classes}) ? {at} : 0"
        ctx.emit(
            pmap(
                (outer * inner,),
                [(terms, "l == ignore ? 0 : (l >= 0 && l < classes ? -log(fmax(p, REAL_MIN)) "
                         ": REAL_NAN)"),
                 (valid, "l == ignore ? 0 : 1")],
                {"l": ctx.x(1), "p": (prob, safe)},
                self._consts(op, view),
            )
        )  # fmt: skip
        emit_normalized_sum(ctx, terms, valid, ctx.y(0), view, normalization(op.param))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        view = class_view(op.bottoms[0].shape, op.param.softmax_param.axis)
        outer, _, inner = view
        inputs = {
            "p": self._prob(op, ctx),
            "l": (ctx.x(1), (outer, 1, inner)),
            "dy": (ctx.dy(0), (1, 1, 1)),
            "n": (ctx.state("normalizer", (1,)), (1, 1, 1)),
        }
        expr = "l == ignore ? 0 : (p - (c == (long)l ? 1 : 0)) * dy / n"
        ctx.emit(pmap(view, [(dx, expr)], inputs, self._consts(op, view), coords={"c": 1},
                      accumulate=accumulate))  # fmt: skip


def loss_seed(ctx: LowerContext, rank: int) -> tuple[Buffer, Shape]:
    """The loss top's gradient (its loss_weight) as a map input of a rank-``rank`` view."""
    return (ctx.dy(0), (1,) * rank)


@register_layer("SigmoidCrossEntropyLoss", bottoms=2, loss=True)
class SigmoidCrossEntropyLoss:
    """Caffe's stable logistic loss: max(x, 0) - x*t + log(1 + exp(-|x|)) per element.

    Elements whose int(target) is ``ignore_label`` do not count; the sum is
    divided by Caffe's normalizer, whose default here is BATCH_SIZE (not
    VALID as for SoftmaxWithLoss).
    """

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        same_batch(bottoms)
        if count(bottoms[0]) != count(bottoms[1]):
            raise ShapeError(
                f"the scores {shape_text(bottoms[0])} and the targets {shape_text(bottoms[1])} "
                "must have the same number of elements"
            )
        return [SCALAR]

    @staticmethod
    def _mode(layer: LayerParameter) -> str:
        p = layer.loss_param
        if p.HasField("normalization"):
            return p.NormalizationMode.Name(p.normalization)
        if p.HasField("normalize"):
            return "VALID" if p.normalize else "BATCH_SIZE"
        return "BATCH_SIZE"

    @staticmethod
    def _ignored(op: Op, expr: str) -> tuple[str, dict[str, float]]:
        """``expr``, or 0 where the target is the ignore label."""
        ignore = ignore_label(op.param)
        if ignore is None:
            return expr, {}
        return f"(long)t == ignore ? 0 : ({expr})", {"ignore": ignore}

    def lower(self, op: Op, ctx: LowerContext) -> None:
        shape = op.bottoms[0].shape
        total = count(shape)
        terms = ctx.workspace("log terms", (total,))
        valid = ctx.workspace("valid", (total,))
        loss, consts = self._ignored(op, "(x >= 0 ? x : 0) - x * t + log(1 + exp(-fabs(x)))")
        counted, _ = self._ignored(op, "1")
        ctx.emit(
            pmap((total,), [(terms, loss), (valid, counted)], {"x": ctx.x(0), "t": ctx.x(1)},
                 consts)
        )  # fmt: skip
        view = (shape[0], 1, total // shape[0])
        emit_normalized_sum(ctx, terms, valid, ctx.y(0), view, self._mode(op.param))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)  # the targets get no gradient (Caffe refuses to compute one)
        if target is None:
            return
        dx, accumulate = target
        total = count(op.bottoms[0].shape)
        inputs = {
            "x": ctx.x(0),
            "t": ctx.x(1),
            "dy": loss_seed(ctx, 1),
            "n": (ctx.state("normalizer", (1,)), (1,)),
        }
        expr, consts = self._ignored(op, "(1 / (1 + exp(-x)) - t) * dy / n")
        ctx.emit(pmap((total,), [(dx, expr)], inputs, consts, accumulate=accumulate))


@register_layer("EuclideanLoss", bottoms=2, loss=True)
class EuclideanLoss:
    """sum((a - b)^2) / (2 N); both bottoms get a gradient (b's with the sign flipped)."""

    def allow_force_backward(self, bottom: int) -> bool:
        return True  # both bottoms are predictions

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        same_batch(bottoms)
        if count(bottoms[0], 1) != count(bottoms[1], 1):
            raise ShapeError(
                f"the inputs {shape_text(bottoms[0])} and {shape_text(bottoms[1])} must have the "
                "same number of elements per item"
            )
        return [SCALAR]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        shape = op.bottoms[0].shape
        total = count(shape)
        squares = ctx.workspace("squared differences", (total,))
        ctx.emit(
            pmap((total,), [(squares, "(a - b) * (a - b)")], {"a": ctx.x(0), "b": ctx.x(1)}),
            reduce(squares, ctx.y(0), (total,), [0], scale=0.5 / shape[0]),
        )

    def grad(self, op: Op, ctx: LowerContext) -> None:
        shape = op.bottoms[0].shape
        total = count(shape)
        inputs = {"a": ctx.x(0), "b": ctx.x(1), "dy": loss_seed(ctx, 1)}
        for i, sign in ((0, 1.0), (1, -1.0)):
            target = ctx.dx(i)
            if target is None:
                continue
            dx, accumulate = target
            ctx.emit(pmap((total,), [(dx, "sign * dy * (a - b)")], inputs,
                          {"sign": sign / shape[0]}, accumulate=accumulate))  # fmt: skip


@register_layer("ContrastiveLoss", bottoms=3, loss=True)
class ContrastiveLoss:
    """Over pairs (a_i, b_i) with d^2 = ||a_i - b_i||^2: similar pairs (int(sim) != 0) add
    d^2, dissimilar ones max(margin - d, 0)^2 (``legacy_version``: max(margin - d^2, 0));
    the total is divided by 2N. Caffe's backward, kept as it is: for a dissimilar pair it
    divides by d + 1e-4, not d."""

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 2  # not the similarity label

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        same_batch(bottoms)
        a, b, similar = bottoms
        if a != b or count(a, 2) != 1:
            raise ShapeError(
                "the two feature bottoms must be N x C (x 1 x 1) and equal, got "
                f"{shape_text(a)} and {shape_text(b)}"
            )
        if count(similar, 1) != 1 or similar[:1] != a[:1]:
            raise ShapeError(
                f"the similarity bottom must hold one value per pair, got {shape_text(similar)}"
            )
        return [SCALAR]

    @staticmethod
    def _view(op: Op) -> Shape:
        shape = op.bottoms[0].shape
        return (shape[0], count(shape, 1))

    def lower(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.contrastive_loss_param
        num, channels = self._view(op)
        squares = ctx.workspace("squared differences", (num, channels))
        dist2 = ctx.state("squared distances", (num,))
        terms = ctx.workspace("pair terms", (num,))
        if p.legacy_version:
            dissimilar = "fmax(margin - d2, 0)"
        else:
            dissimilar = "pow(fmax(margin - sqrt(d2), 0), 2)"
        ctx.emit(
            pmap((num, channels), [(squares, "(a - b) * (a - b)")], {"a": ctx.x(0), "b": ctx.x(1)}),
            reduce(squares, dist2, (num, channels), [1]),
            pmap((num,), [(terms, f"(long)s != 0 ? d2 : {dissimilar}")],
                 {"s": ctx.x(2), "d2": dist2}, {"margin": p.margin}),
            reduce(terms, ctx.y(0), (num,), [0], scale=0.5 / num),
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.contrastive_loss_param
        num, channels = self._view(op)
        row = (num, 1)
        inputs = {
            "a": ctx.x(0),
            "b": ctx.x(1),
            "s": (ctx.x(2), row),
            "d2": (ctx.state("squared distances", (num,)), row),
            "dy": loss_seed(ctx, 2),
        }
        if p.legacy_version:
            lets = [("mdist", "margin - d2"), ("beta", "-1")]
        else:
            lets = [("dist", "sqrt(d2)"), ("mdist", "margin - dist"),
                    ("beta", "-mdist / (dist + tiny)")]  # fmt: skip
        expr = "alpha * dy * (a - b) * ((long)s != 0 ? 1 : (mdist > 0 ? beta : 0))"
        for i, sign in ((0, 1.0), (1, -1.0)):  # the similarity bottom gets no gradient
            target = ctx.dx(i)
            if target is None:
                continue
            dx, accumulate = target
            consts = {"margin": p.margin, "alpha": sign / num, "tiny": 1e-4}
            ctx.emit(pmap((num, channels), [(dx, expr)], inputs, consts, lets=lets,
                          accumulate=accumulate))  # fmt: skip


@register_layer("Accuracy", bottoms=2, tops=(1, 2))
class Accuracy:
    """The fraction of items whose label is among the top_k scores (ties count against it)."""

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # no backward pass

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.accuracy_param
        scores, labels = bottoms
        axis = canonical_axis(p.axis, len(scores))
        classes = scores[axis]
        if p.top_k > classes:
            raise ShapeError(f"top_k {p.top_k} exceeds the {classes} classes")
        labels_per_prediction(scores, labels, axis)
        return [SCALAR, (classes,)][: len(layer.top)]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.accuracy_param
        view = class_view(op.bottoms[0].shape, p.axis)
        outer, classes, inner = view
        row = (outer, 1, inner)
        ignore = float(p.ignore_label) if p.HasField("ignore_label") else -1.5
        consts = {"ignore": ignore, "top_k": p.top_k, "classes": classes}
        ctx.check_labels(ctx.x(1), classes, ignore if p.HasField("ignore_label") else None)
        at = label_index(view)
        truth = ctx.workspace("score of the label", (outer, inner))
        better = ctx.workspace("at least as good", view)
        rank = ctx.workspace("rank", (outer, inner))
        correct = ctx.workspace("correct", (outer, inner))
        valid = ctx.workspace("valid", (outer, inner))
        ctx.emit(
            pmap((outer, inner), [(truth, "l >= 0 && l < classes ? s : REAL_NAN")],
                 {"l": ctx.x(1), "s": (ctx.x(0), f"(l >= 0 && l < {classes}) ? {at} : 0")},
                 consts),
            pmap(view, [(better, "x >= t ? 1 : 0")], {"x": ctx.x(0), "t": (truth, row)}),
            reduce(better, rank, view, [1]),
            pmap((outer, inner), [(correct, "l == ignore ? 0 : (r - 1 < top_k ? 1 : 0)"),
                                  (valid, "l == ignore ? 0 : 1")],
                 {"l": ctx.x(1), "r": rank}, consts),
        )  # fmt: skip
        count_all = ctx.workspace("valid count", (1,))
        ctx.emit(
            reduce(valid, count_all, (outer * inner,), [0]),
            reduce(correct, ctx.y(0), (outer * inner,), [0]),
            pmap((1,), [(ctx.y(0), "n == 0 ? 0 : a / n")], {"a": ctx.y(0), "n": count_all}),
        )
        if len(op.tops) == 2:  # per class: correct / count among items of that class
            per_class = (outer, classes, inner)
            hits = ctx.workspace("class hits", per_class)
            seen = ctx.workspace("class counts", per_class)
            totals = ctx.workspace("class totals", (classes,))
            labels = {"l": (ctx.x(1), row), "ok": (correct, row)}
            ctx.emit(
                pmap(per_class, [(hits, "l != ignore && c == (long)l ? ok : 0"),
                                 (seen, "l != ignore && c == (long)l ? 1 : 0")],
                     labels, consts, coords={"c": 1}),
                reduce(hits, ctx.y(1), per_class, [0, 2]),
                reduce(seen, totals, per_class, [0, 2]),
                pmap((classes,), [(ctx.y(1), "n == 0 ? 0 : a / n")], {"a": ctx.y(1), "n": totals}),
            )  # fmt: skip
