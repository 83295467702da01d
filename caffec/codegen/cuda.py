"""The CUDA target: the kernel graph as CUDA C, rendered from ``templates/cuda``.

The kernel graph the CUDA target lowered (its own algorithms: see
:mod:`caffec.compiler.targets.cuda`), rendered with the C target's expressions
and pointer table. Every primitive becomes an ``extern "C" __global__`` function
``kN_<layer type>_<primitive>(buf, n)`` over the device's pointer table
``buf`` (slot numbers from the kernel graph, as in C) and the image number
``n`` of a per-image loop. A fused kernel becomes its parts, one function
each, launched in order on one stream (the stream orders them, as the C
target's sequential blocks do). Elementwise work runs in grid-stride loops
with its sizes compiled in; a GEMM is a tiled shared-memory kernel, each
thread computing up to 4x4 elements of C, its batch on the grid's z axis.
Where the C target scatters (pooling gradients, col2im), a thread per
destination element gathers instead, so no two threads write one place and
the sums do not depend on timing.

What the runtime needs to launch them is in the manifest's ``cuda`` entry:
for each kernel its functions with their grid and block, and for each step
its instructions as (loop count, kernels): the host runs a per-image loop,
launching the loop's kernels for n = 0, 1, ... in order. The launch geometry
fills the target's multiprocessors (:class:`~caffec.compiler.targets.cuda.CudaTarget`).
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
from caffec.codegen.toolchain import build_cuda, cuda_flags
from caffec.compiler.kernels import Kernel, KernelGraph, kernels_of
from caffec.compiler.targets.cuda import CudaTarget
from caffec.formats.manifest import CudaInstr, CudaLaunches, Launch
from caffec.version import __version__

BLOCK = 256  # threads per block of a grid-stride kernel
MAX_BLOCKS = 8192  # enough to fill any current GPU; the loops stride over the rest
TILE = 16  # a GEMM block has TILE x TILE threads and steps through K by TILE


def work_items(part: Kernel) -> int:
    """How many independent elements a grid-stride function's threads share."""
    a = part.attrs
    sizes = {
        "map": lambda: a["size"],
        "copy": lambda: a["size"],
        "reduce": lambda: a["out_size"],
        "pool": lambda: a["P"] * a["OH"] * a["OW"],
        "pool_grad": lambda: a["P"] * a["H"] * a["W"],
        "im2col": lambda: a["C"] * a["KH"] * a["KW"] * a["OH"] * a["OW"],
        "col2im": lambda: a["C"] * a["H"] * a["W"],
        "im2col_nd": lambda: a["C"] * a["taps"] * a["positions"],
        "col2im_nd": lambda: a["C"] * a["pixels"],
        # a thread per output, or (the image gradient) per pixel; the weight gradient's
        # blocks are laid out by geometry()
        "conv": lambda: (
            a["N"] * a["M"] * a["OH"] * a["OW"]
            if a["mode"] == "forward"
            else a["N"] * a["C"] * a["H"] * a["W"]
        ),
        "winograd": lambda: a["units"],  # a thread per block transform
    }
    return int(sizes[part.prim]())


def geometry(part: Kernel, multiprocessors: int) -> tuple[list[int], list[int]]:
    """The grid and block a function is launched with."""
    if part.prim == "gemm":
        a, (reach, slices) = part.attrs, gemm_layout(part.attrs, multiprocessors)
        side = TILE * reach
        return [-(-a["N"] // side), -(-a["M"] // side), a["batch"]], [TILE, TILE, slices]
    if part.prim == "reduce" and reduce_per_block(part.attrs, multiprocessors):
        return [min(MAX_BLOCKS, part.attrs["out_size"]), 1, 1], [BLOCK, 1, 1]
    if part.prim == "conv" and part.attrs["mode"] == "filter":  # a block per weight
        a = part.attrs
        return [min(MAX_BLOCKS, a["M"] * a["CG"] * a["KH"] * a["KW"]), 1, 1], [BLOCK, 1, 1]
    blocks = min(MAX_BLOCKS, max(1, -(-work_items(part) // BLOCK)))
    return [blocks, 1, 1], [BLOCK, 1, 1]


def gemm_layout(attrs: dict[str, Any], multiprocessors: int) -> tuple[int, int]:
    """How a GEMM's block works: (reach, slices). Each thread computes reach x reach
    elements of C: 4 (a 64x64 tile per block, four multiply-adds per value read from shared
    memory) where the grid still has a block for every multiprocessor, else 2, else 1. With
    a grid too small even then and a long K (a weight gradient: few outputs, a sum over
    every pixel), the block's threads are 4 slices of K, whose sums are added in order."""

    def blocks(side: int) -> int:
        return -(-attrs["N"] // side) * -(-attrs["M"] // side) * attrs["batch"]

    for reach in (4, 2):
        if blocks(TILE * reach) >= multiprocessors:
            return reach, 1
    return 1, (4 if blocks(TILE) < multiprocessors and attrs["K"] >= 16 * TILE else 1)


def reduce_per_block(attrs: dict[str, Any], multiprocessors: int) -> bool:
    """Whether a reduction runs a block per output (its threads share the output's elements)
    rather than a thread per output: where the outputs are too few to fill the GPU with
    threads and each sums more elements than a block has threads (a bias gradient: one
    output per channel, a sum over every image's pixels)."""
    return (
        attrs["out_size"] < multiprocessors * BLOCK and attrs["total"] // attrs["out_size"] >= BLOCK
    ) or attrs["out_size"] == 1


class CudaRenderer:
    """Generated CUDA C for ``target``'s GPUs, built by nvcc into a fat binary."""

    source_name = "kernels.cu"
    library_name = "kernels.fatbin"

    def __init__(self, target: CudaTarget, reference: bool = False) -> None:
        self.target = target
        # templates/cuda, with the C target's target-neutral pieces (a map's element, a
        # reduction's output, a pooling window) found in templates/c
        self.env = environment("cuda", "c")

    def build(self, source: str) -> tuple[Path, list[str]]:
        flags = cuda_flags(self.target.archs)
        return build_cuda(source, flags), flags

    def render(self, kgraph: KernelGraph) -> Rendered:
        """The CUDA source for ``kgraph`` and the manifest's ``cuda`` entry (see above)."""
        multiprocessors = self.target.multiprocessors
        names = kernel_names(kgraph)
        layer_index = layer_numbers(kgraph)
        helpers = {
            **template_helpers(),
            "tile": TILE,
            "gemm_layout": lambda a: gemm_layout(a, multiprocessors),
            "reduce_per_block": lambda a: reduce_per_block(a, multiprocessors),
            "block": BLOCK,
        }
        functions: list[dict[str, str]] = []
        launches: dict[str, list[Launch]] = {}
        steps: dict[str, list[list[CudaInstr]]] = {}
        for direction, direction_steps in kgraph.steps().items():
            steps[direction] = []
            for step in direction_steps:
                where = (f"layer #{layer_index[step.layer]}" if step.layer in layer_index
                         else "the net")  # fmt: skip
                for kernel in step.kernels():
                    name, parts = names[id(kernel)], kernel.parts()
                    launches[name] = []
                    if kernel.prim == "host":
                        continue  # a Python layer: the runtime calls it, nothing launches
                    for number, part in enumerate(parts):
                        comment = f"{part.prim}, {direction} of {where} ({step.layer_type})"
                        if len(parts) > 1:
                            comment += f", part {number + 1} of {len(parts)} of a fused kernel"
                        function = name if len(parts) == 1 else f"{name}_p{number}"
                        body = self.env.get_template(f"{part.prim}.cu.j2").render(
                            kernel=part, **helpers
                        )
                        functions.append({"name": function, "comment": comment, "body": body})
                        grid, block = geometry(part, multiprocessors)
                        launches[name].append(Launch(function, grid, block))
                steps[direction].append([
                    CudaInstr(getattr(instr, "count", 1), [names[id(k)] for k in kernels_of(instr)])
                    for instr in step.instrs
                ])  # fmt: skip
        prelude = self.env.get_template("prelude.cu.j2").render(
            version=__version__, dtype=kgraph.dtype, n_functions=len(functions)
        )
        source = self.env.get_template("net.cu.j2").render(prelude=prelude, functions=functions)
        return Rendered(source, CudaLaunches(launches, steps))
