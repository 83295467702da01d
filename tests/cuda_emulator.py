"""Running generated CUDA C on the CPU, so CI (no GPU) can check what it computes.

The source is compiled as C++ with a small header that maps CUDA's names onto
OpenMP: a block is a team of ``blockDim`` threads, ``__shared__`` arrays are
shared by the team, ``__syncthreads()`` is a barrier. Functions without shared
memory (the grid-stride ones, whose loops cover every index whatever the grid)
run as one thread. :class:`EmulatedDevice` stands in for the GPU under the
runtime's :class:`~caffec.runtime.device_executor.DeviceExecutor`, so a CUDA
artifact runs here as it would on a device, copies and graphs included.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import types
from pathlib import Path
from typing import Any

import numpy as np

from caffec.runtime.device_executor import DeviceState
from caffec.runtime.executor import aligned_bytes

HEADER = r"""
#include <math.h>
#include <omp.h>
#include <string.h>
struct caffec_dim3 { unsigned x, y, z; };
static caffec_dim3 caffec_grid, caffec_block, caffec_block_index;
static inline caffec_dim3 caffec_thread_index() {
    const unsigned t = (unsigned)omp_get_thread_num();
    return {t % caffec_block.x, t / caffec_block.x % caffec_block.y,
            t / (caffec_block.x * caffec_block.y)};
}
#define gridDim caffec_grid
#define blockDim caffec_block
#define blockIdx caffec_block_index
#define threadIdx caffec_thread_index()
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() _Pragma("omp barrier")
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
"""

LAUNCHER = r"""
typedef void (*caffec_function)(void* const*, long);
extern "C" void caffec_launch(caffec_function f, const unsigned* grid, const unsigned* block,
                              void* const* buf, long n) {
    caffec_grid = {grid[0], grid[1], grid[2]};
    caffec_block = {block[0], block[1], block[2]};
    const int threads = (int)(block[0] * block[1] * block[2]);
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                caffec_block_index = {x, y, z};
                #pragma omp parallel num_threads(threads)
                f(buf, n);
            }
}
"""


def build(source: str, folder: Path) -> ctypes.CDLL:
    """The CUDA ``source`` compiled for the CPU (cached in ``folder`` by its hash)."""
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    library = folder / f"emulated-{key}.so"
    if not library.exists():
        unit = folder / f"emulated-{key}.cpp"
        unit.write_text(HEADER + source + LAUNCHER)
        subprocess.run(["g++", "-x", "c++", "-std=c++17", "-O1", "-fopenmp", "-shared",
                        "-fPIC", "-w", str(unit), "-o", str(library)], check=True)  # fmt: skip
    return ctypes.CDLL(str(library))


class EmulatedDevice:
    """:class:`caffec.runtime.cuda_device.CudaDevice`'s interface on the CPU.

    "Device memory" is numpy byte arrays apart from the runtime's host copies,
    so a copy the runtime forgets shows as a wrong number; the functions are
    the artifact's CUDA source built by :func:`build`; a captured graph is the
    list of launches made while capturing, run again on each replay. The
    counters say what crossed the "bus" and how often graphs were made.
    """

    arch = "90"
    multiprocessors = 132  # an H100's or H200's

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = DeviceState()
        self.uploads = self.uploads_ahead = self.downloads = self.captures = self.replays = 0
        self._recording: list[tuple] | None = None

    def alloc(self, nbytes: int) -> np.ndarray:
        return aligned_bytes(nbytes)

    def view(self, memory: np.ndarray, offset: int, nbytes: int) -> np.ndarray:
        return memory[offset : offset + nbytes]

    def pointer(self, memory: np.ndarray) -> int:
        return memory.ctypes.data

    def host_bytes(self, nbytes: int) -> np.ndarray:
        return aligned_bytes(nbytes)

    def upload(self, memory: np.ndarray, host: np.ndarray) -> None:
        self.uploads += 1
        memory[...] = host

    def upload_ahead(self, memory: np.ndarray, host: np.ndarray) -> None:
        self.uploads_ahead += 1
        memory[...] = host

    def download(self, memory: np.ndarray, host: np.ndarray) -> None:
        self.downloads += 1
        host[...] = memory

    def zero(self, memory: np.ndarray) -> None:
        memory[...] = 0

    def functions(self, artifact: Any, names: list[str]) -> dict[str, Any]:
        source = (artifact.path / artifact.manifest.source).read_text()
        library = build(source, self.folder)
        library.caffec_launch.restype = None
        bodies = _bodies(source)
        return {name: (library, ctypes.cast(getattr(library, name), ctypes.c_void_p),
                       "__shared__" in bodies[name]) for name in names}  # fmt: skip

    def launch(self, function: Any, grid: tuple, block: tuple, table: Any, n: int) -> None:
        if self._recording is not None:
            self._recording.append((function, grid, block, table, n))
            return
        library, handle, shared = function  # launched by its own library's launcher
        if not shared:  # a grid-stride loop covers every index with one thread
            grid, block = (1, 1, 1), (1, 1, 1)
        dims = ctypes.c_uint * 3
        library.caffec_launch(handle, dims(*grid), dims(*block),
                              ctypes.c_void_p(table.ctypes.data), ctypes.c_long(n))  # fmt: skip

    def capture(self, launches: Any) -> Any:
        self.captures += 1
        self._recording = recorded = []
        try:
            launches()
        finally:
            self._recording = None

        def replay() -> None:
            self.replays += 1
            for call in recorded:
                self.launch(*call)

        return replay

    def synchronize(self) -> None:
        pass


def _bodies(source: str) -> dict[str, str]:
    """Each function's text, by name."""
    out: dict[str, str] = {}
    marker = 'extern "C" __global__ void '
    for chunk in source.split(marker)[1:]:
        out[chunk[: chunk.index("(")]] = chunk
    return out


def fake_cupy(count: int | Exception) -> types.ModuleType:
    """A module with the part of CuPy's API that ``caffec.runtime.gpu`` uses (device count and
    properties), reporting ``count`` devices or raising ``count``."""

    def get_device_count() -> int:
        if isinstance(count, Exception):
            raise count
        return count

    def get_device_properties(device: int) -> dict:
        return {"name": f"Card {device}".encode(), "major": 9, "minor": 0,
                "totalGlobalMem": 80 << 30, "sharedMemPerBlock": 49152, "regsPerBlock": 65536,
                "warpSize": 32, "maxThreadsPerBlock": 1024, "multiProcessorCount": 132,
                "clockRate": 1980000}  # fmt: skip

    runtime = types.SimpleNamespace(
        getDeviceCount=get_device_count,
        getDeviceProperties=get_device_properties,
        CUDARuntimeError=CUDARuntimeError,
    )
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=runtime)  # type: ignore[attr-defined]
    return module


class CUDARuntimeError(RuntimeError):
    """The stand-in CuPy's runtime error (no driver, no device)."""
