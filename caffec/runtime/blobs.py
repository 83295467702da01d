"""pycaffe's blobs and layers over a compiled net's memory: ``net.blobs[name]`` and
``net.layers[i]`` as :class:`~caffec.runtime.compiled_net.CompiledNet` shows them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats.manifest import LayerEntry, Manifest, ViewEntry
from caffec.runtime.executor import Executor
from caffec.runtime.memory_limits import check_size

BufferRef = tuple[int, ViewEntry | None]  # a buffer slot, and the blob's view of it


class LegacyAxes:
    """Caffe's num/channels/height/width: axes 0-3 of ``shape``, 1 where the blob has fewer."""

    shape: tuple[int, ...]

    def _legacy(self, axis: int) -> int:
        return self.shape[axis] if axis < len(self.shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))


class Blob(LegacyAxes):
    """pycaffe's Blob: ``data`` and ``diff`` are numpy arrays of the net's own memory (on a
    GPU, host copies brought up to date when read and copied back by the next run)."""

    def __init__(self, buffers: Executor, data: BufferRef, diff: BufferRef | None) -> None:
        self._buffers = buffers
        self._data_ref = data
        self._diff_ref = diff
        self._zero_diff: np.ndarray | None = None
        self.pending_shape: tuple[int, ...] | None = None
        self._staged: tuple[np.ndarray, np.ndarray] | None = None
        # a top whose length the data decides (DetectionOutput): what ``data`` shows of it
        self.shown: Callable[[np.ndarray], np.ndarray] | None = None

    def reshape(self, *shape: int) -> None:
        """Take a new shape now, as Caffe's blobs do: ``data`` and ``diff`` are arrays of that
        shape at once (zeros), and the next forward (or ``net.reshape()``) rebuilds the net
        for it (cached) and starts from what was written into them."""
        if not shape or any(int(d) <= 0 for d in shape):
            raise UserError(f"cannot reshape a blob to {shape}: dimensions must be positive")
        new = tuple(int(d) for d in shape)
        check_size(new, np.dtype(self._buffers.dtype).itemsize, None, "the reshaped blob",
                   raisable=False)  # fmt: skip
        if new == shape_of(self._buffers.manifest, self._data_ref):
            self.pending_shape, self._staged = None, None
        elif new != self.pending_shape:
            self.pending_shape = new
            zeros = np.zeros(new, dtype=self._buffers.dtype)
            self._staged = (zeros, zeros.copy())

    @property
    def data(self) -> np.ndarray:
        if self._staged is not None:
            return self._staged[0]
        array = self._buffers.host(*self._data_ref)
        return array if self.shown is None else self.shown(array)

    @property
    def diff(self) -> np.ndarray:
        """The gradient; a blob nothing differentiates shows zeros."""
        if self._staged is not None:
            return self._staged[1]
        if self._diff_ref is not None:
            return self._buffers.host(*self._diff_ref)
        if self._zero_diff is None:
            self._zero_diff = np.zeros(self.shape, dtype=self._buffers.dtype)
        return self._zero_diff

    @property
    def learned_diff(self) -> bool:
        """Whether the net computes this blob's gradient (else ``diff`` shows zeros)."""
        return self._diff_ref is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pending_shape or shape_of(self._buffers.manifest, self._data_ref)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))


class Layer:
    """What pycaffe's ``net.layers[i]`` shows: the type, the parameter blobs, and ``setup``
    and ``reshape``, which check blobs against the shapes the layer was compiled for."""

    def __init__(self, entry: LayerEntry, blobs: list[Blob], shape: Any) -> None:
        self.name = entry.name
        self.type = entry.type
        self.blobs = blobs
        self._entry = entry
        self._shape = shape  # a blob name -> its compiled shape

    def setup(self, bottom: list[Any], top: list[Any]) -> None:
        self.reshape(bottom, top)

    def reshape(self, bottom: list[Any], top: list[Any]) -> None:
        """Caffe's Layer::Reshape: here the layer's shapes are compiled, so the blobs must
        have them (a new shape is the net's to apply: ``blob.reshape`` + ``net.reshape``)."""
        for what, names, blobs in (("bottom", self._entry.bottoms, bottom),
                                   ("top", self._entry.tops, top)):  # fmt: skip
            if len(blobs) != len(names):
                raise UserError(f"layer '{self.name}' has {len(names)} {what}s, not {len(blobs)}")
            for name, blob in zip(names, blobs, strict=True):
                if tuple(blob.shape) != self._shape(name):
                    raise UserError(
                        f"layer '{self.name}' was compiled for {what} '{name}' of shape "
                        f"{shape_text(self._shape(name))}, not {shape_text(tuple(blob.shape))}",
                        hint="reshape the net's inputs (blob.reshape, then net.reshape() or "
                        "forward()): the net compiles again for the new shapes",
                    )


def shape_of(manifest: Manifest, ref: BufferRef) -> tuple[int, ...]:
    """The shape of a buffer, or of the blob view of it."""
    slot, view = ref
    return tuple(view.shape if view is not None else manifest.buffers[slot].shape)
