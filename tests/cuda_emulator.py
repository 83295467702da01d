"""Running generated CUDA C on the CPU, so CI (no GPU) can check what it computes.

The source is compiled as C++ with a small header that maps CUDA's names onto
OpenMP: a block is a team of ``blockDim`` threads, ``__shared__`` arrays are
shared by the team, ``__syncthreads()`` is a barrier. Functions without shared
memory (the grid-stride ones, whose loops cover every index whatever the grid)
run as one thread per block along y and z (the images of a loop's launch). The
tensor cores' WMMA API (precision tf32 and bf16) is a reference emulation on
whole tiles, with the hardware's roundings. :class:`EmulatedDevice` stands in
for the GPU under the runtime's
:class:`~caffec.runtime.device_executor.DeviceExecutor`, so a CUDA artifact
runs here as it would on a device, copies and graphs included.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import types
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from caffec.runtime.device_executor import DeviceState
from caffec.runtime.executor import aligned_bytes

HEADER = r"""
#include <math.h>
#include <omp.h>
#include <string.h>
#include <type_traits>
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
#define __align__(n) __attribute__((aligned(n)))
/* a warp is part of the team: its barrier is the team's (called where all threads are) */
#define __syncwarp() _Pragma("omp barrier")

/* bfloat16 (cuda_bf16.h): float's top 16 bits, rounded to nearest even; NaN stays NaN */
struct __nv_bfloat16 { unsigned short bits; };
static inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned u; memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(unsigned short)((u >> 16) | 0x40)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(unsigned short)(u >> 16)};
}
static inline float __bfloat162float(__nv_bfloat16 h) {
    const unsigned u = (unsigned)h.bits << 16; float f; memcpy(&f, &u, sizeof f); return f;
}

/* The WMMA API (mma.h) as a reference: a fragment is the whole tile, held by every thread of
   the warp (on a GPU each lane holds an unspecified share, so code that only loads, stores,
   fills and multiplies whole fragments, as the generated code does, gets the same values).
   Each of the warp's threads computes the same tile; stores write the same values. */
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {};
struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision { struct tf32 {}; }
/* cvt.rna.tf32.f32: to 10 mantissa bits, to nearest, ties away from zero (add half of the
   dropped 13 bits to the magnitude, then clear them); infinities and NaN pass */
static inline float __float_to_tf32(float f) {
    unsigned u; memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;
    memcpy(&f, &u, sizeof f); return f;
}
/* what the tensor cores read of a float given as tf32: its top 19 bits (the generated code
   rounds first, so this truncates nothing there) */
static inline float caffec_operand(float f, precision::tf32) {
    unsigned u; memcpy(&u, &f, sizeof u); u &= ~0x1fffu; memcpy(&f, &u, sizeof f); return f;
}
static inline float caffec_operand(__nv_bfloat16 h, __nv_bfloat16) { return __bfloat162float(h); }
template <typename Use, int M, int N, int K> struct caffec_shape;
template <int M, int N, int K> struct caffec_shape<matrix_a, M, N, K> { enum { rows = M, cols = K }; };
template <int M, int N, int K> struct caffec_shape<matrix_b, M, N, K> { enum { rows = K, cols = N }; };
template <int M, int N, int K> struct caffec_shape<accumulator, M, N, K> { enum { rows = M, cols = N }; };
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    enum { rows = caffec_shape<Use, M, N, K>::rows, cols = caffec_shape<Use, M, N, K>::cols };
    float v[rows][cols];  /* the values the tensor cores multiply (operands: as read) */
};
template <typename Use, int M, int N, int K, typename T, typename L, typename E>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const E* p, unsigned ldm) {
    const bool rows = std::is_same<L, row_major>::value;
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c)
            f.v[r][c] = caffec_operand(p[rows ? r * ldm + c : c * ldm + r], T());
}
template <int M, int N, int K>
static inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                                     unsigned ldm, layout_t layout) {
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c) p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.v[r][c];
}
template <typename Use, int M, int N, int K, typename T, typename L>
static inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float value) {
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c) f.v[r][c] = value;
}
/* d = a b + c: float32 products (exact for tf32 and bf16 operands) added in k order */
template <int M, int N, int K, typename T, typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                            const fragment<matrix_a, M, N, K, T, LA>& a,
                            const fragment<matrix_b, M, N, K, T, LB>& b,
                            const fragment<accumulator, M, N, K, float>& c) {
    float out[M][N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float sum = c.v[i][j];
            for (int k = 0; k < K; ++k) sum += a.v[i][k] * b.v[k][j];
            out[i][j] = sum;
        }
    memcpy(d.v, out, sizeof out);
}
} }
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
    list of launches, event records and event waits made while capturing, per
    stream, run again on each replay in a random order the streams and events
    allow (each stream in order, a wait after its event's record), drawn from
    ``shuffle`` (seeded: every test on the emulated device replays its passes
    so, the same way each time), so that a wait the runtime or the manifest
    lacks shows as a wrong number; ``shuffle = None`` replays in the order of
    capture. A capture is checked as CUDA checks one: a stream joins it by
    waiting for an event recorded in it, and every stream joins the main one
    before it ends. The counters say what crossed the "bus", how often graphs were made, and on
    which streams the captured launches ran.
    """

    arch = "90"
    multiprocessors = 132  # an H100's or H200's

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = DeviceState()
        self.uploads = self.uploads_ahead = self.downloads = self.captures = self.replays = 0
        self.shuffle: np.random.Generator | None = np.random.default_rng(0)
        self.stream_launches: Counter[int] = Counter()  # captured launches, by stream
        self._recording: list[tuple[int, str, Any]] | None = None  # (stream, what, payload)
        self._joined: set[int] = set()  # the streams in the capture

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

    def launch(
        self, function: Any, grid: tuple, block: tuple, table: Any, n: int, stream: int = 0
    ) -> None:
        if self._recording is not None:
            self._captured(stream, "launch", (function, grid, block, table, n))
            self.stream_launches[stream] += 1
            return
        self._execute(function, grid, block, table, n)

    def record(self, stream: int) -> object:
        event = object()
        if self._recording is not None:
            self._captured(stream, "record", event)
        return event

    def wait(self, stream: int, event: object) -> None:
        if self._recording is None:
            return  # outside a capture everything ran as it was launched
        if not any(what == "record" and e is event for _, what, e in self._recording):
            raise RuntimeError("a wait in a capture for an event recorded outside it")
        self._joined.add(stream)
        self._captured(stream, "wait", event)

    def _captured(self, stream: int, what: str, payload: Any) -> None:
        if stream not in self._joined:
            raise RuntimeError(f"stream {stream} is used in a capture it has not joined")
        assert self._recording is not None
        self._recording.append((stream, what, payload))

    def _execute(self, function: Any, grid: tuple, block: tuple, table: Any, n: int) -> None:
        library, handle, shared = function  # launched by its own library's launcher
        if not shared:  # a grid-stride loop covers x with one thread (y: the launch's images)
            grid, block = (1, *grid[1:]), (1, 1, 1)
        dims = ctypes.c_uint * 3
        library.caffec_launch(handle, dims(*grid), dims(*block),
                              ctypes.c_void_p(table.ctypes.data), ctypes.c_long(n))  # fmt: skip

    def capture(self, launches: Any) -> Any:
        self.captures += 1
        self._recording, self._joined = [], {0}
        try:
            launches()
            recorded = self._recording
        finally:
            self._recording = None
        _check_joined(recorded)

        def replay() -> None:
            self.replays += 1
            for what, payload in _order(recorded, self.shuffle):
                if what == "launch":
                    self._execute(*payload)

        return replay

    def synchronize(self) -> None:
        pass


def _check_joined(recorded: list[tuple[int, str, Any]]) -> None:
    """Refuse a capture whose side streams did not end with an event the main stream waits
    for after it (CUDA's "unjoined" capture)."""
    for stream in {s for s, _, _ in recorded} - {0}:
        position, (_, what, event) = [(i, op) for i, op in enumerate(recorded)
                                      if op[0] == stream][-1]  # fmt: skip
        joined = any(s == 0 and w == "wait" and e is event for s, w, e in recorded[position:])
        if what != "record" or not joined:
            raise RuntimeError(f"stream {stream} did not join the main stream in the capture")


def _order(
    recorded: list[tuple[int, str, Any]], shuffle: np.random.Generator | None
) -> Iterator[tuple[str, Any]]:
    """The captured operations in the order of capture, or (``shuffle``) in a random order
    that keeps each stream's order and runs a wait only after its event's record."""
    if shuffle is None:
        yield from ((what, payload) for _, what, payload in recorded)
        return
    queues: dict[int, deque[tuple[str, Any]]] = {}
    for stream, what, payload in recorded:
        queues.setdefault(stream, deque()).append((what, payload))
    done: set[int] = set()  # the events recorded so far, by id
    while queues:
        ready = [s for s, q in queues.items() if q[0][0] != "wait" or id(q[0][1]) in done]
        if not ready:
            raise RuntimeError("the captured streams wait for each other")
        stream = ready[int(shuffle.integers(len(ready)))]
        what, payload = queues[stream].popleft()
        if not queues[stream]:
            del queues[stream]
        if what == "record":
            done.add(id(payload))
        yield what, payload


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
