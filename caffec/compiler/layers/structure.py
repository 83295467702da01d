"""Layers that move data around without arithmetic (and Eltwise, Axpy, Parameter)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.kernels import Buffer, Kernel, Loop, Operand
from caffec.compiler.layers.common import SameShape, canonical_axis, count, require_same_shapes
from caffec.compiler.layers.convolution import conv_geometry
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import (
    col2im,
    contiguous_strides,
    conv_attrs,
    im2col,
    pmap,
    reduce,
    strided_copy,
)
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import shape_text


def copy_all(source: Buffer, dest: Buffer, size: int, accumulate: bool = False) -> Kernel:
    """A whole-blob copy (Flatten, Reshape, Split); in lean builds the fusion pass has the
    source written where the copy would put it, and drops the copy."""
    return strided_copy(Operand(source), Operand(dest), [size], [1], [1], accumulate)


def block_copy(
    source: Buffer,
    dest: Buffer,
    outer: int,
    block: int,
    source_row: int,
    dest_row: int,
    source_offset: int,
    dest_offset: int,
    accumulate: bool = False,
) -> Kernel:
    """Copy ``outer`` rows of ``block`` elements between blobs whose rows differ in length."""
    return strided_copy(Operand(source, source_offset), Operand(dest, dest_offset),
                        [outer, block], [source_row, 1], [dest_row, 1], accumulate)  # fmt: skip


class Reinterpret:
    """Layers whose top is the bottom's data under another shape."""

    def lower(self, op: Op, ctx: LowerContext) -> None:
        ctx.emit(copy_all(ctx.x(0), ctx.y(0), count(op.tops[0].shape)))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            ctx.emit(copy_all(ctx.dy(0), dx, count(op.tops[0].shape), accumulate))


def _pieces(
    op: Op, axis: int, pieces: list[Shape], whole: Shape
) -> list[tuple[int, int, int, int]]:
    """(outer, block, whole row, offset) of each piece along ``axis`` of ``whole``."""
    outer = count(whole, 0, axis)
    inner = count(whole, axis + 1)
    row = whole[axis] * inner
    out, start = [], 0
    for shape in pieces:
        out.append((outer, shape[axis] * inner, row, start * inner))
        start += shape[axis]
    return out


def _legacy_axis(p: Message, legacy: str, ndim: int) -> int:
    """``axis``, or the old ``concat_dim``/``slice_dim`` spelling (not both)."""
    if p.HasField(legacy):
        if p.HasField("axis"):
            raise ShapeError(f"give either axis or the old {legacy}, not both")
        return canonical_axis(getattr(p, legacy), ndim, legacy)
    return canonical_axis(p.axis, ndim)


@register_layer("Concat", bottoms=(1, None))
class Concat:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        axis = _legacy_axis(layer.concat_param, "concat_dim", len(bottoms[0]))
        first = bottoms[0]
        for shape in bottoms[1:]:
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first, strict=True)) if i != axis
            ):
                raise ShapeError(
                    f"bottoms must agree on every axis but the concat axis {axis}, got "
                    + ", ".join(shape_text(s) for s in bottoms)
                )
        top = list(first)
        top[axis] = sum(s[axis] for s in bottoms)
        return [tuple(top)]

    def _layout(self, op: Op) -> list[tuple[int, int, int, int]]:
        shapes = [v.shape for v in op.bottoms]
        axis = _legacy_axis(op.param.concat_param, "concat_dim", len(shapes[0]))
        return _pieces(op, axis, shapes, op.tops[0].shape)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        for i, (outer, block, row, offset) in enumerate(self._layout(op)):
            ctx.emit(block_copy(ctx.x(i), ctx.y(0), outer, block, block, row, 0, offset))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        for i, (outer, block, row, offset) in enumerate(self._layout(op)):
            target = ctx.dx(i)
            if target is not None:
                dx, accumulate = target
                ctx.emit(block_copy(ctx.dy(0), dx, outer, block, row, block, offset, 0,
                                    accumulate))  # fmt: skip


@register_layer("Slice", tops=(1, None))
class Slice:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
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

    def _layout(self, op: Op) -> list[tuple[int, int, int, int]]:
        bottom = op.bottoms[0].shape
        axis = _legacy_axis(op.param.slice_param, "slice_dim", len(bottom))
        return _pieces(op, axis, [v.shape for v in op.tops], bottom)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        for i, (outer, block, row, offset) in enumerate(self._layout(op)):
            ctx.emit(block_copy(ctx.x(0), ctx.y(i), outer, block, row, block, offset, 0))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        for i, (outer, block, row, offset) in enumerate(self._layout(op)):
            ctx.emit(block_copy(ctx.dy(i), dx, outer, block, block, row, 0, offset, accumulate))


@register_layer("Flatten")
class Flatten(Reinterpret):
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.flatten_param
        bottom = bottoms[0]
        start = canonical_axis(p.axis, len(bottom))
        end = canonical_axis(p.end_axis, len(bottom), "end_axis")
        if end < start:
            raise ShapeError(f"end_axis {p.end_axis} comes before axis {p.axis}")
        return [(*bottom[:start], count(bottom, start, end + 1), *bottom[end + 1 :])]


@register_layer("Reshape")
class Reshape(Reinterpret):
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
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
                raise ShapeError(
                    f"cannot infer the -1 dim: {total} elements into {shape_text(top)}"
                )
            top[top.index(-1)] = total // known
        if count(top) != total:
            raise ShapeError(
                f"reshaping {shape_text(bottom)} to {shape_text(top)} changes the element count"
            )
        return [tuple(top)]


@register_layer("Split", tops=(1, None))
class Split:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        return [bottoms[0]] * len(layer.top)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        size = count(op.bottoms[0].shape)
        for i in range(len(op.tops)):
            ctx.emit(copy_all(ctx.x(0), ctx.y(i), size))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        size = count(op.bottoms[0].shape)
        for i in range(len(op.tops)):
            ctx.emit(copy_all(ctx.dy(i), dx, size, accumulate or i > 0))


@register_layer("Silence", bottoms=(1, None), tops=0)
class Silence:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        return []

    def lower(self, op: Op, ctx: LowerContext) -> None:
        pass

    def grad(self, op: Op, ctx: LowerContext) -> None:
        for i, value in enumerate(op.bottoms):
            target = ctx.dx(i)
            if target is not None and not target[1]:
                ctx.emit(pmap(value.shape, [(target[0], "0")]))


@register_layer("Eltwise", bottoms=(2, None))
class Eltwise:
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.eltwise_param
        if len(p.coeff):
            if p.EltwiseOp.Name(p.operation) != "SUM":
                raise ShapeError("coeff works only with operation: SUM")
            if len(p.coeff) != len(bottoms):
                raise ShapeError(f"{len(p.coeff)} coeff values for {len(bottoms)} bottoms")
        require_same_shapes(bottoms)
        return [bottoms[0]]

    @staticmethod
    def _operation(op: Op) -> str:
        p = op.param.eltwise_param
        return p.EltwiseOp.Name(p.operation)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.eltwise_param
        shape = op.tops[0].shape
        names = [f"x{i}" for i in range(len(op.bottoms))]
        inputs = {name: ctx.x(i) for i, name in enumerate(names)}
        operation = self._operation(op)
        if operation == "SUM":
            coeff = list(p.coeff) or [1.0] * len(names)
            consts = {f"k{i}": c for i, c in enumerate(coeff)}
            expr = " + ".join(f"k{i} * {name}" for i, name in enumerate(names))
            ctx.emit(pmap(shape, [(ctx.y(0), expr)], inputs, consts))
        elif operation == "PROD":
            ctx.emit(pmap(shape, [(ctx.y(0), " * ".join(names))], inputs))
        else:  # MAX: remember which bottom won (the first of equals), for the backward pass
            winner = ctx.state("winner", shape)
            lets, best, which = [("b0", "x0"), ("w0", "0")], "b0", "w0"
            for i in range(1, len(names)):
                wins = f"x{i} {'>=' if i == 1 else '>'} {best}"  # Caffe: bottom 1 wins a tie with 0
                lets += [(f"b{i}", f"{wins} ? x{i} : {best}"), (f"w{i}", f"{wins} ? {i} : {which}")]
                best, which = f"b{i}", f"w{i}"
            ctx.emit(pmap(shape, [(ctx.y(0), best), (winner, which)], inputs, lets=lets))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.eltwise_param
        shape = op.tops[0].shape
        names = [f"x{i}" for i in range(len(op.bottoms))]
        operation = self._operation(op)
        for i in range(len(op.bottoms)):
            target = ctx.dx(i)
            if target is None:
                continue
            dx, accumulate = target
            inputs: dict[str, Any] = {"dy": ctx.dy(0)}
            consts: dict[str, float] = {}
            if operation == "SUM":
                consts["k"] = (list(p.coeff) or [1.0] * len(names))[i]
                expr = "dy * k"
            elif operation == "PROD":  # the product of the others, as Caffe's stable gradient
                inputs.update({name: ctx.x(j) for j, name in enumerate(names) if j != i})
                expr = " * ".join(["dy", *(n for j, n in enumerate(names) if j != i)])
            else:
                inputs["w"] = ctx.state("winner", shape)
                consts["me"] = i
                expr = "w == me ? dy : 0"
            ctx.emit(pmap(shape, [(dx, expr)], inputs, consts, accumulate=accumulate))


@register_layer("Tile")
class Tile:
    """``tiles`` copies of the bottom side by side along ``axis`` (each copy holds every axis
    from ``axis`` on); the gradient sums the copies."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.tile_param
        axis = canonical_axis(p.axis, len(bottoms[0]))
        if not p.HasField("tiles"):
            raise ShapeError("the number of tiles is not given", hint="set tile_param.tiles")
        if p.tiles <= 0:
            raise ShapeError(
                f"tiles must be positive, got {p.tiles}", hint="set tiles to 1 or more"
            )
        top = list(bottoms[0])
        top[axis] *= p.tiles
        return [tuple(top)]

    @staticmethod
    def _view(op: Op) -> tuple[int, int, int]:
        """The top as (outer, tiles, inner): ``inner`` is one copy of a bottom row."""
        bottom, p = op.bottoms[0].shape, op.param.tile_param
        axis = canonical_axis(p.axis, len(bottom))
        return count(bottom, 0, axis), p.tiles, count(bottom, axis)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        outer, tiles, inner = self._view(op)
        ctx.emit(strided_copy(Operand(ctx.x(0)), Operand(ctx.y(0)), [outer, tiles, inner],
                              [inner, 0, 1], [tiles * inner, inner, 1]))  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            ctx.emit(reduce(ctx.dy(0), dx, self._view(op), [1], accumulate=accumulate))


class Reordering:
    """A layer whose top is its bottom's numbers in another order (Permute, ShuffleChannel):
    one strided copy, and its gradient the copy back."""

    def layout(self, op: Op) -> tuple[Shape, list[int], list[int]]:
        """The copy's shape, and the bottom's and the top's strides over it."""
        raise NotImplementedError

    def lower(self, op: Op, ctx: LowerContext) -> None:
        shape, bottom, top = self.layout(op)
        ctx.emit(strided_copy(Operand(ctx.x(0)), Operand(ctx.y(0)), shape, bottom, top))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            shape, bottom, top = self.layout(op)
            ctx.emit(strided_copy(Operand(ctx.dy(0)), Operand(dx), shape, top, bottom,
                                  accumulate))  # fmt: skip


@register_layer("ShuffleChannel")
class ShuffleChannel(Reordering, SameShape):
    """ShuffleNet's channel shuffle (a fork layer): the channels, seen as ``group`` rows of
    C / group, transposed, so channel g * (C / group) + j moves to j * group + g. The
    gradient is the inverse permutation."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        group, bottom = layer.shuffle_channel_param.group, bottoms[0]
        if group < 1:
            raise ShapeError("group must be at least 1", hint="set shuffle_channel_param.group")
        if len(bottom) < 2 or bottom[1] % group:
            channels = f"{bottom[1]} channels" if len(bottom) > 1 else "no channel axis"
            raise ShapeError(f"group {group} does not divide the bottom's {channels} "
                             f"({shape_text(bottom)})",
                             hint="give a group that divides the channel count")  # fmt: skip
        return [bottom]

    def layout(self, op: Op) -> tuple[Shape, list[int], list[int]]:
        """The copy's shape (num, group, C / group, spatial) and the bottom's and the top's
        strides over it."""
        bottom, group = op.bottoms[0].shape, op.param.shuffle_channel_param.group
        num, channels, spatial = bottom[0], bottom[1], count(bottom, 2)
        per_group = channels // group
        shape = [num, group, per_group, spatial]
        shuffled = [channels * spatial, spatial, group * spatial, 1]
        return shape, contiguous_strides(shape), shuffled


@register_layer("Axpy", bottoms=3)
class Axpy:
    """SENet's fused scale-and-add (a fork layer): top = a * x + y, with a (N, C) or
    (N, C, 1, 1) scale per channel of x (N, C, ...) and y of x's shape."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        a, x, y = bottoms
        if len(x) < 2 or len(a) < 2 or a[:2] != x[:2] or count(a, 2) != 1:
            raise ShapeError(
                f"the scale {shape_text(a)} must be N x C (or N x C x 1 x 1) for the input "
                f"{shape_text(x)}",
                hint="bottom 0 is the scale per channel, bottom 1 the N x C x ... input",
            )
        if x != y:
            raise ShapeError(f"bottoms 1 and 2 must have one shape, got {shape_text(x)} and "
                             f"{shape_text(y)}")  # fmt: skip
        return [x]

    @staticmethod
    def _view(op: Op) -> tuple[int, int, int]:
        """x as (num, channels, spatial)."""
        x = op.bottoms[1].shape
        return x[0], x[1], count(x, 2)

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view = self._view(op)
        inputs = {"a": (ctx.x(0), (*view[:2], 1)), "x": ctx.x(1), "y": ctx.x(2)}
        ctx.emit(pmap(view, [(ctx.y(0), "a * x + y")], inputs))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        view = num, channels, _ = self._view(op)
        dy = ctx.dy(0)
        target = ctx.dx(0)
        if target is not None:  # da = the sum over each channel's positions of dy * x
            da, accumulate = target
            products = ctx.workspace("dy*x", view)
            ctx.emit(pmap(view, [(products, "dy * x")], {"dy": dy, "x": ctx.x(1)}),
                     reduce(products, da, view, [2], accumulate=accumulate))  # fmt: skip
        target = ctx.dx(1)
        if target is not None:
            dx, accumulate = target
            inputs = {"dy": dy, "a": (ctx.x(0), (num, channels, 1))}
            ctx.emit(pmap(view, [(dx, "dy * a")], inputs, accumulate=accumulate))
        target = ctx.dx(2)
        if target is not None:
            dx, accumulate = target
            ctx.emit(copy_all(dy, dx, count(view), accumulate))


@register_layer("Parameter", bottoms=0)
class Parameter:
    """A learnable blob of ``parameter_param.shape`` as the top (no filler: it starts at
    zero, as in Caffe, until weights are loaded); the top's gradient is the blob's."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        shape = tuple(layer.parameter_param.shape.dim)
        if any(d < 1 for d in shape):
            raise ShapeError(
                f"the shape {shape_text(shape)} has a dimension below 1",
                hint="give parameter_param { shape { dim: ... } } positive dims",
            )
        return [shape]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        return [ParamBlob(tuple(layer.parameter_param.shape.dim), None, "weight")]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        ctx.emit(copy_all(ctx.w(0), ctx.y(0), count(op.tops[0].shape)))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        dw = ctx.dw(0)
        if dw is not None:
            ctx.emit(copy_all(ctx.dy(0), dw, count(op.tops[0].shape), accumulate=True))


@register_layer("Im2col")
class Im2col:
    """Each image unfolded into the columns a convolution with ``convolution_param``'s
    kernel, stride, pad and dilation multiplies: the top is (N, C * KH * KW, OH, OW); the
    gradient folds the columns back (col2im, summing overlaps). 2-D only."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        bottom = bottoms[0]
        g = conv_geometry(layer, bottom)
        if len(g.kernel) != 2:
            raise ShapeError(f"caffec unfolds 2-D images only; the bottom {shape_text(bottom)} "
                             f"has {len(g.kernel)} spatial axes after axis {g.axis}",
                             hint="reshape the bottom to N x C x H x W")  # fmt: skip
        out = []
        for i, size in enumerate(bottom[g.axis + 1 :]):
            extent = g.dilation[i] * (g.kernel[i] - 1) + 1
            positions = (size + 2 * g.pad[i] - extent) // g.stride[i] + 1
            if positions <= 0:
                raise ShapeError(f"spatial axis {i} of size {size} with pad {g.pad[i]} is "
                                 f"smaller than the kernel extent {extent}",
                                 hint="use a smaller kernel or dilation, or more pad")  # fmt: skip
            out.append(positions)
        columns = bottom[g.axis] * g.kernel[0] * g.kernel[1]
        return [(*bottom[: g.axis], columns, *out)]

    @staticmethod
    def _plan(op: Op) -> tuple[int, int, int, dict[str, int]]:
        """(images, numbers per image, numbers per image's columns, im2col's geometry)."""
        bottom, top = op.bottoms[0].shape, op.tops[0].shape
        g = conv_geometry(op.param, bottom)
        channels, height, width = bottom[g.axis :]
        geometry = conv_attrs(channels, (height, width), g.kernel, g.stride, g.pad, g.dilation,
                              top[g.axis + 1 :])  # fmt: skip
        return count(bottom, 0, g.axis), count(bottom, g.axis), count(top, g.axis), geometry

    def lower(self, op: Op, ctx: LowerContext) -> None:
        images, image, columns, geometry = self._plan(op)
        ctx.emit(Loop(images, [im2col(Operand(ctx.x(0), 0, image),
                                      Operand(ctx.y(0), 0, columns), geometry)]))  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is not None:
            dx, accumulate = target
            images, image, columns, geometry = self._plan(op)
            fold = col2im(Operand(ctx.dy(0), 0, columns), Operand(dx, 0, image), geometry,
                          accumulate)  # fmt: skip
            ctx.emit(Loop(images, [fold]))
