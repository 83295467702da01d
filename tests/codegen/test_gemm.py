"""The generated GEMM against numpy in float64: every path, transpose, alpha, accumulate, batch.

Each case renders caffec's GEMM template for one shape (shapes are compile-time constants)
into a small library whose ``run(buf, count)`` calls the kernel for n = 0 .. count - 1, as a
per-image loop does, and compares what it wrote with a float64 reference computed here.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import caffec
from caffec.codegen.c import CRenderer
from caffec.codegen.toolchain import build_library, c_flags
from caffec.compiler.kernels import Buffer, Operand
from caffec.compiler.primitives import gemm
from caffec.compiler.targets.cpu import CpuTarget, plan_gemm

DTYPES = {"float32": np.float32, "float64": np.float64}
renderer = functools.cache(lambda: CRenderer(CpuTarget()))


@dataclass
class Case:
    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    accumulate: bool = False
    batch: int = 1
    count: int = 1  # calls in a per-image loop, each with operands advanced by their step
    dtype: str = "float32"

    def sizes(self) -> tuple[int, int, int]:
        return self.m * self.k, self.k * self.n, self.m * self.n


def layout(case: Case) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """(offsets, batch strides, loop steps) of A, B and C: gaps everywhere, so that an
    element read or written out of place shows."""
    sizes = case.sizes()
    strides = tuple(s + 3 for s in sizes) if case.batch > 1 else (0, 0, 0)
    offsets = (5, 2, 7)
    # B is reused by every iteration (step 0), as a convolution's columns are
    steps = (sizes[0] * case.batch + 11, 0, sizes[2] * case.batch + 13)
    return offsets, strides, steps  # type: ignore[return-value]


def source(case: Case, plan: dict | None = None) -> str:
    offsets, strides, steps = layout(case)
    buffers = [Buffer(name, (1,), "value", index=i) for i, name in enumerate("ABC")]
    a, b, c = (Operand(x, o, s) for x, o, s in zip(buffers, offsets, steps, strict=True))
    kernel = plan_gemm(gemm(a, b, c, case.m, case.n, case.k, case.trans_a, case.trans_b,
                            case.alpha, case.accumulate, case.batch, strides))  # fmt: skip
    kernel.attrs["plan"].update(plan or {})
    prelude = renderer().env.get_template("prelude.c.j2")
    body = renderer().body(kernel)
    return (
        prelude.render(version=caffec.__version__, dtype=case.dtype, n_kernels=1)
        + "\nstatic void k0_gemm(void** buf, long n) {\n    (void)n;\n"
        + body
        + "}\n\nvoid run(void** buf, long count) {\n"
        "    for (long n = 0; n < count; ++n) k0_gemm(buf, n);\n}\n"
    )


def run_case(
    case: Case, plan: dict | None = None, flags: list[str] | None = None, threads: int = 2
) -> None:
    """Run the generated GEMM on ``threads`` threads on random operands and check every element
    of C's buffer."""
    library = ctypes.CDLL(str(build_library(source(case, plan), flags or c_flags())))
    library.caffec_set_threads(threads)
    library.run.argtypes = [ctypes.c_void_p, ctypes.c_long]
    library.run.restype = None
    offsets, strides, steps = layout(case)
    sizes = case.sizes()
    extent = [o + st * (case.batch - 1) + sp * (case.count - 1) + s + 4
              for o, st, sp, s in zip(offsets, strides, steps, sizes, strict=True)]  # fmt: skip
    rng = np.random.default_rng(case.m * 10007 + case.n * 101 + case.k)
    dtype = DTYPES[case.dtype]
    a, b, c = (rng.standard_normal(size).astype(dtype) for size in extent)
    expected = c.astype(np.float64)
    bound = np.zeros_like(expected)  # |alpha| |op(A)| |op(B)| (+ |C|): what rounding scales with
    for n, g in itertools.product(range(case.count), range(case.batch)):
        start = [o + st * g + sp * n for o, st, sp in zip(offsets, strides, steps, strict=True)]
        a_ = a[start[0] : start[0] + sizes[0]].astype(np.float64)
        b_ = b[start[1] : start[1] + sizes[1]].astype(np.float64)
        op_a = a_.reshape(case.k, case.m).T if case.trans_a else a_.reshape(case.m, case.k)
        op_b = b_.reshape(case.n, case.k).T if case.trans_b else b_.reshape(case.k, case.n)
        where = slice(start[2], start[2] + sizes[2])
        product = case.alpha * (op_a @ op_b).ravel()
        scale = abs(case.alpha) * (np.abs(op_a) @ np.abs(op_b)).ravel()
        if case.accumulate:
            bound[where] = scale + np.abs(expected[where])
            expected[where] += product
        else:
            bound[where] = scale
            expected[where] = product
    buf = (ctypes.c_void_p * 3)(a.ctypes.data, b.ctypes.data, c.ctypes.data)
    library.run(buf, case.count)
    tolerance = 2 * np.finfo(dtype).eps * (case.k + 2) * bound + np.finfo(dtype).tiny
    error = np.abs(c.astype(np.float64) - expected)
    worst = int(np.argmax(error - tolerance))
    assert np.all(error <= tolerance), (
        f"{case}: element {worst} is {c[worst]!r}, expected {expected[worst]!r} "
        f"(tolerance {tolerance[worst]:.3g})"
    )


# Sizes around the tile sizes (MR 4, 6, 12; NR 8, 16, 32 reals; the dot kernel's 2, 4, 6)
# and primes, up to past a K block.
SIZES = st.sampled_from([1, 2, 3, 5, 6, 7, 8, 11, 13, 16, 17, 24, 31, 33, 37, 64, 97, 131,
                         193, 256, 257, 300, 301])  # fmt: skip
CASES = st.builds(
    Case,
    m=SIZES,
    n=SIZES,
    k=SIZES,
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, -1.0, 0.5, 2.5, 0.0]),
    accumulate=st.booleans(),
    batch=st.integers(1, 3),
    count=st.integers(1, 2),
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(case=CASES)
@example(case=Case(1, 1, 1))
@example(case=Case(257, 1, 300, trans_a=True, accumulate=True, batch=2))
@example(case=Case(1, 301, 257, trans_b=True, alpha=-1.0, count=2))
@example(case=Case(300, 301, 1, trans_a=True, trans_b=True, alpha=2.5))
def test_random_shapes_against_numpy(case: Case, dtype: str) -> None:
    case.dtype = dtype
    run_case(case)


# Every path on every transpose pair, with blocks small enough that a product spans several
# K blocks, A blocks and B panels, and partial tiles on every side.
PATHS = {
    "direct": {"path": "direct", "swap": False},
    "direct C'": {"path": "direct", "swap": True},
    "packed": {"path": "packed", "swap": False},
    "packed small blocks": {"path": "packed", "swap": False, "kc": 24, "mc": 36, "nc": 64},
    "packed C' small blocks": {"path": "packed", "swap": True, "kc": 24, "mc": 36, "nc": 64},
    "dot": {"path": "dot", "swap": False},
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("trans", ["NN", "NT", "TN", "TT"])
def test_every_path(path: str, trans: str, dtype: str) -> None:
    shapes = [(37, 131, 97, False), (13, 7, 70, True)]
    for m, n, k, accumulate in shapes if dtype == "float32" else shapes[:1]:
        case = Case(m, n, k, trans[0] == "T", trans[1] == "T", alpha=-0.5,
                    accumulate=accumulate, batch=2, count=2, dtype=dtype)  # fmt: skip
        run_case(case, PATHS[path])


@pytest.mark.parametrize("threads", [1, 3, 4])
def test_threaded_paths_split_the_work_for_any_thread_count(threads: int) -> None:
    if "-fopenmp" not in c_flags():
        pytest.skip("no OpenMP")
    for plan in [{"path": "packed"}, {"path": "packed", "nc": 64, "mc": 12},
                 {"path": "direct"}, {"path": "dot"}]:  # fmt: skip
        plan["parallel"] = True
        run_case(Case(131, 97, 300, trans_b=True, accumulate=True, batch=2), plan, threads=threads)
        run_case(Case(5, 301, 64, trans_a=True, count=2, dtype="float64"), plan, threads=threads)


@pytest.mark.parametrize("isa", [0, 1, 2])
def test_other_instruction_sets(isa: int) -> None:
    """The 32-byte-vector (AVX) kernel, the 16-byte one and the plain C one, built here by
    forcing them (GCC lowers vectors wider than the machine's to narrower instructions)."""
    flags = [*c_flags(), f"-DCAFFEC_GEMM_ISA={isa}"]
    for path in ("direct", "packed", "dot"):
        for trans in ("NN", "NT", "TN"):
            case = Case(19, 37, 300, trans[0] == "T", trans[1] == "T", alpha=2.5,
                        accumulate=True, batch=2, count=2)  # fmt: skip
            run_case(case, {"path": path, "kc": 128}, flags)


def test_small_products_run_on_the_calling_thread_without_copies() -> None:
    """LeNet's per-image GEMMs: no parallel region, no packing (the direct or dot path)."""
    buffer = Buffer("x", (1,), "value")
    for m, n, k, trans_a, trans_b in [(20, 576, 25, False, False), (20, 25, 576, False, True),
                                      (10, 500, 64, True, False)]:  # fmt: skip
        plan = plan_gemm(gemm(buffer, buffer, buffer, m, n, k, trans_a, trans_b)).attrs["plan"]
        assert not plan["parallel"]
        assert plan["path"] in ("direct", "dot")
    big = plan_gemm(gemm(buffer, buffer, buffer, 1024, 1024, 1024)).attrs["plan"]
    assert big["parallel"] and big["path"] == "packed"


def test_few_rows_times_weights_read_the_weights_where_they_lie() -> None:
    """An inner product's input gradient (batch rows times the weights) takes the direct path
    while K is short; the same shape with other operands, or a long K, is packed."""
    buffer = Buffer("x", (1,), "value")

    def path(m: int, n: int, k: int, weights_b: bool) -> str:
        kernel = plan_gemm(gemm(buffer, buffer, buffer, m, n, k, weights_b=weights_b))
        return kernel.attrs["plan"]["path"]

    assert path(64, 800, 500, weights_b=True) == "direct"
    assert path(64, 800, 500, weights_b=False) == "packed"
    assert path(10, 4096, 4096, weights_b=True) == "packed"
    assert path(256, 800, 500, weights_b=True) == "packed"
