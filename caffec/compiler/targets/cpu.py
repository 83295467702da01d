"""The C target: a CPU with its vector width and threads, and the cost model of its kernels.

Every rule here says when one of the C kernels pays on a CPU; the limits are
measurements on this project's 2-core AVX2 and AVX-512 machines, which the
performance page of the docs lists with their figures ("Why the thresholds are
where they are"). Nothing here changes what a net computes, only how.

* **Convolutions** (:meth:`CpuTarget.conv_algorithms`): direct where im2col +
  GEMM wastes its work, an implicit GEMM where the columns cost as much as the
  products, register-blocked direct kernels for dense layers with few channels.
* **GEMMs** (:func:`gemm_plan`): a path (register-blocked on the operands as
  they lie, packed BLIS-style, or dot products), C written transposed where N
  fills the register tiles badly, threads only for enough work; the
  unchanging operand of a loop over images (a convolution's weights) packed
  once before it (:func:`prepack`).
* **Threads**: a kernel opens an OpenMP region only above its grain of work
  (:func:`parallel_grain`); below it, it runs on the calling thread. How many
  threads a region gets is the runtime's choice (:mod:`caffec.runtime.threads`),
  not the compiler's; ``threads`` only sizes per-image loops (the
  ``parallel_loops`` pass): their workspaces are copied that many times, and the
  loop runs on at most that many threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from caffec.compiler.kernels import Instr, Kernel, Operand
from caffec.compiler.primitives import WINOGRAD_TILE
from caffec.compiler.targets import ConvAlgorithms, ConvShape, Workspace
from caffec.errors import InternalError
from caffec.runtime.threads import available_cpus

MAX_THREADS = 8  # per-image loops at most: each thread holds a copy of the loop's workspaces
GEMM_PARALLEL_FLOPS = 2_000_000  # 2 M N K: a GEMM with less runs on its calling thread
# The work below which a C kernel runs on its calling thread (an OpenMP region would cost
# more than it saves): elements of output for most primitives, windows for pooling (each
# several elements' work), numbers packed for packing.
PARALLEL_GRAIN = 32768
PARALLEL_GRAINS = {"pool": 4096, "pool_grad": 4096, "pack": 65536}


def parallel_grain(prim: str) -> int:
    """The work below which the C kernel of primitive ``prim`` runs on one thread."""
    return PARALLEL_GRAINS.get(prim, PARALLEL_GRAIN)


def default_threads() -> int:
    """The most threads per-image loops may run on: the CPUs this process may use (its
    affinity and cgroup quota), at most :data:`MAX_THREADS`."""
    return min(MAX_THREADS, available_cpus()[0])


# --- convolutions --------------------------------------------------------------------------

# Direct (whole batch, no columns) for depthwise layers: one channel per group in and out;
# with more, im2col + GEMM wins. The weight gradient keeps a row of KH * KW * OW sums.
DIRECT_MAX_CHANNELS_IN = 1
DIRECT_MAX_CHANNELS_OUT = 1
DIRECT_MAX_SUMS = 16384

# The forward GEMM unfolds the image as it packs it (implicit GEMM) up to this many weight
# rows per group; with more, the columns' cost is spread over enough products.
IMPLICIT_MAX_ROWS = 128

# Dense forwards with few output channels whose output rows are two to four whole 8-lane
# vectors run direct, a block of channels' rows in registers.
DIRECT_FORWARD_MAX_ROWS = 64
DIRECT_FORWARD_MIN_CHANNELS = 16
DIRECT_FORWARD_WIDTHS = (16, 24, 32)

# Dense weight gradients run direct (the output gradient transposed, the input padded,
# neither unfolded) for few output channels, and while one image's two copies fit in L2.
DIRECT_FILTER_MAX_ROWS = 128
DIRECT_FILTER_MIN_CHANNELS = 3
DIRECT_FILTER_MAX_COPIES = 262144  # reals: 1 MB

# Dense forwards and input gradients run as blocks of positions by channels: output
# channels in whole vectors of 16, rows at most 16 wide unless there are at most 16 input
# channels, and a padded copy of one image that stays in L1/L2.
DIRECT_CHANNELS_MULTIPLE = 16
DIRECT_CHANNELS_MAX_WIDTH = 16
DIRECT_CHANNELS_MAX_CHANNELS_IN = 16
DIRECT_CHANNELS_MAX_COPY = 65536
DIRECT_MAX_KERNEL_WIDTH = 12  # a kernel row's taps in registers

# 3x3 forwards at stride 1 run Winograd's F(4x4, 3x3) (a quarter of the multiplications, in
# 36 GEMMs over the 4x4 blocks of output, plus the transforms) where the GEMMs are large
# enough for the transforms to be a small part: at least 32 input and output channels per
# group, at least 49 blocks per image (28 x 28 outputs: with fewer, the weights' transform,
# redone every forward, and GEMMs only as wide as the blocks cost more than they save), and
# enough of both (output channels x input channels x blocks; below it, the gain was within
# what the four parallel regions lose on a busy machine).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_BLOCKS = 49
WINOGRAD_MIN_PRODUCTS = 524288


def _blocked(shape: ConvShape) -> bool:
    """Whether the register-blocked direct kernels compute this convolution: dense, a
    kernel row's taps fitting in registers."""
    return shape.dense and shape.kernel[1] <= DIRECT_MAX_KERNEL_WIDTH


def _channel_blocks_pay(channels_in: int, channels_out: int, out: tuple, kernel: tuple) -> bool:
    """Whether a dense convolution from ``channels_in`` to ``channels_out`` channels with an
    output of ``out`` (rows, columns) runs as blocks of positions by channels."""
    copy = channels_in * (out[0] + kernel[0] - 1) * (out[1] + kernel[1] - 1)
    return (channels_out % DIRECT_CHANNELS_MULTIPLE == 0 and copy <= DIRECT_CHANNELS_MAX_COPY
            and (out[1] <= DIRECT_CHANNELS_MAX_WIDTH
                 or channels_in <= DIRECT_CHANNELS_MAX_CHANNELS_IN))  # fmt: skip


def _direct_pays(s: ConvShape) -> bool:
    return (s.group > 1 and s.image[0] // s.group <= DIRECT_MAX_CHANNELS_IN
            and s.rows <= DIRECT_MAX_CHANNELS_OUT
            and s.kernel[0] * s.kernel[1] * s.cols[2] <= DIRECT_MAX_SUMS)  # fmt: skip


def _direct_forward_pays(s: ConvShape) -> bool:
    return (s.dense and s.rows <= DIRECT_FORWARD_MAX_ROWS
            and s.image[0] >= DIRECT_FORWARD_MIN_CHANNELS
            and s.cols[2] in DIRECT_FORWARD_WIDTHS)  # fmt: skip


def _implicit_pays(s: ConvShape) -> bool:
    """Few weight rows, and a GEMM that packs B as it is (the image unfolds as it packs)."""
    plan = gemm_plan(s.rows, s.positions, s.depth, False, False, s.group)
    return s.rows <= IMPLICIT_MAX_ROWS and plan["path"] == "packed" and not plan["swap"]


def _winograd_pays(s: ConvShape) -> bool:
    """A stride-1 3x3 convolution large enough for Winograd F(4x4, 3x3) (see above)."""
    blocks = -(-s.cols[1] // WINOGRAD_TILE) * -(-s.cols[2] // WINOGRAD_TILE)
    channels = s.image[0] // s.group
    return (s.kernel == (3, 3) and s.stride == (1, 1) and s.dilation == (1, 1)
            and not s.deconv and min(s.rows, channels) >= WINOGRAD_MIN_CHANNELS
            and blocks >= WINOGRAD_MIN_BLOCKS
            and s.rows * channels * blocks >= WINOGRAD_MIN_PRODUCTS)  # fmt: skip


def _direct_filter_pays(s: ConvShape) -> bool:
    # one image's copies: the output gradient transposed (its channels padded to vectors
    # of 16) and the input padded
    padded_in = s.image[0] * (s.cols[1] + s.kernel[0] - 1) * (s.cols[2] + s.kernel[1] - 1)
    copies = s.positions * -(-s.rows // 16) * 16 + padded_in
    return (s.rows <= DIRECT_FILTER_MAX_ROWS and s.image[0] >= DIRECT_FILTER_MIN_CHANNELS
            and copies <= DIRECT_FILTER_MAX_COPIES)  # fmt: skip


def _direct_data_pays(s: ConvShape) -> bool:
    # the input gradient is a forward from the output gradient's channels to the input's:
    # as much work as the forward only where the two are the same size
    return s.image[1:] == s.cols[1:] and _channel_blocks_pay(
        s.rows, s.image[0], s.image[1:], s.kernel
    )


# --- GEMMs ---------------------------------------------------------------------------------

# The packed operand's rows are padded to whole register tiles of every instruction set the
# template picks from: MR rows of A (12, 6 or 4) and NR = NV vectors of B (at most 32 numbers).
PACKED_A_ROWS = 12
PACKED_B_COLUMNS = 32


def gemm_plan(
    m: int, n: int, k: int, trans_a: bool, trans_b: bool, batch: int, weights_b: bool = False
) -> dict[str, Any]:
    """How the C template (templates/c/gemm.c.j2) runs C[m,n] = op(A) op(B), ``batch`` times.

    - ``path``: "direct" runs the register-blocked micro-kernel on A and B where they lie
      (B is copied only when it is transposed, or for its last partial column strip), the
      whole K in one pass: for operands that fit in the L2 cache, where packing would not
      pay off. "packed" copies K-blocks of B panels and of A blocks into the micro-kernel's
      order (BLIS-style), for everything larger. "dot", for A B' with a long K and at most
      64 rows of A (inner products, their weight gradients, GEMV-like fully connected
      layers at small batch): each element of C is a dot product of a row of A and a row
      of B as they lie, nothing copied and no tile padding.
    - ``swap``: compute C' = op(B)' op(A)' (C written transposed) where N leaves much of
      the last column tiles empty and M does not (N = 49 for 7 x 7 feature maps).
    - ``parallel``: an OpenMP region only for enough work to pay for it; the small GEMMs of
      per-image loops run on the calling thread.
    - ``tiles``: the register tiles per instruction set, picked by the C preprocessor,
      since the vector width is the C compiler's choice (--target-cpu).
    - ``kc``, ``mc``, ``nc``: the packed path's cache blocking (a K-block of B's strip in
      L1, A's block in L2, B's panel in L3), K split into even blocks.
    - ``prepack``: set by :func:`prepack`: the operand packed once before the loop, "A" or
      "B" as the micro-kernel sees it (after ``swap``); None otherwise.

    ``weights_b``: B is a parameter the GEMM may read where it lies (an inner product's input
    gradient).
    """
    # The register tiles, from the widest instruction set down; each serves the template's
    # ISA numbers from its own up (3: AVX-512, 32 registers; 2: AVX and AVX2, 16; 1: other
    # 16-byte vectors, and 0: plain C): MR rows by NV vectors of C for the outer-product
    # kernel, DM rows of A by DN rows of B for the dot kernel.
    tiles = [
        {"isa": 3, "mr": 12, "nv": 2, "dm": 4, "dn": 6},
        {"isa": 2, "mr": 6, "nv": 2, "dm": 2, "dn": 6},
        {"isa": 0, "mr": 4, "nv": 2, "dm": 2, "dn": 6},
    ]
    work = 2 * m * n * k * batch

    def padded(rows: int, cols: int) -> int:  # C's area in whole 6 x 16 tiles (AVX2, float)
        return -(-rows // 6) * 6 * -(-cols // 16) * 16

    if trans_b and not trans_a and k >= 256 and m <= 64:
        path = "dot"
    elif m * k + k * n <= 96 * 1024 and k <= 1024:
        path = "direct"
    elif weights_b and not trans_b and m <= 64 and k <= 1024:
        path = "direct"  # B read where it lies beats packing it on every call
    else:
        path = "packed"
    return {
        "path": path,
        "parallel": work >= GEMM_PARALLEL_FLOPS,
        "swap": path != "dot" and k >= 32 and padded(n, m) < 0.85 * padded(m, n),
        "prepack": None,
        "tiles": tiles,
        "kc": k if k <= 320 else -(-k // -(-k // 256)),
        "mc": 144,
        "nc": 2048,
    }


def plan_gemm(kernel: Kernel) -> Kernel:
    """``kernel`` (a GEMM) with its plan in ``attrs["plan"]``."""
    a = kernel.attrs
    plan = gemm_plan(a["M"], a["N"], a["K"], a["trans_a"], a["trans_b"], a["batch"],
                     a["weights_b"])  # fmt: skip
    if a["implicit"] is not None and (plan["path"] != "packed" or plan["swap"] or a["trans_b"]):
        raise InternalError(f"an implicit GEMM needs a plan that packs B as it is, not {plan}")
    a["plan"] = plan
    return kernel


def prepack(kernel: Kernel, workspace: Workspace) -> tuple[list[Kernel], Kernel]:
    """The kernels that pack a planned GEMM's loop-invariant operand (``attrs["invariant"]``,
    a convolution's weights) before the loop, and the GEMM that reads it packed; ([],
    ``kernel``) where its plan does not pack (the direct and dot paths read operands as
    they lie). ``workspace(name, shape)`` gives the buffer it is packed into."""
    a = kernel.attrs
    plan = a["plan"]
    if a["invariant"] is None or plan["path"] != "packed":
        return [], kernel
    swap = plan["swap"]
    side = "A" if (a["invariant"] == "a") != swap else "B"
    a["plan"] = {**plan, "prepack": side}
    rows = a["N"] if swap else a["M"]  # the micro-kernel's M and N
    cols = a["M"] if swap else a["N"]
    width = (
        -(-rows // PACKED_A_ROWS) * PACKED_A_ROWS
        if side == "A"
        else -(-cols // PACKED_B_COLUMNS) * PACKED_B_COLUMNS
    )
    packed = Operand(workspace("packed weights", (a["batch"] * a["K"] * width,)))
    source = kernel.reads[int((side == "A") == swap)]
    pack = Kernel("pack", reads=[source], writes=[packed], attrs=a)
    return [pack], Kernel("gemm", reads=[*kernel.reads, packed], writes=kernel.writes,
                          attrs=a, accumulate=kernel.accumulate)  # fmt: skip


# --- the target ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTarget:
    """A CPU, as the C compiler builds for it: ``cpu`` is the ``-march`` (``native``: this
    machine), ``vector_bytes`` the widest vectors the compiler uses there (64 for AVX-512,
    32 for AVX, 16 for SSE or NEON, 0 for none; None when nobody asked the compiler), and
    ``threads`` the most threads a per-image loop runs on (its workspaces' copies; the
    runtime's thread count decides, up to that)."""

    name: ClassVar[str] = "c"
    cpu: str = "native"
    vector_bytes: int | None = None
    threads: int = field(default_factory=default_threads)

    def conv_algorithms(self, shape: ConvShape) -> ConvAlgorithms:
        """Direct where it pays, else im2col + GEMM (or implicit GEMM) as measured; the
        gradients direct on their own rules."""
        if _direct_pays(shape):
            return ConvAlgorithms("direct")
        if shape.pointwise:
            return ConvAlgorithms("gemm_1x1")
        if shape.deconv:
            return ConvAlgorithms("im2col_gemm")
        blocked = _blocked(shape)
        if _winograd_pays(shape):
            forward = "winograd"
        elif blocked and _channel_blocks_pay(shape.image[0], shape.rows, shape.cols[1:],
                                           shape.kernel):  # fmt: skip
            forward = "direct_channels"
        elif _direct_forward_pays(shape):
            forward = "direct_forward"
        elif _implicit_pays(shape):
            forward = "implicit_gemm"
        else:
            forward = "im2col_gemm"
        return ConvAlgorithms(forward, blocked and _direct_filter_pays(shape),
                              blocked and _direct_data_pays(shape))  # fmt: skip

    def emit(self, instr: Instr, workspace: Workspace, optimise: bool) -> list[Instr]:
        """GEMMs planned; a loop over images (at -O2) after the kernels that pack its GEMMs'
        unchanging operands."""
        if isinstance(instr, Kernel):
            return [plan_gemm(instr) if instr.prim == "gemm" else instr]
        before, body = [], []
        for kernel in instr.body:
            if kernel.prim == "gemm":
                kernel = plan_gemm(kernel)
                if optimise and instr.count > 1:
                    packs, kernel = prepack(kernel, workspace)
                    before += packs
            body.append(kernel)
        instr.body = body
        return [*before, instr]

    def runs(self, kernel_pass: str) -> bool:
        return kernel_pass != "batched_loops"  # its own loop pass: parallel_loops

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cpu": self.cpu, "vector_bytes": self.vector_bytes,
                "threads": self.threads}  # fmt: skip
