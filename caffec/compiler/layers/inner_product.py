"""InnerProduct: a fully connected layer over the axes from ``axis`` on."""

from __future__ import annotations

from typing import Any

from caffec.compiler.ir import ParamBlob, Shape
from caffec.compiler.layers.common import canonical_axis, count
from caffec.compiler.registry import ShapeError, register_layer


@register_layer("InnerProduct")
class InnerProduct:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.inner_product_param
        if p.num_output <= 0:
            raise ShapeError(
                "num_output must be positive", hint="set inner_product_param.num_output"
            )
        axis = canonical_axis(p.axis, len(bottoms[0]))
        return [(*bottoms[0][:axis], p.num_output)]

    def params(self, layer: Any, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.inner_product_param
        fan_in = count(bottoms[0], canonical_axis(p.axis, len(bottoms[0])))
        shape = (fan_in, p.num_output) if p.transpose else (p.num_output, fan_in)
        blobs = [ParamBlob(shape, p.weight_filler, "weight")]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler, "bias"))
        return blobs
