"""The pass pipeline: every pass in order, by the names ``caffec dump --after`` takes.

Two lists, run by one loop each. The layer-graph passes check the net and give
every value its shape and every layer its parameters; the kernel-graph passes
lower it to primitives for the target and optimise the result. Each kernel
pass has the lowest ``-O`` level that runs it, and a target may leave a pass
out (:meth:`caffec.compiler.targets.Target.runs`): ``-O0`` is the reference
build (every value its own memory, each layer's general algorithm), ``-O1``
shares memory, writes in place and recomputes, ``-O2`` also fuses kernels,
runs per-image loops across threads (C) or launches over many images (CUDA) and
picks each layer's fastest algorithm.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from caffec.compiler.graph_builder import build_layer_graph
from caffec.compiler.ir import LayerGraph, Shape
from caffec.compiler.kernels import KernelGraph
from caffec.compiler.lowering import Lowering
from caffec.compiler.passes.autodiff import autodiff
from caffec.compiler.passes.batched_loops import batch_loops
from caffec.compiler.passes.fuse import fuse
from caffec.compiler.passes.lower import lower
from caffec.compiler.passes.memory_budget import check_memory
from caffec.compiler.passes.parallel_loops import parallelize_loops
from caffec.compiler.passes.params import create_params
from caffec.compiler.passes.plan_memory import ITEMSIZE, blob_versions, naive_bytes, plan_memory
from caffec.compiler.passes.recompute import recompute
from caffec.compiler.passes.reorder import pool_before_relu
from caffec.compiler.passes.shape_inference import infer_shapes
from caffec.compiler.passes.solver_updates import add_solver_updates
from caffec.compiler.passes.verify import verify
from caffec.compiler.registry import InferContext
from caffec.compiler.targets import Target
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.errors import UserError, did_you_mean
from caffec.formats.cycle_collection import cycle_collection_paused
from caffec.formats.source_map import SourceMap
from caffec.frontend.loader import read_net, select_phase
from caffec.runtime.memory_limits import INDEX_LIMIT

# the GEMMs' arithmetic: full precision (the dtype's), or tensor cores reading float32
# operands rounded to TensorFloat-32 or bfloat16 and adding in float32 (the CUDA target)
PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str, dtype: str, target: Target) -> None:
    """Refuse a precision the build cannot have: reduced precision is the tensor cores' (the
    CUDA target from compute capability 8.0, float32 builds); the C target computes in the
    dtype whatever is asked, so asking it for less is an error rather than silently ignored."""
    if precision == "fp16":
        raise UserError("precision fp16 is not supported: float16 needs loss scaling, which "
                        "caffec does not do",
                        hint=f"precisions: {', '.join(PRECISIONS)} (bf16 has float32's range "
                        "and needs no loss scaling)")  # fmt: skip
    if precision not in PRECISIONS:
        raise UserError(f"there is no precision '{precision}'",
                        hint=f"precisions: {', '.join(PRECISIONS)}")  # fmt: skip
    if precision == "fp32":
        return
    if dtype != "float32":
        raise UserError(f"precision {precision} rounds float32 operands; a {dtype} build "
                        "computes in full precision",
                        hint="drop the precision, or build in float32")  # fmt: skip
    if not isinstance(target, CudaTarget):
        raise UserError(f"precision {precision} runs on a GPU's tensor cores; the CPU computes "
                        "in float32",
                        hint="compile for the CUDA target (--target cuda, -gpu N, "
                        "caffec.set_mode_gpu()), or drop the precision")  # fmt: skip
    old = [arch for arch in target.archs if int(re.sub(r"\D.*", "", arch) or 0) < 80]
    if old:
        raise UserError(
            f"precision {precision} needs tensor cores of compute capability 8.0 or newer, "
            f"not {', '.join(old)}",
            hint="build for --cuda-arch 80 or newer, or drop the precision",
        )


@dataclass
class Options:
    """What the user chose for a compile: the net (phase, NetState, input shapes), the
    precision, the passes (``opt_level``) and the machine (``target``)."""

    phase: str = "TEST"
    stages: Sequence[str] = ()
    level: int = 0  # the NetState level
    shapes: dict[str, Shape] = field(default_factory=dict)
    base_dir: Path = Path(".")
    dtype: str = "float32"
    backward: bool | None = None  # None: in TRAIN, or where the net sets force_backward
    solver: Any = None  # a SolverParameter: add its update step after backward
    opt_level: int = 2  # -O: which kernel passes run (see the module docstring)
    keep_blobs: bool = True  # net.blobs stays readable (False: only what forward/backward return)
    choose_algorithms: bool = True  # at -O2: each layer takes its target's fastest algorithm
    skip: frozenset[str] = frozenset()  # kernel passes left out (to see one pass's effect)
    target: Target = field(default_factory=CpuTarget)
    max_memory: int | None = None  # bytes the net may take (None: this machine's memory)
    precision: str = "fp32"  # the GEMMs' arithmetic: PRECISIONS

    def __post_init__(self) -> None:
        if self.dtype not in ITEMSIZE:
            raise UserError(f"there is no dtype '{self.dtype}' to compile a net in",
                            hint=f"dtypes: {', '.join(ITEMSIZE)}")  # fmt: skip
        check_precision(self.precision, self.dtype, self.target)
        budget = self.max_memory
        if budget is not None and not (isinstance(budget, int) and 0 < budget <= INDEX_LIMIT):
            raise UserError(f"max_memory is {budget!r}, not a number of bytes",
                            hint="give one from 1 to 2^63 - 1, e.g. 8 << 30 for 8 GiB")  # fmt: skip


@dataclass(frozen=True)
class LayerPass:
    name: str
    run: Callable[[LayerGraph, Options], LayerGraph]


LAYER_PASSES: list[LayerPass] = [
    LayerPass("verify", lambda g, o: verify(g)),
    LayerPass(
        "shape_inference",
        lambda g, o: infer_shapes(
            g, InferContext(o.shapes, o.base_dir), ITEMSIZE[o.dtype], o.max_memory
        ),
    ),
    LayerPass("params", lambda g, o: create_params(g, ITEMSIZE[o.dtype], o.max_memory)),
    # a lean build (-O1 and up) pools before the ReLU that feeds it, nobody seeing between
    LayerPass(
        "reorder", lambda g, o: pool_before_relu(g) if o.opt_level >= 1 and not o.keep_blobs else g
    ),  # fmt: skip
]


@dataclass
class Compilation:
    """A layer graph on its way to a kernel graph: what kernel passes read besides it."""

    graph: LayerGraph
    options: Options
    lowering: Lowering | None = None  # lower's state: autodiff continues from it
    naive_bytes: int = 0  # what Caffe would allocate, measured before passes drop buffers


@dataclass(frozen=True)
class KernelPass:
    """A kernel-graph pass, the lowest ``-O`` level that runs it, and its step."""

    name: str
    level: int
    run: Callable[[KernelGraph, Compilation], KernelGraph]


def _lower(_: KernelGraph, c: Compilation) -> KernelGraph:
    o = c.options
    kgraph, c.lowering = lower(c.graph, o.target, o.dtype,
                               o.choose_algorithms and o.opt_level >= 2)  # fmt: skip
    kgraph.net_dir = str(o.base_dir.resolve())
    kgraph.target, kgraph.opt_level, kgraph.precision = o.target, o.opt_level, o.precision
    return kgraph


def _backward(c: Compilation) -> bool:
    """Whether the build has a backward pass: asked for, or as Caffe decides (in TRAIN, or
    where the net sets force_backward)."""
    if c.options.backward is not None:
        return c.options.backward
    return c.graph.phase == "TRAIN" or c.graph.force_backward


def _autodiff(kgraph: KernelGraph, c: Compilation) -> KernelGraph:
    return autodiff(kgraph, c.lowering) if _backward(c) else kgraph  # type: ignore[arg-type]


def _solver(kgraph: KernelGraph, c: Compilation) -> KernelGraph:
    solver = c.options.solver
    return add_solver_updates(kgraph, solver) if solver is not None and _backward(c) else kgraph


def _prune(kgraph: KernelGraph, c: Compilation) -> KernelGraph:
    """Drop the buffers nothing computes, and measure what Caffe would allocate for the net
    before later passes drop buffers Caffe has (a pooling mask found again in backward)."""
    kgraph.prune()
    c.naive_bytes = naive_bytes(kgraph, blob_versions(c.lowering), ITEMSIZE[kgraph.dtype])
    return kgraph


def _plan_memory(kgraph: KernelGraph, c: Compilation) -> KernelGraph:
    kgraph.memory_plan = plan_memory(
        kgraph, share=c.options.opt_level >= 1, keep_blobs=c.options.keep_blobs,
        blob_of=blob_versions(c.lowering), naive=c.naive_bytes,
    )  # fmt: skip
    check_memory(kgraph, c.graph, c.options.max_memory)
    return kgraph


KERNEL_PASSES: list[KernelPass] = [
    KernelPass("lower", 0, _lower),
    KernelPass("autodiff", 0, _autodiff),
    KernelPass("solver", 0, _solver),
    KernelPass("prune", 0, _prune),
    KernelPass("recompute", 1, lambda k, c: recompute(k, c.options.keep_blobs)),
    KernelPass("fuse", 2, lambda k, c: fuse(k, c.options.keep_blobs)),
    KernelPass("parallel_loops", 2, lambda k, c: parallelize_loops(k, c.options.target.threads)),
    KernelPass("batched_loops", 2, lambda k, c: batch_loops(k, ITEMSIZE[k.dtype])),
    KernelPass("plan_memory", 0, _plan_memory),
]
PASS_NAMES = ["build"] + [p.name for p in LAYER_PASSES] + [p.name for p in KERNEL_PASSES]


def _check_pass_name(after: str | None) -> None:
    if after is not None and after not in PASS_NAMES:
        raise UserError(
            f"there is no pass named '{after}'",
            hint=did_you_mean(after, PASS_NAMES) or f"passes: {', '.join(PASS_NAMES)}",
        )


def run_passes(graph: LayerGraph, options: Options, after: str | None = None) -> LayerGraph:
    """Run the layer-graph passes on ``graph``, stopping after the pass named ``after``
    ("build": none; None or a kernel pass: all)."""
    _check_pass_name(after)
    if after == "build":
        return graph
    for step in LAYER_PASSES:
        graph = step.run(graph, options)
        if step.name == after:
            break
    return graph


def runs(kernel_pass: KernelPass, options: Options) -> bool:
    """Whether ``kernel_pass`` runs in a compile with ``options``."""
    return (kernel_pass.level <= options.opt_level and kernel_pass.name not in options.skip
            and options.target.runs(kernel_pass.name))  # fmt: skip


def build_kernel_graph(
    graph: LayerGraph, options: Options, after: str | None = None
) -> KernelGraph:
    """The kernel graph of ``graph`` (after every layer-graph pass): the kernel passes that
    run at ``options``' level and target, stopping after the one named ``after``."""
    _check_pass_name(after)
    compilation = Compilation(graph, options)
    kgraph: Any = None  # "lower" makes it
    with cycle_collection_paused():
        for kernel_pass in KERNEL_PASSES:
            if runs(kernel_pass, options):
                kgraph = kernel_pass.run(kgraph, compilation)
            if kernel_pass.name == after:
                break
    return kgraph


def layer_graph_of(
    net: Any, spans: SourceMap, options: Options, after: str | None = None
) -> LayerGraph:
    """Like :func:`load_layer_graph`, for a net already read and upgraded (an inline net)."""
    net, spans = select_phase(net, spans, options.phase, options.stages, options.level)
    with cycle_collection_paused():
        return run_passes(build_layer_graph(net, spans, options.phase), options, after)


def load_layer_graph(path: str | Path, options: Options, after: str | None = None) -> LayerGraph:
    """Read, upgrade and filter the net at ``path`` and run the passes on it.

    Data sources named relative to the prototxt are found too (``base_dir``).
    """
    options = replace(options, base_dir=Path(path).parent)
    net, spans = read_net(path)
    return layer_graph_of(net, spans, options, after)
