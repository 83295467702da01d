"""Upgrading old Caffe nets and solvers to the current format.

Caffe changed its net format twice, and old files are still everywhere (model
zoos, papers' repositories, caffemodels trained years ago): V0 nets wrap each
layer as ``layers { layer { type: "conv" num_output: 96 } bottom: ... }``, V1
nets write ``layers { type: CONVOLUTION blobs_lr: 1 }``. Caffe upgrades both
silently whenever it reads a net, text or binary, and so does
:func:`upgrade_net`, so that the rest of caffec only ever sees ``layer {}``.
The facts (which field goes where, which enum becomes which type string) are
Caffe's ``upgrade_proto.cpp``; the steps run in Caffe's order:

1. V0 → V1: padding layers folded into the conv/pool they feed, and every V0
   field moved to its ``*_param`` message;
2. V1 → current: ``LayerType`` enums become type strings, ``blobs_lr`` /
   ``weight_decay`` / ``param`` / ``blob_share_mode`` become ``param {}``
   entries, and the data layers' old transformation fields (``scale``,
   ``mean_file``, ``crop_size``, ``mirror``) move to ``transform_param``;
3. ``input`` / ``input_dim`` / ``input_shape`` become an ``Input`` layer,
   placed first;
4. BatchNorm layers that still declare their three statistics as ``param``
   entries lose them (the statistics are not learned; the layer fixes that
   itself).

Layer order: layer *i* of the upgraded net is entry *i* of the old ``layers``
list, with two exceptions: V0 padding layers disappear (folded into the next
layer), and when the net declares input shapes (``input_dim`` or
``input_shape``) the new ``Input`` layer comes first and shifts every index by
one. Caffemodels written by Caffe name their inputs without shapes, so for
them no ``Input`` layer is added (the names are dropped, as Caffe does) and
the indices line up one to one.

Every step moves the :class:`SourceMap` entries with the fields they describe,
so an error found later still points at what the user wrote.
"""

from __future__ import annotations

from google.protobuf.message import Message

from caffec.errors import InternalError, UserError
from caffec.formats import caffe_pb2
from caffec.formats.field_moves import copy_fields, put
from caffec.formats.source_map import Path, SourceMap
from caffec.formats.upgrade_v0 import v0_to_v1

NetParameter = caffe_pb2.NetParameter
SolverParameter = caffe_pb2.SolverParameter


# V1LayerParameter.LayerType enum name -> the current format's type string.
V1_TYPE_NAMES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# SolverParameter.SolverType enum name -> the solver's type string.
SOLVER_TYPE_NAMES: dict[str, str] = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}

# V1 per-blob lists -> the ParamSpec field each element becomes.
_V1_PARAM_FIELDS: dict[str, str] = {
    "param": "name",
    "blob_share_mode": "share_mode",
    "blobs_lr": "lr_mult",
    "weight_decay": "decay_mult",
}

# V1 data layer types whose own parameter message once held the transformation fields.
_DATA_PARAMS: dict[str, str] = {
    "DATA": "data_param",
    "IMAGE_DATA": "image_data_param",
    "WINDOW_DATA": "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


# --------------------------------------------------------------------------- predicates


def net_needs_v0_upgrade(net: NetParameter) -> bool:
    """True when some ``layers`` entry wraps a V0 ``layer``."""
    return any(entry.HasField("layer") for entry in net.layers)


def net_needs_v1_upgrade(net: NetParameter) -> bool:
    """True when the net uses the deprecated ``layers`` list at all."""
    return len(net.layers) > 0


def net_needs_input_upgrade(net: NetParameter) -> bool:
    """True when the net declares inputs with the deprecated net-level fields."""
    return len(net.input) > 0 or len(net.input_shape) > 0 or len(net.input_dim) > 0


def net_needs_batch_norm_upgrade(net: NetParameter) -> bool:
    """True when a BatchNorm layer still lists its three statistics as ``param`` entries."""
    return any(_is_old_batch_norm(layer) for layer in net.layer)


def net_needs_upgrade(net: NetParameter) -> bool:
    """True when :func:`upgrade_net` would change anything but the object's identity."""
    return (
        net_needs_v1_upgrade(net)
        or net_needs_input_upgrade(net)
        or net_needs_batch_norm_upgrade(net)
    )


def solver_needs_upgrade(solver: SolverParameter) -> bool:
    """True when the solver uses the ``solver_type`` enum or holds an old-format inline net."""
    return solver.HasField("solver_type") or any(
        net_needs_upgrade(net) for _, net in _inline_nets(solver)
    )


# --------------------------------------------------------------------------- nets


def upgrade_net(
    net: NetParameter, spans: SourceMap | None = None
) -> tuple[NetParameter, SourceMap]:
    """A current-format copy of ``net`` (V0, V1 or current in), with ``spans`` moved along.

    ``net`` is not modified. Works the same for parsed prototxt and for
    caffemodels (whose span map is empty); see the module docstring for how
    layer indices correspond.
    """
    spans = spans if spans is not None else SourceMap()
    if net.layers and net.layer:
        raise UserError(
            "this net has both old-format 'layers' entries and current 'layer' entries",
            span=spans.get(("layer", 0)) or spans.get(("layers", 0)),
            hint="Caffe cannot upgrade a net that mixes the two formats; write every layer "
            "as 'layers { ... }' (then run 'caffec upgrade') or every layer as 'layer { ... }'",
        )
    out = net
    if net_needs_v0_upgrade(out):
        out, spans = v0_to_v1(out, spans)
    if net_needs_v1_upgrade(out):
        out, spans = _v1_to_current(out, spans)
    if out is net:
        out = NetParameter()
        out.CopyFrom(net)
    spans = _upgrade_input(out, spans)
    spans = _upgrade_batch_norm(out, spans)
    return out, spans


def _v1_to_current(net: NetParameter, spans: SourceMap) -> tuple[NetParameter, SourceMap]:
    """V1 ``layers {...}`` -> current ``layer {...}``, one for one and in order."""
    out = NetParameter()
    copy_fields(net, out, skip=("layers",))
    v1_types: list[str | None] = []
    for v1 in net.layers:
        type_name = (
            caffe_pb2.V1LayerParameter.LayerType.Name(v1.type) if v1.HasField("type") else None
        )
        v1_types.append(type_name)
        _v1_layer_to_current(v1, type_name, out.layer.add())

    def rename(path: Path) -> Path | None:
        if path[:1] != ("layers",):
            return path
        if len(path) < 2:
            return ("layer",)
        i, rest = path[1], path[2:]
        if rest[:1] and rest[0] in _V1_PARAM_FIELDS:
            if len(rest) == 1:
                return ("layer", i, "param")
            return ("layer", i, "param", rest[1], _V1_PARAM_FIELDS[str(rest[0])], *rest[2:])
        data_param = _DATA_PARAMS.get(v1_types[i] or "")
        if len(rest) >= 2 and rest[0] == data_param and rest[1] in _TRANSFORM_FIELDS:
            return ("layer", i, "transform_param", *rest[1:])
        return ("layer", i, *rest)

    moved = spans.move(rename)
    # Give each new param entry the span of the first old field that created it.
    present = set(moved)
    for path in spans:
        if len(path) == 4 and path[0] == "layers" and path[2] in _V1_PARAM_FIELDS:
            anchor = ("layer", path[1], "param", path[3])
            span = spans.get(path)
            if anchor not in present and span is not None:
                moved[anchor] = span
                present.add(anchor)
    return out, moved


def _v1_layer_to_current(v1: Message, type_name: str | None, layer: Message) -> None:
    for field, value in v1.ListFields():
        name = field.name
        if name == "type":
            if type_name not in V1_TYPE_NAMES:
                raise InternalError(f"no type string for V1 layer type {type_name}")
            layer.type = V1_TYPE_NAMES[type_name]
        elif name in _V1_PARAM_FIELDS:
            for k, item in enumerate(value):
                while len(layer.param) <= k:
                    layer.param.add()
                if name == "blob_share_mode":
                    mode = caffe_pb2.V1LayerParameter.DimCheckMode.Name(item)
                    item = caffe_pb2.ParamSpec.DimCheckMode.Value(mode)
                setattr(layer.param[k], _V1_PARAM_FIELDS[name], item)
        else:
            put(layer, (name,), value, field.is_repeated)
    data_param = _DATA_PARAMS.get(type_name or "")
    if data_param is not None and layer.HasField(data_param):
        old = getattr(layer, data_param)
        for name in _TRANSFORM_FIELDS:
            if old.HasField(name):
                setattr(layer.transform_param, name, getattr(old, name))
                old.ClearField(name)


def _upgrade_input(net: NetParameter, spans: SourceMap) -> SourceMap:
    """Net-level ``input`` fields -> an ``Input`` layer in front (in place on ``net``)."""
    if not net_needs_input_upgrade(net):
        return spans
    count, dims, shapes = len(net.input), len(net.input_dim), len(net.input_shape)
    if count == 0:
        field = "input_dim" if dims else "input_shape"
        raise UserError(
            f"the net gives '{field}' but no 'input' names",
            span=spans.get((field, 0)),
            hint="add one 'input: \"name\"' per input blob, or better, an Input layer",
        )
    if dims and shapes:
        raise UserError(
            "the net gives both 'input_dim' and 'input_shape'",
            span=spans.get(("input_dim", 0)),
            hint="keep one of them; 'input_shape { dim: ... }' (or an Input layer) is preferred",
        )
    if dims and dims != 4 * count:
        raise UserError(
            f"the net has {count} input(s) but {dims} 'input_dim' values; "
            f"'input_dim' needs exactly 4 values (num, channels, height, width) per input",
            span=spans.get(("input_dim", 4 * count if dims > 4 * count else 0)),
            hint=f"give {4 * count} 'input_dim' values, or use 'input_shape {{ dim: ... }}' "
            "for inputs that are not 4-D",
        )
    if shapes and shapes != count:
        raise UserError(
            f"the net has {count} input(s) but {shapes} 'input_shape' entries",
            span=spans.get(("input_shape", 0)),
            hint="give exactly one 'input_shape { dim: ... }' per 'input'",
        )
    has_layer = bool(dims or shapes)
    if has_layer:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.top.extend(net.input)
        for i in range(count):
            shape = layer.input_param.shape.add()
            if shapes:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i : 4 * i + 4])
        net.layer.insert(0, layer)
    # Names without shapes are a legacy caffemodel's leftovers: Caffe just drops them.
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")

    def rename(path: Path) -> Path | None:
        head, rest = path[:1], path[1:]
        if head not in (("layer",), ("input",), ("input_dim",), ("input_shape",)):
            return path
        if head == ("layer",):
            return ("layer", int(rest[0]) + 1, *rest[1:]) if has_layer and rest else path
        if not has_layer or not rest:
            return None
        if head == ("input",):
            return ("layer", 0, "top", *rest)
        if head == ("input_dim",):
            d = int(rest[0])
            return ("layer", 0, "input_param", "shape", d // 4, "dim", d % 4)
        return ("layer", 0, "input_param", "shape", *rest)

    moved = spans.move(rename)
    first = spans.get(("input", 0))
    if has_layer and first is not None:
        moved[("layer", 0)] = first
    return moved


def _is_old_batch_norm(layer: Message) -> bool:
    return layer.type == "BatchNorm" and len(layer.param) == 3


def _upgrade_batch_norm(net: NetParameter, spans: SourceMap) -> SourceMap:
    """Drop the ``param`` entries old BatchNorm layers used to pin their statistics' lr to 0.

    Caffe's BatchNorm now keeps its statistics out of the solver by itself and
    refuses a nonzero ``lr_mult`` for them; Caffe clears the three old entries
    on load, and so do we (in place on ``net``).
    """
    cleared = set()
    for j, layer in enumerate(net.layer):
        if _is_old_batch_norm(layer):
            layer.ClearField("param")
            cleared.add(j)
    if not cleared:
        return spans
    return spans.move(
        lambda p: (
            None if len(p) >= 3 and p[0] == "layer" and p[1] in cleared and p[2] == "param" else p
        )
    )


# --------------------------------------------------------------------------- solvers


def upgrade_solver(
    solver: SolverParameter, spans: SourceMap | None = None
) -> tuple[SolverParameter, SourceMap]:
    """A copy of ``solver`` with ``solver_type`` turned into ``type``, spans moved along.

    Inline nets (``net_param``, ``train_net_param``, ``test_net_param``) are
    upgraded with :func:`upgrade_net` too. Caffe does not do that (it builds
    them as they are, so an old-format inline net ends up with no layers);
    caffec does, so that solvers such as ``lenet_consolidated_solver.prototxt``
    work.
    """
    spans = spans if spans is not None else SourceMap()
    out = SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type"):
            raise UserError(
                "the solver gives both the old 'solver_type' and the new 'type'",
                span=spans.get(("solver_type",)),
                hint=f"remove 'solver_type' and keep 'type: \"{out.type}\"'",
            )
        enum_name = SolverParameter.SolverType.Name(out.solver_type)
        out.type = SOLVER_TYPE_NAMES[enum_name]
        out.ClearField("solver_type")
        spans = spans.move(lambda p: ("type", *p[1:]) if p[:1] == ("solver_type",) else p)
    for prefix, net in _inline_nets(out):
        if net_needs_upgrade(net):
            new_net, inner = upgrade_net(net, _subtree(spans, prefix))
            net.CopyFrom(new_net)
            spans = _graft(spans, prefix, inner)
    return out, spans


def _subtree(spans: SourceMap, prefix: Path) -> SourceMap:
    """The entries under ``prefix``, with the prefix taken off."""
    n = len(prefix)
    return spans.move(lambda p: p[n:] if p[:n] == prefix else None)


def _graft(spans: SourceMap, prefix: Path, inner: SourceMap) -> SourceMap:
    """``spans`` with everything under ``prefix`` replaced by ``inner`` put under it."""
    n = len(prefix)
    out = spans.move(lambda p: None if p[:n] == prefix else p)
    for path in inner:
        span = inner.get(path)
        if span is not None:
            out[(*prefix, *path)] = span
    return out


def _inline_nets(solver: SolverParameter) -> list[tuple[Path, NetParameter]]:
    nets: list[tuple[Path, NetParameter]] = []
    for name in ("net_param", "train_net_param"):
        if solver.HasField(name):
            nets.append(((name,), getattr(solver, name)))
    for i, net in enumerate(solver.test_net_param):
        nets.append((("test_net_param", i), net))
    return nets
