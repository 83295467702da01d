"""The CPU's measured peak float32 rate: what caffec's efficiency figures are fractions of.

A clock read from /proc/cpuinfo times a guessed number of FMA pipes is no peak: cores boost
above the clock they report, and how many vector FMAs a core issues per cycle differs
between cores of one instruction set (a Zen 4 runs AVX-512 on two 256-bit pipes, a Zen 5
on two 512-bit ones). So the peak is measured: a probe kernel (``templates/c/peak.c.j2``)
runs independent chains of the generated GEMM's own fused multiply-add, on the widest
vectors the build targets, built by the C compiler with the flags a net gets, on one
thread and then on every CPU the process may use; the best of several rounds counts.
Each thread divides its work by its own CPU time, so the figure is what the cores do while
they run, even on a machine where other work takes turns on them (where the wall clock of
a round waits for the thread descheduled longest). Two threads on the two halves of one
SMT core that the scheduler never ran together would each count the whole core.
"""

from __future__ import annotations

import ctypes
import functools
import time
from dataclasses import dataclass

from caffec.codegen.renderer import environment
from caffec.codegen.toolchain import build_library, c_flags, vector_bytes
from caffec.runtime.threads import available_cpus
from caffec.version import __version__

ISA_NAMES = {3: "AVX-512", 2: "AVX", 1: "128-bit vectors", 0: "plain C"}
# independent accumulator chains: more than FMA pipes x latency (2 x 4 on current x86 cores)
# keeps every pipe busy; the registers (32 with AVX-512, else 16) hold them and two operands
CHAINS_AVX512, CHAINS = 16, 12
ROUND_SECONDS = 0.05  # long enough that waking the threads costs nothing measurable


@dataclass(frozen=True)
class Peak:
    """A measured peak: GFLOP/s of one thread and of ``threads`` threads at once, on the
    instruction set ``isa`` (a name) with vectors of ``lanes`` float32s."""

    per_core: float
    total: float
    threads: int
    isa: str
    lanes: int

    def at(self, threads: int) -> float:
        """The peak GFLOP/s of ``threads`` threads: the measured total where they are as
        many as measured, else one core's rate times their number."""
        return self.total if threads >= self.threads else self.per_core * threads

    def describe(self) -> str:
        """One line for people: the figure and how it was measured."""
        return (f"{self.total:.0f} GFLOP/s float32 on {self.threads} threads "
                f"({self.per_core:.0f} on one), measured by multiply-add chains on {self.isa} "
                f"({self.lanes} lanes)")  # fmt: skip


def _library(target_cpu: str) -> tuple[ctypes.CDLL, int]:
    """The probe built for ``target_cpu``, and its number of chains."""
    chains = CHAINS_AVX512 if vector_bytes(target_cpu) >= 64 else CHAINS
    source = (
        environment("c")
        .get_template("peak.c.j2")
        .render(chains=chains, version=__version__, dtype="float32", n_kernels=1)
    )
    library = ctypes.CDLL(str(build_library(source, c_flags(target_cpu))))
    library.caffec_peak_run.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p,
                                        ctypes.c_void_p]  # fmt: skip
    library.caffec_peak_run.restype = ctypes.c_int
    library.caffec_peak_lanes.restype = ctypes.c_long
    return library, chains


def _rate(library: ctypes.CDLL, threads: int, chains: int, rounds: int) -> tuple[float, int]:
    """The best GFLOP/s of ``rounds`` runs on ``threads`` threads (the sum of each thread's
    work over its CPU time), and the threads that ran."""
    sink = (ctypes.c_float * threads)()
    seconds = (ctypes.c_double * threads)()
    iterations = 100_000
    started = time.perf_counter()
    ran = library.caffec_peak_run(iterations, threads, sink, seconds)  # wakes them; sizes
    elapsed = max(time.perf_counter() - started, 1e-6)
    iterations = max(iterations, int(iterations * ROUND_SECONDS / elapsed))
    flops = 2.0 * chains * library.caffec_peak_lanes() * iterations  # one thread's
    best = 0.0
    for _ in range(rounds):
        ran = library.caffec_peak_run(iterations, threads, sink, seconds)
        best = max(best, sum(flops / max(seconds[i], 1e-9) for i in range(ran)))
    return best / 1e9, ran


@functools.cache
def measure_peak(target_cpu: str = "native", rounds: int = 5) -> Peak:
    """The peak float32 rate of the C target built for ``target_cpu`` on this machine,
    measured once per process (about a second) and kept."""
    library, chains = _library(target_cpu)
    cpus, _ = available_cpus()
    per_core, _ = _rate(library, 1, chains, rounds)
    total, threads = _rate(library, cpus, chains, rounds) if cpus > 1 else (per_core, 1)
    isa = ISA_NAMES[library.caffec_peak_isa()]
    return Peak(per_core, total, threads, isa, library.caffec_peak_lanes())
