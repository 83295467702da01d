"""Softmax, the loss layers, and Accuracy."""

from __future__ import annotations

from typing import Any

from caffec.compiler.ir import Shape
from caffec.compiler.layers.common import SameShape, canonical_axis, count, fmt
from caffec.compiler.registry import ShapeError, register_layer

SCALAR: Shape = ()


def _same_batch(bottoms: list[Shape]) -> None:
    """Caffe's LossLayer check: data and label agree on the first axis."""
    if bottoms[0][:1] != bottoms[1][:1]:
        raise ShapeError(
            f"the data {fmt(bottoms[0])} and the label {fmt(bottoms[1])} "
            "must have the same first (batch) axis"
        )


def _labels_per_prediction(scores: Shape, labels: Shape, axis: int) -> None:
    expected = count(scores, 0, axis) * count(scores, axis + 1)
    if count(labels) != expected:
        raise ShapeError(
            f"{count(labels)} labels for predictions of shape {fmt(scores)}: with the class axis "
            f"{axis} there must be one label per prediction, {expected} in all"
        )


@register_layer("Softmax")
class Softmax(SameShape):
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        canonical_axis(layer.softmax_param.axis, len(bottoms[0]))
        return [bottoms[0]]


@register_layer("SoftmaxWithLoss", bottoms=2, tops=(1, 2), loss=True)
class SoftmaxWithLoss:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        _same_batch(bottoms)
        axis = canonical_axis(layer.softmax_param.axis, len(bottoms[0]))
        _labels_per_prediction(bottoms[0], bottoms[1], axis)
        return [SCALAR, bottoms[0]][: len(layer.top)]


@register_layer("SigmoidCrossEntropyLoss", bottoms=2, tops=(1, 2), loss=True)
class SigmoidCrossEntropyLoss:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        _same_batch(bottoms)
        if count(bottoms[0]) != count(bottoms[1]):
            raise ShapeError(
                f"the scores {fmt(bottoms[0])} and the targets {fmt(bottoms[1])} "
                "must have the same number of elements"
            )
        return [SCALAR, bottoms[0]][: len(layer.top)]


@register_layer("EuclideanLoss", bottoms=2, loss=True)
class EuclideanLoss:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        _same_batch(bottoms)
        if count(bottoms[0], 1) != count(bottoms[1], 1):
            raise ShapeError(
                f"the inputs {fmt(bottoms[0])} and {fmt(bottoms[1])} must have the same "
                "number of elements per item"
            )
        return [SCALAR]


@register_layer("ContrastiveLoss", bottoms=3, loss=True)
class ContrastiveLoss:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        _same_batch(bottoms)
        a, b, similar = bottoms
        if a != b or count(a, 2) != 1:
            raise ShapeError(
                f"the two feature bottoms must be N x C (x 1 x 1) and equal, got {fmt(a)} and "
                f"{fmt(b)}"
            )
        if count(similar, 1) != 1 or similar[:1] != a[:1]:
            raise ShapeError(
                f"the similarity bottom must hold one value per pair, got {fmt(similar)}"
            )
        return [SCALAR]


@register_layer("Accuracy", bottoms=2, tops=(1, 2))
class Accuracy:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.accuracy_param
        scores, labels = bottoms
        axis = canonical_axis(p.axis, len(scores))
        classes = scores[axis]
        if p.top_k > classes:
            raise ShapeError(f"top_k {p.top_k} exceeds the {classes} classes")
        _labels_per_prediction(scores, labels, axis)
        return [SCALAR, (classes,)][: len(layer.top)]
