"""pycaffe's NetSpec: a net written as Python calls, turned into a ``caffe_pb2.NetParameter``.

``layers.Convolution(bottom, num_output=20)`` records a layer and gives back its top;
``to_proto(*tops)`` (or ``NetSpec.to_proto``) walks back from the tops, depth first, and
writes every layer they need, bottoms before the layers that read them. Keywords are
checked against the schema when the layer is made, so a misspelt field fails on the line
that wrote it, with the names it could have meant.

Names follow pycaffe's rules: a top assigned to a NetSpec attribute takes that name; any
other top is named after its layer type and a count (``Convolution1``); a layer takes its
first top's name, or a name of its own when it has no tops; an in-place layer's tops are
its bottoms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from caffec.errors import UserError, did_you_mean
from caffec.formats import caffe_pb2

LAYER = caffe_pb2.LayerParameter.DESCRIPTOR

# Types whose parameters live in a message named after another type (pycaffe has none of
# these, so it takes such keywords as LayerParameter fields and fails).
SHARED_PARAMS = {
    "Deconvolution": "convolution",
    "Im2col": "convolution",
    "RNN": "recurrent",
    "LSTM": "recurrent",
    "SoftmaxWithLoss": "softmax",
}


class UnknownNameError(UserError, AttributeError):
    """A name the schema does not have: a UserError for people, and an AttributeError for
    code that probes with ``hasattr`` or catches what pycaffe raised."""


def param_name_dict() -> dict[str, str]:
    """Layer type → ``X`` of its ``X_param`` field, read off LayerParameter's message fields
    (``InnerProductParameter inner_product_param`` gives ``InnerProduct → inner_product``)."""
    return {
        field.message_type.name.removesuffix("Parameter"): field.name.removesuffix("_param")
        for field in LAYER.fields
        if field.name.endswith("_param") and field.message_type is not None
    }


_param_names = param_name_dict()


def _param_fields(type_name: str) -> list[str]:
    """The ``*_param`` fields a type's bare keywords go into, in the order they are tried."""
    names = [_param_names.get(type_name), SHARED_PARAMS.get(type_name)]
    if type_name.endswith("Loss"):  # ignore_label, normalization: every loss layer's own
        names.append("loss")
    return [f"{name}_param" for name in names if name]


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _fields_of(param_field: str) -> Mapping[str, FieldDescriptor]:
    """The fields of the message in LayerParameter's field ``param_field``."""
    return LAYER.fields_by_name[param_field].message_type.fields_by_name


def _field(descriptor: Descriptor, name: str, where: str) -> FieldDescriptor:
    field = descriptor.fields_by_name.get(name)
    if field is None:
        raise UnknownNameError(
            f"{where}{name} is not a field of {descriptor.name}",
            hint=did_you_mean(name, descriptor.fields_by_name),
        )
    return field


def _assign(proto: Message, name: str, value: Any, where: str) -> None:
    """:func:`assign_proto`, with ``where`` (the path to ``proto``) to start messages with."""
    field = _field(proto.DESCRIPTOR, name, where)
    path = f"{where}{name}"
    try:
        if field.message_type is not None:
            _assign_message(proto, field, value, path)
        elif field.is_repeated:
            getattr(proto, name).extend(value if _is_list(value) else [value])
        elif _is_list(value):
            raise UserError(f"{path} takes one value, not a list")
        else:
            setattr(proto, name, value)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path} cannot be {value!r}: {err}") from None


def _assign_message(proto: Message, field: FieldDescriptor, value: Any, path: str) -> None:
    if field.is_repeated:
        targets = [(getattr(proto, field.name).add(), item)
                   for item in (value if _is_list(value) else [value])]  # fmt: skip
    elif _is_list(value):
        raise UserError(f"{path} takes one {field.message_type.name}, not a list")
    else:
        targets = [(getattr(proto, field.name), value)]
    for target, item in targets:
        if isinstance(item, Message):
            target.CopyFrom(item)
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                _assign(target, key, sub, f"{path}.")
        else:
            raise UserError(
                f"{path} is a {field.message_type.name}: give a dict of its fields, not {item!r}"
            )


def assign_proto(proto: Message, name: str, val: Any) -> None:
    """Set field ``name`` of ``proto`` from plain Python: a dict fills a message, a list fills
    a repeated field, and a lone value given to a repeated field counts as a list of one."""
    _assign(proto, name, val, "")


class Top:
    """One output blob of a layer: the ``n``-th top of ``fn``."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The net of every layer this top needs."""
        return to_proto(self)


class Function:
    """One layer: its type, its bottoms (tops of other layers) and its keyword parameters."""

    def __init__(self, type_name: str, inputs: Iterable[Any], params: dict[str, Any]) -> None:
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.ntop = params.pop("ntop", 1)
        self.in_place = params.pop("in_place", False)
        self.params = params
        for i, bottom in enumerate(self.inputs):
            if not isinstance(bottom, Top):
                what = ("a tuple: a layer with several tops gives a tuple; pass one of them"
                        if isinstance(bottom, tuple) else f"{bottom!r}, not a top")  # fmt: skip
                raise UserError(f"{type_name}: bottom {i} is {what}")
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise UserError(f"{type_name}: ntop is a count of tops, not {self.ntop!r}")
        if self.in_place and len(self.inputs) < max(self.ntop, 1):
            raise UserError(f"{type_name}: in_place=True writes the tops over the bottoms, "
                            f"so it needs {max(self.ntop, 1)} bottom(s)")  # fmt: skip
        self.tops = tuple(Top(self, n) for n in range(self.ntop))
        self._fill(caffe_pb2.LayerParameter())  # fail here, where the layer is written

    def _update(self, params: dict[str, Any]) -> None:
        self._fill(caffe_pb2.LayerParameter(), {**self.params, **params})
        self.params.update(params)

    def _fill(self, layer: caffe_pb2.LayerParameter, params: dict[str, Any] | None = None) -> None:
        """Put the keywords into ``layer``: a ``*param`` name is a LayerParameter field; any
        other goes into the type's ``*_param`` message if that has it, else into the layer."""
        for key, value in (self.params if params is None else params).items():
            owners = [] if key.endswith("param") else _param_fields(self.type_name)
            owner = next((o for o in owners if key in _fields_of(o)), None)
            if owner is None and key not in LAYER.fields_by_name:
                raise self._unknown(key, owners)
            target, where = (getattr(layer, owner), f"{owner}.") if owner else (layer, "")
            _assign(target, key, value, f"{self.type_name}: {where}")

    def _unknown(self, key: str, owners: list[str]) -> UnknownNameError:
        candidates = [name for o in owners for name in _fields_of(o)] + list(LAYER.fields_by_name)
        hint = did_you_mean(key, candidates)
        if hint is None and not owners and not key.endswith("param"):
            close = did_you_mean(self.type_name, _param_names)
            hint = close and f"{self.type_name} is not a layer type with parameters; {close}"
        where = " or ".join([*owners, "LayerParameter"])
        return UnknownNameError(
            f"{self.type_name} has no parameter '{key}' (not a field of {where})", hint=hint
        )


def _check_output(value: Any, where: str) -> Top | Function:
    if isinstance(value, Top | Function):
        return value
    if isinstance(value, tuple) and all(isinstance(t, Top) for t in value):
        raise UserError(f"{where} is a layer's tuple of {len(value)} tops",
                        hint="unpack it, as n.a, n.b = L.Slice(..., ntop=2)")  # fmt: skip
    raise UserError(f"{where} is {value!r}, not a top made by caffe.layers")


class _Writer:
    """One ``to_proto`` call: the layers written so far, in order, and the names given."""

    def __init__(self, names: dict[Top | Function, str]) -> None:
        self.layers: dict[Function, caffe_pb2.LayerParameter] = {}
        self.names = names
        self.counts: Counter[str] = Counter()

    def _auto_name(self, type_name: str) -> str:
        self.counts[type_name] += 1
        return f"{type_name}{self.counts[type_name]}"

    def _top_name(self, top: Top) -> str:
        if top not in self.names:
            self.names[top] = self._auto_name(top.fn.type_name)
        return self.names[top]

    def _layer_name(self, fn: Function) -> str:
        if fn not in self.names:
            self.names[fn] = (self._top_name(fn.tops[0]) if fn.tops
                              else self._auto_name(fn.type_name))  # fmt: skip
        return self.names[fn]

    def write(self, root: Function) -> None:
        """Write ``root`` and what it needs, bottoms first in the order they are given (a
        stack, not recursion: a net may be deeper than Python's recursion limit)."""
        stack = [root]
        while stack:
            fn = stack[-1]
            pending = [t.fn for t in fn.inputs if t.fn not in self.layers]
            if pending:
                stack.append(pending[0])
                continue
            stack.pop()
            if fn not in self.layers:
                self.layers[fn] = self._layer(fn)

    def _layer(self, fn: Function) -> caffe_pb2.LayerParameter:
        layer = caffe_pb2.LayerParameter(type=fn.type_name)
        layer.bottom.extend(self.layers[t.fn].top[t.n] for t in fn.inputs)
        layer.top.extend(layer.bottom if fn.in_place else [self._top_name(t) for t in fn.tops])
        layer.name = self._layer_name(fn)
        fn._fill(layer)
        return layer

    def net(self) -> caffe_pb2.NetParameter:
        net = caffe_pb2.NetParameter()
        net.layer.extend(self.layers.values())
        return net


def to_proto(*tops: Top | Function) -> caffe_pb2.NetParameter:
    """The net of every layer ``tops`` need (a layer made with ``ntop=0`` counts as a top)."""
    writer = _Writer({})
    for i, top in enumerate(tops):
        out = _check_output(top, f"to_proto's argument {i}")
        writer.write(out.fn if isinstance(out, Top) else out)
    return writer.net()


class NetSpec:
    """Tops named by attribute: ``n.conv1 = L.Convolution(n.data, ...)`` names the top (and
    its layer) ``conv1``; ``n.to_proto()`` writes the layers of every assigned top."""

    def __init__(self) -> None:
        super().__setattr__("tops", {})

    def __setattr__(self, name: str, value: Any) -> None:
        self.tops[name] = _check_output(value, f"NetSpec.{name}")

    def __getattr__(self, name: str) -> Top | Function:
        tops = self.__dict__.get("tops", {})
        if name not in tops:
            raise UnknownNameError(f"the NetSpec has no top '{name}'",
                                   hint=did_you_mean(name, tops))  # fmt: skip
        return tops[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.__setattr__(name, value)

    def __getitem__(self, name: str) -> Top | Function:
        return self.tops[name]

    def keys(self) -> list[str]:
        return list(self.tops)

    def vals(self) -> list[Top | Function]:
        return list(self.tops.values())

    def update(self, name: str, params: dict[str, Any]) -> None:
        """Add or change keyword parameters of the layer that made top ``name``."""
        top = self.tops[name]
        (top.fn if isinstance(top, Top) else top)._update(params)

    def to_proto(self) -> caffe_pb2.NetParameter:
        writer = _Writer({value: name for name, value in self.tops.items()})
        for value in self.tops.values():
            writer.write(value.fn if isinstance(value, Top) else value)
        return writer.net()


class Layers:
    """``layers.X(*bottoms, **params)``: a layer of type ``X``; its top, its tuple of
    ``ntop`` tops, or (``ntop=0``) the layer itself."""

    def __getattr__(self, name: str) -> Callable[..., Top | tuple[Top, ...] | Function]:
        if name.startswith("_"):  # copy, pickle and inspect probe for these
            raise AttributeError(name)

        def layer_fn(*args: Top, **kwargs: Any) -> Top | tuple[Top, ...] | Function:
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops

        return layer_fn


class _EnumValues:
    """``params.Pooling``: the constants of ``PoolingParameter`` by name (``MAX``)."""

    def __init__(self, message: type[Message]) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return getattr(self._message, name)
        except AttributeError:
            enums = self._message.DESCRIPTOR.enum_types
            values = [value for enum in enums for value in enum.values_by_name]
            raise UnknownNameError(f"{self._message.__name__} has no value '{name}'",
                                   hint=did_you_mean(name, values)) from None  # fmt: skip


class Parameters:
    """``params.Pooling.MAX``: the enum constants of ``caffe_pb2.PoolingParameter``."""

    def __getattr__(self, name: str) -> _EnumValues:
        if name.startswith("_"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, f"{name}Parameter", None)
        if message is None:
            raise UnknownNameError(f"caffe_pb2 has no {name}Parameter",
                                   hint=did_you_mean(name, _param_names))  # fmt: skip
        return _EnumValues(message)


layers = Layers()
params = Parameters()
