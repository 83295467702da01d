"""Running a loaded artifact: memory, parameter binding, forward and backward.

Every buffer of the net has a host array: arena buffers are views into one
allocation at the offsets the manifest gives, parameters and their gradients
are arrays of their own (they persist across rebuilds of the same net). On the
C target these arrays are what the generated code works on, through a table of
pointers, slot for slot; on the CUDA target (:mod:`caffec.runtime.device_executor`)
they are the host side of the device's buffers. Either way the rest of the
runtime reads and writes buffers through :meth:`Executor.host`, and zeroes them
with :meth:`Executor.zero`, so it need not know where the net runs. A C library
runs on the threads :func:`caffec.runtime.threads.thread_policy` gives it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

import numpy as np

from caffec.errors import UserError
from caffec.formats.manifest import Manifest, ViewEntry
from caffec.runtime.artifact_loader import Artifact
from caffec.runtime.memory_limits import artifact_bytes, bytes_text
from caffec.runtime.threads import thread_policy

DTYPES = {"float32": np.float32, "float64": np.float64}
ALIGN = 64


def aligned_bytes(size: int) -> np.ndarray:
    """A zeroed byte array whose data starts on a cache line."""
    raw = np.zeros(size + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + size]


def host_buffers(
    manifest: Manifest, arena: np.ndarray, given: Mapping[int, np.ndarray]
) -> list[np.ndarray]:
    """One array per buffer slot: views of ``arena`` where the memory plan placed the
    buffer, ``given`` arrays (parameters carried over), else arrays of their own."""
    dtype = DTYPES[manifest.dtype]
    itemsize = np.dtype(dtype).itemsize
    buffers = []
    for slot, spec in enumerate(manifest.buffers):
        shape = tuple(spec.shape)
        if spec.kind == "counter":
            array = np.zeros(shape, dtype=np.int64)
        elif spec.offset is None:
            array = given.get(slot)
            if array is None:
                array = np.zeros(shape, dtype=dtype)
        else:
            start, count = spec.offset, int(np.prod(shape))
            array = arena[start : start + count * itemsize].view(dtype).reshape(shape)
        buffers.append(array)
    return buffers


def blob_view(array: np.ndarray, view: ViewEntry | None) -> np.ndarray:
    """The part of ``array`` a blob ``view`` describes (offset, shape, strides in elements)."""
    if view is None:
        return array
    return np.lib.stride_tricks.as_strided(
        array.reshape(-1)[view.offset :],
        shape=tuple(view.shape),
        strides=tuple(s * array.itemsize for s in view.strides),
    )


class Executor:
    """The buffers of one C-target artifact and the calls that run its passes."""

    def __init__(self, artifact: Artifact, params: Mapping[int, Any] | None = None) -> None:
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.dtype = DTYPES[self.manifest.dtype]
        try:
            self.arena = aligned_bytes(max(self.manifest.arena_bytes, ALIGN))
            self.buffers = host_buffers(self.manifest, self.arena, params or {})
        except MemoryError:  # more than the machine gives now (compiling checked its memory)
            raise UserError(
                f"the net of {artifact.path} needs {bytes_text(artifact_bytes(self.manifest))}, "
                "more than this machine can allocate now",
                hint="free memory, or compile the net with a smaller batch (--shape)",
            ) from None
        self._table = (ctypes.c_void_p * len(self.buffers))(*[a.ctypes.data for a in self.buffers])
        self._entries = {d: artifact.entry(d) for d in ("forward", "backward", "update", "kernels")}
        self._set_threads = artifact.library.caffec_set_threads
        self._set_threads.restype = ctypes.c_int
        self._set_threads.argtypes = [ctypes.c_int]
        self.threads = 1  # what the library runs on, set here
        self.set_threads(thread_policy().threads)

    def set_threads(self, threads: int) -> int:
        """Run parallel regions on ``threads`` threads from now on (per-image loops on at most
        their workspaces' copies); returns the count the library took."""
        self.threads = self._set_threads(threads)
        return self.threads

    # --- the buffers ----------------------------------------------------------------------
    def host(self, slot: int | None, view: ViewEntry | None = None, overwrite: bool = False) -> Any:
        """Buffer ``slot`` (or the blob ``view`` of it) as a numpy array the caller may read
        and write until the next run; None for no slot. ``overwrite``: the caller writes all
        of it, so its old values need not be fetched (they are here)."""
        if slot is None:
            return None
        return blob_view(self.buffers[slot], view)

    def persistent(self, slot: int) -> Any:
        """What a rebuild of the net hands on for a parameter slot (here its array)."""
        return self.buffers[slot]

    def zero(self, slot: int) -> None:
        """Set buffer ``slot`` to zeros."""
        self.buffers[slot][...] = 0

    def of_kind(self, kind: str, overwrite: bool = False) -> np.ndarray:
        """The one buffer of ``kind``: "counter" ([random seed, iteration]) or "hyper" ([rate])."""
        return self.host(self.manifest.slot_of_kind(kind), overwrite=overwrite)

    @property
    def counter(self) -> np.ndarray:
        """[random seed, iteration]: what the generated random numbers depend on."""
        return self.of_kind("counter")

    # --- running --------------------------------------------------------------------------
    def steps(self, direction: str, begin: int, end: int) -> list[Any]:
        """Steps [begin, end) of a pass ("forward", "backward", "update"); "kernels" numbers
        every kernel of the three passes in order."""
        steps = (
            [k for d in ("forward", "backward", "update") for s in self.manifest.steps(d)
             for k in s.kernels]
            if direction == "kernels" else self.manifest.steps(direction)
        )  # fmt: skip
        if not 0 <= begin <= end <= len(steps):
            raise UserError(f"{direction} steps {begin}..{end} are outside 0..{len(steps)}")
        return steps[begin:end]

    def run(self, direction: str, begin: int, end: int) -> None:
        """Run steps [begin, end) of a pass, or kernels (see :meth:`steps`)."""
        self.steps(direction, begin, end)
        self._entries[direction](self._table, begin, end)

    def synchronize(self) -> None:
        """Wait until what :meth:`run` started has finished (the C target runs in the call)."""
