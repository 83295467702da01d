"""Targets: what the compiler knows of the machine a net will run on.

A target travels in the compile options (``Options.target``) into lowering and
the kernel passes, and decides what differs between machines, so that layer
rules and passes stay the same for all of them:

* each convolution's algorithms (:meth:`Target.conv_algorithms`, from a
  :class:`ConvShape`), where the compile may choose (``-O2``);
* what runs for an instruction a layer rule emits (:meth:`Target.emit`): the
  C target plans its GEMMs for the CPU's caches and packs a loop's
  unchanging weights ahead of it; the CUDA target runs them as they are;
* which kernel passes pay on it (:meth:`Target.runs`: loops across threads
  are the CPU's).

Code generation renders a kernel graph for its target's ``name``
(:mod:`caffec.codegen`), and the artifact's manifest records
:meth:`Target.describe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from caffec.compiler.kernels import Buffer, Instr, Shape


@dataclass(frozen=True)
class ConvShape:
    """What a convolution looks like to the code that picks its algorithms.

    The *image side* is the blob of the larger spatial size (a convolution's
    bottom, a deconvolution's top), the *column side* the other.
    """

    batch: int
    group: int
    image: Shape  # (channels, height, width) of the image side
    cols: Shape  # (channels, height, width) of the column side
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    deconv: bool

    @property
    def pointwise(self) -> bool:
        """A 1x1 kernel at stride 1 without padding: a plain GEMM on the image."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.pad == (0, 0)

    @property
    def depthwise(self) -> bool:
        """One image channel and one column channel per group (MobileNet's layers)."""
        return self.group > 1 and self.image[0] == self.group == self.cols[0]

    @property
    def dense(self) -> bool:
        """One group, stride and dilation 1."""
        return self.group == 1 and self.stride == (1, 1) and self.dilation == (1, 1)

    @property
    def rows(self) -> int:
        """Weight rows per group: the GEMM's M (column-side channels per group)."""
        return self.cols[0] // self.group

    @property
    def depth(self) -> int:
        """The GEMM's K: image channels per group times the kernel's taps."""
        return self.image[0] // self.group * self.kernel[0] * self.kernel[1]

    @property
    def positions(self) -> int:
        """The GEMM's N: the column side's pixels."""
        return self.cols[1] * self.cols[2]


@dataclass(frozen=True)
class ConvAlgorithms:
    """How a convolution runs: its forward's algorithm, and whether its weight gradient
    (``direct_filter``) and its input gradient (``direct_data``) run directly."""

    # im2col_gemm, gemm_1x1, implicit_gemm, direct, direct_channels, direct_forward, winograd
    forward: str
    direct_filter: bool = False
    direct_data: bool = False

    def __str__(self) -> str:
        """As ``caffec dump`` and the manifest name it: ``implicit_gemm+direct_filter``."""
        extras = [name for name in ("direct_filter", "direct_data") if getattr(self, name)]
        return "+".join([self.forward, *extras])


# The forward algorithms that are direct convolutions (no columns), and how the C kernel of
# each keeps its sums in registers (templates/c/conv.c.j2): "rows", a block of output
# channels' output rows; "channels", a block of channels by positions; None, plain loops.
DIRECT_BLOCKING = {"direct": None, "direct_forward": "rows", "direct_channels": "channels"}


def general_algorithms(shape: ConvShape) -> ConvAlgorithms:
    """The algorithm every target runs when nothing is chosen (-O0, -O1): im2col + GEMM, or
    for a 1x1 convolution the GEMM alone."""
    return ConvAlgorithms("gemm_1x1" if shape.pointwise else "im2col_gemm")


Workspace = Callable[[str, Shape], Buffer]


class Target(Protocol):
    """A machine the compiler builds for (see the module docstring)."""

    name: str  # "c" or "cuda": which code generator renders it

    def conv_algorithms(self, shape: ConvShape) -> ConvAlgorithms:
        """The fastest algorithms this target has for a convolution of ``shape``."""
        ...

    def emit(self, instr: Instr, workspace: Workspace, optimise: bool) -> list[Instr]:
        """What runs for ``instr``, as a layer rule emitted it (``optimise``: -O2);
        ``workspace(name, shape)`` makes a scratch buffer for the layer."""
        ...

    def runs(self, kernel_pass: str) -> bool:
        """Whether the kernel pass named ``kernel_pass`` applies to this target."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the artifact's manifest says of the target."""
        ...
