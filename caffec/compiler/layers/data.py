"""Layers that produce data: Input, DummyData, MemoryData and the file-backed ones.

A top's shape comes, in order, from ``--shape NAME=...`` given by the user,
from the layer's own parameters, or from the first record of its source. When
none of these is there, the error says which ``--shape`` to give.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import Message

from caffec.compiler.ir import Op, Shape
from caffec.compiler.lowering import LowerContext
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import UserError
from caffec.frontend import datasource


class FedByRuntime:
    """A data layer whose tops the runtime fills before each forward pass: no kernels."""

    fed_by_runtime = True

    def lower(self, op: Op, ctx: LowerContext) -> None:
        pass


class Sourced(FedByRuntime):
    """A data layer whose tops take the shapes the user gave (``--shape`` of its data top),
    else those of its parameters or of its source's first record (:meth:`shapes`)."""

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        return _from_override(layer, ctx) or self.shapes(layer, ctx)

    def shapes(self, layer: LayerParameter, ctx: InferContext) -> list[Shape]:
        raise NotImplementedError


def _from_override(layer: LayerParameter, ctx: InferContext) -> list[Shape] | None:
    """Shapes the user gave for every top (a label top follows the data's batch)."""
    tops = list(layer.top)
    if tops[0] not in ctx.shape_overrides:
        return None
    data = ctx.shape_overrides[tops[0]]
    return [data] + [ctx.shape_overrides.get(t, (data[0],)) for t in tops[1:]]


def _missing_shape(layer: LayerParameter, why: str) -> ShapeError:
    return ShapeError(
        why,
        hint=f"give the shape of the data top with --shape {layer.top[0]}=N,C,H,W",
    )


def _find(source: str, ctx: InferContext, layer: LayerParameter) -> Path:
    if not source:
        raise _missing_shape(layer, "the layer names no data source")
    path = datasource.resolve(source, ctx.base_dir)
    if path is None:
        raise _missing_shape(layer, f"the data source '{source}' does not exist")
    return path


def _with_label(layer: LayerParameter, data: Shape) -> list[Shape]:
    return [data, (data[0],)][: len(layer.top)]


def _batch(size: int) -> int:
    if size <= 0:
        raise ShapeError("batch_size must be positive", hint="set batch_size")
    return size


def _cropped(layer: LayerParameter, chw: Shape) -> Shape:
    crop = layer.transform_param.crop_size
    return (chw[0], crop, crop) if crop else chw


@register_layer("Input", bottoms=0, tops=(1, None))
class Input(FedByRuntime):
    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        shapes = [tuple(s.dim) for s in layer.input_param.shape]
        tops = list(layer.top)
        if len(shapes) not in (1, len(tops)) and not all(t in ctx.shape_overrides for t in tops):
            raise ShapeError(
                f"{len(shapes)} shapes for {len(tops)} tops",
                hint="give one input_param.shape for all tops, or one per top",
            )
        result = []
        for i, top in enumerate(tops):
            if top in ctx.shape_overrides:
                result.append(ctx.shape_overrides[top])
            else:
                result.append(shapes[0] if len(shapes) == 1 else shapes[i])
        return result


@register_layer("DummyData", bottoms=0, tops=(1, None))
class DummyData:
    """Tops of given shapes, filled by the runtime (Caffe refills a top every pass unless
    its filler is constant)."""

    LEGACY = ("num", "channels", "height", "width")

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.dummy_data_param
        tops = list(layer.top)
        if len(p.data_filler) not in (0, 1, len(tops)):
            raise ShapeError(f"{len(p.data_filler)} data_filler entries for {len(tops)} tops",
                             hint="give none, one, or one per top")  # fmt: skip
        if any(len(getattr(p, field)) for field in self.LEGACY):
            if len(p.shape):
                raise ShapeError("both shape and num/channels/height/width are given",
                                 hint="give the shapes one way only")  # fmt: skip
            shapes = self._legacy_shapes(p, len(tops))
        else:
            shapes = [tuple(s.dim) for s in p.shape]
            if len(shapes) not in (1, len(tops)):
                raise ShapeError(f"{len(shapes)} shapes for {len(tops)} tops",
                                 hint="give one shape, or one per top")  # fmt: skip
        return [ctx.shape_overrides.get(t, shapes[i if len(shapes) > 1 else 0])
                for i, t in enumerate(tops)]  # fmt: skip

    def _legacy_shapes(self, p: Message, n: int) -> list[Shape]:
        """The 4-D shapes of num, channels, height and width, each given once (for every
        top) or once per top, independently of the others (Caffe's rule)."""
        for field in self.LEGACY:
            given = len(getattr(p, field))
            if given not in (1, n):
                raise ShapeError(f"{field} is given {given} times for {n} tops",
                                 hint=f"give {field} once, or once per top")  # fmt: skip
        return [tuple(getattr(p, f)[i if len(getattr(p, f)) > 1 else 0] for f in self.LEGACY)
                for i in range(n)]  # fmt: skip

    def lower(self, op: Op, ctx: LowerContext) -> None:
        fillers = list(op.param.dummy_data_param.data_filler)
        for i in range(len(op.tops)):
            filler = fillers[i if len(fillers) > 1 else 0] if fillers else None
            refill = filler is not None and filler.type != "constant"
            ctx.fill_each_run(ctx.y(i), filler, refill)


@register_layer("MemoryData", bottoms=0, tops=2)
class MemoryData(Sourced):
    def shapes(self, layer: LayerParameter, ctx: InferContext) -> list[Shape]:
        p = layer.memory_data_param
        return _with_label(layer, (_batch(p.batch_size), p.channels, p.height, p.width))


@register_layer("Data", bottoms=0, tops=(1, 2))
class Data(Sourced):
    def shapes(self, layer: LayerParameter, ctx: InferContext) -> list[Shape]:
        p = layer.data_param
        path = _find(p.source, ctx, layer)
        backend = p.DB.Name(p.backend)
        chw = datasource.datum_shape(datasource.first_datum(path, backend))
        return _with_label(layer, (_batch(p.batch_size), *_cropped(layer, chw)))


@register_layer("ImageData", bottoms=0, tops=2)
class ImageData(Sourced):
    def shapes(self, layer: LayerParameter, ctx: InferContext) -> list[Shape]:
        p = layer.image_data_param
        channels = 3 if p.is_color else 1
        if p.new_height and p.new_width:
            chw: Shape = (channels, p.new_height, p.new_width)
        else:
            listing = _find(p.source, ctx, layer)
            name = p.root_folder + datasource.first_listed(listing)
            # where the reader looks: as given, then the prototxt's folder, the list's folder
            places = (Path(name), ctx.base_dir / name, listing.parent / name)
            image = next((place for place in places if place.exists()), None)
            if image is None:
                raise _missing_shape(layer, f"the first listed image '{name}' does not exist")
            chw = datasource.image_shape(image, p.is_color)
        return _with_label(layer, (_batch(p.batch_size), *_cropped(layer, chw)))


@register_layer("HDF5Data", bottoms=0, tops=(1, None))
class HDF5Data(Sourced):
    def shapes(self, layer: LayerParameter, ctx: InferContext) -> list[Shape]:
        tops = list(layer.top)
        p = layer.hdf5_data_param
        listing = _find(p.source, ctx, layer)
        number, name = datasource.first_listed_line(listing)
        first = datasource.resolve(name, ctx.base_dir)
        if first is None:
            raise ShapeError(
                f"the first HDF5 file listed in '{p.source}' does not exist",
                hint="give every top's shape with --shape NAME=N,...",
            )
        try:
            found = datasource.hdf5_shapes(first, tops, f"line {number} of {listing}")
        except UserError as err:
            raise ShapeError(err.message, err.hint) from err
        batch = _batch(p.batch_size)
        return [ctx.shape_overrides.get(t, (batch, *found[t][1:])) for t in tops]


@register_layer("WindowData", bottoms=0, tops=2)
class WindowData(Sourced):
    def shapes(self, layer: LayerParameter, ctx: InferContext) -> list[Shape]:
        crop = layer.transform_param.crop_size or layer.window_data_param.crop_size
        if not crop:
            raise _missing_shape(layer, "WindowData needs transform_param.crop_size")
        return _with_label(layer, (_batch(layer.window_data_param.batch_size), 3, crop, crop))
