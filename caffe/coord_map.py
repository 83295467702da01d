"""pycaffe's coord_map: how the coordinates of one NetSpec top line up with another's.

Fully convolutional nets shrink the input with convolutions and pooling, grow it back with
deconvolutions, then crop the result to the input's size. The offset of that crop depends
on every kernel, stride and pad on the way; :func:`crop` works it out and makes the Crop
layer, so the net can be changed without recounting by hand.

A map is ``(axis, a, b)``: coordinate ``x`` of one top is ``a * x + b`` of the other, along
the spatial axes after ``axis`` (``None``: any axis, as for a pointwise layer). ``a`` and
``b`` are arrays, one entry per spatial axis, or one for all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from caffe.net_spec import Function, Top, layers
from caffec.errors import UserError

Map = tuple[int | None, Any, Any]
IDENTITY: Map = (None, 1, 0)

# layers that keep every coordinate where it is
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split",
                       "TanH", "Threshold"]  # fmt: skip
SLIDING_WINDOW = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                  "Im2col": "convolution_param", "Pooling": "pooling_param"}  # fmt: skip


class UndefinedMapException(UserError):
    """A layer whose output coordinates do not follow from its input's (InnerProduct, a
    global pooling): the walk between two tops cannot go through it."""


class AxisMismatchException(UserError):
    """Two maps along different axes cannot be composed."""


class UnconnectedTopsError(UserError, RuntimeError):
    """No blob that both tops come from through mappable layers (a RuntimeError, as pycaffe
    raised)."""


class CropError(UserError, AssertionError):
    """No Crop layer can align the two tops (an AssertionError, as pycaffe's asserts were)."""


def _params(fn: Function, message: str) -> dict[str, Any]:
    """The layer's keywords, those given in its ``*_param`` dict included."""
    nested = fn.params.get(message, {})
    return {**fn.params, **(nested if isinstance(nested, Mapping) else {})}


def _per_axis(params: dict[str, Any], name: str, prefix: str, default: Any) -> np.ndarray:
    """``name`` (one value, or one per spatial axis), or the 2-D ``prefix_h``/``prefix_w``."""
    if f"{prefix}_h" in params or f"{prefix}_w" in params:
        values: Any = [params.get(f"{prefix}_h", default), params.get(f"{prefix}_w", default)]
    else:
        values = params.get(name, default)
    return np.array(values, dtype=float, ndmin=1)


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(axis, stride, extent, pad)`` of a convolution, deconvolution or pooling, where the
    extent is the kernel size dilated."""
    params = _params(fn, SLIDING_WINDOW[fn.type_name])
    if params.get("global_pooling"):
        raise UndefinedMapException("a global Pooling layer has no coordinate map")
    if "kernel_size" not in params and "kernel_h" not in params:
        raise UserError(f"this {fn.type_name} layer has no kernel_size, so no coordinate map")
    kernel = _per_axis(params, "kernel_size", "kernel", None)
    extent = (kernel - 1) * _per_axis(params, "dilation", "dilation", 1) + 1
    stride = _per_axis(params, "stride", "stride", 1)
    return params.get("axis", 1), stride, extent, _per_axis(params, "pad", "pad", 0)


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """``(axis, offset)`` of a Crop layer, with Caffe's defaults (2 and 0)."""
    params = _params(fn, "crop_param")
    return params.get("axis", 2), np.array(params.get("offset", 0), dtype=float, ndmin=1)


def coord_map(fn: Function) -> Map:
    """The map from coordinates of ``fn``'s bottoms to those of its tops."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return IDENTITY
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # a map's axis is the one before the first mapped
    raise UndefinedMapException(f"a {fn.type_name} layer has no coordinate map")


def compose(base_map: Map, next_map: Map) -> Map:
    """``base_map`` after ``next_map``: x → a1 * (a2 * x + b2) + b1."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"cannot compose a map along axis {ax1} with one along {ax2}")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(coord_map: Map) -> Map:
    """The map back: x → (x - b) / a."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _ancestors(start: Top) -> Iterator[tuple[Top, Map]]:
    """``start`` and the tops it is computed from, nearest first, each with the map from its
    coordinates to ``start``'s; the walk stops at layers without a map. Only a Crop's first
    bottom is followed: the second gives just a size."""
    maps = {start: IDENTITY}
    queue = deque([start])
    while queue:
        top = queue.popleft()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        bottoms = top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs
        for bottom in bottoms:
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                queue.append(bottom)


def coord_map_from_to(top_from: Top, top_to: Top) -> Map:
    """The map from coordinates of ``top_from`` to those of ``top_to``, through the nearest
    blob both are computed from."""
    from_maps = dict(_ancestors(top_from))
    for top, to_map in _ancestors(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise UnconnectedTopsError(
        "the two tops come from no common blob through spatial layers",
        hint="convolutions, poolings, deconvolutions, crops and pointwise layers map coordinates",
    )


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer that cuts ``top_from`` to the size and place of ``top_to``."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(np.asarray(a) == 1):
        raise CropError(f"the tops' coordinates differ in scale (a = {a}): strides up and "
                        "down do not match")  # fmt: skip
    b = np.atleast_1d(b)
    if np.any(b > 0):
        raise CropError(f"the top to crop starts inside the reference top (b = {b}): it "
                        "would need a negative offset")  # fmt: skip
    if np.any(np.round(b) != b):
        raise CropError(f"the offset is not a whole number of pixels (b = {b})")
    axis = (1 if ax is None else ax) + 1  # Crop's axis is the first one cropped
    return layers.Crop(top_from, top_to,
                       crop_param=dict(axis=axis, offset=[int(-v) for v in b]))  # fmt: skip
