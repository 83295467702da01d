"""The CUDA target: the kernel graph as CUDA C, rendered from ``templates/cuda``.

The kernel graph the CUDA target lowered (its own algorithms: see
:mod:`caffec.compiler.targets.cuda`), rendered with the C target's expressions
and pointer table. Every primitive becomes an ``extern "C" __global__`` function
``kN_<layer type>_<primitive>(buf, n)`` over the device's pointer table
``buf`` (slot numbers from the kernel graph, as in C) and the image number
``n`` of a per-image loop. A fused kernel becomes its parts, one function
each, launched in order on one stream (the stream orders them, as the C
target's sequential blocks do), except a GEMM with maps after it over exactly
its output (:func:`epilogue`: a convolution's bias and ReLU), which is one
function: each thread runs the maps on the elements of C it has just stored.
Elementwise work runs in grid-stride loops with its sizes compiled in; a GEMM
is a tiled shared-memory kernel, each thread computing up to 4x4 elements of
C, its batch on the grid's z axis (in precision tf32 or bf16, a tiled kernel on
the tensor cores instead: ``gemm_mma.cu.j2``).
Where the C target scatters (pooling gradients, col2im), a thread per
destination element gathers instead, so no two threads write one place and
the sums do not depend on timing.

What the runtime needs to launch them is in the manifest's ``cuda`` entry:
for each kernel its functions with their grid and block, and for each step
its instructions as (loop count, kernels, images per launch): the host runs a
per-image loop, launching the loop's kernels in order for n = 0, 1, ..., or,
for a loop whose images are independent (the ``batched_loops`` pass), for its
first images n = 0, k, 2k, ...: each launch covers k images, a grid axis over
them (:func:`image_index`), and each image uses its own copy of the loop's
workspaces. The launch geometry fills the target's multiprocessors
(:class:`~caffec.compiler.targets.cuda.CudaTarget`). Each instruction also
names the stream it runs on in a captured pass and the earlier instructions
it waits for (:mod:`caffec.codegen.cuda_streams`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from caffec.codegen.cuda_streams import pass_placements
from caffec.codegen.renderer import (
    Rendered,
    environment,
    kernel_names,
    layer_numbers,
    template_helpers,
)
from caffec.codegen.toolchain import build_cuda, cuda_flags
from caffec.compiler.kernels import Kernel, KernelGraph, Loop, kernels_of
from caffec.compiler.targets.cuda import CudaTarget
from caffec.formats.manifest import CudaInstr, CudaLaunches, Launch
from caffec.version import __version__

BLOCK = 256  # threads per block of a grid-stride kernel
MAX_BLOCKS = 8192  # enough to fill any current GPU; the loops stride over the rest
TILE = 16  # a GEMM block has TILE x TILE threads and steps through K by TILE
# the local that holds the element of C a GEMM's thread has just computed, which the maps of
# its epilogue read instead of loading it back (see epilogue_attrs)
EPILOGUE_VALUE = "c_value"


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


def geometry(part: Kernel, multiprocessors: int, images: int = 1) -> tuple[list[int], list[int]]:
    """The grid and block a function is launched with for one image (:func:`over_images`
    adds the images a launch of a batched loop covers, which a GEMM's layout counts)."""
    if part.prim == "gemm":
        a, (reach, slices) = part.attrs, gemm_layout(part.attrs, multiprocessors, images)
        side = TILE * reach
        return [-(-a["N"] // side), -(-a["M"] // side), a["batch"]], [TILE, TILE, slices]
    if part.prim == "reduce" and reduce_per_block(part.attrs, multiprocessors):
        return [min(MAX_BLOCKS, part.attrs["out_size"]), 1, 1], [BLOCK, 1, 1]
    if part.prim == "conv" and part.attrs["mode"] == "filter":  # a block per weight
        a = part.attrs
        return [min(MAX_BLOCKS, a["M"] * a["CG"] * a["KH"] * a["KW"]), 1, 1], [BLOCK, 1, 1]
    blocks = min(MAX_BLOCKS, max(1, -(-work_items(part) // BLOCK)))
    return [blocks, 1, 1], [BLOCK, 1, 1]


def gemm_layout(attrs: dict[str, Any], multiprocessors: int, images: int = 1) -> tuple[int, int]:
    """How a GEMM's block works: (reach, slices). Each thread computes reach x reach
    elements of C: 4 (a 64x64 tile per block, four multiply-adds per value read from shared
    memory) where the grid still has a block for every multiprocessor, else 2, else 1. With
    a grid too small even then and a long K (a weight gradient: few outputs, a sum over
    every pixel), the block's threads are 4 slices of K, whose sums are added in order.
    A launch over ``images`` images has that many times the blocks."""

    def blocks(side: int) -> int:
        return -(-attrs["N"] // side) * -(-attrs["M"] // side) * attrs["batch"] * images

    for reach in (4, 2):
        if blocks(TILE * reach) >= multiprocessors:
            return reach, 1
    return 1, (4 if blocks(TILE) < multiprocessors and attrs["K"] >= 16 * TILE else 1)


def image_index(part: Kernel) -> str:
    """CUDA for the image a block computes within a launch of a batched loop: a GEMM's grid z
    counts its batch for each image (z = image * batch + which GEMM: the templates take the
    GEMM as ``blockIdx.z % batch``), every other function's grid y counts the images (its
    grid-stride loops use x only)."""
    if part.prim != "gemm":
        return "blockIdx.y"
    batch = part.attrs["batch"]
    return f"blockIdx.z / {batch}" if batch > 1 else "blockIdx.z"


def over_images(part: Kernel, grid: list[int], images: int) -> list[int]:
    """``grid`` (one image's) for a launch over ``images`` images (see :func:`image_index`)."""
    axis = 2 if part.prim == "gemm" else 1
    return [size * images if i == axis else size for i, size in enumerate(grid)]


def tensor_cores(part: Kernel, precision: str) -> bool:
    """Whether ``part`` runs on tensor cores (``gemm_mma.cu.j2``): every GEMM of a build in
    reduced precision (tf32, bf16); in fp32 the CUDA cores' template (``gemm.cu.j2``)."""
    return part.prim == "gemm" and precision != "fp32"


def mma_layout(attrs: dict[str, Any], multiprocessors: int, images: int = 1) -> tuple[int, int]:
    """A tensor-core GEMM's block: (side, warps). A 128x128 tile of C on 8 warps (each warp
    64x32 of it: eight 16x16 accumulators) where the grid still has a block for every
    multiprocessor (a launch over ``images`` images has that many times the blocks), else a
    64x64 tile on 4 warps (each 32x32: four accumulators)."""
    blocks = -(-attrs["N"] // 128) * -(-attrs["M"] // 128) * attrs["batch"] * images
    return (128, 8) if blocks >= multiprocessors else (64, 4)


def mma_geometry(
    part: Kernel, multiprocessors: int, images: int = 1
) -> tuple[list[int], list[int]]:
    """The grid and block of a tensor-core GEMM for one image (as :func:`geometry`): a block
    per tile of C (:func:`mma_layout`), its batch on the grid's z axis, its warps on x."""
    a = part.attrs
    side, warps = mma_layout(a, multiprocessors, images)
    return [-(-a["N"] // side), -(-a["M"] // side), a["batch"]], [32 * warps, 1, 1]


def epilogue(kernel: Kernel) -> list[Kernel]:
    """The maps a fused kernel's GEMM runs as its epilogue: all its parts after a first
    ``gemm``, where each is a map over exactly the GEMM's elements (C contiguous, the map's
    size batch x M x N), so that element i of every map is element i of C, and the thread
    that computed that element may run them on it at once, in one function and one launch
    (with K in slices, the slice that stores C; accumulating, on C's new value). Nothing
    the group writes may then be read or written at another element (C, a map's output: by
    every part at one offset and step, loaded only at ``i``), nor may a map write what the
    GEMM reads (other blocks may still be reading it). Random maps (Dropout) qualify: their
    numbers depend only on i. Empty where the parts do not qualify: each stays a function."""
    parts = kernel.parts()
    gemm, maps = parts[0], parts[1:]
    if gemm.prim != "gemm" or not maps or any(m.prim != "map" or m.accumulate for m in maps):
        return []
    a = gemm.attrs
    if a["ldc"] != a["N"] or (a["batch"] > 1 and a["stride_c"] != a["M"] * a["N"]):
        return []
    if any(m.attrs["size"] != a["batch"] * a["M"] * a["N"] for m in maps):
        return []
    read_by_gemm = {o.buffer for o in gemm.reads}
    places = {o.buffer: (o.offset, o.step, o.every_copy) for p in parts for o in p.writes}
    if any(o.buffer in read_by_gemm for m in maps for o in m.writes):
        return []
    operands = [o for p in parts for o in (*p.reads, *p.writes) if o.buffer in places]
    if any((o.offset, o.step, o.every_copy) != places[o.buffer] for o in operands):
        return []
    for m in maps:
        a = m.attrs
        if any(m.reads[slot].buffer in places and index != "i" for _, slot, index in a["loads"]):
            return []
        names = (
            {n for n, _, _ in a["loads"]} | {n for n, _ in a["lets"]} | {*a["coords"], *a["consts"]}
        )
        if EPILOGUE_VALUE in names:
            return []
    return maps


def epilogue_views(gemm: Kernel, maps: list[Kernel]) -> tuple[list[Kernel], bool]:
    """The epilogue's maps as its GEMM's thread runs them: each map without its operands on C
    (up to the first map that overwrites C), whose loads of C become temporaries of the value
    the thread has just computed (``EPILOGUE_VALUE``) rather than loads from memory; and
    whether C is stored at all (not where a map overwrites it: the bias and ReLU in place)."""
    c = gemm.writes[0].buffer  # every operand on it is at C's place (see epilogue)
    views, stored = [], True
    for m in maps:
        a = m.attrs
        kept = [slot for slot, o in enumerate(m.reads) if not (stored and o.buffer is c)]
        slots = {slot: number for number, slot in enumerate(kept)}
        loads = [(name, slots[slot], index) for name, slot, index in a["loads"] if slot in slots]
        lets = [(name, EPILOGUE_VALUE) for name, slot, _ in a["loads"] if slot not in slots]
        attrs = {**a, "loads": loads, "lets": lets + a["lets"]}
        views.append(Kernel("map", [m.reads[slot] for slot in kept], m.writes, attrs))
        stored = stored and not any(o.buffer is c for o in m.writes)
    return views, stored


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
            "reduce_per_block": lambda a: reduce_per_block(a, multiprocessors),
            "block": BLOCK,
            "precision": kgraph.precision,
            "epilogue_value": EPILOGUE_VALUE,
        }
        functions: list[dict[str, str]] = []
        launches: dict[str, list[Launch]] = {}
        steps: dict[str, list[list[CudaInstr]]] = {}
        for direction, direction_steps in kgraph.steps().items():
            steps[direction] = []
            placed = iter(pass_placements(kgraph, direction))  # streams in a captured pass
            for step in direction_steps:
                where = (f"layer #{layer_index[step.layer]}" if step.layer in layer_index
                         else "the net")  # fmt: skip
                loops = {id(k): i for i in step.instrs if isinstance(i, Loop) for k in i.body}
                for kernel in step.kernels():
                    name, parts = names[id(kernel)], kernel.parts()
                    loop = loops.get(id(kernel))
                    images = loop.images if loop is not None else 1
                    layout = partial(gemm_layout, multiprocessors=multiprocessors, images=images)
                    tiles = partial(mma_layout, multiprocessors=multiprocessors, images=images)
                    launches[name] = []
                    if kernel.prim == "host":
                        continue  # a Python layer: the runtime calls it, nothing launches
                    maps = epilogue(kernel)
                    units = [(parts[0], maps)] if maps else [(part, []) for part in parts]
                    for number, (part, after) in enumerate(units):
                        comment = f"{part.prim}, {direction} of {where} ({step.layer_type})"
                        if after:
                            comment += (f", with the {len(after)} map(s) after it as its epilogue:"
                                        f" a fused kernel of {len(parts)} parts")  # fmt: skip
                        elif len(parts) > 1:
                            comment += f", part {number + 1} of {len(parts)} of a fused kernel"
                        function = name if len(units) == 1 else f"{name}_p{number}"
                        mma = tensor_cores(part, kgraph.precision)
                        template = "gemm_mma" if mma else part.prim
                        views, store_c = epilogue_views(part, after) if after else ([], True)
                        body = self.env.get_template(f"{template}.cu.j2").render(
                            kernel=part,
                            epilogue=views,
                            store_c=store_c,
                            **{**helpers, "gemm_layout": layout, "mma_layout": tiles},
                        )
                        functions.append({"name": function, "comment": comment, "body": body,
                                          "images": images, "image": image_index(part),
                                          "count": loop.count if loop else 1})  # fmt: skip
                        if mma:
                            grid, block = mma_geometry(part, multiprocessors, images)
                        else:
                            grid, block = geometry(part, multiprocessors, images)
                        launches[name].append(Launch(function, over_images(part, grid, images),
                                                     block))  # fmt: skip
                steps[direction].append([
                    CudaInstr(getattr(instr, "count", 1), [names[id(k)] for k in kernels_of(instr)],
                              images=getattr(instr, "images", 1), stream=place.stream,
                              waits=list(place.waits))
                    for instr, place in zip(step.instrs, placed, strict=False)
                ])  # fmt: skip
        prelude = self.env.get_template("prelude.cu.j2").render(
            version=__version__,
            dtype=kgraph.dtype,
            n_functions=len(functions),
            precision=kgraph.precision,
        )
        source = self.env.get_template("net.cu.j2").render(prelude=prelude, functions=functions)
        return Rendered(source, CudaLaunches(launches, steps))
