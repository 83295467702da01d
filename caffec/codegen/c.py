"""The C target: one translation unit per net, rendered from ``templates/c``.

Each kernel becomes a static function ``kN_<layer type>_<primitive>(buf, n)``
that finds its operands in the pointer table ``buf`` (slot numbers come from
the kernel graph) and, inside a per-image loop, at iteration ``n``. Each layer
becomes a forward (and backward) step function, and two entry points run a
range of steps, so the runtime can run a whole pass or part of one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2

import caffec
from caffec.compiler.kernels import Kernel, KernelGraph, Loop, Operand, Step

ABI_VERSION = 3
TEMPLATES = Path(caffec.__file__).parent / "templates"
_IDENT = re.compile(r"\buniform\(\)|[A-Za-z_][A-Za-z0-9_]*")
_FUNCTIONS = {"exp", "log", "tanh", "fabs", "pow", "sqrt", "fmax", "fmin", "floor"}


def environment(target: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES / target),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def pointer(op: Operand, ctype: str) -> str:
    """C for an operand's address: a slot of the pointer table, offset, stepped by n."""
    text = f"({ctype})buf[{op.buffer.index}]"
    if op.buffer.copies > 1:  # this thread's copy of a loop's workspace
        text += f" + caffec_thread() * {op.buffer.size}"
    if op.offset:
        text += f" + {op.offset}"
    if op.step:
        text += f" + n * {op.step}"
    return text


def aliased(kernel: Kernel) -> bool:
    """Whether a kernel reads a buffer it writes (an in-place map): then no ``restrict``."""
    written = {id(o.buffer) for o in kernel.writes}
    return any(id(o.buffer) in written for o in kernel.reads)


def expression(expr: str, attrs: dict[str, Any]) -> str:
    """A map expression in C: constants as literals, math functions for the real type."""
    consts = attrs["consts"]

    def replace(match: re.Match[str]) -> str:
        name = match.group(0)
        if name == "uniform()":
            return "caffec_uniform(seed, iteration, (uint64_t)i)"
        if name in consts:
            return consts[name]
        if name in _FUNCTIONS:
            return f"R_{name}"
        return name

    return _IDENT.sub(replace, expr)


def kernel_names(kgraph: KernelGraph) -> dict[int, str]:
    """Names from counters and registry type names only, never from user strings."""
    names: dict[int, str] = {}
    for step in (step for steps in kgraph.steps().values() for step in steps):
        for kernel in step.kernels():
            names[id(kernel)] = f"k{len(names)}_{step.layer_type.lower()}_{kernel.prim}"
    return names


def render(kgraph: KernelGraph, target: str = "c") -> str:
    """The whole source file for ``kgraph`` on ``target`` ("c" or "cuda")."""
    env = environment(target)
    names = kernel_names(kgraph)
    layer_index = {layer["name"]: i for i, layer in enumerate(kgraph.layers)}
    helpers: dict[str, Any] = {"ptr": pointer, "expr_c": expression, "aliased": aliased}

    def body(kernel: Kernel) -> str:
        return env.get_template(f"{kernel.prim}.c.j2").render(kernel=kernel, **helpers)

    helpers["body"] = body  # a fused kernel renders its parts one after another
    kernels = []
    loops = {  # each loop kernel's loop
        id(k): instr
        for steps in kgraph.steps().values()
        for step in steps
        for instr in step.instrs
        if isinstance(instr, Loop)
        for k in instr.body
    }
    for direction, steps in kgraph.steps().items():
        for step in steps:
            for kernel in step.kernels():
                text = body(kernel)
                where = (
                    f"layer #{layer_index[step.layer]}" if step.layer in layer_index else "the net"
                )
                what = kernel.prim
                if kernel.prim == "fused":
                    what += " " + " + ".join(part.prim for part in kernel.attrs["parts"])
                comment = f"{what}, {direction} of {where} ({step.layer_type})"
                loop = loops.get(id(kernel))
                kernels.append({"name": names[id(kernel)], "comment": comment, "body": text,
                                "count": loop.count if loop else 1,
                                "threads": loop.threads if loop else 1})  # fmt: skip
    prelude = env.get_template("prelude.c.j2").render(
        version=caffec.__version__, dtype=kgraph.dtype, n_kernels=len(kernels)
    )
    return env.get_template("net.c.j2").render(
        prelude=prelude,
        kernels=kernels,
        directions={
            direction: [_step_view(s, names, layer_index) for s in steps]
            for direction, steps in kgraph.steps().items()
        },
        abi=ABI_VERSION,
    )


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
            assert isinstance(instr, Kernel)
            instrs.append({"loop": False, "names": [names[id(instr)]]})
    return {
        "layer_index": layer_index.get(step.layer, -1),
        "layer_type": step.layer_type,
        "instrs": instrs,
    }
