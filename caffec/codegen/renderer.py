"""What every code generator provides, and the pieces the C-family ones share.

A target's renderer (:func:`renderer_for`) turns a kernel graph into one
source file and builds it: ``render`` gives the source and what the runtime
needs beyond the common manifest to launch it, ``build`` the compiled library
and the compiler's flags. Kernels are named from counters and registry type
names only, never from user strings (generated code is a trust boundary), and
find their operands in a table of pointers by buffer slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2

from caffec.compiler.kernels import Kernel, KernelGraph, Operand
from caffec.errors import InternalError
from caffec.formats.manifest import CudaLaunches

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
_IDENT = re.compile(r"\buniform\(\)|[A-Za-z_][A-Za-z0-9_]*")
_FUNCTIONS = {"exp", "log", "tanh", "fabs", "pow", "sqrt", "fmax", "fmin", "floor"}


@dataclass
class Rendered:
    """A kernel graph as source: the text, and how to launch it where the runtime launches
    each kernel itself (CUDA)."""

    source: str
    cuda: CudaLaunches | None = None


class Renderer(Protocol):
    """A target's code generator."""

    source_name: str  # the source file in an artifact: "kernels.c"
    library_name: str  # what its build makes: "kernels.so"

    def render(self, kgraph: KernelGraph) -> Rendered:
        """The source of ``kgraph`` (its buffers numbered) for this target."""
        ...

    def build(self, source: str) -> tuple[Path, list[str]]:
        """The library built from ``source`` (from the build cache when there), and the
        compiler's flags."""
        ...


def renderer_for(kgraph: KernelGraph, reference: bool = False) -> Renderer:
    """The code generator of the target ``kgraph`` was lowered for (``reference``: the C
    compiled without vectorisation, see :func:`caffec.codegen.toolchain.c_flags`)."""
    from caffec.codegen.c import CRenderer
    from caffec.codegen.cuda import CudaRenderer

    renderers = {"c": CRenderer, "cuda": CudaRenderer}
    if kgraph.target is None or kgraph.target.name not in renderers:
        raise InternalError(f"no code generator for the target {kgraph.target!r}")
    return renderers[kgraph.target.name](kgraph.target, reference=reference)


def environment(*folders: str) -> jinja2.Environment:
    """Templates from ``templates/<folder>``, the first folder first."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(TEMPLATES / f) for f in folders]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def pointer(op: Operand, ctype: str) -> str:
    """C for an operand's address: a slot of the pointer table, offset, stepped by n."""
    text = f"({ctype})buf[{op.buffer.index}]"
    if op.buffer.copies > 1 and not op.every_copy:  # this thread's or image's copy
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


def template_helpers() -> dict[str, Any]:
    """What every target's templates call: operand addresses, map expressions, aliasing."""
    return {"ptr": pointer, "expr_c": expression, "aliased": aliased}


def layer_numbers(kgraph: KernelGraph) -> dict[str, int]:
    """Each layer's position in the net, by name: how comments in the source name a layer."""
    return {layer["name"]: i for i, layer in enumerate(kgraph.layers)}
