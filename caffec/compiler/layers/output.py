"""Caffe's HDF5Output layer: a net's values written to an HDF5 file as it runs.

No kernel can write a file, so the layer is lowered to one ``host`` call, as a
Python layer is: the runtime runs :class:`caffec.runtime.hdf5_output.HDF5OutputLayer`
between compiled steps on the two bottoms' buffers (which the call's operands keep
alive). Caffe's backward does nothing, and so there is none.
"""

from __future__ import annotations

from caffec.compiler.ir import Op, Shape
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import host_call
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import shape_text

# The layer the runtime runs (through its Python-layer calls).
RUNTIME_MODULE = "caffec.runtime.hdf5_output"
RUNTIME_CLASS = "HDF5OutputLayer"


@register_layer("HDF5Output", bottoms=2, tops=0)
class HDF5Output:
    """Each forward appends the data bottom's items to the file's dataset "data" and the
    label bottom's to "label", each item as Caffe's legacy (channels, height, width)."""

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # no backward pass

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        if not layer.hdf5_output_param.file_name:
            raise ShapeError(
                "HDF5Output needs hdf5_output_param.file_name",
                hint='name the file to write, e.g. hdf5_output_param { file_name: "out.h5" }',
            )
        for what, shape in zip(("data", "label"), bottoms, strict=True):
            if len(shape) > 4:
                raise ShapeError(
                    f"the {what} bottom {shape_text(shape)} has more than 4 axes; HDF5Output "
                    "writes Caffe's legacy 4-D (num, channels, height, width) blobs",
                    hint="Reshape or Flatten it to at most 4 axes first",
                )
        data, label = (shape[0] if shape else 1 for shape in bottoms)
        if data != label:
            raise ShapeError(
                f"the data {shape_text(bottoms[0])} and the label {shape_text(bottoms[1])} "
                "must have the same number of items (first axis)"
            )
        return []

    def lower(self, op: Op, ctx: LowerContext) -> None:
        attrs = {"module": RUNTIME_MODULE, "class_name": RUNTIME_CLASS, "bottoms": 2, "tops": 0,
                 "param_str": op.param.hdf5_output_param.file_name}  # fmt: skip
        ctx.emit(host_call("forward", [ctx.x(0), ctx.x(1)], [], attrs))
