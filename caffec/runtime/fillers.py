"""Caffe's parameter fillers (weight initialisers), on numpy arrays.

The compiler writes each parameter's ``FillerParameter`` into the artifact's manifest as a plain
dict (the protobuf field names as keys, enums by name), and the runtime fills the parameter
buffers from it here, so an artifact initialises its weights where neither the compiler nor
protobuf is installed. The formulas and the checks are Caffe's (``include/caffe/filler.hpp`` and
the ``caffe_rng_*`` helpers it calls); where Caffe would abort on a ``CHECK``, this raises a
:class:`~caffec.errors.UserError` that says which filler and what to change.

Caffe's random streams (boost's mt19937) are not reproduced: the values depend only on the
``numpy.random.Generator`` passed in, and are drawn in float64 whatever the output dtype, so one
seed gives the same weights (up to rounding) in a float32 and a float64 build.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from caffec.errors import UserError, did_you_mean
from caffec.formats.binaryproto import read_blobproto

Shape = tuple[int, ...]

# FillerParameter's fields and their defaults, as in caffe.proto.
_DEFAULTS: dict[str, Any] = {
    "type": "constant",
    "value": 0.0,
    "min": 0.0,
    "max": 1.0,
    "mean": 0.0,
    "std": 1.0,
    "sparse": -1,
    "variance_norm": "FAN_IN",
}
_VARIANCE_NORMS = ("FAN_IN", "FAN_OUT", "AVERAGE")


@dataclass(frozen=True)
class _Spec:
    """A FillerParameter with every field present and type-checked."""

    type: str
    value: float
    min: float
    max: float
    mean: float
    std: float
    sparse: int
    variance_norm: str


@dataclass(frozen=True)
class _Filler:
    """One filler: ``check`` raises where Caffe would abort; ``draw`` returns float64 values."""

    check: Callable[[_Spec, Shape], None]
    draw: Callable[[_Spec, Shape, np.random.Generator], np.ndarray]


def fill(spec: Mapping[str, Any], out: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``out`` (float32 or float64, any layout) in place as Caffe's filler ``spec`` would.
    (A spec ``{"blobproto": path}`` is no Caffe filler but a layer's constant blob, read from
    that file when the net is made: InfogainLoss's matrix.)"""
    if out.dtype not in (np.float32, np.float64):
        raise TypeError(f"fillers write float32 or float64 arrays, not {out.dtype}")
    shape = tuple(out.shape)
    if "blobproto" in spec:
        out[...] = _file_blob(spec["blobproto"], shape)
        return
    parsed, filler = _resolve(spec, shape)
    out[...] = filler.draw(parsed, shape, rng)


def check(spec: Mapping[str, Any], shape: Shape) -> None:
    """Raise the :class:`UserError` that :func:`fill` would raise for a blob of ``shape``.

    Lets the compiler reject a bad filler at compile time, naming the layer, without allocating
    the blob.
    """
    _resolve(spec, tuple(shape))


def _file_blob(path: str, shape: Shape) -> np.ndarray:
    """The values of a BlobProto file, which must still have the count it was compiled for."""
    values = read_blobproto(path).data
    if values.size != math.prod(shape):
        raise UserError(
            f"{path} holds a blob of shape {values.shape}; the net was compiled for {shape}",
            hint="compile the net again for the file's new contents",
        )
    return values.reshape(shape)


def filler_names() -> list[str]:
    """The filler types Caffe knows (FillerParameter.type), sorted."""
    return sorted(_FILLERS)


def _resolve(spec: Mapping[str, Any], shape: Shape) -> tuple[_Spec, _Filler]:
    parsed = _parse(spec)
    filler = _FILLERS[parsed.type]
    if math.prod(shape) == 0:
        raise _error(
            parsed.type,
            f"cannot fill an empty blob of shape {shape}",
            "every axis of a parameter blob must be at least 1",
        )
    if parsed.sparse != -1 and parsed.type != "gaussian":
        raise _error(
            parsed.type,
            f"sparse: {parsed.sparse} is not supported by this filler",
            "only the gaussian filler takes sparse; remove it or use type: 'gaussian'",
        )
    filler.check(parsed, shape)
    return parsed, filler


def _parse(spec: Mapping[str, Any]) -> _Spec:
    """Apply Caffe's defaults and reject what Caffe's parser would not accept."""
    for key in spec:
        if key not in _DEFAULTS:
            hint = did_you_mean(str(key), _DEFAULTS) or (
                f"a filler takes only {', '.join(_DEFAULTS)}"
            )
            raise UserError(f"filler spec has an unknown field '{key}'", hint=hint)
    fields = {**_DEFAULTS, **spec}

    kind = fields["type"]
    if not isinstance(kind, str) or kind not in _FILLERS:
        known = ", ".join(filler_names())
        close = did_you_mean(str(kind), _FILLERS)
        hint = f"{close} known fillers: {known}" if close else f"known fillers: {known}"
        raise UserError(f"unknown filler type {kind!r}", hint=hint)

    for key in ("value", "min", "max", "mean", "std"):
        if isinstance(fields[key], bool) or not isinstance(fields[key], numbers.Real):
            raise _error(
                kind,
                f"{key} must be a number, got {fields[key]!r}",
                f"write {key} as a plain number, e.g. {key}: {_DEFAULTS[key]}",
            )
    if isinstance(fields["sparse"], bool) or not isinstance(fields["sparse"], numbers.Integral):
        raise _error(
            kind,
            f"sparse must be an integer, got {fields['sparse']!r}",
            "sparse is a whole number of weights per output, or -1 for a dense blob",
        )
    if fields["variance_norm"] not in _VARIANCE_NORMS:
        close = did_you_mean(str(fields["variance_norm"]), _VARIANCE_NORMS)
        raise _error(
            kind,
            f"unknown variance_norm {fields['variance_norm']!r}",
            close or f"variance_norm is one of {', '.join(_VARIANCE_NORMS)}",
        )
    return _Spec(
        type=kind,
        value=float(fields["value"]),
        min=float(fields["min"]),
        max=float(fields["max"]),
        mean=float(fields["mean"]),
        std=float(fields["std"]),
        sparse=int(fields["sparse"]),
        variance_norm=fields["variance_norm"],
    )


def _error(kind: str, what: str, hint: str | None) -> UserError:
    return UserError(f"filler '{kind}': {what}", hint=hint)


def _no_check(spec: _Spec, shape: Shape) -> None:
    """Fillers that accept any non-empty blob."""


def _num(shape: Shape) -> int:
    """Caffe's ``blob->num()``: axis 0, or 1 for a 0-D blob (its legacy accessors pad with 1)."""
    return shape[0] if shape else 1


def _fan_n(spec: _Spec, shape: Shape) -> float:
    """The n of xavier and msra.

    fan_in = count / shape[0]; fan_out = count / shape[1], or count for a blob of fewer than two
    axes (Caffe's N-D compatible rule); AVERAGE is their mean.
    """
    count = math.prod(shape)
    fan_in = count // _num(shape)
    fan_out = count // shape[1] if len(shape) > 1 else count
    if spec.variance_norm == "FAN_OUT":
        return float(fan_out)
    if spec.variance_norm == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


def _draw_constant(spec: _Spec, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return np.full(shape, spec.value)


def _check_uniform(spec: _Spec, shape: Shape) -> None:
    if not spec.min <= spec.max:
        raise _error(
            "uniform",
            f"min ({spec.min}) is greater than max ({spec.max})",
            "swap min and max",
        )


def _draw_uniform(spec: _Spec, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    # Caffe draws on [min, max] (max widened by one ulp); numpy's [min, max) differs from that
    # only on a set of measure zero, and min == max still gives min.
    return rng.uniform(spec.min, spec.max, size=shape)


def _check_gaussian(spec: _Spec, shape: Shape) -> None:
    if not spec.std > 0:
        raise _error(
            "gaussian",
            f"std must be greater than 0, got {spec.std}",
            "for a fixed value use type: 'constant' with value: <mean>",
        )
    if spec.sparse < -1:
        raise _error(
            "gaussian",
            f"sparse must be -1 (dense) or at least 0, got {spec.sparse}",
            "remove sparse for a dense blob",
        )
    if spec.sparse >= 0:
        # Caffe keeps each weight with probability sparse / shape[0], so it needs an axis 0 and
        # sparse <= shape[0] (caffe_rng_bernoulli refuses a probability above 1).
        if not shape:
            raise _error(
                "gaussian",
                "sparse needs a blob with at least one axis, got a 0-D blob",
                "remove sparse for this blob",
            )
        if spec.sparse > shape[0]:
            raise _error(
                "gaussian",
                f"sparse ({spec.sparse}) is greater than the blob's first axis ({shape[0]}); "
                "Caffe keeps each weight with probability sparse / shape[0]",
                f"use a sparse of at most {shape[0]}, or -1 for a dense blob",
            )


def _draw_gaussian(spec: _Spec, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    values = rng.normal(spec.mean, spec.std, size=shape)
    if spec.sparse >= 0:
        keep = rng.random(size=shape) < spec.sparse / shape[0]
        values *= keep
    return values


def _draw_positive_unitball(spec: _Spec, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    # Uniform [0, 1], then each slice along axis 0 scaled to sum to 1.
    rows = rng.uniform(0.0, 1.0, size=shape).reshape(_num(shape), -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return rows.reshape(shape)


def _draw_xavier(spec: _Spec, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    scale = math.sqrt(3.0 / _fan_n(spec, shape))
    return rng.uniform(-scale, scale, size=shape)


def _draw_msra(spec: _Spec, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, math.sqrt(2.0 / _fan_n(spec, shape)), size=shape)


def _check_bilinear(spec: _Spec, shape: Shape) -> None:
    if len(shape) != 4:
        raise _error(
            "bilinear",
            f"needs a 4-D blob (num_output, channels, kernel_h, kernel_w), got shape {shape}",
            "use it as the weight_filler of a 2-D Deconvolution layer",
        )
    if shape[2] != shape[3]:
        raise _error(
            "bilinear",
            f"needs a square kernel, got {shape[2]}x{shape[3]}",
            "set kernel_size to one value (2 * factor - factor % 2 to upsample by factor)",
        )


def _draw_bilinear(spec: _Spec, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    # The tent kernel of bilinear upsampling, the same for every (output, input) channel pair.
    # Caffe 1.0 centred it at (2f - 1 - f % 2) / 2f, which is off-centre when the kernel size and
    # f differ in parity (size 3, 6, 7, ...); BVLC/caffe#5713 fixed it to (size - 1) / 2f, and
    # that is what this uses. Both agree on every size 2 * factor - factor % 2.
    size = shape[3]
    f = math.ceil(size / 2)
    c = (size - 1) / (2.0 * f)
    tent = 1.0 - np.abs(np.arange(size) / f - c)
    return np.broadcast_to(np.outer(tent, tent), shape)


_FILLERS: dict[str, _Filler] = {
    "constant": _Filler(_no_check, _draw_constant),
    "uniform": _Filler(_check_uniform, _draw_uniform),
    "gaussian": _Filler(_check_gaussian, _draw_gaussian),
    "positive_unitball": _Filler(_no_check, _draw_positive_unitball),
    "xavier": _Filler(_no_check, _draw_xavier),
    "msra": _Filler(_no_check, _draw_msra),
    "bilinear": _Filler(_check_bilinear, _draw_bilinear),
}
