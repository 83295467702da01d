"""The whole net within the memory budget, checked once its memory plan is made.

Shape inference refuses a single value too large for memory; a net can still
need too much as a whole (thousands of large values kept for backward). What
the runtime allocates is the arena at the plan's size plus the persistent
buffers (parameters, their gradients, solver histories); where that is more
than the budget, the error names the layer at which the arena reaches its top.
"""

from __future__ import annotations

from caffec.compiler.ir import LayerGraph
from caffec.compiler.kernels import KernelGraph
from caffec.compiler.passes.plan_memory import ARENA_KINDS
from caffec.errors import UserError
from caffec.runtime.memory_limits import bytes_text, check_bytes


def check_memory(kgraph: KernelGraph, graph: LayerGraph, budget: int | None) -> None:
    """A UserError where ``kgraph`` (planned) needs more than ``budget`` bytes (None: this
    machine's memory)."""
    plan = kgraph.memory_plan
    persistent = sum(b.footprint for b in kgraph.buffers if b.kind not in ARENA_KINDS)
    persistent *= plan.itemsize
    what = (
        f"the net ({bytes_text(plan.arena_bytes)} of values at once, at most, and "
        f"{bytes_text(persistent)} of parameters and solver state)"
    )
    try:
        check_bytes(plan.arena_bytes + persistent, budget, what,
                    "give the net a smaller batch or fewer or smaller layers")  # fmt: skip
    except UserError as err:
        op = next((op for op in graph.ops if op.name == _peak_layer(kgraph)), None)
        span, layer = (op.span, op.name) if op is not None else (None, None)
        raise UserError(err.message, span=span, layer=layer, hint=err.hint) from None


def _peak_layer(kgraph: KernelGraph) -> str | None:
    """The layer whose step first touches the buffer that ends highest in the arena."""
    plan = kgraph.memory_plan
    if not plan.offsets:
        return None
    top = max(plan.offsets, key=lambda b: plan.offsets[b] + b.footprint)
    for steps in kgraph.steps().values():
        for step in steps:
            if any(o.buffer is top for k in step.kernels() for o in (*k.reads, *k.writes)):
                return step.layer
    return None
