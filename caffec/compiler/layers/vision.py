"""Spatial layers: Convolution, Deconvolution, Pooling, LRN, Crop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from caffec.compiler.ir import ParamBlob, Shape
from caffec.compiler.layers.common import (
    SameShape,
    canonical_axis,
    fmt,
    require_axes,
    require_same_shapes,
)
from caffec.compiler.registry import ShapeError, register_layer


@dataclass(frozen=True)
class ConvGeometry:
    """Per-spatial-axis kernel, stride, pad and dilation of a (de)convolution."""

    axis: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]


def _per_axis(name: str, values: Any, default: int, n: int) -> tuple[int, ...]:
    """Expand a repeated conv field to one value per spatial axis, as Caffe does."""
    values = list(values)
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (values[0],) * n
    if len(values) != n:
        raise ShapeError(
            f"{name} has {len(values)} values but the bottom has {n} spatial axes",
            hint=f"give one {name} for all axes or exactly {n}",
        )
    return tuple(values)


def _hw_names(name: str) -> tuple[str, str]:
    """The 2-D spellings of a field: kernel_size → kernel_h/kernel_w, pad → pad_h/pad_w."""
    stem = "kernel" if name == "kernel_size" else name
    return f"{stem}_h", f"{stem}_w"


def _h_w(p: Any, name: str, default: int, n: int) -> tuple[int, ...]:
    """The field ``name``, or its ``_h``/``_w`` pair (2-D only)."""
    h, w = _hw_names(name)
    has_h, has_w = p.HasField(h), p.HasField(w)
    if not (has_h or has_w):
        return _per_axis(name, getattr(p, name), default, n)
    if n != 2:
        raise ShapeError(f"{h}/{w} only work for 2-D spatial bottoms, this one has {n}")
    if not (has_h and has_w):
        raise ShapeError(f"give both {h} and {w}, or neither")
    if len(getattr(p, name)):
        raise ShapeError(f"give either {name} or {h}/{w}, not both")
    return (getattr(p, h), getattr(p, w))


def conv_geometry(layer: Any, bottom: Shape) -> ConvGeometry:
    p = layer.convolution_param
    axis = canonical_axis(p.axis, len(bottom))
    n = len(bottom) - axis - 1
    if n < 1:
        raise ShapeError(f"the bottom {fmt(bottom)} has no spatial axes after axis {axis}")
    kernel = _h_w(p, "kernel_size", 0, n)
    if not len(p.kernel_size) and not p.HasField("kernel_h"):
        raise ShapeError("no kernel size", hint="set kernel_size (or kernel_h and kernel_w)")
    if min(kernel) <= 0:
        raise ShapeError(f"kernel sizes must be positive, got {kernel}")
    stride = _h_w(p, "stride", 1, n)
    if min(stride) <= 0:
        raise ShapeError(f"strides must be positive, got {stride}")
    pad = _h_w(p, "pad", 0, n)
    dilation = _per_axis("dilation", p.dilation, 1, n)
    return ConvGeometry(axis, kernel, stride, pad, dilation)


def _check_groups(layer: Any, channels: int) -> tuple[int, int]:
    p = layer.convolution_param
    if p.num_output <= 0:
        raise ShapeError("num_output must be positive", hint="set convolution_param.num_output")
    if p.group <= 0 or channels % p.group or p.num_output % p.group:
        raise ShapeError(
            f"group {p.group} must divide both the input channels ({channels}) "
            f"and num_output ({p.num_output})"
        )
    return p.num_output, p.group


class _ConvolutionBase:
    """Shared rules of Convolution and Deconvolution; they differ in output size and weights."""

    def out_size(self, size: int, k: int, s: int, p: int, d: int) -> int:
        raise NotImplementedError

    def weight_shape(self, channels: int, num_output: int, group: int) -> tuple[int, int]:
        raise NotImplementedError

    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        require_same_shapes(bottoms)
        bottom = bottoms[0]
        g = conv_geometry(layer, bottom)
        num_output, _ = _check_groups(layer, bottom[g.axis])
        spatial = []
        for i, size in enumerate(bottom[g.axis + 1 :]):
            out = self.out_size(size, g.kernel[i], g.stride[i], g.pad[i], g.dilation[i])
            if out <= 0:
                extent = g.dilation[i] * (g.kernel[i] - 1) + 1
                raise ShapeError(
                    f"spatial axis {i} of size {size} with pad {g.pad[i]} is smaller than "
                    f"the kernel extent {extent}; the output would be empty"
                )
            spatial.append(out)
        top = (*bottom[: g.axis], num_output, *spatial)
        return [top] * len(bottoms)

    def params(self, layer: Any, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.convolution_param
        g = conv_geometry(layer, bottoms[0])
        first, second = self.weight_shape(bottoms[0][g.axis], p.num_output, p.group)
        blobs = [ParamBlob((first, second, *g.kernel), p.weight_filler, "weight")]
        if p.bias_term:
            blobs.append(ParamBlob((p.num_output,), p.bias_filler, "bias"))
        return blobs


@register_layer("Convolution", bottoms=(1, None), tops=(1, None))
class Convolution(_ConvolutionBase):
    def out_size(self, size: int, k: int, s: int, p: int, d: int) -> int:
        return (size + 2 * p - (d * (k - 1) + 1)) // s + 1

    def weight_shape(self, channels: int, num_output: int, group: int) -> tuple[int, int]:
        return num_output, channels // group


@register_layer("Deconvolution", bottoms=(1, None), tops=(1, None))
class Deconvolution(_ConvolutionBase):
    def out_size(self, size: int, k: int, s: int, p: int, d: int) -> int:
        return s * (size - 1) + d * (k - 1) + 1 - 2 * p

    def weight_shape(self, channels: int, num_output: int, group: int) -> tuple[int, int]:
        return channels, num_output // group


@register_layer("Pooling", tops=(1, 2))
class Pooling:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.pooling_param
        bottom = bottoms[0]
        require_axes(bottom, 4, "Pooling")
        method = p.PoolMethod.Name(p.pool)
        if len(layer.top) == 2 and method != "MAX":
            raise ShapeError(f"only MAX pooling has a second top (the argmax mask), not {method}")
        height, width = bottom[2], bottom[3]
        kernel_given = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
        if p.global_pooling:
            if kernel_given:
                raise ShapeError("global_pooling takes the whole image; do not set a kernel size")
            kernel = (height, width)
        else:
            if not kernel_given:
                raise ShapeError("no kernel size", hint="set kernel_size or global_pooling: true")
            kernel = self._pair(p, "kernel_size", 0)
            if min(kernel) <= 0:
                raise ShapeError(f"kernel sizes must be positive, got {kernel}")
        pad = self._pair(p, "pad", 0)
        stride = self._pair(p, "stride", 1)
        if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
            raise ShapeError("global_pooling needs pad 0 and stride 1")
        if min(stride) <= 0:
            raise ShapeError(f"strides must be positive, got {stride}")
        if pad != (0, 0):
            if method not in ("MAX", "AVE"):
                raise ShapeError(f"padding works only with MAX and AVE pooling, not {method}")
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                raise ShapeError(f"pad {pad} must be smaller than the kernel {kernel}")
        ceil = p.RoundMode.Name(p.round_mode) == "CEIL"
        pooled = tuple(
            self._pooled(size, kernel[i], stride[i], pad[i], ceil)
            for i, size in enumerate((height, width))
        )
        top = (bottom[0], bottom[1], *pooled)
        return [top] * len(layer.top)

    @staticmethod
    def _pair(p: Any, name: str, default: int) -> tuple[int, int]:
        h, w = _hw_names(name)
        if p.HasField(h) or p.HasField(w):
            if p.HasField(name):
                raise ShapeError(f"give either {name} or {h}/{w}, not both")
            return (getattr(p, h), getattr(p, w))
        value = getattr(p, name) if p.HasField(name) else default
        return (value, value)

    @staticmethod
    def _pooled(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
        """Caffe's output size: rounded up, then the last window kept inside the padded image."""
        span = size + 2 * pad - kernel
        if span < 0:
            raise ShapeError(
                f"the kernel {kernel} is larger than the padded input {size + 2 * pad}"
            )
        pooled = (math.ceil(span / stride) if ceil else span // stride) + 1
        if pad and (pooled - 1) * stride >= size + pad:
            pooled -= 1
        return pooled


@register_layer("LRN")
class LRN(SameShape):
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        require_axes(bottoms[0], 4, "LRN")
        size = layer.lrn_param.local_size
        if size % 2 == 0:
            raise ShapeError(f"local_size must be odd, got {size}")
        return [bottoms[0]]


@register_layer("Crop", bottoms=2)
class Crop:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.crop_param
        big, like = bottoms
        if len(big) != len(like):
            raise ShapeError(
                f"both bottoms need the same number of axes, got {fmt(big)} and {fmt(like)}"
            )
        axis = canonical_axis(p.axis, len(big))
        cropped = len(big) - axis
        offsets = list(p.offset)
        if len(offsets) not in (0, 1, cropped):
            raise ShapeError(
                f"{len(offsets)} offsets given for {cropped} cropped axes",
                hint=f"give 0, 1 or {cropped} offsets",
            )
        top = list(big)
        for i in range(axis, len(big)):
            offset = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
            if offset + like[i] > big[i]:
                raise ShapeError(
                    f"cropping axis {i} to {like[i]} at offset {offset} runs past its size {big[i]}"
                )
            top[i] = like[i]
        return [tuple(top)]
