"""The layers of the SSD fork (weiliu89/caffe, branch ssd): Normalize, Permute, PriorBox and
DetectionOutput.

Normalize and Permute are maps, reductions and copies like any layer; PriorBox is one map
whose value depends only on shapes and parameters; DetectionOutput (decoding, per-class
non-maximum suppression, sorting) runs on the host between compiled steps, as the fork's
GPU version does its suppression on the CPU (:mod:`caffec.runtime.detection_output`).
"""

from __future__ import annotations

import json
import math

import numpy as np

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.layers.common import count
from caffec.compiler.layers.structure import Reordering
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import contiguous_strides, host_call, pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import shape_text
from caffec.formats import caffe_pb2

FLT_MAX = float(np.finfo(np.float32).max)  # the fork's confidence threshold when none is set


def legacy_height_width(shape: Shape) -> tuple[int, int]:
    """Caffe's ``height()`` and ``width()``: axes 2 and 3, 1 where the blob has fewer."""
    return (shape[2] if len(shape) > 2 else 1), (shape[3] if len(shape) > 3 else 1)


# ----------------------------------------------------------------------------- Normalize


@register_layer("Normalize")
class Normalize:
    """y = x / sqrt(sum(x^2) + eps) * scale: the sum over each image (``across_spatial``) or
    over the channels at each position; the scale is one learned value (``channel_shared``)
    or one per channel.

    Forward keeps the sums of squares; backward recomputes the norm from them:
    dx = (g - x * sum(g * x) / norm^2) / norm with g = dy * scale, summed as the norm is.
    """

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        if len(bottoms[0]) < 2:
            raise ShapeError(
                f"Normalize needs a bottom with at least 2 axes (num, channels, ...), got "
                f"{shape_text(bottoms[0])}"
            )
        return [bottoms[0]]

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.norm_param
        filler = p.scale_filler
        if not p.HasField("scale_filler"):
            filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
        shape = () if p.channel_shared else (bottoms[0][1],)
        return [ParamBlob(shape, filler, "scale")]

    @staticmethod
    def _views(op: Op) -> tuple[Shape, Shape, list[int], Shape]:
        """The bottom as (num, channels, spatial), the sums' shape and broadcast view in it,
        the axes summed, and the scale's broadcast view."""
        shape = op.bottoms[0].shape
        view = (shape[0], shape[1], count(shape, 2))
        p = op.param.norm_param
        if p.across_spatial:
            sums, axes = (view[0], 1, 1), [1, 2]
        else:
            sums, axes = (view[0], 1, view[2]), [1]
        scale = (1, 1, 1) if p.channel_shared else (1, view[1], 1)
        return view, sums, axes, scale

    def lower(self, op: Op, ctx: LowerContext) -> None:
        view, sums, axes, scale = self._views(op)
        squares = ctx.state("sums of squares", (count(sums),))
        inputs = {"x": ctx.x(0), "q": (squares, sums), "s": (ctx.w(0), scale)}
        ctx.emit(
            reduce(ctx.x(0), squares, view, axes, op="sumsq"),
            pmap(view, [(ctx.y(0), "x * s / sqrt(q + eps)")], inputs,
                 {"eps": op.param.norm_param.eps}),
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        view, sums, axes, scale = self._views(op)
        eps = {"eps": op.param.norm_param.eps}
        squares = ctx.state("sums of squares", (count(sums),))
        inputs = {"x": ctx.x(0), "dy": ctx.dy(0), "q": (squares, sums), "s": (ctx.w(0), scale)}
        dscale = ctx.dw(0)
        if dscale is not None:
            terms = ctx.workspace("dy*x/norm", view)
            scale_axes = [0, 1, 2] if op.param.norm_param.channel_shared else [0, 2]
            ctx.emit(
                pmap(view, [(terms, "dy * x / sqrt(q + eps)")], inputs, eps),
                reduce(terms, dscale, view, scale_axes, accumulate=True),
            )
        target = ctx.dx(0)
        if target is None:
            return
        dx, accumulate = target
        products = ctx.workspace("dy*scale*x", view)
        dots = ctx.workspace("sums of dy*scale*x", (count(sums),))
        inputs["t"] = (dots, sums)
        ctx.emit(
            pmap(view, [(products, "dy * s * x")], inputs),
            reduce(products, dots, view, axes),
            pmap(view, [(dx, "(dy * s - x * t / (q + eps)) / sqrt(q + eps)")], inputs, eps,
                 accumulate=accumulate),
        )  # fmt: skip


# ----------------------------------------------------------------------------- Permute


def permute_order(layer: LayerParameter, ndim: int) -> list[int]:
    """The fork's order: the axes given, then the missing ones in their order."""
    given = list(layer.permute_param.order)
    for axis in given:
        if axis >= ndim:
            raise ShapeError(f"order {axis} is out of range for a {ndim}-D bottom",
                             hint=f"use axes from 0 to {ndim - 1}")  # fmt: skip
    duplicates = sorted({axis for axis in given if given.count(axis) > 1})
    if duplicates:
        raise ShapeError(f"order names axis {duplicates[0]} more than once",
                         hint="name each axis at most once")  # fmt: skip
    return given + [axis for axis in range(ndim) if axis not in given]


@register_layer("Permute")
class Permute(Reordering):
    """The bottom's axes reordered (``order``): a strided copy, and the inverse copy back."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        bottom = bottoms[0]
        return [tuple(bottom[axis] for axis in permute_order(layer, len(bottom)))]

    def layout(self, op: Op) -> tuple[Shape, list[int], list[int]]:
        """The top's shape, the bottom's strides along the top's axes, the top's strides."""
        bottom = op.bottoms[0].shape
        order = permute_order(op.param, len(bottom))
        strides = contiguous_strides(bottom)
        top = tuple(bottom[axis] for axis in order)
        return top, [strides[axis] for axis in order], contiguous_strides(top)


# ----------------------------------------------------------------------------- PriorBox


def aspect_ratios(p: caffe_pb2.PriorBoxParameter) -> list[float]:
    """1, then each ratio given (and 1/ratio with ``flip``, a float as the fork keeps it),
    skipping ones already there."""
    ratios = [1.0]
    for ratio in p.aspect_ratio:
        if all(abs(ratio - r) >= 1e-6 for r in ratios):
            ratios.append(ratio)
            if p.flip:
                ratios.append(float(np.float32(1.0 / ratio)))
    return ratios


def prior_sizes(p: caffe_pb2.PriorBoxParameter) -> list[tuple[float, float]]:
    """Each prior's (width, height) at one position, in the fork's order: per min_size, the
    square of min_size, the square of sqrt(min_size * max_size), then for each aspect ratio
    r a box of min_size's area, r times as wide as high. The fork reads the sizes into ints,
    so fractions are dropped, and keeps each box's sides as floats."""
    if not p.min_size:
        raise ShapeError("PriorBox needs a min_size", hint="add min_size to prior_box_param")
    if any(size <= 0 for size in p.min_size):
        raise ShapeError("min_size must be positive")
    if p.max_size and len(p.max_size) != len(p.min_size):
        raise ShapeError(f"{len(p.max_size)} max_size values for {len(p.min_size)} min_size values",
                         hint="give one max_size per min_size, or none")  # fmt: skip
    if any(high <= low for low, high in zip(p.min_size, p.max_size, strict=False)):
        raise ShapeError("max_size must be greater than min_size")
    sizes = []
    for s, low in enumerate(p.min_size):
        small = int(low)
        sizes.append((small, small))
        if p.max_size:
            side = math.sqrt(small * int(p.max_size[s]))
            sizes.append((side, side))
        for ratio in aspect_ratios(p)[1:]:  # none of them is 1
            root = math.sqrt(ratio)
            sizes.append((small * root, small / root))
    return [(float(np.float32(w)), float(np.float32(h))) for w, h in sizes]


def prior_variances(p: caffe_pb2.PriorBoxParameter) -> list[float]:
    """One variance for every coordinate, or one per coordinate; 0.1 (a float, as the fork
    keeps it) when none is given."""
    if len(p.variance) not in (0, 1, 4):
        raise ShapeError(f"{len(p.variance)} variance values", hint="give 1 or 4")
    if any(v <= 0 for v in p.variance):
        raise ShapeError("variance values must be positive")
    return list(p.variance) or [float(np.float32(0.1))]


def pair_field(p: caffe_pb2.PriorBoxParameter, both: str, h: str, w: str) -> tuple[float, float]:
    """(height, width) from ``both`` or from ``h`` and ``w`` (not both ways); 0: not given."""
    if p.HasField(h) or p.HasField(w):
        if p.HasField(both):
            raise ShapeError(f"give either {both} or {h}/{w}, not both")
        values = getattr(p, h), getattr(p, w)
        if min(values) <= 0:
            raise ShapeError(f"{h} and {w} must both be positive",
                             hint=f"set both {h} and {w}")  # fmt: skip
        return values
    if p.HasField(both):
        if getattr(p, both) <= 0:
            raise ShapeError(f"{both} must be positive")
        return getattr(p, both), getattr(p, both)
    return 0, 0


@register_layer("PriorBox", bottoms=2)
class PriorBox:
    """The default boxes of each position of a feature map (bottom 0) in an image (bottom 1):
    a top (1, 2, height * width * priors * 4) of corners in [0, 1] image units, then each
    coordinate's variance.

    The top depends only on shapes and parameters. It is one map over the top (each
    element's coordinate from its position, its prior's size chosen among a few constants)
    rather than a constant baked into the artifact: the kernel graph has no constant
    buffers, and a parameter blob would show in ``net.params`` and in saved weights, where
    the fork has none. Its cost is a pass over a few thousand numbers.
    """

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the top does not depend on the bottoms' values

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.prior_box_param
        priors = len(prior_sizes(p))
        prior_variances(p)
        pair_field(p, "img_size", "img_h", "img_w")
        pair_field(p, "step", "step_h", "step_w")
        height, width = legacy_height_width(bottoms[0])
        return [(1, 2, height * width * priors * 4)]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        p = op.param.prior_box_param
        sizes = prior_sizes(p)
        height, width = legacy_height_width(op.bottoms[0].shape)
        img_h, img_w = pair_field(p, "img_size", "img_h", "img_w")
        if img_h == 0 or img_w == 0:
            img_h, img_w = legacy_height_width(op.bottoms[1].shape)
        step_h, step_w = pair_field(p, "step", "step_h", "step_w")
        if step_h == 0 or step_w == 0:  # the fork divides in float
            step_h = float(np.float32(img_h) / np.float32(height))
            step_w = float(np.float32(img_w) / np.float32(width))
        consts = {"offset": p.offset, "step_h": step_h, "step_w": step_w,
                  "img_h": img_h, "img_w": img_w}  # fmt: skip
        for i, (w, h) in enumerate(sizes):
            consts[f"hw{i}"], consts[f"hh{i}"] = w / 2, h / 2
        variances = prior_variances(p)
        for j, v in enumerate(variances):
            consts[f"v{j}"] = v
        half_w = chosen("p", [f"hw{i}" for i in range(len(sizes))])
        half_h = chosen("p", [f"hh{i}" for i in range(len(sizes))])
        corner = chosen("k", ["(cx - bw) / img_w", "(cy - bh) / img_h",
                              "(cx + bw) / img_w", "(cy + bh) / img_h"])  # fmt: skip
        if p.clip:
            corner = f"fmin(fmax({corner}, 0), 1)"
        variance = chosen("k", [f"v{j}" for j in range(len(variances))])
        shape = (2, height, width, len(sizes), 4)
        lets = [("cx", "(w + offset) * step_w"), ("cy", "(h + offset) * step_h"),
                ("bw", half_w), ("bh", half_h)]  # fmt: skip
        ctx.emit(
            pmap(shape, [(ctx.y(0), f"c == 0 ? {corner} : {variance}")], consts=consts,
                 coords={"c": 0, "h": 1, "w": 2, "p": 3, "k": 4}, lets=lets)
        )  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        """Nothing: the top does not depend on the bottoms' values (the fork's backward is
        empty too), so the bottoms' gradients get no part from this layer."""


def chosen(index: str, options: list[str]) -> str:
    """An expression that is ``options[index]`` (the last one for larger indices)."""
    expr = options[-1]
    for i in reversed(range(len(options) - 1)):
        expr = f"({index} == {i} ? {options[i]} : {expr})"
    return expr


# ----------------------------------------------------------------------------- DetectionOutput


def detection_settings(layer: LayerParameter) -> dict[str, object]:
    """The fork's settings, checked, with its defaults applied (what the host step reads)."""
    p = layer.detection_output_param
    if not p.HasField("num_classes") or p.num_classes == 0:
        raise ShapeError(
            "DetectionOutput needs num_classes",
            hint="set detection_output_param.num_classes (the background included)",
        )
    nms = p.nms_param
    if nms.nms_threshold < 0:
        raise ShapeError(f"nms_threshold is {nms.nms_threshold:g}; it must not be negative")
    if not 0 < nms.eta <= 1:
        raise ShapeError(f"eta is {nms.eta:g}; it must be in (0, 1]")
    return {
        "num_classes": p.num_classes,
        "share_location": p.share_location,
        "background_label_id": p.background_label_id,
        "code_type": caffe_pb2.PriorBoxParameter.CodeType.Name(p.code_type),
        "variance_encoded_in_target": p.variance_encoded_in_target,
        "keep_top_k": p.keep_top_k,
        "confidence_threshold": p.confidence_threshold if p.HasField("confidence_threshold")
        else -FLT_MAX,
        "nms_threshold": nms.nms_threshold,
        "top_k": nms.top_k if nms.HasField("top_k") else -1,
        "eta": nms.eta,
    }  # fmt: skip


def detection_rows(settings: dict, num: int, priors: int) -> int:
    """The most rows the top can need: every image's most detections (one row each when
    none is kept, as the fork writes one row of -1 per image then)."""
    classes = settings["num_classes"]
    scored = classes - (1 if 0 <= settings["background_label_id"] < classes else 0)
    top_k, keep = settings["top_k"], settings["keep_top_k"]
    per_image = scored * (min(top_k, priors) if top_k > -1 else priors)
    if keep > -1:
        per_image = min(per_image, keep)
    return num * max(per_image, 1)


@register_layer("DetectionOutput", bottoms=(3, 4))
class DetectionOutput:
    """Boxes decoded from the location predictions (bottom 0) and the priors (bottom 2),
    per-class non-maximum suppression on the confidences (bottom 1), the best ``keep_top_k``
    of each image: rows [image, label, score, xmin, ymin, xmax, ymax]. A fourth bottom (the
    image, which only the fork's ``visualize`` reads) is accepted and not read.

    How many rows there are depends on the data; the fork reshapes its top on each forward.
    caffec's top is compiled at the most rows the settings allow, (1, 1, rows, 7); the
    host step writes the fork's rows first and marks the rest with -1, and the top's blob
    shows only the fork's rows (``net.forward()`` and ``net.blobs[...].data`` are
    (1, 1, kept, 7); a row per image of [image, -1, ...] when nothing is kept).
    """

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the fork has no backward pass

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        settings = detection_settings(layer)
        loc, conf, priors = bottoms[:3]
        if len(priors) < 3 or priors[1] != 2 or priors[2] % 4:
            raise ShapeError(
                f"the priors (bottom 2) are {shape_text(priors)}; a PriorBox top "
                "(1, 2, priors * 4) is expected",
                hint="give the (concatenated) PriorBox tops as the third bottom",
            )
        num_priors = priors[2] // 4
        loc_classes = 1 if settings["share_location"] else settings["num_classes"]
        inputs = [("location predictions (bottom 0)", loc, loc_classes * 4),
                  ("confidences (bottom 1)", conf, settings["num_classes"])]  # fmt: skip
        for what, shape, per_prior in inputs:
            expected = num_priors * per_prior
            if len(shape) < 2 or shape[1] != expected or count(shape, 2) != 1:
                raise ShapeError(
                    f"the {what} are {shape_text(shape)}; {num_priors} priors need "
                    f"(num, {expected})",
                    hint="check num_classes, share_location and the mbox convolutions' "
                    "num_output against the PriorBox layers",
                )
        if loc[0] != conf[0]:
            raise ShapeError(f"the location predictions have {loc[0]} images, the confidences "
                             f"{conf[0]}")  # fmt: skip
        return [(1, 1, detection_rows(settings, loc[0], num_priors), 7)]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        attrs = {"module": "caffec.runtime.detection_output", "class_name": "DetectionOutput",
                 "param_str": json.dumps(detection_settings(op.param)), "bottoms": 3,
                 "tops": 1}  # fmt: skip
        ctx.emit(host_call("forward", [ctx.x(i) for i in range(3)], [ctx.y(0)], attrs))
