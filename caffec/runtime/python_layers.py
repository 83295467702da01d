"""Python layers at run time: pycaffe's ``caffe.Layer``, and the calls between compiled steps.

A pass whose steps include a Python layer runs as compiled segments with the
layer's ``forward`` or ``backward`` between them. The layer sees pycaffe-style
blobs whose ``data`` and ``diff`` are numpy views of the net's own buffers, so
nothing is copied; an exception in the user's code becomes a UserError that
names the layer and carries the user's traceback.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats.manifest import HostCallEntry


class Layer:
    """pycaffe's ``caffe.Layer``: subclass it and write ``setup``, ``reshape``, ``forward``
    and ``backward``. caffec sets ``param_str``, ``phase`` and ``blobs`` before ``setup``."""

    type = "Python"
    param_str: str = ""
    phase: int = 0
    blobs: Any = ()

    def setup(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        """Read ``param_str``, check the bottoms, add learnable blobs."""

    def reshape(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        """Give the tops their shapes (``top[i].reshape(...)``)."""

    def forward(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, top: Sequence[Any], propagate_down: Sequence[bool],
                 bottom: Sequence[Any]) -> None:  # fmt: skip
        raise NotImplementedError(f"{type(self).__name__} has no backward")


class LayerBlob:
    """A blob as a Python layer sees it: ``data`` and ``diff`` of fixed shapes (the net was
    compiled for them), ``reshape`` to the same shape, pycaffe's legacy axes."""

    def __init__(self, name: str, data: np.ndarray, diff: np.ndarray | None) -> None:
        self._name = name
        self.data = data
        self._diff = diff

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None:  # a gradient nobody asked for: a place to write it to
            self._diff = np.zeros_like(self.data)
        return self._diff

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(self.data.size)

    num = property(lambda self: self.shape[0] if len(self.shape) > 0 else 1)
    channels = property(lambda self: self.shape[1] if len(self.shape) > 1 else 1)
    height = property(lambda self: self.shape[2] if len(self.shape) > 2 else 1)
    width = property(lambda self: self.shape[3] if len(self.shape) > 3 else 1)

    def reshape(self, *shape: int) -> None:
        if tuple(int(d) for d in shape) != self.shape:
            raise UserError(
                f"blob '{self._name}' was compiled as {shape_text(self.shape)} and cannot "
                f"become {shape_text(tuple(shape))} at run time",
                hint="give the net's inputs their new shapes (blob.reshape + net.reshape), "
                "which compiles the net again and runs setup's shapes anew",
            )


class LayerBlobs(list):
    """``self.blobs`` of a Python layer: ``add_blob`` in ``setup`` hands out the next of the
    learnable blobs the compiler allocated for it (from the same ``setup``)."""

    def __init__(self, layer: str, compiled: Sequence[Any]) -> None:
        super().__init__()
        self._layer = layer
        self._compiled = list(compiled)

    def add_blob(self, *shape: int) -> None:
        if len(self) >= len(self._compiled):
            raise UserError(f"Python layer '{self._layer}' added more blobs in setup at run "
                            "time than when the net was compiled")  # fmt: skip
        blob = self._compiled[len(self)]
        if tuple(int(d) for d in shape) != tuple(blob.shape):
            raise UserError(f"Python layer '{self._layer}' blob {len(self)} is "
                            f"{shape_text(tuple(shape))} now, {shape_text(blob.shape)} when "
                            "the net was compiled")  # fmt: skip
        self.append(blob)


def user_code(layer: str, what: str, call: Callable[[], Any]) -> None:
    """Run the user's ``call``; its exception becomes a UserError naming the layer."""
    try:
        call()
    except UserError as err:  # a blob misused (a reshape at run time)
        err.layer = err.layer or layer
        raise
    except Exception as err:  # noqa: BLE001 - the user's code: report it with its traceback
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__)[1:])
        raise UserError(f"the Python layer's {what} raised {err!r}\n{trace.rstrip()}",
                        layer=layer) from None  # fmt: skip


class PythonLayers:
    """The Python layers of one net: their objects, set up once, and their calls."""

    def __init__(self, calls: list[HostCallEntry], host: Callable[[int], np.ndarray],
                 params: dict[str, list[Any]], phase: int,
                 carried: dict[str, Any] | None = None) -> None:  # fmt: skip
        self._calls = {(c.direction, c.step): c for c in calls}
        self._host = host
        self.instances: dict[str, Any] = dict(carried or {})
        for call in calls:
            if call.direction == "forward":
                self._make(call, params.get(call.layer, []), phase)

    def steps(self, direction: str) -> list[int]:
        """The steps of ``direction`` that are Python calls, in order."""
        return sorted(step for d, step in self._calls if d == direction)

    def _blobs(self, call: HostCallEntry) -> tuple[list[LayerBlob], list[LayerBlob]]:
        """The layer's bottoms and tops as pycaffe blobs over the net's buffers."""

        def side(what: str, slots: list[int], diffs: list[int | None]) -> list[LayerBlob]:
            diffs = diffs or [None] * len(slots)
            return [LayerBlob(f"{call.layer} {what} {i}", self._host(slot),
                              None if diff is None else self._host(diff))
                    for i, (slot, diff) in enumerate(zip(slots, diffs, strict=True))]  # fmt: skip

        top_diffs: list[int | None] = list(call.top_diffs)
        return side("bottom", call.bottoms, call.bottom_diffs), side("top", call.tops, top_diffs)

    def _make(self, call: HostCallEntry, params: list[Any], phase: int) -> None:
        """The layer's object, as pycaffe makes it: ``param_str``, ``phase``, ``blobs``, then
        ``setup`` and ``reshape`` (only ``reshape`` for one carried over from a rebuild)."""
        bottom, top = self._blobs(call)
        instance = self.instances.get(call.layer)
        if instance is not None:
            user_code(call.layer, "reshape", lambda: instance.reshape(bottom, top))
            return
        try:
            cls = getattr(importlib.import_module(call.module), call.class_name)
        except (ImportError, AttributeError) as err:
            raise UserError(f"cannot load the Python layer {call.module}.{call.class_name}: "
                            f"{err}", layer=call.layer,
                            hint="put the module's folder on PYTHONPATH") from None  # fmt: skip
        instance = cls.__new__(cls)
        instance.param_str = call.param_str
        instance.phase = phase
        instance.blobs = LayerBlobs(call.layer, params)
        user_code(call.layer, "setup", lambda: instance.setup(bottom, top))
        user_code(call.layer, "reshape", lambda: instance.reshape(bottom, top))
        self.instances[call.layer] = instance

    def run(self, direction: str, step: int) -> None:
        """Call the layer of step ``step`` of ``direction``."""
        call = self._calls[(direction, step)]
        instance = self.instances[call.layer]
        bottom, top = self._blobs(call)
        if direction == "forward":
            user_code(call.layer, "forward", lambda: instance.forward(bottom, top))
            return
        sums = {}  # a diff that other layers' gradients also go into: the layer's part apart
        for i, add in enumerate(call.accumulate):
            if add:
                sums[i] = bottom[i].diff
                bottom[i]._diff = np.zeros_like(sums[i])
        propagate = [diff is not None for diff in call.bottom_diffs]
        user_code(call.layer, "backward", lambda: instance.backward(top, propagate, bottom))
        for i, total in sums.items():
            total += bottom[i].diff
