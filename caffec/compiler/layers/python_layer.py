"""Caffe's ``Python`` layer: user code that runs in the runtime, between compiled steps.

caffec cannot compile arbitrary Python into kernels. It learns the layer's
top and parameter shapes the way Caffe does: import ``python_param.module``,
make the ``python_param.layer`` object, and call its ``setup`` and ``reshape``
with blob stand-ins that hold shapes and no memory. Lowering then emits one
``host`` kernel per pass: no code, but the buffers the layer reads and writes,
so memory planning keeps them alive and fusion leaves them whole; the runtime
(:mod:`caffec.runtime.python_layers`) splits each pass there and calls the
layer's ``forward`` or ``backward`` on views of those buffers.
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any

import numpy as np

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import host_call
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.runtime.blobs import LegacyAxes


class ShapeOnlyBlob(LegacyAxes):
    """What a Python layer's ``setup``/``reshape`` sees of a blob: its shape, zero-filled data
    (read-only, taking no memory, except for learnable blobs, which ``setup`` fills)."""

    def __init__(self, shape: Shape, writable: bool = False) -> None:
        self.writable = writable
        self.reshape(*shape)

    def reshape(self, *shape: int) -> None:
        self.shape = tuple(int(d) for d in shape)
        if self.writable:
            self.data, self.diff = (np.zeros(self.shape, np.float32) for _ in range(2))
        else:
            self.data = self.diff = np.broadcast_to(np.float32(0), self.shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))


class ShapeOnlyBlobs(list):
    """``self.blobs`` while probing: ``add_blob`` records the shape of each learnable blob."""

    def add_blob(self, *shape: int) -> None:
        self.append(ShapeOnlyBlob(shape, writable=True))


def layer_class(layer: LayerParameter) -> type:
    """The class ``python_param`` names (imported as pycaffe does, from ``sys.path``)."""
    p = layer.python_param
    try:
        module = importlib.import_module(p.module)
    except ImportError as err:
        raise ShapeError(
            f"cannot import the Python layer module '{p.module}': {err}",
            hint="put the module's folder on PYTHONPATH, as pycaffe needs too",
        ) from None
    except Exception as err:  # noqa: BLE001 - the user's module failed as it loaded
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
        raise ShapeError(f"the Python layer module '{p.module}' raised {err!r} as it was "
                         f"imported:\n{trace.rstrip()}") from None  # fmt: skip
    cls = getattr(module, p.layer, None)
    if not isinstance(cls, type):
        raise ShapeError(f"the module '{p.module}' has no class '{p.layer}'")
    return cls


def _probe(layer: LayerParameter, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    """(top shapes, learnable blob shapes) from the user's ``setup`` and ``reshape``."""
    p = layer.python_param
    instance: Any = layer_class(layer).__new__(layer_class(layer))
    instance.param_str = p.param_str
    instance.phase = layer.phase
    instance.blobs = ShapeOnlyBlobs()
    bottom = [ShapeOnlyBlob(s) for s in bottoms]
    top = [ShapeOnlyBlob((1,)) for _ in layer.top]
    try:
        instance.setup(bottom, top)
        instance.reshape(bottom, top)
    except Exception as err:  # noqa: BLE001 - the user's code: report, don't crash
        raise ShapeError(
            f"the Python layer {p.module}.{p.layer} failed in setup/reshape: {err!r}"
        ) from None
    return [t.shape for t in top], [b.shape for b in instance.blobs]


@register_layer("Python", bottoms=(0, None), tops=(0, None))
class Python:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        return _probe(layer, bottoms)[0]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        """The blobs ``setup`` adds with ``self.blobs.add_blob``: learnable, as in Caffe, and
        filled by the user's ``setup`` at run time (no filler)."""
        shapes = _probe(layer, bottoms)[1]
        return [ParamBlob(shape, None, f"blob {i}") for i, shape in enumerate(shapes)]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        bottoms = [ctx.x(i) for i in range(len(op.bottoms))]
        tops = [ctx.y(i) for i in range(len(op.tops))]
        ctx.emit(host_call("forward", bottoms, tops, self._names(op)))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        """One call of the layer's ``backward``: it reads the tops' data and diffs and the
        bottoms' data, writes the bottoms' diffs (where propagate_down holds) and adds into
        its blobs' diffs; a diff that gradients are summed in gets its sum from the runtime."""
        n = len(op.bottoms)
        targets = [ctx.dx(i) for i in range(n)]
        params = [ctx.dw(i) for i in range(len(op.params))]
        reads = [ctx.y(i) for i in range(len(op.tops))] + [ctx.dy(i) for i in range(len(op.tops))]
        reads += [ctx.x(i) for i in range(n)]
        writes = [t[0] for t in targets if t is not None] + [w for w in params if w is not None]
        # (the blobs' diffs are written through net.params, which the runtime has at hand)
        attrs = self._names(op) | {
            "propagate": [t is not None for t in targets],
            "accumulate": [t is not None and t[1] for t in targets],
        }
        ctx.emit(host_call("backward", reads, writes, attrs))

    @staticmethod
    def _names(op: Op) -> dict[str, Any]:
        p = op.param.python_param
        return {"module": p.module, "class_name": p.layer, "param_str": p.param_str,
                "bottoms": len(op.bottoms), "tops": len(op.tops)}  # fmt: skip
