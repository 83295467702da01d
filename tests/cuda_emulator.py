"""Running generated CUDA C on the CPU, so CI (no GPU) can check what it computes.

The source is compiled as C++ with a small header that maps CUDA's names onto
OpenMP: a block is a team of ``blockDim`` threads, ``__shared__`` arrays are
shared by the team, ``__syncthreads()`` is a barrier. Functions without shared
memory (the grid-stride ones, whose loops cover every index whatever the grid)
run as one thread. :func:`emulate` then points a ``CompiledNet`` of the same
kernel graph (the C target's artifact: the manifests are equal) at the CUDA
functions, launched as the manifest's ``cuda`` entry says, on the net's own
buffers.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
from pathlib import Path
from typing import Any

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


def emulate(net: Any, source: str, cuda: dict[str, Any], folder: Path) -> None:
    """Make ``net`` (a CompiledNet) run its passes with the CUDA functions instead of C."""
    library = build(source, folder)
    library.caffec_launch.restype = None
    dims = ctypes.c_uint * 3

    def launch(spec: dict[str, Any], table: Any, n: int) -> None:
        shared = "__shared__" in bodies[spec["function"]]
        grid, block = (spec["grid"], spec["block"]) if shared else ([1, 1, 1], [1, 1, 1])
        function = ctypes.cast(getattr(library, spec["function"]), ctypes.c_void_p)
        library.caffec_launch(function, dims(*grid), dims(*block), table, ctypes.c_long(n))

    def entry(direction: str) -> Any:
        def run(table: Any, begin: int, end: int) -> int:
            for step in cuda["steps"][direction][begin:end]:
                for instr in step:
                    for spec in instr.get("before", []):
                        launch(spec, table, 0)
                    for n in range(instr["count"]):
                        for kernel in instr["kernels"]:
                            for spec in cuda["functions"][kernel]:
                                launch(spec, table, n)
                    for spec in instr.get("after", []):
                        launch(spec, table, 0)
            return 0

        return run

    bodies = _bodies(source)
    for direction in ("forward", "backward", "update"):
        net._exec._entries[direction] = entry(direction)


def _bodies(source: str) -> dict[str, str]:
    """Each function's text, by name."""
    out: dict[str, str] = {}
    marker = 'extern "C" __global__ void '
    for chunk in source.split(marker)[1:]:
        out[chunk[: chunk.index("(")]] = chunk
    return out
