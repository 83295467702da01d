"""BatchNorm and the per-channel affine layers Scale and Bias."""

from __future__ import annotations

from typing import Any

from caffec.compiler.ir import ParamBlob, Shape
from caffec.compiler.layers.common import SameShape, canonical_axis, fmt
from caffec.compiler.registry import ShapeError, register_layer
from caffec.frontend import caffe_pb2


@register_layer("BatchNorm", in_place=True)
class BatchNorm(SameShape):
    def params(self, layer: Any, bottoms: list[Shape]) -> list[ParamBlob]:
        channels = bottoms[0][1] if len(bottoms[0]) > 1 else 1
        zero = caffe_pb2.FillerParameter(type="constant", value=0.0)
        # Caffe's three blobs: running mean, running variance, and the factor
        # that undoes the moving average's bias (mean = blob / factor).
        return [
            ParamBlob((channels,), zero, "mean"),
            ParamBlob((channels,), zero, "variance"),
            ParamBlob((1,), zero, "factor"),
        ]


def affine_shape(p: Any, bottoms: list[Shape]) -> tuple[int, Shape]:
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
                f"axis {axis} + num_axes {p.num_axes} runs past the bottom {fmt(bottom)}"
            )
        operand = bottom[axis:end]
    if tuple(bottom[axis : axis + len(operand)]) != tuple(operand):
        raise ShapeError(
            f"the operand {fmt(operand)} does not match the bottom {fmt(bottom)} from axis {axis}"
        )
    return axis, tuple(operand)


@register_layer("Scale", bottoms=(1, 2), in_place=True)
class Scale(SameShape):
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        affine_shape(layer.scale_param, bottoms)
        return [bottoms[0]]

    def params(self, layer: Any, bottoms: list[Shape]) -> list[ParamBlob]:
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


@register_layer("Bias", bottoms=(1, 2), in_place=True)
class Bias(SameShape):
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        affine_shape(layer.bias_param, bottoms)
        return [bottoms[0]]

    def params(self, layer: Any, bottoms: list[Shape]) -> list[ParamBlob]:
        if len(bottoms) == 2:
            return []
        p = layer.bias_param
        _, shape = affine_shape(p, bottoms)
        return [ParamBlob(shape, p.filler, "bias")]
