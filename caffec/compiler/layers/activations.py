"""Elementwise layers: the top has the bottom's shape, and may overwrite it."""

from __future__ import annotations

from typing import Any

from caffec.compiler.ir import ParamBlob, Shape
from caffec.compiler.layers.common import SameShape, fmt
from caffec.compiler.registry import ShapeError, register_layer
from caffec.frontend import caffe_pb2


@register_layer("ReLU", in_place=True)
class ReLU(SameShape):
    pass


@register_layer("Sigmoid", in_place=True)
class Sigmoid(SameShape):
    pass


@register_layer("TanH", in_place=True)
class TanH(SameShape):
    pass


@register_layer("AbsVal")
class AbsVal(SameShape):
    pass


@register_layer("Power", in_place=True)
class Power(SameShape):
    pass


@register_layer("ELU", in_place=True)
class ELU(SameShape):
    pass


@register_layer("Dropout", in_place=True)
class Dropout(SameShape):
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        ratio = layer.dropout_param.dropout_ratio
        if not 0.0 <= ratio < 1.0:
            raise ShapeError(
                f"dropout_ratio {ratio} is outside [0, 1)",
                hint="the fraction of units dropped must be at least 0 and below 1",
            )
        return [bottoms[0]]


@register_layer("PReLU", in_place=True)
class PReLU(SameShape):
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        if len(bottoms[0]) < 2:
            raise ShapeError(f"PReLU needs a bottom of at least 2 axes, got {fmt(bottoms[0])}")
        return [bottoms[0]]

    def params(self, layer: Any, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.prelu_param
        shape = (1,) if p.channel_shared else (bottoms[0][1],)
        filler = p.filler
        if not p.HasField("filler"):
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        return [ParamBlob(shape, filler, "slope")]
