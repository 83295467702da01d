"""Running a loaded artifact: memory, parameter binding, forward and backward.

Every buffer of the net is a numpy array: arena buffers are views into one
allocation at the offsets the manifest gives, parameters and their gradients
are arrays of their own (they persist across rebuilds of the same net). The
generated code sees them through a table of pointers, slot for slot.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from caffec.errors import UserError
from caffec.runtime.artifact import Artifact

DTYPES = {"float32": np.float32, "float64": np.float64}
ALIGN = 64


def _aligned_bytes(size: int) -> np.ndarray:
    """A zeroed byte array whose data starts on a cache line."""
    raw = np.zeros(size + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + size]


class Executor:
    """The buffers of one artifact and the calls that run its passes."""

    def __init__(self, artifact: Artifact, params: dict[int, np.ndarray] | None = None) -> None:
        self.artifact = artifact
        m = artifact.manifest
        self.manifest = m
        self.dtype = DTYPES[m["dtype"]]
        itemsize = np.dtype(self.dtype).itemsize
        self.arena = _aligned_bytes(max(m["arena_bytes"], ALIGN))
        self.buffers: list[np.ndarray] = []
        given = params or {}
        for slot, spec in enumerate(m["buffers"]):
            shape = tuple(spec["shape"])
            count = int(np.prod(shape))
            if spec["kind"] == "counter":
                array = np.zeros(shape, dtype=np.int64)
            elif spec["offset"] is None:
                array = given.get(slot)
                if array is None:
                    array = np.zeros(shape, dtype=self.dtype)
            else:
                start = spec["offset"]
                array = self.arena[start : start + count * itemsize].view(self.dtype).reshape(shape)
            self.buffers.append(array)
        self._table = (ctypes.c_void_p * len(self.buffers))(*[a.ctypes.data for a in self.buffers])
        self._entries = {d: artifact.entry(d) for d in ("forward", "backward", "update", "kernels")}

    def of_kind(self, kind: str) -> np.ndarray:
        """The one buffer of ``kind``: "counter" ([random seed, iteration]) or "hyper" ([rate])."""
        return next(
            a
            for a, s in zip(self.buffers, self.manifest["buffers"], strict=True)
            if s["kind"] == kind
        )

    @property
    def counter(self) -> np.ndarray:
        """[random seed, iteration]: what the generated random numbers depend on."""
        return self.of_kind("counter")

    def run(self, direction: str, begin: int, end: int) -> None:
        """Run steps [begin, end) of a pass ("forward", "backward", "update"), or kernels."""
        steps = (
            [k for d in ("forward", "backward", "update") for s in self.manifest[d]
             for k in s["kernels"]]
            if direction == "kernels" else self.manifest[direction]
        )  # fmt: skip
        if not 0 <= begin <= end <= len(steps):
            raise UserError(f"{direction} steps {begin}..{end} are outside 0..{len(steps)}")
        self._entries[direction](self._table, begin, end)

    def buffer(self, slot: int | None, view: dict[str, Any] | None = None) -> Any:
        """Buffer ``slot`` as an array, or the part of it a blob ``view`` describes (its
        offset, shape and strides in elements)."""
        if slot is None:
            return None
        array = self.buffers[slot]
        if view is None:
            return array
        itemsize = array.itemsize
        return np.lib.stride_tricks.as_strided(
            array.reshape(-1)[view["offset"] :],
            shape=tuple(view["shape"]),
            strides=tuple(s * itemsize for s in view["strides"]),
        )
