"""Resizing layers of Caffe's forks: Upsample (the darknet-to-Caffe ports of YOLOv3) and
Interp (DeepLab, PSPNet). Neither is in BVLC Caffe."""

from __future__ import annotations

import numpy as np

from caffec.compiler.ir import Op, Shape
from caffec.compiler.kernels import Buffer, Operand
from caffec.compiler.layers.common import require_axes
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import gemm, pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer


@register_layer("Upsample")
class Upsample:
    """Nearest-neighbour upsampling: each pixel repeated ``scale`` x ``scale`` times; its
    gradient sums each block."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        require_axes(bottoms[0], 4, "Upsample")
        scale = layer.upsample_param.scale
        if scale < 1:
            raise ShapeError(
                f"scale must be at least 1, got {scale}",
                hint="upsample_param.scale is the integer factor (2 in YOLOv3)",
            )
        num, channels, height, width = bottoms[0]
        return [(num, channels, height * scale, width * scale)]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        num, channels, height, width = op.bottoms[0].shape
        s = op.param.upsample_param.scale
        source = f"p * {height * width} + (r / {s}) * {width} + q / {s}"
        ctx.emit(pmap((num * channels, height * s, width * s), [(ctx.y(0), "v")],
                      {"v": (ctx.x(0), source)}, coords={"p": 0, "r": 1, "q": 2}))  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        num, channels, height, width = op.bottoms[0].shape
        s = op.param.upsample_param.scale
        ctx.emit(reduce(ctx.dy(0), dx, (num * channels, height, s, width, s), [2, 4],
                        accumulate=accumulate))  # fmt: skip


@register_layer("Interp")
class Interp:
    """Bilinear resizing with the corners aligned, after cropping ``-pad_beg`` pixels off the
    start of each axis and ``-pad_end`` off its end. Output row r of n reads the cropped
    input's n' rows at r * (n' - 1) / (n - 1) (the ratio in single precision, as DeepLab's
    caffe_cpu_interp2 computes it): the row at its integer part and the next (the same at
    the end), weighted by its fraction; columns alike.

    Forward gathers the four pixels as Caffe does. Backward, the transpose: resizing is
    separable, the top being R X C' per plane with R (out height x height) and C (out width x
    width) holding each output row's (column's) two weights, so the bottom's gradient is
    R' dY C, two GEMMs.
    """

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        return [(*bottoms[0][:2], *self.size(layer, bottoms[0]))]

    @staticmethod
    def size(layer: LayerParameter, bottom: Shape) -> tuple[int, int]:
        """The output's height and width, chosen as interp_layer.cpp chooses them: a shrink
        factor alone, a zoom factor alone, height and width, or both factors (shrink first)."""
        require_axes(bottom, 4, "Interp")
        p = layer.interp_param
        if p.pad_beg > 0 or p.pad_end > 0:
            raise ShapeError(f"pad_beg {p.pad_beg} and pad_end {p.pad_end} must not be positive",
                             hint="Interp only crops: give 0 or a negative number")  # fmt: skip
        eff = [size + p.pad_beg + p.pad_end for size in bottom[2:]]
        if min(eff) <= 0:
            raise ShapeError(f"cropping {-p.pad_beg} and {-p.pad_end} pixels leaves nothing of "
                             f"the {bottom[2]}x{bottom[3]} input")  # fmt: skip
        zoom, shrink = p.HasField("zoom_factor"), p.HasField("shrink_factor")
        for given, name, value in ((zoom, "zoom_factor", p.zoom_factor),
                                   (shrink, "shrink_factor", p.shrink_factor)):  # fmt: skip
            if given and value < 1:
                raise ShapeError(f"{name} must be at least 1, got {value}")
        if shrink:
            eff = [(size - 1) // p.shrink_factor + 1 for size in eff]
        if zoom:
            eff = [size + (size - 1) * (p.zoom_factor - 1) for size in eff]
        if zoom or shrink:
            return eff[0], eff[1]
        if not (p.HasField("height") and p.HasField("width")):
            raise ShapeError("Interp needs the output's size",
                             hint="set height and width, zoom_factor or shrink_factor")  # fmt: skip
        if p.height <= 0 or p.width <= 0:
            raise ShapeError(f"height and width must be positive, got {p.height}x{p.width}")
        return p.height, p.width

    def _taps(self, op: Op, ctx: LowerContext) -> list[tuple[Operand, Operand, Operand]]:
        """For rows, then columns: per output row (column), the first input row it reads
        (counted in the cropped input), the step to the second (0 at the last) and the
        second's weight."""
        p = op.param.interp_param
        taps = []
        for size, out, name in zip(op.bottoms[0].shape[2:], op.tops[0].shape[2:],
                                   ("rows", "columns"), strict=True):  # fmt: skip
            eff = size + p.pad_beg + p.pad_end
            ratio = np.float32(eff - 1) / np.float32(out - 1) if out > 1 else 0.0
            table = ctx.workspace(f"interpolation {name}", (3, out))
            first, step, weight = (Operand(table, k * out) for k in range(3))
            ctx.emit(pmap((out,), [(first, "f"), (step, "f < last ? 1 : 0"), (weight, "t - f")],
                          consts={"ratio": float(ratio), "last": eff - 1}, coords={"r": 0},
                          lets=[("t", "ratio * r"), ("f", "floor(t)")]))  # fmt: skip
            taps.append((first, step, weight))
        return taps

    def lower(self, op: Op, ctx: LowerContext) -> None:
        num, channels, height, width = op.bottoms[0].shape
        out_h, out_w = op.tops[0].shape[2:]
        crop = -op.param.interp_param.pad_beg
        (top, down, below), (left, right, beside) = self._taps(op, ctx)
        pixel = f"p * {height * width} + ((long)h + {crop}) * {width} + (long)w + {crop}"
        ctx.emit(
            pmap((num * channels, out_h, out_w),
                 [(ctx.y(0), "(1 - hl) * ((1 - wl) * a + wl * b) + hl * ((1 - wl) * c + wl * d)")],
                 {"h": (top, "r"), "hs": (down, "r"), "hl": (below, "r"),
                  "w": (left, "q"), "ws": (right, "q"), "wl": (beside, "q"),
                  "a": (ctx.x(0), pixel), "b": (ctx.x(0), f"{pixel} + (long)ws"),
                  "c": (ctx.x(0), f"{pixel} + (long)hs * {width}"),
                  "d": (ctx.x(0), f"{pixel} + (long)hs * {width} + (long)ws")},
                 coords={"p": 0, "r": 1, "q": 2})
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        num, channels, height, width = op.bottoms[0].shape
        out_h, out_w = op.tops[0].shape[2:]
        planes = num * channels
        crop = -op.param.interp_param.pad_beg
        rows, columns = (self._weights(ctx, taps, out, size, crop, name) for taps, out, size, name
                         in zip(self._taps(op, ctx), (out_h, out_w), (height, width),
                                ("rows", "columns"), strict=True))  # fmt: skip
        across = ctx.workspace("resized across diff", (planes * height, out_w))
        ctx.emit(
            gemm(rows, ctx.dy(0), across, height, out_w, out_h, trans_a=True, batch=planes,
                 strides=(0, out_h * out_w, height * out_w)),
            gemm(across, columns, dx, planes * height, width, out_w, accumulate=accumulate),
        )  # fmt: skip

    @staticmethod
    def _weights(
        ctx: LowerContext,
        taps: tuple[Operand, Operand, Operand],
        out: int,
        size: int,
        crop: int,
        name: str,
    ) -> Buffer:
        """R (or C): entry (r, c) is how much output row r takes of input row c."""
        first, step, weight = taps
        matrix = ctx.workspace(f"interpolation {name} matrix", (out, size))
        ctx.emit(pmap((out, size), [(matrix, "(e == f ? 1 - l : 0) + (e == f + s ? l : 0)")],
                      {"f": (first, "r"), "s": (step, "r"), "l": (weight, "r")},
                      consts={"crop": crop}, coords={"r": 0, "c": 1},
                      lets=[("e", "c - crop")]))  # fmt: skip
        return matrix
