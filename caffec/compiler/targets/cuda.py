"""The CUDA target: an NVIDIA GPU of given compute capabilities, and its own choices.

A GPU has threads to spare and a small cache per block, so its choices are not
the CPU's: convolutions read their image directly in the GEMM (an implicit
GEMM: no columns written and read back) wherever they have a spatial kernel,
a 1x1 convolution is one GEMM, a depthwise one convolves directly; GEMMs read
their operands where they lie (nothing is packed ahead), and a per-image loop
whose images are independent launches each kernel over many images at once
(the ``batched_loops`` pass; not ``parallel_loops``, the CPU's threads). How
each kernel is launched (blocks, tiles, GEMM layouts for the multiprocessors)
is code generation's (:mod:`caffec.codegen.cuda`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from caffec.compiler.kernels import Instr
from caffec.compiler.targets import ConvAlgorithms, ConvShape, Workspace

MULTIPROCESSORS = 132  # an H100's or H200's


@dataclass(frozen=True)
class CudaTarget:
    """GPUs of the compute capabilities ``archs`` (machine code for each, PTX for the first;
    "90": H100 and H200) with ``multiprocessors`` streaming multiprocessors, which the
    launch geometry fills."""

    name: ClassVar[str] = "cuda"
    archs: tuple[str, ...] = ("90",)
    multiprocessors: int = MULTIPROCESSORS

    def conv_algorithms(self, shape: ConvShape) -> ConvAlgorithms:
        if shape.depthwise:
            return ConvAlgorithms("direct")
        if shape.pointwise:
            return ConvAlgorithms("gemm_1x1")
        return ConvAlgorithms("im2col_gemm" if shape.deconv else "implicit_gemm")

    def emit(self, instr: Instr, workspace: Workspace, optimise: bool) -> list[Instr]:
        return [instr]

    def runs(self, kernel_pass: str) -> bool:
        return kernel_pass != "parallel_loops"  # its own loop pass: batched_loops

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "archs": list(self.archs),
                "multiprocessors": self.multiprocessors}  # fmt: skip
