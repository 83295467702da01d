"""Caffe's ``Python`` layer: user code that pycaffe imports and calls.

caffec cannot compile arbitrary Python into kernels, but it can learn the
layer's top shapes the way Caffe does: import ``python_param.module``, make
the ``python_param.layer`` object, and call its ``setup`` and ``reshape`` with
blob stand-ins that hold shapes and no memory.
"""

from __future__ import annotations

import importlib

import numpy as np

from caffec.compiler.ir import Shape
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.runtime.compiled_net import LegacyAxes


class ShapeOnlyBlob(LegacyAxes):
    """What a Python layer's ``setup``/``reshape`` sees of a blob: its shape, zero-filled data."""

    def __init__(self, shape: Shape) -> None:
        self.reshape(*shape)

    def reshape(self, *shape: int) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.data = np.broadcast_to(np.float32(0), self.shape)
        self.diff = self.data

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))


@register_layer("Python", bottoms=(0, None), tops=(0, None))
class Python:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.python_param
        try:
            module = importlib.import_module(p.module)
            cls = getattr(module, p.layer)
        except ImportError as err:
            raise ShapeError(
                f"cannot import the Python layer module '{p.module}': {err}",
                hint="put the module's folder on PYTHONPATH, as pycaffe needs too",
            ) from None
        except AttributeError:
            raise ShapeError(f"the module '{p.module}' has no class '{p.layer}'") from None
        instance = cls.__new__(cls)
        instance.param_str = p.param_str
        bottom = [ShapeOnlyBlob(s) for s in bottoms]
        top = [ShapeOnlyBlob((1,)) for _ in layer.top]
        try:
            instance.setup(bottom, top)
            instance.reshape(bottom, top)
        except Exception as err:  # noqa: BLE001 - the user's code: report, don't crash
            raise ShapeError(
                f"the Python layer {p.module}.{p.layer} failed in setup/reshape: {err!r}"
            ) from None
        return [t.shape for t in top]
