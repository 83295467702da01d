"""Running a CUDA-target artifact on a device: the buffers there, copies, launches, graphs.

Every buffer lives on the device: arena buffers in one device allocation at
the manifest's offsets, parameters, their gradients and the solver's history
in allocations of their own (which a rebuild, or a test net, shares). The host
keeps a copy of a buffer (in pinned memory) only once someone reads it, and
the copies follow Caffe's SyncedMemory rule: :meth:`DeviceExecutor.host`
brings the device's values over if the device has run since the last copy
(not when the caller overwrites the whole buffer, as a data batch does), and,
since the caller may write into the array it gets, the next run first copies
it back, asynchronously, ahead of its kernels on the stream. So data batches,
the loss and the values a user looks at cross the bus; parameters and solver
state stay on the device while training. A batch (a net input) crosses on a
second stream into a buffer of its own, while the last run's kernels may
still be running (a training step's backward and update), and is copied
into place on the device, in order with the kernels.

A run launches the functions the manifest's ``cuda`` entry lists, per-image
loops as one launch per image, or per group of images where the loop's images
are independent (a grid axis over them). The steps of a pass that a run asks
for (the whole pass, a partial run's, the segments of a backward that
overlaps its gradients' reduction) are captured as a CUDA graph the first
time and replayed after that; in the graph, each instruction runs on the
stream the manifest gives it, after the events of those it waits for
(:mod:`caffec.codegen.cuda_streams`), so independent branches run at once.
Single kernels (``caffec time --kernels``) launch in order on the main
stream. The device itself
(memory, copies, modules, launches) is behind a small interface,
:class:`caffec.runtime.cuda_device.CudaDevice`, which the tests replace by a CPU
emulation of the same generated code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caffec.errors import InternalError
from caffec.formats.manifest import CudaInstr, Launch, ViewEntry
from caffec.runtime.artifact_loader import Artifact
from caffec.runtime.executor import DTYPES, Executor, blob_view

Call = tuple[Any, tuple[int, ...], tuple[int, ...], int]  # function, grid, block, image n


@dataclass
class Scheduled:
    """Launches on one stream (0: the device's main one), after the events of the earlier
    entries at positions ``waits``; ``signals``: a later entry waits for this one."""

    calls: list[Call]
    stream: int = 0
    waits: list[int] = field(default_factory=list)
    signals: bool = False


@dataclass(eq=False)
class Mirrored:
    """One buffer on the device and, once it has been read, its copy on the host."""

    device: Any
    shape: tuple[int, ...]
    dtype: Any
    host: np.ndarray | None = None
    synced: int = -1  # the device's run count when the host copy was last equal to it
    batch: bool = False  # a net input: uploaded ahead, overlapping the kernels still running
    read: Any = None  # an event after the upload that last read the host copy, if any


@dataclass(eq=False)
class DeviceState:
    """What every executor on one device shares: how many runs it has started (a host copy
    older than that is stale) and the host copies that may have been written since."""

    runs: int = 0
    dirty: dict[Mirrored, None] = field(default_factory=dict)


def as_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


class DeviceExecutor(Executor):
    """The buffers of one CUDA-target artifact on ``device``, and the calls that run it."""

    def __init__(
        self, artifact: Artifact, device: Any, params: Mapping[int, Mirrored] | None = None
    ) -> None:
        self.artifact = artifact
        self.manifest = m = artifact.manifest
        if m.cuda is None:
            raise InternalError(f"{artifact.path} is a CUDA artifact without launches")
        self.launches = m.cuda
        self.dtype = DTYPES[m.dtype]
        self.device = device
        self.arena = device.alloc(m.arena_bytes)
        given = params or {}
        self.mirrors: list[Mirrored] = []
        for slot, spec in enumerate(m.buffers):
            shape = tuple(spec.shape)
            dtype = np.int64 if spec.kind == "counter" else self.dtype
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if slot in given:
                mirror = given[slot]
            elif spec.offset is not None:
                mirror = Mirrored(device.view(self.arena, spec.offset, nbytes), shape, dtype)
            else:
                mirror = Mirrored(device.alloc(nbytes), shape, dtype)
            self.mirrors.append(mirror)
        for slot in m.inputs.values():
            self.mirrors[slot].batch = True
        table = np.array([device.pointer(x.device) for x in self.mirrors], dtype=np.uint64)
        self._table = device.alloc(table.nbytes)
        device.upload(self._table, as_bytes(table))
        names = {spec.function for specs in self.launches.functions.values() for spec in specs}
        self._functions = device.functions(artifact, sorted(names))
        self._graphs: dict[tuple[str, int, int], Callable[[], None]] = {}
        self._launch_lists: dict[tuple[str, int, int], list[Scheduled]] = {}

    # --- the buffers ----------------------------------------------------------------------
    def host(self, slot: int | None, view: ViewEntry | None = None, overwrite: bool = False) -> Any:
        """The host copy of buffer ``slot`` (or of its blob ``view``), brought up to date
        unless the caller will ``overwrite`` all of it (a batch, a fill); the next run copies
        it back to the device, as the caller may have written it."""
        if slot is None:
            return None
        mirror = self.mirrors[slot]
        state = self.device.state
        if mirror.read is not None:  # the last upload may still be reading the host copy
            mirror.read.synchronize()
            mirror.read = None
        if mirror.host is None:
            nbytes = int(np.prod(mirror.shape)) * np.dtype(mirror.dtype).itemsize
            mirror.host = self.device.host_bytes(nbytes).view(mirror.dtype).reshape(mirror.shape)
        if mirror.synced != state.runs and not (overwrite and view is None):
            self.device.download(mirror.device, as_bytes(mirror.host))
        mirror.synced = state.runs
        state.dirty[mirror] = None
        return blob_view(mirror.host, view)

    def persistent(self, slot: int) -> Mirrored:
        """A parameter slot's buffer, for a rebuild or a test net to share."""
        return self.mirrors[slot]

    def zero(self, slot: int) -> None:
        mirror = self.mirrors[slot]
        self.device.zero(mirror.device)
        self.device.state.dirty.pop(mirror, None)
        mirror.synced = -1

    # --- running --------------------------------------------------------------------------
    def run(self, direction: str, begin: int, end: int) -> None:
        """Start steps [begin, end) of a pass, or kernels, on the device's stream. Steps of a
        pass (the whole pass, or the segments a partial run or an overlapped reduction asks
        for) replay their CUDA graph, recorded the first time, in which instructions run on
        the streams the manifest gives them; single kernels (``caffec time --kernels``)
        launch in order. Reading any buffer waits for them."""
        if not self.steps(direction, begin, end):
            return
        state = self.device.state
        for mirror in state.dirty:
            upload = self.device.upload_ahead if mirror.batch else self.device.upload
            mirror.read = upload(mirror.device, as_bytes(mirror.host))
            mirror.synced = state.runs
        state.dirty.clear()
        key = (direction, begin, end)
        if direction != "kernels":
            if key not in self._graphs:
                streamed = self._streamed(direction, begin, end)
                self._graphs[key] = self.device.capture(lambda: self._launch_all(streamed))
            self._graphs[key]()
        else:
            if key not in self._launch_lists:
                self._launch_lists[key] = [Scheduled(self._launches(direction, begin, end))]
            self._launch_all(self._launch_lists[key])
        state.runs += 1

    def synchronize(self) -> None:
        self.device.synchronize()

    def _launch_all(self, schedule: list[Scheduled]) -> None:
        """Launch ``schedule``: each entry on its stream after the events it waits for, an
        event recorded after each entry waited for. The side streams start after what the
        main stream ran before (an event there: how they join a capture) and the main stream
        waits for them at the end (a capture must end joined)."""
        device = self.device
        sides = sorted({entry.stream for entry in schedule} - {0})
        if sides:
            fork = device.record(0)
            for stream in sides:
                device.wait(stream, fork)
        events: dict[int, Any] = {}
        for position, entry in enumerate(schedule):
            for waited in entry.waits:
                device.wait(entry.stream, events[waited])
            for function, grid, block, n in entry.calls:
                device.launch(function, grid, block, self._table, n, entry.stream)
            if entry.signals:
                events[position] = device.record(entry.stream)
        for stream in sides:
            device.wait(0, device.record(stream))

    def _streamed(self, direction: str, begin: int, end: int) -> list[Scheduled]:
        """The instructions of steps [begin, end) of a pass on their streams (the manifest's
        ``stream`` and ``waits``, positions in the pass). A wait for an instruction before
        the first step is dropped: every earlier run ended with its streams joined into the
        main one, where this one starts."""
        steps = self.launches.steps[direction]
        first = sum(len(step) for step in steps[:begin])
        instrs = [instr for step in steps[begin:end] for instr in step]
        waits = [[p - first for p in instr.waits if p >= first] for instr in instrs]
        waited = {position for positions in waits for position in positions}
        entries = enumerate(zip(instrs, waits, strict=True))
        return [Scheduled(self._instr_launches(instr, instr.kernels), instr.stream, wait,
                          position in waited)
                for position, (instr, wait) in entries]  # fmt: skip

    def _launches(self, direction: str, begin: int, end: int) -> list[Call]:
        """The launches of steps [begin, end): per-image loops unrolled."""
        steps = self.launches.steps
        if direction != "kernels":
            return [launch for step in steps[direction][begin:end] for instr in step
                    for launch in self._instr_launches(instr, instr.kernels)]  # fmt: skip
        kernels = [(instr, k) for d in ("forward", "backward", "update") for step in steps[d]
                   for instr in step for k in instr.kernels][begin:end]  # fmt: skip
        return [launch for instr, k in kernels for launch in self._instr_launches(instr, [k])]

    def _instr_launches(self, instr: CudaInstr, kernels: list[str]) -> list[Call]:
        """One instruction's launches, or those of ``kernels`` among its kernels alone: a
        per-image loop's for its first image and every ``images``-th after it, each launch
        covering that many images (or one image, where the loop's images depend on each
        other)."""
        functions = self.launches.functions
        return [self._launch(spec, n) for n in range(0, instr.count, instr.images)
                for k in kernels for spec in functions[k]]  # fmt: skip

    def _launch(self, spec: Launch, n: int) -> Call:
        return self._functions[spec.function], tuple(spec.grid), tuple(spec.block), n
