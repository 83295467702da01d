"""The CUDA target: the kernel graph as CUDA C, rendered from ``templates/cuda``.

The same kernel graph, memory plan and manifest as the C target; only the
code differs. Every primitive becomes an ``extern "C" __global__`` function
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
launching the loop's kernels for n = 0, 1, ... in order. A loop with partial
sums (see ``passes/parallel_loops.py``) also lists the launches that run once
``before`` it (zero the partial sums) and ``after`` it (add them up).
"""

from __future__ import annotations

from typing import Any

import jinja2

import caffec
from caffec.codegen.c import TEMPLATES, aliased, expression, kernel_names, pointer
from caffec.compiler.kernels import Kernel, KernelGraph, Loop, kernels_of
from caffec.compiler.primitives import pmap, reduce

BLOCK = 256  # threads per block of a grid-stride kernel
MAX_BLOCKS = 8192  # enough to fill any current GPU; the loops stride over the rest
TILE = 16  # a GEMM block has TILE x TILE threads and steps through K by TILE
MULTIPROCESSORS = 132  # an H100's or H200's: a grid of fewer blocks leaves some idle


def environment() -> jinja2.Environment:
    """Templates from ``templates/cuda``, with the C target's target-neutral pieces (a map's
    element, a reduction's output, a pooling window) found in ``templates/c``."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [jinja2.FileSystemLoader(TEMPLATES / "cuda"), jinja2.FileSystemLoader(TEMPLATES / "c")]
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


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
        # a thread per output, or (the image gradient) per pixel; the weight gradient's
        # blocks are laid out by geometry()
        "conv": lambda: (
            a["N"] * a["M"] * a["OH"] * a["OW"]
            if a["mode"] == "forward"
            else a["N"] * a["C"] * a["H"] * a["W"]
        ),
    }
    return int(sizes[part.prim]())


def geometry(part: Kernel) -> tuple[list[int], list[int]]:
    """The grid and block a function is launched with."""
    if part.prim == "gemm":
        a, (reach, slices) = part.attrs, gemm_layout(part.attrs)
        side = TILE * reach
        return [-(-a["N"] // side), -(-a["M"] // side), a["batch"]], [TILE, TILE, slices]
    if part.prim == "reduce" and reduce_per_block(part.attrs):
        return [min(MAX_BLOCKS, part.attrs["out_size"]), 1, 1], [BLOCK, 1, 1]
    if part.prim == "conv" and part.attrs["mode"] == "filter":  # a block per weight
        a = part.attrs
        return [min(MAX_BLOCKS, a["M"] * a["CG"] * a["KH"] * a["KW"]), 1, 1], [BLOCK, 1, 1]
    blocks = min(MAX_BLOCKS, max(1, -(-work_items(part) // BLOCK)))
    return [blocks, 1, 1], [BLOCK, 1, 1]


def gemm_layout(attrs: dict[str, Any]) -> tuple[int, int]:
    """How a GEMM's block works: (reach, slices). Each thread computes reach x reach
    elements of C: 4 (a 64x64 tile per block, four multiply-adds per value read from shared
    memory) where the grid still has a block for every multiprocessor, else 2, else 1. With
    a grid too small even then and a long K (a weight gradient: few outputs, a sum over
    every pixel), the block's threads are 4 slices of K, whose sums are added in order."""

    def blocks(side: int) -> int:
        return -(-attrs["N"] // side) * -(-attrs["M"] // side) * attrs["batch"]

    for reach in (4, 2):
        if blocks(TILE * reach) >= MULTIPROCESSORS:
            return reach, 1
    return 1, (4 if blocks(TILE) < MULTIPROCESSORS and attrs["K"] >= 16 * TILE else 1)


def reduce_per_block(attrs: dict[str, Any]) -> bool:
    """Whether a reduction runs a block per output (its threads share the output's elements)
    rather than a thread per output: where the outputs are too few to fill the GPU with
    threads and each sums more elements than a block has threads (a bias gradient: one
    output per channel, a sum over every image's pixels)."""
    return (
        attrs["out_size"] < MULTIPROCESSORS * BLOCK and attrs["total"] // attrs["out_size"] >= BLOCK
    ) or attrs["out_size"] == 1


def render_cuda(kgraph: KernelGraph) -> tuple[str, dict[str, Any]]:
    """The CUDA source for ``kgraph`` and the manifest's ``cuda`` entry (see above)."""
    env = environment()
    names = kernel_names(kgraph)
    layer_index = {layer["name"]: i for i, layer in enumerate(kgraph.layers)}
    helpers = {
        "ptr": pointer,
        "expr_c": expression,
        "aliased": aliased,
        "tile": TILE,
        "gemm_layout": gemm_layout,
        "reduce_per_block": reduce_per_block,
        "block": BLOCK,
    }
    functions: list[dict[str, str]] = []

    def function(name: str, part: Kernel, comment: str) -> dict[str, Any]:
        """Render ``part`` as the function ``name``; how to launch it."""
        body = env.get_template(f"{part.prim}.cu.j2").render(kernel=part, **helpers)
        functions.append({"name": name, "comment": comment, "body": body})
        grid, block = geometry(part)
        return {"function": name, "grid": grid, "block": block}

    launches: dict[str, list[dict[str, Any]]] = {}
    steps: dict[str, list[list[dict[str, Any]]]] = {}
    for direction, direction_steps in kgraph.steps().items():
        steps[direction] = []
        for step in direction_steps:
            where = f"layer #{layer_index[step.layer]}" if step.layer in layer_index else "the net"
            for kernel in step.kernels():
                name, parts = names[id(kernel)], kernel.parts()
                launches[name] = []
                for number, part in enumerate(parts):
                    if part.prim == "pack":
                        continue  # the CUDA GEMM reads its operands as they lie
                    comment = f"{part.prim}, {direction} of {where} ({step.layer_type})"
                    if len(parts) == 1:
                        launches[name].append(function(name, part, comment))
                        continue
                    comment += f", part {number + 1} of {len(parts)} of a fused kernel"
                    launches[name].append(function(f"{name}_p{number}", part, comment))
            instrs = []
            for instr in step.instrs:
                kernels = kernels_of(instr)
                entry: dict[str, Any] = {"count": 1, "kernels": [names[id(k)] for k in kernels]}
                if isinstance(instr, Loop):
                    entry["count"] = instr.count
                    for when, around in partial_sum_kernels(instr).items():
                        what = "zeroing" if when == "before" else "adding up"
                        entry[when] = [
                            function(f"{names[id(kernels[0])]}_{when}{number}", helper,
                                     f"{what} partial sums of {where}")
                            for number, helper in enumerate(around)
                        ]  # fmt: skip
                instrs.append(entry)
            steps[direction].append(instrs)
    prelude = env.get_template("prelude.cu.j2").render(
        version=caffec.__version__, dtype=kgraph.dtype, n_functions=len(functions)
    )
    source = env.get_template("net.cu.j2").render(prelude=prelude, functions=functions)
    return source, {"functions": launches, "steps": steps}


def partial_sum_kernels(loop: Loop) -> dict[str, list[Kernel]]:
    """The launches around a loop with partial sums: zero every copy before, add the copies
    into the total after (the images run one after another here, so copy 0 gets them all)."""
    return {
        "before": [pmap((p.footprint,), [(p, "0")]) for p, _ in loop.partial_sums],
        "after": [reduce(p, total, (p.copies, p.size), [0], accumulate=True)
                  for p, total in loop.partial_sums],
    }  # fmt: skip
