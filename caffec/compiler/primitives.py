"""Constructors for the primitives, with the checks and index arithmetic every target shares.

Layer rules build kernels only through these functions, so that a kernel's
``attrs`` are always in the form the templates expect: integers, numbers
already rendered as C literals, and ``map`` expressions whose every
identifier is known. Index expressions (how a broadcast input is addressed
from the flat output index ``i``) are computed here once, for C and CUDA
alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from caffec.compiler.kernels import Buffer, Kernel, Operand, Shape, whole
from caffec.errors import InternalError, UserError

# Functions a map expression may call; templates define R_<name> for the real type.
FUNCTIONS = frozenset({"exp", "log", "tanh", "fabs", "pow", "sqrt", "fmax", "fmin", "floor"})
# Values a map expression may use besides its inputs, constants and coordinates.
BUILTINS = frozenset({"i", "long", "uniform", "REAL_MIN", "REAL_MAX", "REAL_NAN"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def literal(value: float, what: str = "value") -> str:
    """A number as a C/CUDA literal of the real type; only finite or ±inf numbers pass."""
    value = float(value)
    if math.isnan(value):
        raise UserError(f"{what} is NaN", hint="give a number")
    if math.isinf(value):
        return "REAL_INF" if value > 0 else "(-REAL_INF)"
    return f"((real){value!r})"


def operand(x: Buffer | Operand) -> Operand:
    return x if isinstance(x, Operand) else whole(x)


# ----------------------------------------------------------------------------- map


def broadcast_index(out_shape: Shape, view: Shape) -> str:
    """How an input of shape ``view`` (1 where broadcast) is indexed from flat output index i."""
    if len(view) != len(out_shape) or any(
        v not in (1, o) for v, o in zip(view, out_shape, strict=True)
    ):
        raise InternalError(f"cannot broadcast {view} to {out_shape}")
    # Merge neighbouring axes that are alike (both broadcast or both full).
    groups: list[tuple[bool, int]] = []  # (full, size) from outermost to innermost
    for v, o in zip(view, out_shape, strict=True):
        full = v == o and o != 1
        if o == 1:
            continue
        if groups and groups[-1][0] == full:
            groups[-1] = (full, groups[-1][1] * o)
        else:
            groups.append((full, o))
    if all(full for full, _ in groups):
        return "i"
    terms = []
    out_inner = 1
    in_stride = 1
    for position, (full, size) in reversed(list(enumerate(groups))):
        if full:
            term = "i" if out_inner == 1 else f"i / {out_inner}"
            if position > 0:
                term = f"({term}) % {size}"
            if in_stride != 1:
                term = f"({term}) * {in_stride}"
            terms.append(f"({term})")
            in_stride *= size
        out_inner *= size
    return " + ".join(reversed(terms)) or "0"


def coordinate(out_shape: Shape, axis: int) -> str:
    """The index along ``axis`` of flat output element i."""
    inner = math.prod(out_shape[axis + 1 :])
    term = "i" if inner == 1 else f"i / {inner}"
    return f"(({term}) % {out_shape[axis]})" if axis > 0 else f"({term})"


def pmap(
    shape: Shape,
    outputs: Sequence[tuple[Buffer | Operand, str]],
    inputs: Mapping[str, Any] | None = None,
    consts: Mapping[str, float] | None = None,
    coords: Mapping[str, int] | None = None,
    lets: Sequence[tuple[str, str]] = (),
    accumulate: bool = False,
    counter: Buffer | None = None,
) -> Kernel:
    """An elementwise kernel over ``shape``: ``out = expr`` for each (out, expr) pair.

    Each input is given bare (it has the output's shape), as ``(source, view)``
    where ``view`` is the shape it broadcasts from (same rank as ``shape``, 1
    on broadcast axes), or as ``(source, "index expression")`` for a gather
    whose index may use ``i``, coordinates and inputs named before it.
    ``lets`` are named temporaries; ``coords`` name the index along an axis.
    Inputs no expression mentions are not read. ``uniform()`` (a number in
    [0, 1) that depends on the element, the random seed and the iteration)
    needs the ``counter`` buffer.
    """
    inputs = dict(inputs or {})
    consts = dict(consts or {})
    coords = dict(coords or {})
    texts = [e for _, e in outputs] + [e for _, e in lets]
    texts += [
        spec[1] for spec in inputs.values() if isinstance(spec, tuple) and isinstance(spec[1], str)
    ]
    mentioned = {name for text in texts for name in _IDENT.findall(text)}
    known = set(consts) | set(coords) | FUNCTIONS | BUILTINS
    reads: list[Operand] = []
    loads = []
    for name, spec in inputs.items():
        if name not in mentioned:
            continue
        source, view = spec if isinstance(spec, tuple) else (spec, shape)
        if isinstance(view, str):
            _check_expr(view, known)
            index = view
        else:
            index = broadcast_index(shape, tuple(view))
        known.add(name)
        reads.append(operand(source))
        loads.append((name, len(reads) - 1, index))
    lets_out = []
    for name, expr in lets:
        _check_expr(expr, known)
        known.add(name)
        lets_out.append((name, expr))
    for _, expr in outputs:
        _check_expr(expr, known)
    uses_random = "uniform" in mentioned
    if uses_random:
        if counter is None:
            raise InternalError("a map using uniform() needs the counter buffer")
        reads.append(whole(counter))
    return Kernel(
        "map",
        reads=reads,
        writes=[operand(out) for out, _ in outputs],
        attrs={
            "size": math.prod(shape),
            "loads": loads,
            "consts": {name: literal(value, name) for name, value in consts.items()},
            "coords": {name: coordinate(shape, axis) for name, axis in coords.items()},
            "lets": lets_out,
            "exprs": [expr for _, expr in outputs],
            "random": uses_random,
        },
        accumulate=accumulate,
    )


def power(base: str, exponent: str, value: float) -> str:
    """``base`` to the constant power ``value`` (named ``exponent`` among the map's constants)
    as an expression: for multiples of 1/4 up to 4, products of ``base``, sqrt(base) and
    sqrt(sqrt(base)), which compilers vectorise (pow stays a call per element, several
    times slower: LRN spent most of its time there); else pow. ``base`` must be a name."""
    if not _IDENT.fullmatch(base):
        raise InternalError(f"power() needs a name for its base, got {base!r}")
    quarters = 4 * value
    if quarters != round(quarters) or abs(quarters) > 16:
        return f"pow({base}, {exponent})"
    whole_part, quarter = divmod(abs(round(quarters)), 4)
    roots = {0: [], 1: [f"sqrt(sqrt({base}))"], 2: [f"sqrt({base})"]}
    roots[3] = roots[2] + roots[1]
    factors = [base] * whole_part + roots[quarter]
    product = " * ".join(factors) or "1"
    return f"(1 / ({product}))" if value < 0 else f"({product})"


def _check_expr(expr: str, known: set[str]) -> None:
    for name in _IDENT.findall(expr):
        if name not in known:
            raise InternalError(f"map expression {expr!r} uses unknown name {name!r}")


def fill(out: Buffer | Operand, value: float, size: int | None = None) -> Kernel:
    """Set every element to ``value`` (zeroing a gradient before it accumulates)."""
    target = operand(out)
    n = size if size is not None else target.buffer.size
    return pmap((n,), [(target, "v")], consts={"v": value})


def host_call(direction: str, reads: list[Buffer], writes: list[Buffer], attrs: dict) -> Kernel:
    """A layer the runtime runs itself, between two steps (a Python layer's ``forward`` or
    ``backward``): no code is generated for it; its operands tell memory planning and
    fusion what it touches, and ``attrs`` tell the runtime what to call."""
    return Kernel("host", [operand(b) for b in reads], [operand(b) for b in writes],
                  {"direction": direction, **attrs})  # fmt: skip


# ----------------------------------------------------------------------------- gemm


def gemm(
    a: Buffer | Operand,
    b: Buffer | Operand,
    c: Buffer | Operand,
    m: int,
    n: int,
    k: int,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    accumulate: bool = False,
    batch: int = 1,
    strides: tuple[int, int, int] = (0, 0, 0),
    invariant: str | None = None,
    implicit: dict[str, int] | None = None,
    weights_b: bool = False,
) -> Kernel:
    """C[m,n] (+)= alpha * op(A)[m,k] @ op(B)[k,n], row-major, ``batch`` times with strides.

    With ``implicit`` (an im2col geometry, :func:`conv_attrs`, of one group), B is the
    unfolded image without the unfolding: ``b`` is the image, and the kernel unfolds each
    element of B as it reads it (an *implicit GEMM*: the columns never go through memory).

    ``invariant`` names the operand ("a" or "b") that a loop over images around the GEMM
    does not change (a convolution's weights), and ``weights_b`` says that B is a parameter
    read as it lies: facts the target may use (the C target packs an invariant operand
    once before the loop, :mod:`caffec.compiler.targets.cpu`), which then adds its plan
    (``attrs["plan"]``).
    """
    return Kernel(
        "gemm",
        reads=[operand(a), operand(b)],
        writes=[operand(c)],
        attrs={
            "M": m,
            "N": n,
            "K": k,
            "trans_a": trans_a,
            "trans_b": trans_b,
            "lda": m if trans_a else k,
            "ldb": k if trans_b else n,
            "ldc": n,
            "alpha": literal(alpha),
            "batch": batch,
            "stride_a": strides[0],
            "stride_b": strides[1],
            "stride_c": strides[2],
            "invariant": invariant,
            "weights_b": weights_b,
            "implicit": dict(implicit) if implicit is not None else None,
        },  # fmt: skip
        accumulate=accumulate,
    )


# ----------------------------------------------------------------------------- im2col / col2im


def conv_attrs(
    channels: int,
    size: tuple[int, int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    out: Sequence[int],
) -> dict[str, int]:
    return {
        "C": channels, "H": size[0], "W": size[1], "KH": kernel[0], "KW": kernel[1],
        "SH": stride[0], "SW": stride[1], "PH": pad[0], "PW": pad[1],
        "DH": dilation[0], "DW": dilation[1], "OH": out[0], "OW": out[1],
    }  # fmt: skip


def im2col(image: Operand, col: Operand, geometry: dict[str, int]) -> Kernel:
    """Unfold one image (C, H, W) into columns (C*KH*KW, OH*OW)."""
    return Kernel("im2col", reads=[image], writes=[col], attrs=dict(geometry))


def col2im(col: Operand, image: Operand, geometry: dict[str, int], accumulate: bool) -> Kernel:
    """Fold columns back into an image, summing overlaps (the adjoint of im2col)."""
    return Kernel(
        "col2im", reads=[col], writes=[image], attrs=dict(geometry), accumulate=accumulate
    )


def conv_nd_attrs(
    channels: int,
    size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    out: Sequence[int],
) -> dict[str, Any]:
    """im2col's geometry over any number of spatial axes (Caffe's im2col_nd): the image
    side's channels and size, per-axis kernel, stride, pad and dilation, the column side's
    size; with each axis' inner stride (``*_inner``: the product of the sizes after it) so
    that templates turn flat indices into coordinates without computing them."""
    axes = [list(map(int, v)) for v in (size, kernel, stride, pad, dilation, out)]
    if len({len(v) for v in axes}) != 1 or not axes[0]:
        raise InternalError(f"an N-D im2col needs one value per spatial axis, got {axes}")
    size, kernel, stride, pad, dilation, out = axes
    return {
        "C": int(channels), "size": size, "kernel": kernel, "stride": stride, "pad": pad,
        "dilation": dilation, "out": out, "pixels": math.prod(size), "taps": math.prod(kernel),
        "positions": math.prod(out), "size_inner": contiguous_strides(size),
        "kernel_inner": contiguous_strides(kernel), "out_inner": contiguous_strides(out),
    }  # fmt: skip


def im2col_nd(image: Operand, col: Operand, geometry: dict[str, Any]) -> Kernel:
    """Unfold one image (C, *size) into columns (C * taps, positions), any number of axes."""
    return Kernel("im2col_nd", reads=[image], writes=[col], attrs=dict(geometry))


def col2im_nd(col: Operand, image: Operand, geometry: dict[str, Any], accumulate: bool) -> Kernel:
    """The adjoint of :func:`im2col_nd`: each pixel sums the column entries taken from it."""
    return Kernel(
        "col2im_nd", reads=[col], writes=[image], attrs=dict(geometry), accumulate=accumulate
    )


# Which operands a direct convolution reads and writes in each mode: the image side (the
# convolution's bottom), the column side (its top) and the weights.
CONV_MODES = {
    "forward": (("image", "weight"), "cols"),  # cols = W * image
    "data": (("cols", "weight"), "image"),  # image = W' * cols (the adjoint)
    "filter": (("cols", "image"), "weight"),  # weight = cols (x) image, summed over images
}


def direct_conv(
    mode: str,
    operands: Mapping[str, Operand],
    geometry: dict[str, int],
    batch: int,
    channels: int,
    group: int,
    accumulate: bool,
    blocking: str | None = None,
) -> Kernel:
    """A grouped convolution computed where the data lies, over the whole batch: no columns.

    ``geometry`` is im2col's (the image side's C, H, W, the kernel, the column side's
    OH, OW); ``channels`` is the column side's channel count. Weights are laid out
    (channels, C / group, KH, KW), as both Convolution and Deconvolution keep theirs.
    ``blocking`` (one group, stride and dilation 1): how the C target keeps sums in
    registers (see templates/c/conv.c.j2): "rows" (forward only), a block of output
    channels' output rows; "channels", a block of channels by positions (forward, input
    gradient) or by kernel taps (weight gradient); only the C target chooses these.
    """
    if mode not in CONV_MODES:
        raise InternalError(f"unknown convolution mode {mode}")
    reads, write = CONV_MODES[mode]
    attrs = dict(geometry)
    attrs.update(mode=mode, N=batch, M=channels, G=group, CG=geometry["C"] // group,
                 MG=channels // group, blocking=blocking)  # fmt: skip
    return Kernel(
        "conv",
        reads=[operands[name] for name in reads],
        writes=[operands[write]],
        attrs=attrs,
        accumulate=accumulate,
    )


# ----------------------------------------------------------------------------- reduce


def reduce(
    source: Buffer | Operand,
    out: Buffer | Operand,
    dims: Sequence[int],
    axes: Sequence[int],
    op: str = "sum",
    scale: float = 1.0,
    accumulate: bool = False,
) -> Kernel:
    """out[kept] (+)= scale * op over ``axes`` of source viewed as ``dims`` (sum, max, sumsq)."""
    if op not in ("sum", "max", "sumsq"):
        raise InternalError(f"unknown reduction {op}")
    dims = [int(d) for d in dims]
    strides = [math.prod(dims[i + 1 :]) for i in range(len(dims))]
    kept_axes = [i for i in range(len(dims)) if i not in axes]
    kept = []
    for position, axis in enumerate(kept_axes):
        out_inner = math.prod(dims[j] for j in kept_axes[position + 1 :])
        kept.append((dims[axis], strides[axis], out_inner, position == 0))
    return Kernel(
        "reduce",
        reads=[operand(source)],
        writes=[operand(out)],
        attrs={
            "kept": kept,
            "red": [(dims[axis], strides[axis]) for axis in sorted(axes)],
            "out_size": math.prod(dims[axis] for axis in kept_axes),
            "total": math.prod(dims),
            "op": op,
            "scale": literal(scale),
            "dims_text": "x".join(str(d) for d in dims),
            "axes_text": ",".join(str(a) for a in sorted(axes)),
        },
        accumulate=accumulate,
    )


# ----------------------------------------------------------------------------- pooling


def pool_attrs(
    planes: int,
    size: tuple[int, int],
    out: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    method: str,
) -> dict[str, Any]:
    """Pooling over ``planes`` planes of size H x W; method MAX, AVE, STOCHASTIC (Caffe's) or
    SUM. (The forward of AVE and SUM may pool squares instead: ``square``, for LRN.) The
    forward of STOCHASTIC writes the position in its plane of the element it samples from
    each window (TRAIN); its gradient goes to those positions, as MAX's goes to the argmax."""
    if method not in ("MAX", "AVE", "STOCHASTIC", "SUM"):
        raise InternalError(f"unknown pooling method {method}")
    return {
        "P": planes, "H": size[0], "W": size[1], "OH": out[0], "OW": out[1],
        "KH": kernel[0], "KW": kernel[1], "SH": stride[0], "SW": stride[1],
        "PH": pad[0], "PW": pad[1], "method": method,
    }  # fmt: skip


def pool(
    x: Operand,
    y: Operand,
    mask: Operand | None,
    attrs: dict[str, Any],
    counter: Buffer | None = None,
) -> Kernel:
    """Pooling (with MAX's argmax into ``mask``). STOCHASTIC samples with the ``counter``
    buffer's seed and iteration, and ``attrs["stream"]`` tells its random numbers from other
    kernels' (as :func:`pmap`'s ``uniform()``, an element's number depends on its index)."""
    if (attrs["method"] == "STOCHASTIC") != (counter is not None):
        raise InternalError("STOCHASTIC pooling, and only it, samples with the counter")
    writes = [y] + ([mask] if mask is not None else [])
    reads = [x] + ([whole(counter)] if counter is not None else [])
    return Kernel("pool", reads=reads, writes=writes, attrs=dict(attrs))


def pool_grad(
    dy: Operand, mask: Operand | None, dx: Operand, attrs: dict[str, Any], accumulate: bool
) -> Kernel:
    reads = [dy] + ([mask] if mask is not None else [])
    return Kernel("pool_grad", reads=reads, writes=[dx], attrs=dict(attrs), accumulate=accumulate)


# ----------------------------------------------------------------------------- copy


def strided_copy(
    source: Operand,
    dest: Operand,
    shape: Sequence[int],
    source_strides: Sequence[int],
    dest_strides: Sequence[int],
    accumulate: bool = False,
) -> Kernel:
    """dest[idx . dest_strides] (+)= source[idx . source_strides] for every idx in ``shape``."""
    return Kernel(
        "copy",
        reads=[source],
        writes=[dest],
        attrs={
            "shape": [int(d) for d in shape],
            "src_strides": [int(s) for s in source_strides],
            "dst_strides": [int(s) for s in dest_strides],
            "inner": [math.prod(shape[i + 1 :]) for i in range(len(shape))],
            "size": math.prod(shape),
        },
        accumulate=accumulate,
    )


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    return [math.prod(shape[i + 1 :]) for i in range(len(shape))]


# ----------------------------------------------------------------------------- winograd

# Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", 2016): each 4x4 block of outputs from a 6x6 block of input with 36
# multiplications per channel pair instead of 144. The transforms are Toom-Cook's,
# interpolating at 0, 1, -1, 2, -2 and infinity (Lavin & Gray's points: whole-number input
# and output transforms, fractions only in the weights' transform, which runs once per
# forward), derived exactly by winograd_transforms.
WINOGRAD_TILE = 4  # outputs per block side
WINOGRAD_KERNEL = 3
WINOGRAD_POINTS = (0, 1, -1, 2, -2)
WINOGRAD_SPAN = WINOGRAD_TILE + WINOGRAD_KERNEL - 1  # inputs per block side: 6
# The matrix each stage applies along both axes of a block: G to a kernel (weights), B' to
# an input block (input), A' to a block of products (output).
WINOGRAD_STAGES = {"weights": "G", "input": "BT", "output": "AT"}


def _polynomial_product(a: Sequence[Fraction], b: Sequence[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def winograd_transforms(
    m: int = WINOGRAD_TILE, r: int = WINOGRAD_KERNEL, points: Sequence[int] = WINOGRAD_POINTS
) -> dict[str, list[list[Fraction]]]:
    """The exact matrices of F(m, r): y = A' ((G g) * (B' d)) for a kernel g of r taps and
    m + r - 1 inputs d, from Toom-Cook over ``points`` and infinity.

    The linear convolution s = g * h of polynomials is C diag(G g) E h, where G and E
    evaluate g and h at the points (at infinity: the leading coefficient) and C
    interpolates (column i: the Lagrange polynomial of point i; the last column: the product
    of (x - point), which carries the leading coefficient). The correlation a convolution
    layer computes is that map transposed: A' = E' and B' = C'. Each Lagrange polynomial's
    denominator moves from C into G's row, so the input and output transforms stay whole
    numbers for whole-number points.
    """
    n = m + r - 1
    if len(points) != n - 1 or len(set(points)) != len(points):
        raise InternalError(f"F({m}, {r}) needs {n - 1} distinct points, got {points}")
    xs = [Fraction(p) for p in points]
    g_rows = [[x**k for k in range(r)] for x in xs] + [[Fraction(0)] * (r - 1) + [Fraction(1)]]
    e_rows = [[x**k for k in range(m)] for x in xs] + [[Fraction(0)] * (m - 1) + [Fraction(1)]]
    c_cols = []
    for i, x in enumerate(xs):
        poly, denominator = [Fraction(1)], Fraction(1)
        for j, other in enumerate(xs):
            if j != i:
                poly = _polynomial_product(poly, [-other, Fraction(1)])
                denominator *= x - other
        g_rows[i] = [value / denominator for value in g_rows[i]]
        c_cols.append(poly + [Fraction(0)])  # degree n - 2: n - 1 coefficients
    leading = [Fraction(1)]
    for x in xs:
        leading = _polynomial_product(leading, [-x, Fraction(1)])
    c_cols.append(leading)
    return {
        "G": g_rows,
        "BT": c_cols,  # B' = C': row i of B' is column i of C
        "AT": [[e_rows[i][j] for i in range(n)] for j in range(m)],
    }


def _combinations(matrix: list[list[Fraction]]) -> list[list[tuple[int, str, str | None]]]:
    """Each row of ``matrix`` as its nonzero terms (column, sign, C literal of the
    magnitude, or None for 1), so that templates write sums without multiplying by 0 or 1."""
    return [
        [(j, "-" if value < 0 else "+", None if abs(value) == 1 else literal(abs(value)))
         for j, value in enumerate(row) if value]
        for row in matrix
    ]  # fmt: skip


def winograd_attrs(geometry: dict[str, int], channels: int, group: int) -> dict[str, int]:
    """A stride-1 3x3 convolution's geometry (:func:`conv_attrs`; ``channels`` outputs in
    ``group`` groups) with its blocks: TH x TW blocks of 4x4 outputs (the last ones partly
    outside the output), T of them per image."""
    a = geometry
    if (a["KH"], a["KW"], a["SH"], a["SW"], a["DH"], a["DW"]) != (3, 3, 1, 1, 1, 1):
        raise InternalError(f"Winograd F(4x4, 3x3) needs a 3x3 kernel at stride 1, not {a}")
    th, tw = -(-a["OH"] // WINOGRAD_TILE), -(-a["OW"] // WINOGRAD_TILE)
    return {**a, "M": channels, "G": group, "CG": a["C"] // group, "MG": channels // group,
            "TH": th, "TW": tw, "T": th * tw, "TILE": WINOGRAD_TILE,
            "SPAN": WINOGRAD_SPAN}  # fmt: skip


def winograd(stage: str, source: Operand, dest: Operand, attrs: dict[str, int]) -> Kernel:
    """One stage of a Winograd convolution (:func:`winograd_attrs`); between the input and
    output stages, a GEMM per point of the 6x6 block and group multiplies the transformed
    weights by the transformed input, summing over input channels.

    - ``weights``: the weights (M, CG, 3, 3) to U = G g G', stored (36, M, CG);
    - ``input``: one image (C, H, W), its padding as zeros, to V = B' d B of each block,
      stored (36, C, T);
    - ``output``: the products (36, M, T) to one image's output (M, OH, OW), A' m A of
      each block.

    ``units`` is the number of independent block transforms, what a GPU gives a thread each.
    """
    if stage not in WINOGRAD_STAGES:
        raise InternalError(f"unknown Winograd stage {stage}")
    units = {"weights": attrs["M"] * attrs["CG"], "input": attrs["C"] * attrs["T"],
             "output": attrs["M"] * attrs["T"]}[stage]  # fmt: skip
    matrix = winograd_transforms()[WINOGRAD_STAGES[stage]]
    return Kernel("winograd", reads=[source], writes=[dest],
                  attrs={**attrs, "stage": stage, "units": units,
                         "terms": _combinations(matrix)})  # fmt: skip
