"""Layers that move data around without arithmetic (and Eltwise, ArgMax)."""

from __future__ import annotations

from typing import Any

from caffec.compiler.ir import Shape
from caffec.compiler.layers.common import canonical_axis, count, fmt, require_same_shapes
from caffec.compiler.registry import ShapeError, register_layer


def _legacy_axis(p: Any, legacy: str, ndim: int) -> int:
    """``axis``, or the old ``concat_dim``/``slice_dim`` spelling (not both)."""
    if p.HasField(legacy):
        if p.HasField("axis"):
            raise ShapeError(f"give either axis or the old {legacy}, not both")
        return canonical_axis(getattr(p, legacy), ndim, legacy)
    return canonical_axis(p.axis, ndim)


@register_layer("Concat", bottoms=(1, None))
class Concat:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        axis = _legacy_axis(layer.concat_param, "concat_dim", len(bottoms[0]))
        first = bottoms[0]
        for shape in bottoms[1:]:
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first, strict=True)) if i != axis
            ):
                raise ShapeError(
                    f"bottoms must agree on every axis but the concat axis {axis}, got "
                    + ", ".join(fmt(s) for s in bottoms)
                )
        top = list(first)
        top[axis] = sum(s[axis] for s in bottoms)
        return [tuple(top)]


@register_layer("Slice", tops=(1, None))
class Slice:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.slice_param
        bottom = bottoms[0]
        axis = _legacy_axis(p, "slice_dim", len(bottom))
        size, n = bottom[axis], len(layer.top)
        points = list(p.slice_point)
        if points:
            if len(points) != n - 1:
                raise ShapeError(
                    f"{len(points)} slice_points for {n} tops",
                    hint=f"give {n - 1} slice_points (one fewer than tops)",
                )
            edges = [0, *points, size]
            if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ShapeError(
                    f"slice_points {points} must increase strictly inside 1..{size - 1}"
                )
            sizes = [b - a for a, b in zip(edges, edges[1:], strict=False)]
        else:
            if size % n:
                raise ShapeError(
                    f"axis {axis} of size {size} does not split evenly into {n} tops",
                    hint="give slice_point values",
                )
            sizes = [size // n] * n
        return [(*bottom[:axis], s, *bottom[axis + 1 :]) for s in sizes]


@register_layer("Flatten")
class Flatten:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.flatten_param
        bottom = bottoms[0]
        start = canonical_axis(p.axis, len(bottom))
        end = canonical_axis(p.end_axis, len(bottom), "end_axis")
        if end < start:
            raise ShapeError(f"end_axis {p.end_axis} comes before axis {p.axis}")
        return [(*bottom[:start], count(bottom, start, end + 1), *bottom[end + 1 :])]


@register_layer("Reshape")
class Reshape:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.reshape_param
        bottom = bottoms[0]
        ndim = len(bottom)
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            raise ShapeError(f"axis {p.axis} is out of range for a {ndim}-D bottom")
        if p.num_axes < -1:
            raise ShapeError(f"num_axes must be -1 or more, got {p.num_axes}")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            raise ShapeError(f"axis {p.axis} + num_axes {p.num_axes} runs past the {ndim} axes")
        dims = list(p.shape.dim)
        if dims.count(-1) > 1:
            raise ShapeError("at most one dimension may be -1 (inferred)")
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= ndim:
                    raise ShapeError(f"dim {i} is 0 (copy) but the bottom has no axis {start + i}")
                new.append(bottom[start + i])
            elif d < -1:
                raise ShapeError(f"dim {i} is {d}; dims are positive, 0 (copy) or -1 (infer)")
            else:
                new.append(d)
        top = [*bottom[:start], *new, *bottom[end:]]
        known = count([d for d in top if d != -1])
        total = count(bottom)
        if -1 in top:
            if known == 0 or total % known:
                raise ShapeError(f"cannot infer the -1 dim: {total} elements into {fmt(top)}")
            top[top.index(-1)] = total // known
        if count(top) != total:
            raise ShapeError(f"reshaping {fmt(bottom)} to {fmt(top)} changes the element count")
        return [tuple(top)]


@register_layer("Split", tops=(1, None))
class Split:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        return [bottoms[0]] * len(layer.top)


@register_layer("Silence", bottoms=(1, None), tops=0)
class Silence:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        return []


@register_layer("Eltwise", bottoms=(2, None))
class Eltwise:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.eltwise_param
        if len(p.coeff):
            if p.EltwiseOp.Name(p.operation) != "SUM":
                raise ShapeError("coeff works only with operation: SUM")
            if len(p.coeff) != len(bottoms):
                raise ShapeError(f"{len(p.coeff)} coeff values for {len(bottoms)} bottoms")
        require_same_shapes(bottoms)
        return [bottoms[0]]


@register_layer("ArgMax")
class ArgMax:
    def infer(self, layer: Any, bottoms: list[Shape], ctx: Any) -> list[Shape]:
        p = layer.argmax_param
        bottom = bottoms[0]
        if p.top_k < 1:
            raise ShapeError("top_k must be at least 1")
        if p.HasField("axis"):
            axis = canonical_axis(p.axis, len(bottom))
            if p.top_k > bottom[axis]:
                raise ShapeError(f"top_k {p.top_k} exceeds axis {axis}'s size {bottom[axis]}")
            top = list(bottom)
            top[axis] = p.top_k
            return [tuple(top)]
        if p.top_k > count(bottom, 1):
            raise ShapeError(f"top_k {p.top_k} exceeds the {count(bottom, 1)} values per item")
        top = [1] * max(len(bottom), 3)
        top[0] = bottom[0]
        top[1] = 2 if p.out_max_val else 1
        top[2] = p.top_k
        return [tuple(top)]
