"""The pass pipeline: the passes in order, by the names ``caffec dump --after`` takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from caffec.compiler.graph_builder import build_layer_graph
from caffec.compiler.ir import LayerGraph, Shape
from caffec.compiler.kernels import KernelGraph
from caffec.compiler.passes.autodiff import autodiff
from caffec.compiler.passes.fuse import fuse
from caffec.compiler.passes.lower import lower
from caffec.compiler.passes.parallel_loops import parallelize_loops
from caffec.compiler.passes.params import create_params
from caffec.compiler.passes.plan_memory import (
    ITEMSIZE,
    blob_versions,
    naive_bytes,
    plan_memory,
)
from caffec.compiler.passes.recompute import recompute
from caffec.compiler.passes.reorder import pool_before_relu
from caffec.compiler.passes.shape_inference import infer_shapes
from caffec.compiler.passes.solver_updates import add_solver_updates
from caffec.compiler.passes.verify import verify
from caffec.compiler.registry import InferContext
from caffec.errors import UserError, did_you_mean
from caffec.frontend.loader import read_net, select_phase


@dataclass
class Options:
    """What the user chose for a compile: phase, stages, level, input shapes, precision."""

    phase: str = "TEST"
    stages: Sequence[str] = ()
    level: int = 0
    shapes: dict[str, Shape] = field(default_factory=dict)
    base_dir: Path = Path(".")
    dtype: str = "float32"
    backward: bool | None = None  # None: in TRAIN, or where the net sets force_backward
    solver: Any = None  # a SolverParameter: add its update step after backward
    plan_memory: bool = True  # share arena bytes between buffers whose lifetimes do not overlap
    recompute: bool = True  # find states again in backward where keeping them costs memory
    fuse: bool = True  # fuse kernels across layers (partial runs only at unfused boundaries)
    parallel_loops: bool = True  # run per-image loops across threads where images are independent
    keep_blobs: bool = True  # net.blobs stays readable (False: only what forward/backward return)
    choose_algorithms: bool = True  # e.g. direct convolution where im2col + GEMM would be slow
    reference_build: bool = False  # -O0: the C compiler builds at -O1 (see codegen.build)


def optimization_switches(level: int) -> dict[str, bool]:
    """The Options switches of ``-O level``: 0 is the reference build (every value its own
    memory, no pass that changes what runs, the C compiled without vectorisation); 1 plans
    memory (sharing, in-place writes, recomputation); 2 also fuses kernels and picks each
    layer's fastest algorithm."""
    return {
        "plan_memory": level >= 1,
        "recompute": level >= 1,
        "fuse": level >= 2,
        "parallel_loops": level >= 2,
        "choose_algorithms": level >= 2,
        "reference_build": level == 0,
    }


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[LayerGraph, Options], LayerGraph]


PIPELINE: list[Pass] = [
    Pass("verify", lambda g, o: verify(g)),
    Pass("shape_inference", lambda g, o: infer_shapes(g, InferContext(o.shapes, o.base_dir))),
    Pass("params", lambda g, o: create_params(g)),
    Pass("reorder", lambda g, o: pool_before_relu(g) if o.recompute and not o.keep_blobs else g),
]

# after the layer-graph passes come the kernel-graph ones (build_kernel_graph runs them)
KERNEL_PASSES = ["lower", "autodiff", "solver", "recompute", "fuse", "parallel_loops",
                 "plan_memory"]  # fmt: skip
PASS_NAMES = ["build"] + [p.name for p in PIPELINE] + KERNEL_PASSES


def run_passes(graph: LayerGraph, options: Options, after: str | None = None) -> LayerGraph:
    """Run the pipeline on ``graph``, stopping after the pass named ``after`` (None: all)."""
    if after is not None and after not in PASS_NAMES:
        raise UserError(
            f"there is no pass named '{after}'",
            hint=did_you_mean(after, PASS_NAMES) or f"passes: {', '.join(PASS_NAMES)}",
        )
    if after == "build":
        return graph
    for step in PIPELINE:  # (the kernel passes come later, in build_kernel_graph)
        graph = step.run(graph, options)
        if step.name == after:
            break
    return graph


def build_kernel_graph(
    graph: LayerGraph, options: Options, after: str | None = None
) -> KernelGraph:
    """Lower a layer graph (after every layer-graph pass), differentiate it and add the solver
    step as asked, stopping after the kernel pass named ``after``."""
    last = KERNEL_PASSES.index(after) if after is not None else len(KERNEL_PASSES)

    def runs(name: str) -> bool:  # whether the pass ``name`` comes at or before ``after``
        return KERNEL_PASSES.index(name) <= last

    kgraph, lowering = lower(graph, options.dtype, options.choose_algorithms)
    backward = options.backward
    if backward is None:
        backward = graph.phase == "TRAIN" or graph.force_backward
    if backward and runs("autodiff"):
        autodiff(kgraph, lowering)
        if options.solver is not None and runs("solver"):
            add_solver_updates(kgraph, options.solver)
    kgraph.prune()
    kgraph.net_dir = str(options.base_dir.resolve())
    blob_of = blob_versions(lowering)
    naive = naive_bytes(kgraph, blob_of, ITEMSIZE[kgraph.dtype])  # before buffers are dropped
    if options.recompute and runs("recompute"):
        recompute(kgraph, options.keep_blobs)
    if options.fuse and runs("fuse"):
        fuse(kgraph, options.keep_blobs)
    if options.parallel_loops and runs("parallel_loops"):
        parallelize_loops(kgraph)
    if runs("plan_memory"):  # the artifact writer lays the arena out by this plan
        kgraph.memory_plan = plan_memory(
            kgraph, share=options.plan_memory, keep_blobs=options.keep_blobs, blob_of=blob_of,
            naive=naive,
        )  # fmt: skip
    return kgraph


def layer_graph_of(net: Any, spans: Any, options: Options, after: str | None = None) -> LayerGraph:
    """Like :func:`load_layer_graph`, for a net already read and upgraded (an inline net)."""
    net, spans = select_phase(net, spans, options.phase, options.stages, options.level)
    return run_passes(build_layer_graph(net, spans, options.phase), options, after)


def load_layer_graph(path: str | Path, options: Options, after: str | None = None) -> LayerGraph:
    """Read, upgrade and filter the net at ``path`` and run the passes on it.

    Data sources named relative to the prototxt are found too (``base_dir``).
    """
    options = replace(options, base_dir=Path(path).parent)
    net, spans = read_net(path)
    return layer_graph_of(net, spans, options, after)
