"""Independent numpy references for the forward pass of Caffe's layers.

Written from BVLC Caffe's layer sources (``src/caffe/layers/*.cpp``), not from caffec's
templates, so that the generated kernels can be checked against them. Each function takes
float64 numpy arrays (the layer's bottoms, then its parameter blobs) and keyword parameters
named like Caffe's proto fields, and returns the list of the layer's tops. Losses and the
accuracy are 0-d arrays, as Caffe's scalar tops are.

Clarity beats speed here, but loops run over kernel offsets or output positions only, never
over batch or channels, so a 64x20x24x24 convolution takes a fraction of a second.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from itertools import product

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)  # Caffe's -FLT_MAX seeds MAX pooling
FLT_MIN = float(np.finfo(np.float32).tiny)  # Caffe clamps probabilities at FLT_MIN in logs
LOG_THRESHOLD = 1e-20  # kLOG_THRESHOLD of MultinomialLogisticLoss
_sl = builtins.slice  # this module defines the Slice layer as `slice`

__all__ = [
    "absval",
    "accuracy",
    "argmax",
    "batch_norm",
    "bias",
    "bnll",
    "clip",
    "concat",
    "contrastive_loss",
    "convolution",
    "crop",
    "deconvolution",
    "dropout",
    "elu",
    "eltwise",
    "embed",
    "euclidean_loss",
    "exp",
    "flatten",
    "hinge_loss",
    "inner_product",
    "log",
    "lrn",
    "multinomial_logistic_loss",
    "mvn",
    "pooled_extent",
    "pooling",
    "power",
    "prelu",
    "reduction",
    "relu",
    "reshape",
    "scale",
    "sigmoid",
    "sigmoid_cross_entropy_loss",
    "silence",
    "slice",
    "softmax",
    "softmax_with_loss",
    "split",
    "swish",
    "tanh",
    "threshold",
    "tile",
]


# ---------------------------------------------------------------------------- helpers


def _tup(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    """One value per spatial axis: an int (or a 1-sequence) is repeated, as Caffe does."""
    if isinstance(v, int | np.integer):
        return (int(v),) * n
    v = tuple(int(i) for i in v)
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise ValueError(f"expected 1 or {n} values, got {v}")
    return v


def _axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-D blob")
    return axis % ndim


def _count(shape: Sequence[int], start: int, end: int | None = None) -> int:
    return int(np.prod(shape[start:end], dtype=np.int64))


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _taps(offset: int, dilation: int, stride: int, count: int) -> builtins.slice:
    """The padded-input positions kernel tap ``offset`` meets at outputs 0 .. count-1."""
    start = offset * dilation
    return _sl(start, start + stride * (count - 1) + 1, stride)


def _normalizer(mode: str, outer: int, inner: int, valid: int) -> float:
    """LossLayer's normalizer: FULL, VALID, BATCH_SIZE or NONE, never below 1."""
    n = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return float(max(1, n))


def _loss_mode(normalization: str | None, normalize: bool | None, default: str) -> str:
    """``normalization`` wins; else the legacy ``normalize`` bool maps to VALID / BATCH_SIZE."""
    if normalization is not None:
        return normalization
    if normalize is not None:
        return "VALID" if normalize else "BATCH_SIZE"
    return default


# ---------------------------------------------------------------------------- vision


def convolution(x, w, b=None, *, stride=1, pad=0, dilation=1, group=1) -> list[np.ndarray]:
    """N-D convolution (cross-correlation), NCHW..., ``w`` of shape (O, C/group, *kernel).

    Output extent per axis: (in + 2*pad - (dilation*(k-1)+1)) // stride + 1 (Caffe floors).
    Computed as a sum over kernel offsets of strided slices of the zero-padded input.
    """
    x, w = _f64(x), _f64(w)
    nd = x.ndim - 2
    stride, pad, dilation = _tup(stride, nd), _tup(pad, nd), _tup(dilation, nd)
    n, c = x.shape[:2]
    o, cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    if cg * group != c or o % group:
        raise ValueError(f"weights {w.shape} do not fit {c} channels in {group} groups")
    og = o // group
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [
        (xp.shape[2 + i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1 for i in range(nd)
    ]
    if min(out) <= 0:
        raise ValueError(f"kernel {kernel} does not fit the padded input {xp.shape[2:]}")
    y = np.zeros((n, o, *out))
    for g in range(group):
        xg, wg = xp[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]
        for off in product(*(range(k) for k in kernel)):
            sl = tuple(_taps(off[i], dilation[i], stride[i], out[i]) for i in range(nd))
            patch = xg[(_sl(None), _sl(None), *sl)]  # (N, cg, *out)
            contrib = np.tensordot(wg[(_sl(None), _sl(None), *off)], patch, axes=([1], [1]))
            y[:, g * og : (g + 1) * og] += np.moveaxis(contrib, 0, 1)
    if b is not None:
        y += _f64(b).reshape((1, o) + (1,) * nd)
    return [y]


def convolution_grad(x, w, dy, *, stride=1, pad=0, dilation=1, group=1) -> list[np.ndarray]:
    """The gradients (dx, dw, db) of ``convolution`` for the top gradient ``dy``: each
    kernel offset's strided slice of the padded input gets back what it contributed."""
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    nd = x.ndim - 2
    stride, pad, dilation = _tup(stride, nd), _tup(pad, nd), _tup(dilation, nd)
    o, cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    og, out = o // group, dy.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for g in range(group):
        chans, outs = _sl(g * cg, (g + 1) * cg), _sl(g * og, (g + 1) * og)
        for off in product(*(range(k) for k in kernel)):
            sl = tuple(_taps(off[i], dilation[i], stride[i], out[i]) for i in range(nd))
            where = (_sl(None), chans, *sl)
            dyg = dy[:, outs]  # (N, og, *out)
            summed = [0, *range(2, 2 + nd)]  # images and positions
            dw[(outs, _sl(None), *off)] += np.tensordot(dyg, xp[where], axes=(summed, summed))
            back = np.tensordot(dyg, w[(outs, _sl(None), *off)], axes=([1], [0]))  # (N, *out, cg)
            dxp[where] += np.moveaxis(back, -1, 1)
    crop = tuple(_sl(p, p + size) for p, size in zip(pad, x.shape[2:], strict=True))
    dx = dxp[(_sl(None), _sl(None), *crop)]
    return [dx, dw, dy.sum(axis=(0, *range(2, 2 + nd)))]


def deconvolution(x, w, b=None, *, stride=1, pad=0, dilation=1, group=1) -> list[np.ndarray]:
    """N-D transposed convolution, ``w`` of shape (C, O/group, *kernel) as Caffe stores it.

    Each input value scatters ``value * w[c, :, offset]`` to ``stride*i + dilation*offset``;
    the result is then cropped by ``pad`` on each side. Output extent per axis:
    stride*(in - 1) + dilation*(k - 1) + 1 - 2*pad. With the same weight array it is the
    adjoint of ``convolution`` (exactly so where the convolution's floor drops nothing).
    """
    x, w = _f64(x), _f64(w)
    nd = x.ndim - 2
    stride, pad, dilation = _tup(stride, nd), _tup(pad, nd), _tup(dilation, nd)
    n, c = x.shape[:2]
    og, kernel = w.shape[1], w.shape[2:]
    if w.shape[0] != c or c % group:
        raise ValueError(f"weights {w.shape} do not fit {c} channels in {group} groups")
    cg, o = c // group, og * group
    ins = x.shape[2:]
    full = [stride[i] * (ins[i] - 1) + dilation[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    if min(f - 2 * p for f, p in zip(full, pad, strict=True)) <= 0:
        raise ValueError("deconvolution output would be empty")
    yf = np.zeros((n, o, *full))
    for g in range(group):
        xg, wg = x[:, g * cg : (g + 1) * cg], w[g * cg : (g + 1) * cg]
        for off in product(*(range(k) for k in kernel)):
            sl = tuple(_taps(off[i], dilation[i], stride[i], ins[i]) for i in range(nd))
            contrib = np.tensordot(xg, wg[(_sl(None), _sl(None), *off)], axes=([1], [0]))
            yf[(_sl(None), _sl(g * og, (g + 1) * og), *sl)] += np.moveaxis(contrib, -1, 1)
    y = yf[(_sl(None), _sl(None), *(_sl(p, f - p) for p, f in zip(pad, full, strict=True)))]
    y = np.ascontiguousarray(y)
    if b is not None:
        y += _f64(b).reshape((1, o) + (1,) * nd)
    return [y]


def pooled_extent(size: int, kernel: int, stride: int, pad: int, round_mode: str = "CEIL") -> int:
    """Caffe's pooled size: ceil (or floor) of (size + 2*pad - kernel)/stride, plus one; with
    padding, a last window that would start in the padding (>= size + pad) is dropped."""
    num = size + 2 * pad - kernel
    q = -(-num // stride) if round_mode == "CEIL" else num // stride
    out = q + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pooling(
    x,
    *,
    method="MAX",
    kernel=None,
    stride=1,
    pad=0,
    global_pooling=False,
    round_mode="CEIL",
    pool=None,
    kernel_size=None,
) -> list[np.ndarray]:
    """2-D pooling over NCHW. ``pool``/``kernel_size`` are accepted as Caffe's spellings.

    Window of output (ph, pw): rows [ph*stride - pad, ph*stride - pad + kernel).
    - MAX: over the window clipped to the image (padding never wins); seeded with -FLT_MAX,
      strictly-greater updates in row-major order, so the first maximum wins; the mask top
      is the flat index h*W + w into the input plane (-1 for an empty window).
      Returns [y, mask].
    - AVE: sums the window clipped to the image, and divides by the window size clipped to
      the *padded* image [-pad, size + pad) — not by the number of valid pixels. Returns [y].
    - STOCHASTIC, TEST phase (Caffe has it on the GPU only): sum(x^2) / sum(x) over the
      window clipped to the image, no padding, and 0 where sum(x) <= 0. Returns [y].
    ``global_pooling`` makes the kernel the whole plane (pad 0, stride 1 required).
    """
    x = _f64(x)
    method = pool if pool is not None else method
    n, c, h, w = x.shape
    kernel = kernel if kernel is not None else kernel_size
    (oh, ow), windows = _pool_windows(x.shape, kernel, stride, pad, global_pooling, round_mode)
    y = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1.0)
    for (i, j), (hs, ws), (he, we), size in windows(unpadded=method == "STOCHASTIC"):
        hs0, ws0 = max(hs, 0), max(ws, 0)
        win = x[:, :, hs0:he, ws0:we].reshape(n, c, -1)
        if method == "MAX":
            y[:, :, i, j] = -FLT_MAX
            if win.shape[2]:
                k = win.argmax(axis=2)  # first occurrence in row-major order
                best = np.take_along_axis(win, k[..., None], 2)[..., 0]
                hit = best > -FLT_MAX
                y[:, :, i, j] = np.where(hit, best, -FLT_MAX)
                flat = (hs0 + k // (we - ws0)) * w + ws0 + k % (we - ws0)
                mask[:, :, i, j] = np.where(hit, flat, -1)
        elif method == "AVE":
            # a window starting right at the image's end (stride > kernel, no padding) has
            # Caffe's divisor 0, and its output is NaN there too
            with np.errstate(invalid="ignore"):
                y[:, :, i, j] = win.sum(axis=2) / size
        elif method == "STOCHASTIC":
            total = win.sum(axis=2)
            safe = np.where(total > 0, total, 1.0)
            y[:, :, i, j] = np.where(total > 0, (win**2).sum(axis=2) / safe, 0.0)
        else:
            raise ValueError(f"unknown pooling method {method!r}")
    return [y, mask] if method == "MAX" else [y]


def pooling_grad(x, dy, *, method="MAX", kernel=None, stride=1, pad=0) -> list[np.ndarray]:
    """The gradient of :func:`pooling` (MAX or AVE) with respect to x, given dy: MAX sends
    each output's gradient to its window's first maximum, AVE shares it over the window
    (divided by the padded window's size, as the forward divides)."""
    x, dy = _f64(x), _f64(dy)
    dx = np.zeros_like(x)
    _, windows = _pool_windows(x.shape, kernel, stride, pad, False, "CEIL")
    if method == "MAX":
        planes = x.shape[0] * x.shape[1]
        mask = pooling(x, method="MAX", kernel=kernel, stride=stride, pad=pad)[1]
        for plane, where, g in zip(dx.reshape(planes, -1), mask.reshape(planes, -1),
                                   dy.reshape(planes, -1), strict=True):  # fmt: skip
            hit = where >= 0
            np.add.at(plane, where[hit].astype(int), g[hit])
        return [dx]
    for (i, j), (hs, ws), (he, we), size in windows(unpadded=False):
        if he <= max(hs, 0) or we <= max(ws, 0):
            continue  # a window beyond the image
        dx[:, :, max(hs, 0) : he, max(ws, 0) : we] += dy[:, :, i, j, None, None] / size
    return [dx]


def _pool_windows(shape, kernel, stride, pad, global_pooling, round_mode):
    """The pooled size (OH, OW) and a function listing every output's window: its position,
    its start (which may lie in the padding), its end clipped to the image, and Caffe's AVE
    divisor (the window clipped to the padded image). ``unpadded``: windows start at
    i * stride (STOCHASTIC pooling ignores the padding)."""
    h, w = shape[2:]
    if global_pooling:
        if _tup(pad, 2) != (0, 0) or _tup(stride, 2) != (1, 1):
            raise ValueError("global pooling needs pad 0 and stride 1")
        kh, kw = h, w
    else:
        if kernel is None:
            raise ValueError("pooling needs a kernel (or global_pooling)")
        kh, kw = _tup(kernel, 2)
    sh, sw = _tup(stride, 2)
    ph_, pw_ = _tup(pad, 2)
    if ph_ >= kh or pw_ >= kw:
        raise ValueError("Caffe requires pad < kernel")
    oh = pooled_extent(h, kh, sh, ph_, round_mode)
    ow = pooled_extent(w, kw, sw, pw_, round_mode)

    def windows(unpadded: bool):
        for i, j in product(range(oh), range(ow)):
            hs, ws = (i * sh, j * sw) if unpadded else (i * sh - ph_, j * sw - pw_)
            size = (min(hs + kh, h + ph_) - hs) * (min(ws + kw, w + pw_) - ws)
            yield (i, j), (hs, ws), (min(hs + kh, h), min(ws + kw, w)), size

    return (oh, ow), windows


def lrn(
    x, *, local_size=5, alpha=1.0, beta=0.75, k=1.0, norm_region="ACROSS_CHANNELS"
) -> list[np.ndarray]:
    """Local response normalization, y = x * scale^-beta.

    ACROSS_CHANNELS: scale = k + alpha/n * sum of x^2 over the n channels centred on c
    (zero beyond the ends).
    WITHIN_CHANNEL: Caffe builds it from AVE pooling of x^2 (kernel n, pad (n-1)/2, stride 1,
    whose divisor is always n*n here) and Power(shift 1, scale alpha): scale =
    1 + alpha/n^2 * sum of x^2 over the zero-padded n x n window; ``k`` is not used.
    """
    x = _f64(x)
    n = local_size
    if n % 2 != 1:
        raise ValueError("LRN only supports odd local_size")
    p = (n - 1) // 2
    sq = x**2
    if norm_region == "ACROSS_CHANNELS":
        padded = np.pad(sq, [(0, 0), (p, p), (0, 0), (0, 0)])
        window = sum(padded[:, i : i + x.shape[1]] for i in range(n))
        scale_ = k + alpha / n * window
    elif norm_region == "WITHIN_CHANNEL":
        h, w = x.shape[2:]
        padded = np.pad(sq, [(0, 0), (0, 0), (p, p), (p, p)])
        window = sum(padded[:, :, i : i + h, j : j + w] for i in range(n) for j in range(n))
        scale_ = 1.0 + alpha / (n * n) * window
    else:
        raise ValueError(f"unknown norm_region {norm_region!r}")
    return [x * scale_**-beta]


def crop(x, like_shape, *, axis=2, offset=()) -> list[np.ndarray]:
    """Crop every axis from ``axis`` on to ``like_shape`` (the second bottom's shape).

    ``offset``: none (all 0), one (used for every cropped axis) or one per cropped axis.
    """
    x = _f64(x)
    like_shape = tuple(like_shape.shape if hasattr(like_shape, "shape") else like_shape)
    start = _axis(axis, x.ndim)
    offset = tuple(offset)
    sl = []
    for i in range(x.ndim):
        if i < start:
            sl.append(_sl(None))
            continue
        off = 0 if not offset else offset[0] if len(offset) == 1 else offset[i - start]
        if x.shape[i] - off < like_shape[i]:
            raise ValueError(f"crop of axis {i} out of bounds")
        sl.append(_sl(off, off + like_shape[i]))
    return [x[tuple(sl)].copy()]


# ---------------------------------------------------------------------------- common


def inner_product(x, w, b=None, *, axis=1, transpose=False) -> list[np.ndarray]:
    """y = x_flat @ W^T + b, x flattened to (count(0, axis), count(axis)).

    ``w`` is (num_output, K), or (K, num_output) with ``transpose``. Top shape is
    x.shape[:axis] + (num_output,).
    """
    x, w = _f64(x), _f64(w)
    a = _axis(axis, x.ndim)
    xf = x.reshape(_count(x.shape, 0, a), _count(x.shape, a))
    y = xf @ (w if transpose else w.T)
    if b is not None:
        y = y + _f64(b).reshape(1, -1)
    return [y.reshape(*x.shape[:a], y.shape[1])]


def embed(x, w, b=None) -> list[np.ndarray]:
    """Row lookup: y[..., :] = W[int(x[...])] (+ b); ``w`` is (input_dim, num_output)."""
    idx = _f64(x).astype(np.int64)
    w = _f64(w)
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= w.shape[0]:
        raise ValueError("embed index out of range")
    y = w[idx]
    if b is not None:
        y = y + _f64(b)
    return [y]


def dropout(x, mask, *, ratio=0.5, phase="TRAIN") -> list[np.ndarray]:
    """TRAIN: y = x * mask / (1 - ratio), ``mask`` the 0/1 keep mask; TEST: y = x."""
    x = _f64(x)
    if phase == "TEST":
        return [x.copy()]
    return [x * _f64(mask) * (1.0 / (1.0 - ratio))]


def concat(*xs, axis=1, concat_dim=None) -> list[np.ndarray]:
    """Join along ``axis`` (legacy ``concat_dim`` if given)."""
    xs = [_f64(x) for x in xs]
    a = concat_dim if concat_dim is not None else axis
    return [np.concatenate(xs, axis=_axis(a, xs[0].ndim))]


def slice(x, *, axis=1, slice_point=(), num_tops=None, slice_dim=None) -> list[np.ndarray]:
    """Split along ``axis`` at ``slice_point``s; without them, into ``num_tops`` equal parts."""
    x = _f64(x)
    a = _axis(slice_dim if slice_dim is not None else axis, x.ndim)
    points = list(slice_point)
    if not points:
        if num_tops is None or x.shape[a] % num_tops:
            raise ValueError(f"cannot split {x.shape[a]} evenly into {num_tops} tops")
        step = x.shape[a] // num_tops
        points = [step * i for i in range(1, num_tops)]
    bounds = [0, *points, x.shape[a]]
    if any(lo >= hi for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)):
        raise ValueError(f"bad slice points {points} for extent {x.shape[a]}")
    return [part.copy() for part in np.split(x, points, axis=a)]


def split(x, n) -> list[np.ndarray]:
    """``n`` copies of the bottom."""
    return [_f64(x).copy() for _ in range(n)]


def silence(*xs) -> list[np.ndarray]:
    """No tops."""
    return []


def flatten(x, *, axis=1, end_axis=-1) -> list[np.ndarray]:
    """Merge axes [axis, end_axis] (both inclusive, negative allowed) into one."""
    x = _f64(x)
    a, e = _axis(axis, x.ndim), _axis(end_axis, x.ndim)
    shape = x.shape[:a] + (_count(x.shape, a, e + 1),) + x.shape[e + 1 :]
    return [x.reshape(shape).copy()]


def reshape(x, shape, *, axis=0, num_axes=-1) -> list[np.ndarray]:
    """Replace axes [axis, axis + num_axes) by ``shape``; 0 copies the bottom's dim at that
    position, one -1 is inferred. A negative ``axis`` counts from the end (-1 = after the
    last axis)."""
    x = _f64(x)
    start = axis if axis >= 0 else x.ndim + axis + 1
    end = x.ndim if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= x.ndim:
        raise ValueError("reshape axes out of range")
    new = list(shape)
    for i, d in enumerate(new):
        if d == 0:
            new[i] = x.shape[start + i]
    top = list(x.shape[:start]) + new + list(x.shape[end:])
    if new.count(-1) > 1:
        raise ValueError("at most one -1 in a reshape")
    if -1 in new:
        known = _count([d for d in top if d != -1], 0)
        top[top.index(-1)] = x.size // known
    if _count(top, 0) != x.size:
        raise ValueError(f"cannot reshape {x.shape} to {top}")
    return [x.reshape(top).copy()]


def tile(x, *, axis=1, tiles=1) -> list[np.ndarray]:
    """Repeat the whole block x[..., axis:] ``tiles`` times along ``axis``."""
    x = _f64(x)
    reps = [1] * x.ndim
    reps[_axis(axis, x.ndim)] = tiles
    return [np.tile(x, reps)]


def eltwise(*xs, operation="SUM", coeff=None) -> list[np.ndarray]:
    """SUM: sum of coeff_i * x_i (coeff defaults to 1s); PROD: product; MAX: maximum."""
    xs = [_f64(x) for x in xs]
    if operation == "SUM":
        coeff = [1.0] * len(xs) if coeff is None or len(coeff) == 0 else list(coeff)
        if len(coeff) != len(xs):
            raise ValueError("eltwise needs one coeff per bottom")
        return [sum(c * x for c, x in zip(coeff, xs, strict=True))]
    if coeff:
        raise ValueError("eltwise coeff only works with SUM")
    if operation == "PROD":
        return [np.prod(np.stack(xs), axis=0)]
    if operation == "MAX":
        return [np.max(np.stack(xs), axis=0)]
    raise ValueError(f"unknown eltwise operation {operation!r}")


def argmax(x, *, out_max_val=False, top_k=1, axis=None) -> list[np.ndarray]:
    """Top-k indices (or values) by Caffe's partial_sort with std::greater on (value, index):
    among equal values the *larger index* comes first.

    With ``axis``: top shape is x.shape with shape[axis] = top_k, holding the values if
    ``out_max_val`` else the indices. Without: each item x[i] is flattened; top shape is
    (N, 2 if out_max_val else 1, top_k) padded with 1s to x.ndim axes, the indices then the
    values.
    """
    x = _f64(x)
    if axis is not None:
        a = _axis(axis, x.ndim)
        v = np.moveaxis(x, a, -1)
    else:
        v = x.reshape(x.shape[0], -1)
    d = v.shape[-1]
    if not 1 <= top_k <= d:
        raise ValueError("top_k must be in [1, dim]")
    rev = np.argsort(-v[..., ::-1], axis=-1, kind="stable")[..., :top_k]
    idx = (d - 1 - rev).astype(np.float64)
    val = np.take_along_axis(v, d - 1 - rev, axis=-1)
    if axis is not None:
        return [np.moveaxis(val if out_max_val else idx, -1, a).copy()]
    top = np.stack([idx, val], axis=1) if out_max_val else idx[:, None, :]
    return [top.reshape(top.shape + (1,) * (x.ndim - 3))]


def reduction(x, *, operation="SUM", axis=0, coeff=1.0) -> list[np.ndarray]:
    """Reduce all axes from ``axis`` on: SUM, ASUM (sum |x|), SUMSQ or MEAN, times coeff."""
    x = _f64(x)
    a = _axis(axis, x.ndim)
    v = x.reshape(*x.shape[:a], -1)
    ops = {
        "SUM": lambda t: t.sum(-1),
        "ASUM": lambda t: np.abs(t).sum(-1),
        "SUMSQ": lambda t: (t * t).sum(-1),
        "MEAN": lambda t: t.mean(-1),
    }
    return [coeff * ops[operation](v)]


# ---------------------------------------------------------------------------- neurons


def relu(x, *, negative_slope=0.0) -> list[np.ndarray]:
    """y = max(x, 0) + negative_slope * min(x, 0)."""
    x = _f64(x)
    return [np.maximum(x, 0) + negative_slope * np.minimum(x, 0)]


def sigmoid(x) -> list[np.ndarray]:
    """y = 1 / (1 + exp(-x)), evaluated as 0.5 * tanh(x/2) + 0.5 (no overflow)."""
    return [0.5 * np.tanh(0.5 * _f64(x)) + 0.5]


def tanh(x) -> list[np.ndarray]:
    return [np.tanh(_f64(x))]


def absval(x) -> list[np.ndarray]:
    return [np.abs(_f64(x))]


def power(x, *, power=1.0, scale=1.0, shift=0.0) -> list[np.ndarray]:
    """y = (shift + scale * x) ^ power."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.power(shift + scale * _f64(x), power)]


def exp(x, *, base=-1.0, scale=1.0, shift=0.0) -> list[np.ndarray]:
    """y = base ^ (shift + scale * x); base -1 means e."""
    z = shift + scale * _f64(x)
    return [np.exp(z) if base == -1 else np.power(float(base), z)]


def log(x, *, base=-1.0, scale=1.0, shift=0.0) -> list[np.ndarray]:
    """y = log_base(shift + scale * x); base -1 means e."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.log(shift + scale * _f64(x))
    return [z if base == -1 else z / math.log(base)]


def elu(x, *, alpha=1.0) -> list[np.ndarray]:
    """y = x if x > 0 else alpha * (exp(x) - 1)."""
    x = _f64(x)
    return [np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))]


def prelu(x, slope, *, channel_shared=False) -> list[np.ndarray]:
    """y = max(x, 0) + a_c * min(x, 0), a_c per channel (axis 1) or one shared value."""
    x, slope = _f64(x), _f64(slope).reshape(-1)
    if channel_shared:
        a = slope[0]
    else:
        if slope.size != x.shape[1]:
            raise ValueError("PReLU needs one slope per channel")
        a = slope.reshape((1, -1) + (1,) * (x.ndim - 2))
    return [np.maximum(x, 0) + a * np.minimum(x, 0)]


def bnll(x) -> list[np.ndarray]:
    """Binomial normal log likelihood: y = log(1 + exp(x)) (softplus), stably."""
    return [np.logaddexp(0.0, _f64(x))]


def threshold(x, *, threshold=0.0) -> list[np.ndarray]:
    """y = 1 if x > threshold else 0 (strictly greater)."""
    return [(_f64(x) > threshold).astype(np.float64)]


def clip(x, *, min, max) -> list[np.ndarray]:
    """y = min(max(x, min), max)."""
    return [np.minimum(np.maximum(_f64(x), min), max)]


def swish(x, *, beta=1.0) -> list[np.ndarray]:
    """y = x * sigmoid(beta * x)."""
    x = _f64(x)
    return [x * sigmoid(beta * x)[0]]


def scale(x, s, b=None, *, axis=1) -> list[np.ndarray]:
    """y = x * s (+ b), ``s`` matching x.shape[axis : axis + s.ndim] and broadcast over the
    rest; a 0-d ``s`` scales everything."""
    x, s = _f64(x), _f64(s)
    y = x * _bcast(s, x, axis)
    if b is not None:
        y = y + _bcast(_f64(b), x, axis)
    return [y]


def bias(x, b, *, axis=1) -> list[np.ndarray]:
    """y = x + b, ``b`` matching x.shape[axis : axis + b.ndim]; a 0-d ``b`` adds to all."""
    x = _f64(x)
    return [x + _bcast(_f64(b), x, axis)]


def _bcast(p: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    if p.ndim == 0:
        return p
    a = _axis(axis, x.ndim)
    if x.shape[a : a + p.ndim] != p.shape:
        raise ValueError(f"{p.shape} does not match {x.shape} at axis {a}")
    return p.reshape((1,) * a + p.shape + (1,) * (x.ndim - a - p.ndim))


# ---------------------------------------------------------------------------- normalization


def softmax(x, *, axis=1) -> list[np.ndarray]:
    """exp(x - max) / sum exp(x - max) along ``axis``."""
    x = _f64(x)
    a = _axis(axis, x.ndim)
    e = np.exp(x - x.max(axis=a, keepdims=True))
    return [e / e.sum(axis=a, keepdims=True)]


def batch_norm(
    x, mean, var, factor, *, use_global_stats, moving_average_fraction=0.999, eps=1e-5
) -> list[np.ndarray]:
    """Caffe's BatchNorm (no scale/shift): y = (x - mu) / sqrt(sigma^2 + eps) per channel
    (axis 1; a 1-D bottom is one channel). The three blobs hold running *sums*: mean, var
    and the factor they are scaled by.

    use_global_stats: mu = mean / factor, sigma^2 = var / factor (0 if factor == 0); the
    blobs are returned unchanged.
    Otherwise mu, sigma^2 are the batch's biased statistics over N and the spatial axes, and
    the blobs become mean' = maf*mean + mu, var' = maf*var + m/(m-1) * sigma^2 (m = count /
    channels, correction 1 when m == 1), factor' = maf*factor + 1.
    Returns [y, mean', var', factor'].
    """
    x = _f64(x)
    mean, var, factor = _f64(mean), _f64(var), _f64(factor)
    xc = x.reshape(x.shape[0], 1, -1) if x.ndim == 1 else x.reshape(*x.shape[:2], -1)
    maf = moving_average_fraction
    if use_global_stats:
        f = 0.0 if factor.reshape(-1)[0] == 0 else 1.0 / factor.reshape(-1)[0]
        mu, sig2 = mean * f, var * f
        new = (mean.copy(), var.copy(), factor.copy())
    else:
        mu = xc.mean(axis=(0, 2))
        sig2 = ((xc - mu[None, :, None]) ** 2).mean(axis=(0, 2))
        m = x.size // xc.shape[1]
        corr = m / (m - 1) if m > 1 else 1.0
        new = (maf * mean + mu, maf * var + corr * sig2, maf * factor + 1.0)
    y = (xc - mu[None, :, None]) / np.sqrt(sig2 + eps)[None, :, None]
    return [y.reshape(x.shape), *new]


def mvn(x, *, normalize_variance=True, across_channels=False, eps=1e-9) -> list[np.ndarray]:
    """Mean-variance normalization per (n, c) plane, or per item across channels:
    y = (x - mean) / (sqrt(var) + eps) — Caffe adds eps *after* the square root."""
    x = _f64(x)
    v = x.reshape(x.shape[0], -1) if across_channels else x.reshape(*x.shape[:2], -1)
    v = v - v.mean(axis=-1, keepdims=True)
    if normalize_variance:
        v = v / (np.sqrt((v**2).mean(axis=-1, keepdims=True)) + eps)
    return [v.reshape(x.shape)]


# ---------------------------------------------------------------------------- losses


def softmax_with_loss(
    x, label, *, axis=1, ignore_label=None, normalization=None, normalize=None
) -> list[np.ndarray]:
    """loss = -sum over non-ignored positions of log(max(prob[label], FLT_MIN)) / normalizer.

    Labels are cast to int (truncation). Normalizer (never below 1): VALID = non-ignored
    count (the default), FULL = outer*inner, BATCH_SIZE = outer, NONE = 1; with no
    ``normalization``, the legacy ``normalize`` true/false means VALID/BATCH_SIZE.
    Returns [loss (0-d), prob].
    """
    x = _f64(x)
    a = _axis(axis, x.ndim)
    prob = softmax(x, axis=a)[0]
    outer, inner = _count(x.shape, 0, a), _count(x.shape, a + 1)
    p = prob.reshape(outer, x.shape[a], inner)
    lab = _f64(label).reshape(-1).astype(np.int64)
    if lab.size != outer * inner:
        raise ValueError("need one label per softmax position")
    lab = lab.reshape(outer, inner)
    valid = np.ones_like(lab, dtype=bool) if ignore_label is None else lab != ignore_label
    safe = np.where(valid, lab, 0)
    if (safe < 0).any() or (safe >= x.shape[a]).any():
        raise ValueError("label out of range")
    picked = np.take_along_axis(p, safe[:, None, :], axis=1)[:, 0, :]
    loss = -np.sum(np.where(valid, np.log(np.maximum(picked, FLT_MIN)), 0.0))
    mode = _loss_mode(normalization, normalize, "VALID")
    return [np.array(loss / _normalizer(mode, outer, inner, int(valid.sum()))), prob]


def sigmoid_cross_entropy_loss(
    x, t, *, ignore_label=None, normalization=None, normalize=None
) -> list[np.ndarray]:
    """loss = sum of max(x, 0) - x*t + log(1 + exp(-|x|)) over elements whose int(target)
    is not ``ignore_label``, over the normalizer. Unlike SoftmaxWithLoss the default is
    BATCH_SIZE (x.shape[0]); ``normalize`` true/false means VALID/BATCH_SIZE; FULL is the
    element count."""
    x, t = _f64(x), _f64(t)
    if x.size != t.size:
        raise ValueError("input and target must have the same count")
    t = t.reshape(x.shape)
    per = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    valid = np.ones(x.shape, bool) if ignore_label is None else t.astype(np.int64) != ignore_label
    mode = _loss_mode(normalization, normalize, "BATCH_SIZE")
    norm = _normalizer(mode, x.shape[0], _count(x.shape, 1), int(valid.sum()))
    return [np.array(np.sum(np.where(valid, per, 0.0)) / norm)]


def euclidean_loss(a, b) -> list[np.ndarray]:
    """loss = sum (a - b)^2 / (2 N), N = a.shape[0]."""
    a, b = _f64(a), _f64(b)
    d = a - b.reshape(a.shape)
    return [np.array(np.sum(d * d) / a.shape[0] / 2.0)]


def contrastive_loss(a, b, sim, *, margin=1.0, legacy_version=False) -> list[np.ndarray]:
    """Per pair, d^2 = ||a_i - b_i||^2: similar pairs (int(sim) != 0) add d^2; dissimilar add
    max(margin - d, 0)^2, or max(margin - d^2, 0) with ``legacy_version``. Total / (2 N)."""
    a, b = _f64(a), _f64(b)
    n = a.shape[0]
    d2 = ((a - b) ** 2).reshape(n, -1).sum(axis=1)
    similar = _f64(sim).reshape(n).astype(np.int64) != 0
    if legacy_version:
        dis = np.maximum(margin - d2, 0.0)
    else:
        dis = np.maximum(margin - np.sqrt(d2), 0.0) ** 2
    return [np.array(np.sum(np.where(similar, d2, dis)) / n / 2.0)]


def hinge_loss(x, label, *, norm="L1") -> list[np.ndarray]:
    """Per item i and class j: max(0, 1 - s_ij * x_ij), s = +1 for the label class, -1 for
    the others. L1: sum / N; L2: sum of squares / N."""
    x = _f64(x)
    n = x.shape[0]
    v = x.reshape(n, -1)
    s = -np.ones_like(v)
    s[np.arange(n), _f64(label).reshape(n).astype(np.int64)] = 1.0
    m = np.maximum(0.0, 1.0 - s * v)
    return [np.array((m.sum() if norm == "L1" else (m * m).sum()) / n)]


def multinomial_logistic_loss(prob, label) -> list[np.ndarray]:
    """loss = -sum_i log(max(prob[i, label_i], 1e-20)) / N (the bottom is a probability)."""
    p = _f64(prob)
    n = p.shape[0]
    v = p.reshape(n, -1)
    picked = v[np.arange(n), _f64(label).reshape(n).astype(np.int64)]
    return [np.array(-np.sum(np.log(np.maximum(picked, LOG_THRESHOLD))) / n)]


def accuracy(x, label, *, axis=1, top_k=1, ignore_label=None) -> list[np.ndarray]:
    """A prediction is right when fewer than ``top_k`` *other* classes score >= the true
    class (ties count against it). acc = right / non-ignored count (0 if none);
    per_class[c] = right / count for items labelled c (0 where count is 0).
    Returns [acc (0-d), per_class (num_labels,)]."""
    x = _f64(x)
    a = _axis(axis, x.ndim)
    outer, ncls, inner = _count(x.shape, 0, a), x.shape[a], _count(x.shape, a + 1)
    v = x.reshape(outer, ncls, inner)
    lab = _f64(label).reshape(-1).astype(np.int64)
    if lab.size != outer * inner:
        raise ValueError("need one label per prediction")
    lab = lab.reshape(outer, inner)
    valid = np.ones_like(lab, dtype=bool) if ignore_label is None else lab != ignore_label
    safe = np.where(valid, lab, 0)
    true = np.take_along_axis(v, safe[:, None, :], axis=1)  # (outer, 1, inner)
    better = (v >= true).sum(axis=1) - 1
    right = (better < top_k) & valid
    count = int(valid.sum())
    acc = right.sum() / count if count else 0.0
    nums = np.bincount(safe[valid], minlength=ncls).astype(np.float64)
    hits = np.bincount(safe[right], minlength=ncls).astype(np.float64)
    per_class = np.divide(hits, nums, out=np.zeros(ncls), where=nums > 0)
    return [np.array(acc, dtype=np.float64), per_class]
