"""The losses over class scores or probabilities that read a class label per prediction:
MultinomialLogisticLoss, HingeLoss and InfogainLoss (SoftmaxWithLoss is in ``losses``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from caffec.compiler.ir import Op, Shape
from caffec.compiler.kernels import Buffer
from caffec.compiler.layers.common import canonical_axis, count
from caffec.compiler.layers.losses import (
    SCALAR,
    class_view,
    emit_normalized_sum,
    emit_softmax,
    ignore_label,
    label_index,
    labels_per_prediction,
    loss_seed,
    same_batch,
)
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import UserError, shape_text
from caffec.formats.binaryproto import read_blobproto

# Caffe's floor under a probability before its log (kLOG_THRESHOLD), which its gradients share.
LOG_THRESHOLD = 1e-20
# An expression that is true where the label ``l`` names one of ``classes`` classes.
IN_RANGE = "(l >= 0 && l < classes)"


def items(shape: Shape) -> tuple[int, int]:
    """A blob as Caffe's (num, dim): its first axis, and the elements per item."""
    return shape[0], count(shape, 1)


def one_label_per_item(bottoms: list[Shape]) -> None:
    """Caffe's check for the layers that read ``label[i]`` for item i: one value per item."""
    same_batch(bottoms)
    if not bottoms[0]:
        raise ShapeError("the predictions need a batch axis, got a scalar")
    if count(bottoms[1], 1) != 1:
        raise ShapeError(
            f"the labels {shape_text(bottoms[1])} must hold one class index per item "
            f"of the predictions {shape_text(bottoms[0])}",
            hint="give labels of shape (num,) or (num, 1, 1, 1)",
        )


def gathered_at_label(view: Shape) -> str:
    """The gather index of item i's value at its label in an (outer, classes, inner) blob;
    a label out of range reads element 0 (the loss is NaN there, and the runtime names it)."""
    return f"(l >= 0 && l < {view[1]}) ? {label_index(view)} : 0"


@register_layer("MultinomialLogisticLoss", bottoms=2, loss=True)
class MultinomialLogisticLoss:
    """-log(max(p[label], 1e-20)) per item, over the batch size: the bottom holds
    probabilities (a Softmax's top). Caffe's layer reads no loss_param: it always divides
    by num, and its gradient, -1 / (num * max(p, 1e-20)) at the label, ignores the floor."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        one_label_per_item(bottoms)
        return [SCALAR]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        num, dim = items(op.bottoms[0].shape)
        ctx.check_labels(ctx.x(1), dim, None)
        terms = ctx.workspace("log terms", (num,))
        ctx.emit(
            pmap((num,), [(terms, f"{IN_RANGE} ? -log(fmax(p, threshold)) : REAL_NAN")],
                 {"l": ctx.x(1), "p": (ctx.x(0), gathered_at_label((num, dim, 1)))},
                 {"threshold": LOG_THRESHOLD, "classes": dim}),
            reduce(terms, ctx.y(0), (num,), [0], scale=1 / num),
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)  # the labels get no gradient
        if target is None:
            return
        dx, accumulate = target
        num, dim = items(op.bottoms[0].shape)
        inputs = {"p": ctx.x(0), "l": (ctx.x(1), (num, 1)), "dy": loss_seed(ctx, 2)}
        ctx.emit(pmap((num, dim), [(dx, "c == (long)l ? -dy / (num * fmax(p, threshold)) : 0")],
                      inputs, {"num": num, "threshold": LOG_THRESHOLD}, coords={"c": 1},
                      accumulate=accumulate))  # fmt: skip


@register_layer("HingeLoss", bottoms=2, loss=True)
class HingeLoss:
    """The one-vs-all hinge loss: with s = -x at the item's label and x elsewhere, the sum of
    max(0, 1 + s) (``norm: L1``) or of its squares (L2), over the batch size."""

    # t: each score's margin term, as Caffe computes it in its forward pass
    MARGIN = [("s", "c == (long)l ? -x : x"), ("t", "fmax(0, 1 + s)")]

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        one_label_per_item(bottoms)
        return [SCALAR]

    @staticmethod
    def _inputs(op: Op, ctx: LowerContext) -> tuple[Shape, dict[str, Any]]:
        num, dim = items(op.bottoms[0].shape)
        return (num, dim), {"x": ctx.x(0), "l": (ctx.x(1), (num, 1))}

    @staticmethod
    def _squared(op: Op) -> bool:
        p = op.param.hinge_loss_param
        return p.norm == p.L2

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view, inputs = self._inputs(op, ctx)
        ctx.check_labels(ctx.x(1), view[1], None)
        terms = ctx.workspace("margins", view)
        ctx.emit(
            pmap(view, [(terms, "t")], inputs, coords={"c": 1}, lets=self.MARGIN),
            reduce(terms, ctx.y(0), (count(view),), [0], op="sumsq" if self._squared(op) else "sum",
                   scale=1 / view[0]),
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)  # the labels get no gradient
        if target is None:
            return
        dx, accumulate = target
        view, inputs = self._inputs(op, ctx)
        inputs["dy"] = loss_seed(ctx, 2)
        sign = "(c == (long)l ? -1 : 1)"
        if self._squared(op):  # d(t^2)/dx = 2 t ds/dx
            expr, scale = f"scale * dy * t * {sign}", 2 / view[0]
        else:  # Caffe's sign(t): no gradient where the margin is met
            expr, scale = f"t > 0 ? scale * dy * {sign} : 0", 1 / view[0]
        ctx.emit(pmap(view, [(dx, expr)], inputs, {"scale": scale}, coords={"c": 1},
                      lets=self.MARGIN, accumulate=accumulate))  # fmt: skip


@register_layer("InfogainLoss", bottoms=(2, 3), tops=(1, 2), loss=True)
class InfogainLoss:
    """SoftmaxWithLoss generalised by an infogain matrix H (BVLC master's layer, which takes
    scores and applies the softmax itself): -sum_k H[label, k] log(max(p_k, 1e-20)) per
    prediction, divided by Caffe's normalizer (VALID by default; ``ignore_label`` skips).
    H (classes x classes) is the third bottom, or the BlobProto file
    ``infogain_loss_param.source``, read where Caffe reads it: relative to the working
    directory, when the net is made. Neither the labels nor H get a gradient."""

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        same_batch(bottoms)
        if layer.loss_param.HasField("normalize"):
            raise ShapeError(
                "InfogainLoss does not take the deprecated loss_param.normalize",
                hint="write normalization: VALID (for normalize: true) or BATCH_SIZE (false)",
            )
        axis = canonical_axis(layer.infogain_loss_param.axis, len(bottoms[0]))
        labels_per_prediction(bottoms[0], bottoms[1], axis)
        classes = bottoms[0][axis]
        if len(bottoms) == 3:
            given, where = count(bottoms[2]), f"the third bottom {shape_text(bottoms[2])}"
        else:
            source = self._source(layer)
            given, where = read_matrix(source).size, f"the file '{source}'"
        if given != classes * classes:
            raise ShapeError(
                f"the infogain matrix must be {classes} x {classes} for {classes} classes, but "
                f"{where} holds {given} values",
                hint="H has a row and a column per class of the predictions' class axis",
            )
        return [SCALAR, bottoms[0]][: len(layer.top)]

    @staticmethod
    def _source(layer: LayerParameter) -> str:
        p = layer.infogain_loss_param
        if not p.source:
            raise ShapeError(
                "InfogainLoss needs its infogain matrix H: a third bottom, or a BlobProto "
                "file in infogain_loss_param.source",
                hint='add source: "infogain.binaryproto", or the matrix as a third bottom',
            )
        return p.source

    @staticmethod
    def _view(op: Op) -> Shape:
        return class_view(op.bottoms[0].shape, op.param.infogain_loss_param.axis)

    def _prob(self, op: Op, ctx: LowerContext) -> Buffer:
        return ctx.y(1) if len(op.tops) == 2 else ctx.state("prob", op.bottoms[0].shape)

    def _matrix(self, op: Op, ctx: LowerContext) -> Buffer:
        """H: the third bottom, or a buffer the runtime fills from the file once."""
        if len(op.bottoms) == 3:
            return ctx.x(2)
        classes = self._view(op)[1]
        return ctx.state("infogain matrix", (classes, classes))

    def _inputs(self, op: Op, ctx: LowerContext) -> dict[str, Any]:
        """Each prediction's label, probability and H[label, class], over the class view."""
        outer, classes, inner = self._view(op)
        row = f"(l >= 0 && l < {classes}) ? (long)l * {classes} + c : 0"
        return {"l": (ctx.x(1), (outer, 1, inner)), "p": self._prob(op, ctx),
                "h": (self._matrix(op, ctx), row)}  # fmt: skip

    def _consts(self, op: Op) -> dict[str, float]:
        ignore = ignore_label(op.param)
        # with no ignore_label, no label equals the sentinel (labels are class indices)
        return {"ignore": -1.5 if ignore is None else ignore, "classes": self._view(op)[1],
                "threshold": LOG_THRESHOLD}  # fmt: skip

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view = self._view(op)
        outer, classes, inner = view
        if len(op.bottoms) == 2:
            ctx.fill_each_run(self._matrix(op, ctx), {"blobproto": self._source(op.param)},
                              refill=False)  # fmt: skip
        ctx.check_labels(ctx.x(1), classes, ignore_label(op.param))
        emit_softmax(ctx, ctx.x(0), self._prob(op, ctx), view, "softmax")
        terms = ctx.workspace("weighted log terms", view)
        sums = ctx.workspace("prediction terms", (outer * inner,))
        valid = ctx.workspace("valid", (outer * inner,))
        term = f"l == ignore ? 0 : ({IN_RANGE} ? -h * log(fmax(p, threshold)) : REAL_NAN)"
        ctx.emit(
            pmap(view, [(terms, term)], self._inputs(op, ctx), self._consts(op), coords={"c": 1}),
            reduce(terms, sums, view, [1]),
            pmap((outer * inner,), [(valid, "l == ignore ? 0 : 1")], {"l": ctx.x(1)},
                 self._consts(op)),
        )  # fmt: skip
        mode = op.param.loss_param.NormalizationMode.Name(op.param.loss_param.normalization)
        emit_normalized_sum(ctx, sums, valid, ctx.y(0), view, mode)

    def grad(self, op: Op, ctx: LowerContext) -> None:
        """d/dx_k = p_k * sum_j H[label, j] - H[label, k], times dy / normalizer."""
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        view = self._view(op)
        classes = view[1]
        row_sums = ctx.workspace("row sums of H", (classes,))
        inputs = self._inputs(op, ctx) | {
            "r": (row_sums, f"(l >= 0 && l < {classes}) ? (long)l : 0"),
            "dy": loss_seed(ctx, 3),
            "n": (ctx.state("normalizer", (1,)), (1, 1, 1)),
        }
        ctx.emit(
            reduce(self._matrix(op, ctx), row_sums, (classes, classes), [1]),
            pmap(view, [(dx, "l == ignore ? 0 : (p * r - h) * dy / n")], inputs,
                 self._consts(op), coords={"c": 1}, accumulate=accumulate),
        )  # fmt: skip


def read_matrix(source: str) -> np.ndarray:
    """The values of the infogain matrix file, or a ShapeError naming it."""
    if not Path(source).is_file():
        raise ShapeError(
            f"the infogain matrix file '{source}' does not exist",
            hint="Caffe opens infogain_loss_param.source relative to the working directory",
        )
    try:
        return read_blobproto(source).data
    except UserError as err:
        raise ShapeError(f"cannot read the infogain matrix: {err.message}", hint=err.hint) from None
