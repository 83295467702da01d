"""One GPU through CuPy: what :class:`~caffec.runtime.device_executor.DeviceExecutor` needs.

Memory is CuPy arrays of bytes from CuPy's allocator (its memory pool, never
managed memory); allocation, copies, zeroing and launches all go on one
non-blocking stream, so they run in order and the host waits only when it
reads a value. A captured pass also launches on a few side streams, forked
from that one and joined to it again by events inside the graph. Batches
cross the bus on a second stream, into a staging buffer each, overlapping
the kernels still running; events order the copy into place after them and
the next batch's copy after that. Modules
are the artifact's fat binary, loaded as it is (no compiling at run time).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from caffec.errors import UserError
from caffec.formats.manifest import CUDA_STREAMS
from caffec.runtime.artifact_loader import Artifact
from caffec.runtime.device_executor import DeviceState
from caffec.runtime.gpu import cupy, device_ids


class CudaDevice:
    """GPU ``device_id``: allocations, copies, the artifact's functions, launches, graphs."""

    def __init__(self, device_id: int) -> None:
        device_ids(str(device_id))  # a clear error when there is no such device
        self.cp = cupy()
        self.id = device_id
        self.cp.cuda.Device(device_id).use()
        properties = self.cp.cuda.runtime.getDeviceProperties(device_id)
        self.arch = f"{properties['major']}{properties['minor']}"  # what nvcc builds for: "90"
        self.multiprocessors = int(properties["multiProcessorCount"])  # what grids should fill
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        # the streams a captured pass's independent instructions run on beside it
        self.streams = [self.stream] + [self.cp.cuda.Stream(non_blocking=True)
                                        for _ in range(CUDA_STREAMS - 1)]  # fmt: skip
        self.copies = self.cp.cuda.Stream(non_blocking=True)  # batches from the host
        self.state = DeviceState()
        # per batch buffer (by address): its staging buffer and an event after the last
        # copy out of it, which the next copy into it waits for
        self._staging: dict[int, tuple[Any, Any]] = {}

    def alloc(self, nbytes: int) -> Any:
        """Zeroed device memory (the arena, a parameter, the pointer table), zeroed on the
        stream and taken from its part of the memory pool, so it is ordered with the rest."""
        with self.stream:
            return self.cp.zeros(max(nbytes, 1), dtype=self.cp.uint8)[:nbytes]

    def view(self, memory: Any, offset: int, nbytes: int) -> Any:
        return memory[offset : offset + nbytes]

    def pointer(self, memory: Any) -> int:
        return int(memory.data.ptr)

    def host_bytes(self, nbytes: int) -> np.ndarray:
        """Zeroed pinned host memory for a buffer's host copy: its copies run asynchronously."""
        import cupyx  # CuPy's companion module: present wherever CuPy is

        array = cupyx.empty_pinned((max(nbytes, 1),), dtype=np.uint8)[:nbytes]
        array[...] = 0
        return array

    def upload(self, memory: Any, host: np.ndarray) -> Any:
        """Copy ``host`` (pinned) to ``memory`` in order with the kernels; the returned event
        says when ``host`` has been read."""
        memory.set(host, stream=self.stream)
        return self.stream.record()

    def upload_ahead(self, memory: Any, host: np.ndarray) -> Any:
        """Upload a batch to ``memory`` through its staging buffer: the copy from the host
        starts now on the copy stream, while the kernels before it on the stream may still
        read ``memory``'s last batch; the copy into ``memory`` waits for both. The returned
        event says when ``host`` has been read."""
        staging, emptied = self._staging.get(self.pointer(memory), (None, None))
        if staging is None or staging.nbytes != host.nbytes:  # new, or a rebuilt net's
            with self.copies:
                staging = self.cp.empty(max(host.nbytes, 1), dtype=self.cp.uint8)[: host.nbytes]
        if emptied is not None:
            self.copies.wait_event(emptied)
        staging.set(host, stream=self.copies)
        uploaded = self.copies.record()
        self.stream.wait_event(uploaded)
        memory.data.copy_from_device_async(staging.data, host.nbytes, self.stream)
        self._staging[self.pointer(memory)] = (staging, self.stream.record())
        return uploaded

    def download(self, memory: Any, host: np.ndarray) -> None:
        memory.get(stream=self.stream, out=host)
        self.stream.synchronize()

    def zero(self, memory: Any) -> None:
        memory.data.memset_async(0, memory.nbytes, self.stream)

    def functions(self, artifact: Artifact, names: list[str]) -> dict[str, Any]:
        """The kernels ``names`` from the artifact's fat binary."""
        path = artifact.path / artifact.manifest.library
        try:
            module = self.cp.RawModule(path=str(path))
            return {name: module.get_function(name) for name in names}
        except self.cp.cuda.driver.CUDADriverError as error:
            raise UserError(
                f"cannot load {path} on GPU {self.id} (compute capability {self.arch}): {error}",
                hint=f"compile the net again with --cuda-arch {self.arch}",
            ) from None

    def launch(
        self, function: Any, grid: tuple, block: tuple, table: Any, n: int, stream: int = 0
    ) -> None:
        """Launch ``function`` for image ``n`` on stream ``stream`` (0: the main one)."""
        with self.streams[stream]:  # a RawKernel launches on the current stream
            function(grid, block, (table, np.int64(n)))

    def record(self, stream: int) -> Any:
        """An event after the work on stream ``stream`` so far (in a capture: after its
        nodes so far), for :meth:`wait`."""
        event = self.cp.cuda.Event(disable_timing=True)
        event.record(self.streams[stream])
        return event

    def wait(self, stream: int, event: Any) -> None:
        """Stream ``stream``'s later work waits for ``event`` (in a capture, a stream other
        than the main one joins the capture this way)."""
        self.streams[stream].wait_event(event)

    def capture(self, launches: Callable[[], None]) -> Callable[[], None]:
        """``launches`` recorded once as a CUDA graph, begun on the main stream (other
        streams join it through events, and must have joined the main stream again when
        ``launches`` returns); the returned call replays it."""
        self.stream.begin_capture()
        try:
            launches()
        finally:
            graph = self.stream.end_capture()
        return lambda: graph.launch(self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


@functools.cache
def open_device(device_id: int) -> Any:
    """The device object for GPU ``device_id``, one per process (executors on one GPU share
    its stream and its record of which host copies are current)."""
    return CudaDevice(device_id)
