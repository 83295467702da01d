"""caffec's Caffe schema: caffe.proto, its generated caffe_pb2 module, and interop with Caffe.

The fact tables below were taken from BVLC Caffe's caffe.proto (master, 9b89154) and checked
against independent copies of it; they are written out here by hand so that a slip in
caffe.proto (a renumbered field, a lost default, a dropped [packed = true]) fails a test
instead of silently breaking binary compatibility with Caffe's files.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from caffec.formats import caffe_pb2

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
LENET_WEIGHTS = SHARED / "corpus" / "weights" / "lenet_iter_10000.caffemodel"

NO_DEFAULT = object()  # the field has no [default = ...] in caffe.proto

_FDP = descriptor_pb2.FieldDescriptorProto


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


def _message_proto(path: str) -> descriptor_pb2.DescriptorProto:
    """DescriptorProto for "Outer" or "Outer.Inner"."""
    names = path.split(".")
    scope = _file_proto().message_type
    for name in names:
        (found,) = [m for m in scope if m.name == name]
        scope = found.nested_type
    return found


def _field_proto(message: str, field: str) -> descriptor_pb2.FieldDescriptorProto:
    (found,) = [f for f in _message_proto(message).field if f.name == field]
    return found


def _label(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.label == _FDP.LABEL_REPEATED:
        return "packed" if field.options.packed else "repeated"
    return "required" if field.label == _FDP.LABEL_REQUIRED else "optional"


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type == _FDP.TYPE_MESSAGE:
        return field.type_name.lstrip(".")
    if field.type == _FDP.TYPE_ENUM:
        return "enum " + field.type_name.lstrip(".")
    return _FDP.Type.Name(field.type)[len("TYPE_") :].lower()


# ---------------------------------------------------------------------------
# the generated module is current
# ---------------------------------------------------------------------------


def _generator():
    spec = importlib.util.spec_from_file_location(
        "generate_schema", REPO / "scripts" / "generate_schema.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_module_is_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the `test` extra) is not installed")
    generator = _generator()
    expected = generator.module_text()
    actual = (REPO / "caffec" / "formats" / "caffe_pb2.py").read_text(encoding="utf-8")
    assert actual == expected, "caffe_pb2.py is stale: run `python scripts/generate_schema.py`"


def test_module_lines_fit():
    text = (REPO / "caffec" / "formats" / "caffe_pb2.py").read_text(encoding="utf-8")
    assert text.startswith('"""') and "DO NOT EDIT" in text.split('"""')[1]
    assert max(len(line) for line in text.splitlines()) < 100


# ---------------------------------------------------------------------------
# field facts
# ---------------------------------------------------------------------------

# (message, field, number, label, type, default)
# label: optional / required / repeated / packed (repeated with [packed = true])
FIELDS = [
    ("BlobShape", "dim", 1, "packed", "int64", NO_DEFAULT),
    ("BlobProto", "shape", 7, "optional", "caffe.BlobShape", NO_DEFAULT),
    ("BlobProto", "data", 5, "packed", "float", NO_DEFAULT),
    ("BlobProto", "diff", 6, "packed", "float", NO_DEFAULT),
    ("BlobProto", "double_data", 8, "packed", "double", NO_DEFAULT),
    ("BlobProto", "double_diff", 9, "packed", "double", NO_DEFAULT),
    ("BlobProto", "num", 1, "optional", "int32", 0),
    ("BlobProto", "width", 4, "optional", "int32", 0),
    ("BlobProtoVector", "blobs", 1, "repeated", "caffe.BlobProto", NO_DEFAULT),
    ("Datum", "data", 4, "optional", "bytes", NO_DEFAULT),
    ("Datum", "float_data", 6, "repeated", "float", NO_DEFAULT),
    ("Datum", "encoded", 7, "optional", "bool", False),
    ("FillerParameter", "type", 1, "optional", "string", "constant"),
    ("FillerParameter", "std", 6, "optional", "float", 1.0),
    ("FillerParameter", "sparse", 7, "optional", "int32", -1),
    (
        "FillerParameter",
        "variance_norm",
        8,
        "optional",
        "enum caffe.FillerParameter.VarianceNorm",
        "FAN_IN",
    ),
    ("NetParameter", "input", 3, "repeated", "string", NO_DEFAULT),
    ("NetParameter", "input_dim", 4, "repeated", "int32", NO_DEFAULT),
    ("NetParameter", "input_shape", 8, "repeated", "caffe.BlobShape", NO_DEFAULT),
    ("NetParameter", "force_backward", 5, "optional", "bool", False),
    ("NetParameter", "state", 6, "optional", "caffe.NetState", NO_DEFAULT),
    ("NetParameter", "layer", 100, "repeated", "caffe.LayerParameter", NO_DEFAULT),
    ("NetParameter", "layers", 2, "repeated", "caffe.V1LayerParameter", NO_DEFAULT),
    ("SolverParameter", "net", 24, "optional", "string", NO_DEFAULT),
    ("SolverParameter", "test_iter", 3, "repeated", "int32", NO_DEFAULT),
    ("SolverParameter", "test_initialization", 32, "optional", "bool", True),
    ("SolverParameter", "base_lr", 5, "optional", "float", NO_DEFAULT),
    ("SolverParameter", "average_loss", 33, "optional", "int32", 1),
    ("SolverParameter", "iter_size", 36, "optional", "int32", 1),
    ("SolverParameter", "lr_policy", 8, "optional", "string", NO_DEFAULT),
    ("SolverParameter", "regularization_type", 29, "optional", "string", "L2"),
    ("SolverParameter", "stepvalue", 34, "repeated", "int32", NO_DEFAULT),
    ("SolverParameter", "clip_gradients", 35, "optional", "float", -1.0),
    (
        "SolverParameter",
        "snapshot_format",
        37,
        "optional",
        "enum caffe.SolverParameter.SnapshotFormat",
        "BINARYPROTO",
    ),
    (
        "SolverParameter",
        "solver_mode",
        17,
        "optional",
        "enum caffe.SolverParameter.SolverMode",
        "GPU",
    ),
    ("SolverParameter", "random_seed", 20, "optional", "int64", -1),
    ("SolverParameter", "type", 40, "optional", "string", "SGD"),
    ("SolverParameter", "delta", 31, "optional", "float", 1e-8),
    ("SolverParameter", "momentum2", 39, "optional", "float", 0.999),
    ("SolverParameter", "rms_decay", 38, "optional", "float", 0.99),
    ("SolverParameter", "snapshot_after_train", 28, "optional", "bool", True),
    (
        "SolverParameter",
        "solver_type",
        30,
        "optional",
        "enum caffe.SolverParameter.SolverType",
        "SGD",
    ),
    ("SolverParameter", "layer_wise_reduce", 41, "optional", "bool", True),
    ("SolverParameter", "weights", 42, "repeated", "string", NO_DEFAULT),
    ("SolverState", "history", 3, "repeated", "caffe.BlobProto", NO_DEFAULT),
    ("SolverState", "current_step", 4, "optional", "int32", 0),
    ("NetState", "phase", 1, "optional", "enum caffe.Phase", "TEST"),
    ("NetStateRule", "not_stage", 5, "repeated", "string", NO_DEFAULT),
    ("ParamSpec", "share_mode", 2, "optional", "enum caffe.ParamSpec.DimCheckMode", NO_DEFAULT),
    ("ParamSpec", "lr_mult", 3, "optional", "float", 1.0),
    ("ParamSpec", "decay_mult", 4, "optional", "float", 1.0),
    ("LayerParameter", "phase", 10, "optional", "enum caffe.Phase", NO_DEFAULT),
    ("LayerParameter", "loss_weight", 5, "repeated", "float", NO_DEFAULT),
    ("LayerParameter", "propagate_down", 11, "repeated", "bool", NO_DEFAULT),
    ("LayerParameter", "include", 8, "repeated", "caffe.NetStateRule", NO_DEFAULT),
    (
        "LayerParameter",
        "transform_param",
        100,
        "optional",
        "caffe.TransformationParameter",
        NO_DEFAULT,
    ),
    ("LayerParameter", "loss_param", 101, "optional", "caffe.LossParameter", NO_DEFAULT),
    (
        "LayerParameter",
        "convolution_param",
        106,
        "optional",
        "caffe.ConvolutionParameter",
        NO_DEFAULT,
    ),
    ("LayerParameter", "pooling_param", 121, "optional", "caffe.PoolingParameter", NO_DEFAULT),
    (
        "LayerParameter",
        "batch_norm_param",
        139,
        "optional",
        "caffe.BatchNormParameter",
        NO_DEFAULT,
    ),
    ("LayerParameter", "crop_param", 144, "optional", "caffe.CropParameter", NO_DEFAULT),
    (
        "LayerParameter",
        "recurrent_param",
        146,
        "optional",
        "caffe.RecurrentParameter",
        NO_DEFAULT,
    ),
    ("LayerParameter", "swish_param", 147, "optional", "caffe.SwishParameter", NO_DEFAULT),
    ("LayerParameter", "clip_param", 148, "optional", "caffe.ClipParameter", NO_DEFAULT),
    ("TransformationParameter", "mean_value", 5, "repeated", "float", NO_DEFAULT),
    ("TransformationParameter", "crop_size", 3, "optional", "uint32", 0),
    (
        "LossParameter",
        "normalization",
        3,
        "optional",
        "enum caffe.LossParameter.NormalizationMode",
        "VALID",
    ),
    ("LossParameter", "normalize", 2, "optional", "bool", NO_DEFAULT),
    ("ClipParameter", "min", 1, "required", "float", NO_DEFAULT),
    ("ClipParameter", "max", 2, "required", "float", NO_DEFAULT),
    ("BatchNormParameter", "use_global_stats", 1, "optional", "bool", NO_DEFAULT),
    ("BatchNormParameter", "moving_average_fraction", 2, "optional", "float", 0.999),
    ("BatchNormParameter", "eps", 3, "optional", "float", 1e-5),
    ("ConvolutionParameter", "bias_term", 2, "optional", "bool", True),
    ("ConvolutionParameter", "pad", 3, "repeated", "uint32", NO_DEFAULT),
    ("ConvolutionParameter", "kernel_size", 4, "repeated", "uint32", NO_DEFAULT),
    ("ConvolutionParameter", "stride", 6, "repeated", "uint32", NO_DEFAULT),
    ("ConvolutionParameter", "dilation", 18, "repeated", "uint32", NO_DEFAULT),
    ("ConvolutionParameter", "group", 5, "optional", "uint32", 1),
    ("ConvolutionParameter", "axis", 16, "optional", "int32", 1),
    ("CropParameter", "axis", 1, "optional", "int32", 2),
    ("DataParameter", "backend", 8, "optional", "enum caffe.DataParameter.DB", "LEVELDB"),
    ("DataParameter", "prefetch", 10, "optional", "uint32", 4),
    (
        "EltwiseParameter",
        "operation",
        1,
        "optional",
        "enum caffe.EltwiseParameter.EltwiseOp",
        "SUM",
    ),
    ("ImageDataParameter", "batch_size", 4, "optional", "uint32", 1),
    ("InfogainLossParameter", "axis", 2, "optional", "int32", 1),
    ("InnerProductParameter", "transpose", 6, "optional", "bool", False),
    ("LRNParameter", "local_size", 1, "optional", "uint32", 5),
    ("LRNParameter", "alpha", 2, "optional", "float", 1.0),
    ("LRNParameter", "beta", 3, "optional", "float", 0.75),
    ("LRNParameter", "k", 5, "optional", "float", 1.0),
    ("MVNParameter", "eps", 3, "optional", "float", 1e-9),
    ("PoolingParameter", "pool", 1, "optional", "enum caffe.PoolingParameter.PoolMethod", "MAX"),
    ("PoolingParameter", "kernel_size", 2, "optional", "uint32", NO_DEFAULT),
    ("PoolingParameter", "stride", 3, "optional", "uint32", 1),
    ("PoolingParameter", "pad", 4, "optional", "uint32", 0),
    ("PoolingParameter", "global_pooling", 12, "optional", "bool", False),
    (
        "PoolingParameter",
        "round_mode",
        13,
        "optional",
        "enum caffe.PoolingParameter.RoundMode",
        "CEIL",
    ),
    ("PythonParameter", "param_str", 3, "optional", "string", ""),
    ("ReshapeParameter", "num_axes", 3, "optional", "int32", -1),
    ("SliceParameter", "axis", 3, "optional", "int32", 1),
    ("SwishParameter", "beta", 1, "optional", "float", 1.0),
    ("WindowDataParameter", "crop_mode", 11, "optional", "string", "warp"),
    (
        "V1LayerParameter",
        "type",
        5,
        "optional",
        "enum caffe.V1LayerParameter.LayerType",
        NO_DEFAULT,
    ),
    ("V1LayerParameter", "param", 1001, "repeated", "string", NO_DEFAULT),
    (
        "V1LayerParameter",
        "blob_share_mode",
        1002,
        "repeated",
        "enum caffe.V1LayerParameter.DimCheckMode",
        NO_DEFAULT,
    ),
    ("V1LayerParameter", "blobs_lr", 7, "repeated", "float", NO_DEFAULT),
    ("V1LayerParameter", "weight_decay", 8, "repeated", "float", NO_DEFAULT),
    ("V1LayerParameter", "loss_param", 42, "optional", "caffe.LossParameter", NO_DEFAULT),
    ("V1LayerParameter", "layer", 1, "optional", "caffe.V0LayerParameter", NO_DEFAULT),
    ("V0LayerParameter", "biasterm", 4, "optional", "bool", True),
    ("V0LayerParameter", "kernelsize", 8, "optional", "uint32", NO_DEFAULT),
    ("V0LayerParameter", "k", 22, "optional", "float", 1.0),
    ("V0LayerParameter", "blobs_lr", 51, "repeated", "float", NO_DEFAULT),
    ("V0LayerParameter", "det_fg_fraction", 56, "optional", "float", 0.25),
    ("V0LayerParameter", "det_context_pad", 58, "optional", "uint32", 0),
    ("V0LayerParameter", "det_crop_mode", 59, "optional", "string", "warp"),
    ("V0LayerParameter", "new_num", 60, "optional", "int32", 0),
    ("V0LayerParameter", "shuffle_images", 64, "optional", "bool", False),
    ("V0LayerParameter", "concat_dim", 65, "optional", "uint32", 1),
    (
        "V0LayerParameter",
        "hdf5_output_param",
        1001,
        "optional",
        "caffe.HDF5OutputParameter",
        NO_DEFAULT,
    ),
    ("PReLUParameter", "channel_shared", 2, "optional", "bool", False),
]


@pytest.mark.parametrize(
    ("message", "field", "number", "label", "type_", "default"),
    FIELDS,
    ids=[f"{row[0]}.{row[1]}" for row in FIELDS],
)
def test_field_facts(message, field, number, label, type_, default):
    proto = _field_proto(message, field)
    assert proto.number == number
    assert _label(proto) == label
    assert _type(proto) == type_
    assert proto.HasField("default_value") == (default is not NO_DEFAULT)
    if default is NO_DEFAULT or label != "optional":
        return
    value = getattr(getattr(caffe_pb2, message)(), field)
    if type_.startswith("enum "):
        enum = getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].enum_type
        assert value == enum.values_by_name[default].number
    elif type_ in ("float", "double"):
        assert math.isclose(value, default, rel_tol=1e-6)
    else:
        assert value == default


# (enum, value name, number)
ENUM_VALUES = [
    ("Phase", "TRAIN", 0),
    ("Phase", "TEST", 1),
    ("FillerParameter.VarianceNorm", "AVERAGE", 2),
    ("SolverParameter.SnapshotFormat", "HDF5", 0),
    ("SolverParameter.SolverType", "NESTEROV", 1),
    ("SolverParameter.SolverType", "ADAM", 5),
    ("ParamSpec.DimCheckMode", "PERMISSIVE", 1),
    ("LossParameter.NormalizationMode", "BATCH_SIZE", 2),
    ("LossParameter.NormalizationMode", "NONE", 3),
    ("ConvolutionParameter.Engine", "CUDNN", 2),
    ("DataParameter.DB", "LMDB", 1),
    ("EltwiseParameter.EltwiseOp", "PROD", 0),
    ("EltwiseParameter.EltwiseOp", "MAX", 2),
    ("HingeLossParameter.Norm", "L1", 1),
    ("HingeLossParameter.Norm", "L2", 2),
    ("LRNParameter.NormRegion", "WITHIN_CHANNEL", 1),
    ("PoolingParameter.PoolMethod", "STOCHASTIC", 2),
    ("PoolingParameter.RoundMode", "FLOOR", 1),
    ("ReductionParameter.ReductionOp", "SUM", 1),
    ("ReductionParameter.ReductionOp", "MEAN", 4),
    ("V1LayerParameter.LayerType", "NONE", 0),
    ("V1LayerParameter.LayerType", "CONVOLUTION", 4),
    ("V1LayerParameter.LayerType", "SOFTMAX_LOSS", 21),
    ("V1LayerParameter.LayerType", "ABSVAL", 35),
    ("V1LayerParameter.LayerType", "DECONVOLUTION", 39),
    ("V1LayerParameter.LayerType", "THRESHOLD", 31),
    ("V0LayerParameter.PoolMethod", "AVE", 1),
]


@pytest.mark.parametrize(
    ("enum", "name", "number"), ENUM_VALUES, ids=[f"{e}.{n}" for e, n, _ in ENUM_VALUES]
)
def test_enum_values(enum, name, number):
    *outer, enum_name = enum.split(".")
    if outer:
        (found,) = [e for e in _message_proto(".".join(outer)).enum_type if e.name == enum_name]
    else:
        (found,) = [e for e in _file_proto().enum_type if e.name == enum_name]
    assert {v.name: v.number for v in found.value}[name] == number


def test_layer_parameter_has_every_layer_param():
    names = {f.name for f in _message_proto("LayerParameter").field}
    expected = {
        f"{kind}_param"
        for kind in (
            "accuracy argmax batch_norm bias clip concat contrastive_loss convolution crop "
            "data dropout dummy_data eltwise elu embed exp flatten hdf5_data hdf5_output "
            "hinge_loss image_data infogain_loss inner_product input log lrn memory_data mvn "
            "parameter pooling power prelu python recurrent reduction relu reshape scale "
            "sigmoid softmax spp slice swish tanh threshold tile window_data transform loss"
        ).split()
    }
    assert expected <= names
    assert len(names) == len(_message_proto("LayerParameter").field)  # no duplicates


def test_v1_layer_type_is_complete():
    # NONE plus 39 layer types, numbered 0..39 without gaps
    enums = _message_proto("V1LayerParameter").enum_type
    (layer_type,) = [e for e in enums if e.name == "LayerType"]
    assert len(layer_type.value) == 40
    assert {v.number for v in layer_type.value} == set(range(40))


# ---------------------------------------------------------------------------
# the module's Python surface
# ---------------------------------------------------------------------------


def test_module_surface_matches_protoc_naming():
    assert caffe_pb2.PoolingParameter.MAX == 0
    assert caffe_pb2.PoolingParameter.AVE == 1
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.SolverParameter.GPU == 1
    assert caffe_pb2.TRAIN == 0 and caffe_pb2.TEST == 1
    assert caffe_pb2.Phase.Name(1) == "TEST"
    assert caffe_pb2.Phase.Value("TRAIN") == 0
    for message in _file_proto().message_type:
        cls = getattr(caffe_pb2, message.name)
        assert cls.DESCRIPTOR.full_name == f"caffe.{message.name}"
    layer = caffe_pb2.LayerParameter(name="c", type="Convolution")
    layer.convolution_param.kernel_size.append(3)
    again = caffe_pb2.LayerParameter.FromString(layer.SerializeToString())
    assert again == layer and again.convolution_param.bias_term is True


def test_uses_a_private_descriptor_pool():
    assert caffe_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
    # In a fresh interpreter: importing leaves the default pool alone, and works even when
    # another "caffe.proto" (as pycaffe's caffe_pb2 registers) is already in it.
    script = (
        "from google.protobuf import descriptor_pb2, descriptor_pool\n"
        "other = descriptor_pb2.FileDescriptorProto(name='caffe.proto', package='caffe')\n"
        "other.message_type.add(name='BlobShape')\n"
        "descriptor_pool.Default().Add(other)\n"
        "from caffec.formats import caffe_pb2\n"
        "assert not descriptor_pool.Default().FindFileByName('caffe.proto').message_types_by_name"
        ".get('NetParameter')\n"
        "shape = caffe_pb2.BlobShape(dim=[2, 3])\n"
        "assert list(caffe_pb2.BlobShape.FromString(shape.SerializeToString()).dim) == [2, 3]\n"
    )
    clean = "from google.protobuf import descriptor_pool\n" + (
        "from caffec.formats import caffe_pb2\n"
        "try:\n"
        "    descriptor_pool.Default().FindFileByName('caffe.proto')\n"
        "except KeyError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('caffe.proto leaked into the default pool')\n"
    )
    for code in (clean, script):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO
        )
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------
# a real Caffe-trained caffemodel
# ---------------------------------------------------------------------------


def _unknown_fields(message):
    try:
        from google.protobuf import unknown_fields
    except ImportError:  # protobuf without the unknown_fields module
        return list(message.UnknownFields())
    return list(unknown_fields.UnknownFieldSet(message))


def _is_repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # newer protobuf dropped FieldDescriptor.label
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _walk(message, path="NetParameter"):
    yield path, message
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if _is_repeated(field):
            for i, item in enumerate(value):
                yield from _walk(item, f"{path}.{field.name}[{i}]")
        else:
            yield from _walk(value, f"{path}.{field.name}")


@pytest.fixture(scope="module")
def lenet_bytes():
    if not LENET_WEIGHTS.exists():
        pytest.skip(f"{LENET_WEIGHTS} not present (the shared corpus sits beside the checkout)")
    return LENET_WEIGHTS.read_bytes()


def test_caffe_trained_lenet_parses_without_unknown_fields(lenet_bytes):
    net = caffe_pb2.NetParameter.FromString(lenet_bytes)
    unknown = [(path, fields) for path, msg in _walk(net) if (fields := _unknown_fields(msg))]
    assert unknown == []
    names = [layer.name for layer in net.layer]
    assert names[1:8] == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2"]
    assert names[-1] in ("prob", "loss")
    layers = {layer.name: layer for layer in net.layer}
    conv1 = layers["conv1"]
    assert conv1.type == "Convolution"
    assert list(conv1.blobs[0].shape.dim) == [20, 1, 5, 5]
    assert len(conv1.blobs[0].data) == 20 * 1 * 5 * 5
    assert list(conv1.blobs[1].shape.dim) == [20]
    assert list(layers["ip1"].blobs[0].shape.dim) == [500, 800]
    assert layers["pool1"].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    # Re-serializing gives Caffe's bytes back: same numbers, types and packing.
    assert net.SerializeToString() == lenet_bytes


# ---------------------------------------------------------------------------
# BVLC's own prototxts
# ---------------------------------------------------------------------------


def test_every_bvlc_prototxt_parses_with_the_schema():
    """Every field and enum value used in Caffe's examples/ and models/ exists here."""
    from google.protobuf import text_format

    corpus = SHARED / "corpus" / "bvlc"
    if not corpus.is_dir():
        pytest.skip(f"{corpus} not present (the shared corpus sits beside the checkout)")
    paths = sorted(corpus.rglob("*.prototxt"))
    assert paths
    failures = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        kind = caffe_pb2.SolverParameter if "solver" in path.name else caffe_pb2.NetParameter
        try:
            text_format.Parse(text, kind())
        except text_format.ParseError as error:
            failures.append(f"{path.relative_to(corpus)}: {error}")
    assert failures == []
