"""The C target: one translation unit per net, rendered from ``templates/c``.

Each kernel becomes a static function ``kN_<layer type>_<primitive>(buf, n)``
that finds its operands in the pointer table ``buf`` (slot numbers come from
the kernel graph) and, inside a per-image loop, at iteration ``n``. Each layer
becomes a forward (and backward) step function, and two entry points run a
range of steps, so the runtime can run a whole pass or part of one. GEMMs
follow the plan the CPU target gave them (:mod:`caffec.compiler.targets.cpu`),
and a kernel opens an OpenMP region only above its primitive's grain of work.
"""

from __future__ import annotations

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
            grain=parallel_grain("net"),
        )
        return Rendered(source)

    def body(self, kernel: Kernel) -> str:
        """The C of one kernel (a fused kernel renders its parts one after another)."""
        return self.env.get_template(f"{kernel.prim}.c.j2").render(
            kernel=kernel, **template_helpers(), body=self.body,
            grain=parallel_grain(kernel.prim),
        )  # fmt: skip


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
