"""Shape arithmetic shared by the layer rules."""

from __future__ import annotations

import math
from collections.abc import Sequence

from caffec.compiler.ir import Shape
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError
from caffec.errors import shape_text


def canonical_axis(axis: int, ndim: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise ShapeError(
            f"{what} {axis} is out of range for a {ndim}-D bottom",
            hint=f"use an axis from {-ndim} to {ndim - 1}",
        )
    return axis % ndim if ndim else 0


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """The number of elements in ``shape[start:end]``."""
    return math.prod(shape[start:end])


def require_same_shapes(bottoms: list[Shape], what: str = "bottoms") -> None:
    """All bottoms must have one shape (Eltwise, Convolution's several bottoms...)."""
    for shape in bottoms[1:]:
        if shape != bottoms[0]:
            raise ShapeError(
                f"all {what} must have the same shape, got "
                + ", ".join(shape_text(s) for s in bottoms)
            )


def require_axes(shape: Shape, ndim: int, layer_kind: str) -> None:
    if len(shape) != ndim:
        raise ShapeError(
            f"{layer_kind} needs a {ndim}-D bottom (num, channels, height, width), got "
            f"{shape_text(shape)}"
        )


class SameShape:
    """Rules of layers whose top has the shape of their bottom."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        return [bottoms[0]]
