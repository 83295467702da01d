"""The C target: one translation unit per net, rendered from ``templates/c``.

Each kernel becomes a static function ``kN_<layer type>_<primitive>(buf, n)``
that finds its operands in the pointer table ``buf`` (slot numbers come from
the kernel graph) and, inside a per-image loop, at iteration ``n``. Each layer
becomes a forward (and backward) step function, and two entry points run a
range of steps, so the runtime can run a whole pass or part of one. GEMMs
follow the plan the CPU target gave them (:mod:`caffec.compiler.targets.cpu`),
and a kernel opens an OpenMP region only above its primitive's grain of work
(:func:`parallel`): below it the generated code has no region at all. A region runs on
``caffec_threads`` threads, which the runtime sets when it loads the library
(:mod:`caffec.runtime.threads`), so no thread count is fixed in the code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from caffec.codegen.renderer import (
    Rendered,
    environment,
    kernel_names,
    layer_numbers,
    template_helpers,
)
from caffec.codegen.toolchain import build_library, c_flags
from caffec.compiler.kernels import Kernel, KernelGraph, Loop, Step
from caffec.compiler.targets.cpu import CpuTarget, parallel_grain
from caffec.errors import InternalError
from caffec.formats.manifest import ABI_VERSION
from caffec.version import __version__


class CRenderer:
    """Generated C for a CPU (``target``), built by the C compiler; ``reference`` builds
    (-O0) are compiled without vectorisation (see :func:`~caffec.codegen.toolchain.c_flags`)."""

    source_name = "kernels.c"
    library_name = "kernels.so"

    def __init__(self, target: CpuTarget, reference: bool = False) -> None:
        self.target = target
        self.reference = reference
        self.env = environment("c")

    def build(self, source: str) -> tuple[Path, list[str]]:
        flags = c_flags(self.target.cpu, self.reference)
        return build_library(source, flags), flags

    def render(self, kgraph: KernelGraph) -> Rendered:
        names = kernel_names(kgraph)
        layer_index = layer_numbers(kgraph)
        loops = {  # each loop kernel's loop
            id(k): instr
            for steps in kgraph.steps().values()
            for step in steps
            for instr in step.instrs
            if isinstance(instr, Loop)
            for k in instr.body
        }
        kernels = []
        for direction, steps in kgraph.steps().items():
            for step in steps:
                for kernel in step.kernels():
                    where = (f"layer #{layer_index[step.layer]}" if step.layer in layer_index
                             else "the net")  # fmt: skip
                    what = kernel.prim
                    if kernel.prim == "fused":
                        what += " " + " + ".join(part.prim for part in kernel.attrs["parts"])
                    loop = loops.get(id(kernel))
                    comment = f"{what}, {direction} of {where} ({step.layer_type})"
                    kernels.append({"name": names[id(kernel)], "body": self.body(kernel),
                                    "comment": comment, "count": loop.count if loop else 1,
                                    "threads": loop.threads if loop else 1})  # fmt: skip
        prelude = self.env.get_template("prelude.c.j2").render(
            version=__version__, dtype=kgraph.dtype, n_kernels=len(kernels)
        )
        source = self.env.get_template("net.c.j2").render(
            prelude=prelude,
            kernels=kernels,
            directions={
                direction: [_step_view(s, names, layer_index) for s in steps]
                for direction, steps in kgraph.steps().items()
            },
            abi=ABI_VERSION,
            parallel=parallel(parallel_grain("net")),
        )
        return Rendered(source)

    def body(self, kernel: Kernel, team: bool = False, last: bool = False) -> str:
        """The C of one kernel: a fused kernel renders its parts one after another, in one
        parallel region where they can share one (:meth:`one_region`). ``team``: ``kernel``
        is a part that every thread of such a region runs (``last``: its last part)."""
        grain = parallel_grain(kernel.prim)
        return self.env.get_template(f"{kernel.prim}.c.j2").render(
            kernel=kernel, **template_helpers(), body=self.body, team=team, last=last,
            shared=kernel.prim == "fused" and self.one_region(kernel),
            parallel=in_team(grain, last) if team else parallel(grain),
        )  # fmt: skip

    def one_region(self, kernel: Kernel) -> bool:
        """Whether the parts of a fused kernel run in one parallel region, a barrier between
        them instead of a region each (whose start wakes the threads and whose end waits
        for all of them): where a team can share every part's work, and at least two parts
        would open a region of their own."""
        parts = kernel.attrs["parts"]
        if not all(_team_shares(part) for part in parts):
            return False
        return sum("#pragma omp parallel" in self.body(part) for part in parts) >= 2


def parallel(grain: int) -> Callable[..., str]:
    """The templates' ``parallel(work, clauses)``: the pragma that runs a loop of ``work``
    (elements, windows, multiply-adds: the primitive's measure, as ``grain`` is) on the
    runtime's threads, or, below ``grain``, a comment and no region: a small kernel runs on
    the calling thread, as waking threads and waiting for them at the region's barrier
    would cost more than its work (and, on a busy machine, a time slice)."""

    def pragma(work: int, clauses: str = "for schedule(static)") -> str:
        if work <= grain:
            return f"/* {work} <= {grain}: on the calling thread */"
        return " ".join(["#pragma omp parallel", *clauses.split(), "num_threads(caffec_threads)"])

    return pragma


def in_team(grain: int, last: bool) -> Callable[..., str]:
    """``parallel`` for a part of a fused kernel whose parts share one region: its loop split
    among the region's threads, or, below ``grain``, run by one of them, each with a barrier
    after it; none after the ``last`` part, where the region's end waits anyway."""
    wait = " nowait" if last else ""

    def pragma(work: int, clauses: str = "for schedule(static)") -> str:
        if clauses != "for schedule(static)":
            raise InternalError(f"a loop with '{clauses}' cannot share a fused kernel's region")
        return f"#pragma omp {'for schedule(static)' if work > grain else 'single'}{wait}"

    return pragma


# The primitives whose C is declarations, then one loop that `parallel` opens: a team of
# threads already running can share the loop (a reduction too, unless it has one output).
TEAM_LOOPS = frozenset(["map", "copy", "im2col", "col2im", "im2col_nd", "col2im_nd", "pool",
                        "pool_grad"])  # fmt: skip


def _team_shares(part: Kernel) -> bool:
    """Whether the threads of an enclosing region can share ``part``'s work: a loop of
    :data:`TEAM_LOOPS`, or a packed GEMM (each thread its rectangle of C)."""
    if part.prim == "reduce":
        return part.attrs["out_size"] > 1
    if part.prim == "gemm":
        return part.attrs["plan"]["path"] == "packed"
    return part.prim in TEAM_LOOPS


def _step_view(step: Step, names: dict[int, str], layer_index: dict[str, int]) -> dict[str, Any]:
    instrs = []
    for instr in step.instrs:
        if isinstance(instr, Loop):
            sums = [{"partial": p.index, "total": t.index, "size": p.size, "copies": p.copies}
                    for p, t in instr.partial_sums]  # fmt: skip
            instrs.append(
                {"loop": True, "count": instr.count, "threads": instr.threads,
                 "names": [names[id(k)] for k in instr.body], "partial_sums": sums}
            )  # fmt: skip
        else:
            instrs.append({"loop": False, "names": [names[id(instr)]]})
    return {
        "layer_index": layer_index.get(step.layer, -1),
        "layer_type": step.layer_type,
        "instrs": instrs,
    }
