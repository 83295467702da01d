"""Upgrading V0 nets (``layers { layer { type: "conv" ... } }``) to V1, as Caffe's
``upgrade_proto.cpp`` does: padding layers folded into the layer they feed, and every V0
field moved to its ``*_param`` message (:mod:`caffec.formats.upgrade` runs this first)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from google.protobuf.message import Message

from caffec.errors import Span, UserError, did_you_mean
from caffec.formats import caffe_pb2
from caffec.formats.field_moves import UpgradeWarning, copy_fields, field_at, put
from caffec.formats.source_map import Path, SourceMap

NetParameter = caffe_pb2.NetParameter

# V0 type string -> V1LayerParameter.LayerType enum name ("padding" is folded away instead).
V0_TYPE_NAMES: dict[str, str] = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# V0 fields that land in the same V1 field whatever the layer type.
_V0_COMMON: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "blobs": ("blobs",),
    "blobs_lr": ("blobs_lr",),
    "weight_decay": ("weight_decay",),
    "scale": ("transform_param", "scale"),
    "meanfile": ("transform_param", "mean_file"),
    "cropsize": ("transform_param", "crop_size"),
    "mirror": ("transform_param", "mirror"),
}


def _in(param: str, field: str, *types: str) -> dict[str, tuple[str, ...]]:
    return {t: (param, field) for t in types}


# V0 fields whose V1 home depends on the V0 layer type; a type not listed has no home.
_V0_BY_TYPE: dict[str, dict[str, tuple[str, ...]]] = {
    "num_output": {
        "conv": ("convolution_param", "num_output"),
        "innerproduct": ("inner_product_param", "num_output"),
    },
    "biasterm": {
        "conv": ("convolution_param", "bias_term"),
        "innerproduct": ("inner_product_param", "bias_term"),
    },
    "weight_filler": {
        "conv": ("convolution_param", "weight_filler"),
        "innerproduct": ("inner_product_param", "weight_filler"),
    },
    "bias_filler": {
        "conv": ("convolution_param", "bias_filler"),
        "innerproduct": ("inner_product_param", "bias_filler"),
    },
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {
        "conv": ("convolution_param", "kernel_size"),
        "pool": ("pooling_param", "kernel_size"),
    },
    "group": _in("convolution_param", "group", "conv"),
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": _in("pooling_param", "pool", "pool"),
    "dropout_ratio": _in("dropout_param", "dropout_ratio", "dropout"),
    "local_size": _in("lrn_param", "local_size", "lrn"),
    "alpha": _in("lrn_param", "alpha", "lrn"),
    "beta": _in("lrn_param", "beta", "lrn"),
    "k": _in("lrn_param", "k", "lrn"),
    "source": {
        "data": ("data_param", "source"),
        "hdf5_data": ("hdf5_data_param", "source"),
        "images": ("image_data_param", "source"),
        "window_data": ("window_data_param", "source"),
        "infogain_loss": ("infogain_loss_param", "source"),
    },
    "batchsize": {
        "data": ("data_param", "batch_size"),
        "hdf5_data": ("hdf5_data_param", "batch_size"),
        "images": ("image_data_param", "batch_size"),
        "window_data": ("window_data_param", "batch_size"),
    },
    "rand_skip": {
        "data": ("data_param", "rand_skip"),
        "images": ("image_data_param", "rand_skip"),
    },
    "shuffle_images": _in("image_data_param", "shuffle", "images"),
    "new_height": _in("image_data_param", "new_height", "images"),
    "new_width": _in("image_data_param", "new_width", "images"),
    "concat_dim": _in("concat_param", "concat_dim", "concat"),
    "det_fg_threshold": _in("window_data_param", "fg_threshold", "window_data"),
    "det_bg_threshold": _in("window_data_param", "bg_threshold", "window_data"),
    "det_fg_fraction": _in("window_data_param", "fg_fraction", "window_data"),
    "det_context_pad": _in("window_data_param", "context_pad", "window_data"),
    "det_crop_mode": _in("window_data_param", "crop_mode", "window_data"),
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param",)},
}


def v0_to_v1(net: NetParameter, spans: SourceMap) -> tuple[NetParameter, SourceMap]:
    """V0 ``layers { layer {...} }`` -> V1 ``layers {...}``, folding padding layers away."""
    entries = net.layers
    for i, entry in enumerate(entries):
        if not entry.HasField("layer"):
            raise UserError(
                "this V0 net also has a V1-style 'layers' entry (one without an inner "
                "'layer { ... }')",
                span=spans.get(("layers", i)),
                layer=entry.name or None,
                hint="in a V0 net every entry must be 'layers { layer { name type ... } "
                "bottom top }'; write them all in one format",
            )
        _check_v0_type(entry, spans.get(("layers", i, "layer", "type")) or spans.get(("layers", i)))

    # Fold each padding layer into the conv/pool layer that reads its output.
    last_writer: dict[str, int] = {}
    folded: dict[int, int] = {}  # consumer's old index -> padding layer's old index
    rewired: dict[int, list[str]] = {}
    for i, entry in enumerate(entries):
        for j, blob in enumerate(entry.bottom):
            src = last_writer.get(blob)
            if src is None or entries[src].layer.type != "padding":
                continue
            _check_padding_consumer(entries, i, src, spans)
            folded[i] = src
            rewired.setdefault(i, list(entry.bottom))[j] = entries[src].bottom[0]
        for blob in entry.top:
            last_writer[blob] = i

    kept = [i for i, entry in enumerate(entries) if entry.layer.type != "padding"]
    out = NetParameter()
    copy_fields(net, out, skip=("layers",))
    for i in kept:
        entry = entries[i]
        if i in folded:
            entry = _with_padding(entry, entries[folded[i]], rewired[i])
        _v0_layer_to_v1(entry, out.layers.add(), spans, i)

    new_index = {old: new for new, old in enumerate(kept)}
    pad_owner = {pad: consumer for consumer, pad in folded.items()}
    v0_types = [entry.layer.type for entry in entries]

    def rename(path: Path) -> Path | None:
        if len(path) < 2 or path[0] != "layers":
            return path
        i, rest = path[1], path[2:]
        if i not in new_index:
            # The padding layer's own 'pad' becomes its consumer's pad; the rest goes.
            if rest != ("layer", "pad") or i not in pad_owner:
                return None
            i = pad_owner[i]
        k = new_index[i]
        if rest[:1] != ("layer",):
            return ("layers", k, *rest)
        if len(rest) == 1:
            return None
        field, tail = rest[1], rest[2:]
        if field == "type":
            return ("layers", k, "type")
        target = _v0_target(str(field), v0_types[i])
        if target is None:
            return ("layers", k)
        source_repeated = caffe_pb2.V0LayerParameter.DESCRIPTOR.fields_by_name[field].is_repeated
        if not source_repeated and field_at(caffe_pb2.V1LayerParameter, target).is_repeated:
            tail = (0, *tail)
        return ("layers", k, *target, *tail)

    return out, spans.move(rename)


def _check_v0_type(entry: Message, span: Span | None) -> None:
    v0 = entry.layer
    if v0.type == "padding" or v0.type in V0_TYPE_NAMES:
        return
    if not v0.HasField("type"):
        message, hint = "V0 layer has no 'type'", None
    else:
        message = f"unknown V0 layer type '{v0.type}'"
        hint = did_you_mean(v0.type, [*V0_TYPE_NAMES, "padding"])
    raise UserError(
        message,
        span=span,
        layer=v0.name or None,
        hint=hint or "V0 layer types are: " + ", ".join(sorted([*V0_TYPE_NAMES, "padding"])),
    )


def _check_padding_consumer(entries: Sequence[Message], i: int, src: int, spans: SourceMap) -> None:
    """Caffe folds a padding layer only into a single-input conv or pool layer."""
    consumer, padding = entries[i], entries[src]
    problem = None
    if consumer.layer.type not in ("conv", "pool"):
        problem = (
            f"reads the output of padding layer '{padding.layer.name}', but only 'conv' and "
            f"'pool' layers can absorb a V0 padding layer (this one is '{consumer.layer.type}')"
        )
    elif len(consumer.bottom) != 1:
        problem = "reads a padding layer's output but has more than one bottom"
    elif len(padding.bottom) != 1 or len(padding.top) != 1:
        problem = f"reads padding layer '{padding.layer.name}', which needs one bottom and one top"
    if problem is not None:
        raise UserError(
            problem,
            span=spans.get(("layers", i)),
            layer=consumer.layer.name or None,
            hint="give the conv/pool layer a 'pad' instead of a separate padding layer",
        )


def _with_padding(entry: Message, padding: Message, bottoms: list[str]) -> Message:
    """``entry`` reading the padding layer's input directly, with the padding layer's pad."""
    folded = caffe_pb2.V1LayerParameter()
    folded.CopyFrom(entry)
    folded.layer.pad = padding.layer.pad
    del folded.bottom[:]
    folded.bottom.extend(bottoms)
    return folded


def _v0_target(field: str, v0_type: str) -> tuple[str, ...] | None:
    """Where V0 field ``field`` of a layer of ``v0_type`` goes in V1, or None if nowhere."""
    if field in _V0_COMMON:
        return _V0_COMMON[field]
    return _V0_BY_TYPE.get(field, {}).get(v0_type)


def _v0_layer_to_v1(entry: Message, out: Message, spans: SourceMap, i: int) -> None:
    v0 = entry.layer
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    out.type = caffe_pb2.V1LayerParameter.LayerType.Value(V0_TYPE_NAMES[v0.type])
    for field, value in v0.ListFields():
        if field.name == "type":
            continue
        target = _v0_target(field.name, v0.type)
        if target is None:
            span = spans.get(("layers", i, "layer", field.name))
            where = f"{span}: " if span is not None else ""
            warnings.warn(
                UpgradeWarning(
                    f"{where}V0 field '{field.name}' means nothing for a '{v0.type}' layer "
                    f"('{v0.name}'); dropped, as Caffe does"
                ),
                stacklevel=2,
            )
            continue
        if field.name == "pool":
            pool_method = caffe_pb2.V0LayerParameter.PoolMethod.Name(value)
            value = caffe_pb2.PoolingParameter.PoolMethod.Value(pool_method)
        put(out, target, value, field.is_repeated)
