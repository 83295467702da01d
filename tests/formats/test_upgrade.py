"""V0 / V1 nets and old solvers upgrade to exactly what Caffe's upgrade_proto.cpp produces."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.field_moves import UpgradeWarning
from caffec.formats.source_map import SourceMap
from caffec.formats.text_writer import format_text
from caffec.formats.upgrade import (
    SOLVER_TYPE_NAMES,
    V1_TYPE_NAMES,
    net_needs_upgrade,
    solver_needs_upgrade,
    upgrade_net,
    upgrade_solver,
)
from caffec.formats.upgrade_v0 import V0_TYPE_NAMES
from caffec.frontend.textformat import parse_text

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
BVLC = SHARED / "corpus" / "bvlc"
needs_corpus = pytest.mark.skipif(not BVLC.is_dir(), reason="../shared/corpus is not here")

FILE = "net.prototxt"


def net_of(text: str) -> tuple[caffe_pb2.NetParameter, SourceMap]:
    return parse_text(text, caffe_pb2.NetParameter, FILE)


def upgraded(text: str) -> caffe_pb2.NetParameter:
    return upgrade_net(*net_of(text))[0]


def current(text: str) -> caffe_pb2.NetParameter:
    return net_of(text)[0]


def line_of(text: str, needle: str, nth: int = 0) -> int:
    """1-based line of the ``nth`` line containing ``needle``."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[nth]


def assert_same(got: caffe_pb2.NetParameter, want: caffe_pb2.NetParameter) -> None:
    assert format_text(got) == format_text(want)  # readable diff first
    assert got == want


# --------------------------------------------------------------------------- V1 -> current

V1_VGG = """
name: "VGG_tiny"
input: "data"
input_dim: 10
input_dim: 3
input_dim: 32
input_dim: 32
layers {
  name: "conv1_1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1_1"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param {
    num_output: 64
    pad: 1
    kernel_size: 3
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0 }
  }
}
layers { name: "relu1_1" type: RELU bottom: "conv1_1" top: "conv1_1" }
layers {
  name: "conv1_2"
  type: CONVOLUTION
  bottom: "conv1_1"
  top: "conv1_2"
  param: "shared_w"
  param: "shared_b"
  blob_share_mode: PERMISSIVE
  blobs_lr: 1
  blobs_lr: 2
  convolution_param { num_output: 64 pad: 1 kernel_size: 3 }
}
layers { name: "relu1_2" type: RELU bottom: "conv1_2" top: "conv1_2"
  relu_param { negative_slope: 0.1 } }
layers {
  name: "pool1"
  type: POOLING
  bottom: "conv1_2"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "fc6"
  type: INNER_PRODUCT
  bottom: "pool1"
  top: "fc6"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  inner_product_param { num_output: 128 }
}
layers { name: "drop6" type: DROPOUT bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 }
  exclude { phase: TEST } }
layers { name: "fc8" type: INNER_PRODUCT bottom: "fc6" top: "fc8"
  inner_product_param { num_output: 10 } }
layers { name: "prob" type: SOFTMAX bottom: "fc8" top: "prob"
  include { phase: TEST stage: "deploy" } }
layers { name: "accuracy" type: ACCURACY bottom: "fc8" bottom: "label" top: "accuracy"
  include { phase: TEST } accuracy_param { top_k: 5 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc8" bottom: "label" top: "loss" loss_weight: 2
  loss_param { ignore_label: 255 } }
"""

CURRENT_VGG = """
name: "VGG_tiny"
layer {
  name: "input"
  type: "Input"
  top: "data"
  input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 } }
}
layer {
  name: "conv1_1"
  type: "Convolution"
  bottom: "data"
  top: "conv1_1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 64
    pad: 1
    kernel_size: 3
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0 }
  }
}
layer { name: "relu1_1" type: "ReLU" bottom: "conv1_1" top: "conv1_1" }
layer {
  name: "conv1_2"
  type: "Convolution"
  bottom: "conv1_1"
  top: "conv1_2"
  param { name: "shared_w" share_mode: PERMISSIVE lr_mult: 1 }
  param { name: "shared_b" lr_mult: 2 }
  convolution_param { num_output: 64 pad: 1 kernel_size: 3 }
}
layer { name: "relu1_2" type: "ReLU" bottom: "conv1_2" top: "conv1_2"
  relu_param { negative_slope: 0.1 } }
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1_2"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "fc6"
  type: "InnerProduct"
  bottom: "pool1"
  top: "fc6"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 128 }
}
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 }
  exclude { phase: TEST } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc6" top: "fc8"
  inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob"
  include { phase: TEST stage: "deploy" } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy"
  include { phase: TEST } accuracy_param { top_k: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss"
  loss_weight: 2
  loss_param { ignore_label: 255 } }
"""


def test_v1_net_upgrades_to_its_current_twin():
    assert_same(upgraded(V1_VGG), current(CURRENT_VGG))


def test_upgrade_does_not_touch_its_input():
    net, spans = net_of(V1_VGG)
    before, paths = net.SerializeToString(), set(spans)
    upgrade_net(net, spans)
    assert net.SerializeToString() == before
    assert set(spans) == paths


def test_current_net_comes_back_equal_but_new():
    net, spans = net_of(CURRENT_VGG)
    out, out_spans = upgrade_net(net, spans)
    assert out == net and out is not net
    assert not net_needs_upgrade(net)
    assert set(out_spans) == set(spans)


def test_every_v1_layer_type_has_a_type_string():
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert set(enum.keys()) == set(V1_TYPE_NAMES)
    for name in enum.keys():
        net = caffe_pb2.NetParameter()
        net.layers.add(name="l", type=enum.Value(name))
        assert upgrade_net(net)[0].layer[0].type == V1_TYPE_NAMES[name]


@pytest.mark.parametrize(
    ("v1", "want"),
    [
        ("CONVOLUTION", "Convolution"),
        ("DECONVOLUTION", "Deconvolution"),
        ("SOFTMAX_LOSS", "SoftmaxWithLoss"),
        ("IMAGE_DATA", "ImageData"),
        ("HDF5_DATA", "HDF5Data"),
        ("ABSVAL", "AbsVal"),
        ("TANH", "TanH"),
        ("IM2COL", "Im2col"),
        ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"),
        ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"),
    ],
)
def test_v1_type_strings_are_caffes(v1, want):
    assert upgraded(f'layers {{ name: "l" type: {v1} }}').layer[0].type == want


def test_v1_every_param_message_is_copied():
    # Each *_param field of V1LayerParameter has the same name in LayerParameter.
    v1_fields = caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name
    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    params = [name for name in v1_fields if name.endswith("_param")]
    assert len(params) >= 30
    net = caffe_pb2.NetParameter()
    v1 = net.layers.add(name="all")
    for name in params:
        assert name in layer_fields
        getattr(v1, name).SetInParent()
    out = upgrade_net(net)[0].layer[0]
    assert {f.name for f, _ in out.ListFields()} == {"name", *params}


def test_v1_data_layer_transformation_fields_move_to_transform_param():
    net = upgraded(
        """
        layers { name: "d" type: DATA top: "data"
          data_param { source: "lmdb" batch_size: 4 scale: 0.5 mean_file: "m.binaryproto"
                       crop_size: 7 mirror: true } }
        layers { name: "i" type: IMAGE_DATA top: "data"
          transform_param { mirror: false mean_value: 3 }
          image_data_param { source: "list.txt" mirror: true crop_size: 5 } }
        layers { name: "w" type: WINDOW_DATA top: "data"
          window_data_param { source: "w.txt" scale: 2 } }
        layers { name: "h" type: HDF5_DATA top: "data" hdf5_data_param { source: "h.txt" } }
        """
    )
    want = current(
        """
        layer { name: "d" type: "Data" top: "data"
          transform_param { scale: 0.5 mean_file: "m.binaryproto" crop_size: 7 mirror: true }
          data_param { source: "lmdb" batch_size: 4 } }
        layer { name: "i" type: "ImageData" top: "data"
          transform_param { mirror: true mean_value: 3 crop_size: 5 }
          image_data_param { source: "list.txt" } }
        layer { name: "w" type: "WindowData" top: "data"
          transform_param { scale: 2 }
          window_data_param { source: "w.txt" } }
        layer { name: "h" type: "HDF5Data" top: "data" hdf5_data_param { source: "h.txt" } }
        """
    )
    assert_same(net, want)


def test_v1_caffemodel_keeps_layer_order_and_blobs():
    """Binary nets: layer i of the result is layers i of the V1 net, weights included."""
    v1 = caffe_pb2.NetParameter(name="old")
    v1.input.append("data")  # Caffe wrote input names without shapes into caffemodels
    for i in range(5):
        layer = v1.layers.add(name=f"l{i}", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
        layer.blobs.add(data=[float(i), 2.0 * i]).shape.dim.extend([1, 2])
    loaded = caffe_pb2.NetParameter.FromString(v1.SerializeToString())
    net, spans = upgrade_net(loaded)
    assert len(spans) == 0
    assert not net.input and not net.layers
    assert [layer.name for layer in net.layer] == [f"l{i}" for i in range(5)]
    for i, layer in enumerate(net.layer):
        assert layer.type == "InnerProduct"
        assert list(layer.blobs[0].data) == [float(i), 2.0 * i]


# --------------------------------------------------------------------------- V0 -> current

V0_NET = """
name: "CaffeNetV0"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 32
input_dim: 32
layers {
  layer { name: "pad1" type: "padding" pad: 2 }
  bottom: "data"
  top: "pad1"
}
layers {
  layer {
    name: "conv1"
    type: "conv"
    num_output: 16
    kernelsize: 5
    stride: 1
    group: 2
    biasterm: false
    weight_filler { type: "gaussian" std: 0.01 }
    blobs_lr: 1
    weight_decay: 1
  }
  bottom: "pad1"
  top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1"
  top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
  bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 bias_filler { type: "constant" } }
  bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.25 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_TWIN = """
name: "CaffeNetV0"
layer { name: "input" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param {
    num_output: 16
    bias_term: false
    pad: 2
    kernel_size: 5
    group: 2
    stride: 1
    weight_filler { type: "gaussian" std: 0.01 }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 10 bias_filler { type: "constant" } } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.25 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_v0_net_with_padding_layer_upgrades_to_its_twin():
    assert_same(upgraded(V0_NET), current(V0_TWIN))


def test_v0_padding_folds_into_pooling_too():
    net = upgraded(
        """
        input: "x"
        layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" }
        layers { layer { name: "pool" type: "pool" kernelsize: 3 } bottom: "px" top: "y" }
        """
    )
    assert [layer.name for layer in net.layer] == ["pool"]
    assert list(net.layer[0].bottom) == ["x"]
    assert net.layer[0].pooling_param == caffe_pb2.PoolingParameter(pad=1, kernel_size=3)


@pytest.mark.parametrize(
    ("v0", "want"),
    [
        (
            'type: "data" source: "train_db" batchsize: 64 rand_skip: 9 scale: 0.00390625 '
            'meanfile: "mean.binaryproto" cropsize: 227 mirror: true',
            'type: "Data" data_param { source: "train_db" batch_size: 64 rand_skip: 9 } '
            'transform_param { scale: 0.00390625 mean_file: "mean.binaryproto" crop_size: 227 '
            "mirror: true }",
        ),
        (
            'type: "images" source: "list.txt" batchsize: 8 shuffle_images: true new_height: 256 '
            "new_width: 128 rand_skip: 3",
            'type: "ImageData" image_data_param { source: "list.txt" batch_size: 8 shuffle: true '
            "new_height: 256 new_width: 128 rand_skip: 3 }",
        ),
        (
            'type: "window_data" source: "w.txt" batchsize: 2 det_fg_threshold: 0.4 '
            "det_bg_threshold: 0.3 det_fg_fraction: 0.2 det_context_pad: 16 "
            'det_crop_mode: "square"',
            'type: "WindowData" window_data_param { source: "w.txt" batch_size: 2 '
            "fg_threshold: 0.4 bg_threshold: 0.3 fg_fraction: 0.2 context_pad: 16 "
            'crop_mode: "square" }',
        ),
        (
            'type: "hdf5_data" source: "h.txt" batchsize: 5',
            'type: "HDF5Data" hdf5_data_param { source: "h.txt" batch_size: 5 }',
        ),
        (
            'type: "hdf5_output" hdf5_output_param { file_name: "out.h5" }',
            'type: "HDF5Output" hdf5_output_param { file_name: "out.h5" }',
        ),
        (
            'type: "infogain_loss" source: "H.binaryproto"',
            'type: "InfogainLoss" infogain_loss_param { source: "H.binaryproto" }',
        ),
        ('type: "concat" concat_dim: 0', 'type: "Concat" concat_param { concat_dim: 0 }'),
        ('type: "pool" pool: STOCHASTIC', 'type: "Pooling" pooling_param { pool: STOCHASTIC }'),
        (
            'type: "conv" pad: 1 stride: 2',
            'type: "Convolution" convolution_param { pad: 1 stride: 2 }',
        ),
    ],
)
def test_v0_fields_land_in_the_right_param(v0, want):
    net = upgraded(f'layers {{ layer {{ name: "l" {v0} }} }}')
    assert_same(net, current(f'layer {{ name: "l" {want} }}'))


def test_every_v0_type_upgrades():
    for v0_type, v1_name in V0_TYPE_NAMES.items():
        net = upgraded(f'layers {{ layer {{ name: "l" type: "{v0_type}" }} }}')
        assert net.layer[0].type == V1_TYPE_NAMES[v1_name]


def test_every_v0_field_finds_a_home_or_a_warning_for_every_type():
    """Each V0 field, set on each V0 type: moved into the schema or dropped, never a crash."""
    fields = caffe_pb2.V0LayerParameter.DESCRIPTOR.fields
    for v0_type in V0_TYPE_NAMES:
        net = caffe_pb2.NetParameter()
        v0 = net.layers.add().layer
        v0.type = v0_type
        for field in fields:
            if field.is_repeated and field.message_type:
                getattr(v0, field.name).add()
            elif field.is_repeated:
                getattr(v0, field.name).append(1)
            elif field.message_type:
                getattr(v0, field.name).SetInParent()
            elif field.name != "type":
                setattr(v0, field.name, field.default_value)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layer = upgrade_net(net)[0].layer[0]
        assert layer.type == V1_TYPE_NAMES[V0_TYPE_NAMES[v0_type]]
        dropped = {re.search(r"field '(\w+)'", str(w.message)).group(1) for w in caught}
        assert {"name", "blobs", "blobs_lr", "weight_decay", "scale", "mirror"}.isdisjoint(dropped)
        assert layer.transform_param.HasField("mean_file")


def test_v0_field_without_a_home_is_dropped_with_a_warning():
    text = 'layers {\n  layer { name: "r" type: "relu" num_output: 3 }\n}\n'
    with pytest.warns(UpgradeWarning, match=r"net\.prototxt:2:\d+: V0 field 'num_output'"):
        net = upgraded(text)
    assert net.layer[0] == caffe_pb2.LayerParameter(name="r", type="ReLU")


# --------------------------------------------------------------------------- inputs, BatchNorm


def test_input_shape_becomes_an_input_layer():
    net = upgraded(
        """
        input: "a" input_shape { dim: 2 dim: 5 }
        input: "b" input_shape { dim: 2 }
        layer { name: "ip" type: "InnerProduct" bottom: "a" top: "c" }
        """
    )
    want = current(
        """
        layer { name: "input" type: "Input" top: "a" top: "b"
          input_param { shape { dim: 2 dim: 5 } shape { dim: 2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "a" top: "c" }
        """
    )
    assert_same(net, want)


def test_batch_norm_statistics_params_are_removed():
    text = """
    layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
      param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }
      batch_norm_param { use_global_stats: false } }
    layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" }
    layer { name: "sc" type: "Scale" bottom: "x" top: "x"
      param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
    """
    net, spans = net_of(text)
    assert net_needs_upgrade(net)
    out, out_spans = upgrade_net(net, spans)
    assert list(out.layer[0].param) == []
    assert out.layer[0].batch_norm_param.HasField("use_global_stats")
    assert out.layer[1] == net.layer[1]
    assert out.layer[2] == net.layer[2]  # only BatchNorm layers
    assert not any(p[:3] == ("layer", 0, "param") for p in out_spans)
    assert ("layer", 2, "param", 1) in set(out_spans)


# --------------------------------------------------------------------------- spans


def test_spans_follow_v1_layers_and_their_fields():
    net, spans = net_of(V1_VGG)
    out, moved = upgrade_net(net, spans)
    # layers[2] (conv1_2) is layer 3 after the Input layer.
    assert out.layer[3].name == "conv1_2"
    where = moved.get(("layer", 3))
    assert (where.file, where.line, where.col) == (FILE, line_of(V1_VGG, 'name: "conv1_2"') - 1, 1)
    lr = moved.get(("layer", 3, "param", 1, "lr_mult"))
    assert lr.line == line_of(V1_VGG, "blobs_lr: 2", 1)
    assert moved.get(("layer", 3, "param", 0, "name")).line == line_of(V1_VGG, '"shared_w"')
    assert moved.get(("layer", 3, "param", 0, "share_mode")).line == line_of(V1_VGG, "PERMISSIVE")
    decay = moved.get(("layer", 1, "param", 1, "decay_mult"))
    assert decay.line == line_of(V1_VGG, "weight_decay: 0")
    assert moved.get(("layer", 1, "param", 1)).line == line_of(V1_VGG, "blobs_lr: 2")
    # The Input layer points at the 'input' field, its dims at the input_dim lines.
    assert moved.get(("layer", 0)).line == line_of(V1_VGG, 'input: "data"')
    dim = moved.get(("layer", 0, "input_param", "shape", 0, "dim", 2))
    assert dim.line == line_of(V1_VGG, "input_dim: 32")
    assert moved.get(("layer", 0, "top", 0)).line == line_of(V1_VGG, 'input: "data"')
    # Nothing is left under the old names.
    assert not any(p[:1] in (("layers",), ("input",), ("input_dim",)) for p in moved)


def test_spans_follow_data_transformation_fields():
    text = 'layers {\n  name: "d"\n  type: DATA\n  data_param {\n    scale: 0.5\n  }\n}\n'
    out, moved = upgrade_net(*net_of(text))
    assert moved.get(("layer", 0, "transform_param", "scale")).line == 5


def test_spans_follow_v0_layers_past_folded_padding():
    net, spans = net_of(V0_NET)
    out, moved = upgrade_net(net, spans)
    assert out.layer[3].name == "pool1"
    assert moved.get(("layer", 3)).line == line_of(V0_NET, 'name: "pool1"')
    assert moved.get(("layer", 3, "pooling_param", "pool")).line == line_of(V0_NET, "pool: AVE")
    assert moved.get(("layer", 1, "name")).line == line_of(V0_NET, 'name: "conv1"')
    # The padding layer's pad now belongs to the conv layer.
    pad = moved.get(("layer", 1, "convolution_param", "pad", 0))
    assert pad.line == line_of(V0_NET, "pad: 2")
    num = moved.get(("layer", 1, "convolution_param", "num_output"))
    assert num.line == line_of(V0_NET, "num_output: 16")
    ks = moved.get(("layer", 1, "convolution_param", "kernel_size", 0))
    assert ks.line == line_of(V0_NET, "kernelsize: 5")


def test_upgraded_net_prints_and_reads_back():
    net = upgraded(V1_VGG)
    again, _ = net_of(format_text(net))
    assert again == net


# --------------------------------------------------------------------------- errors


def error_of(text: str) -> UserError:
    with pytest.raises(UserError) as info:
        upgrade_net(*net_of(text))
    return info.value


def test_error_v1_and_current_layers_mixed():
    text = 'layers { name: "a" type: RELU }\nlayer { name: "b" type: "ReLU" }\n'
    err = error_of(text)
    assert "both old-format 'layers' entries and current 'layer' entries" in err.message
    assert (err.span.line, err.span.col) == (2, 1)
    assert err.hint


def test_error_v0_and_v1_entries_mixed():
    text = 'layers { layer { name: "a" type: "relu" } }\nlayers { name: "b" type: RELU }\n'
    err = error_of(text)
    assert "V1-style 'layers' entry" in err.message
    assert err.span.line == 2 and err.layer == "b"


def test_error_unknown_v0_type():
    text = 'layers {\n  layer { name: "fc" type: "innerprod" }\n}\n'
    err = error_of(text)
    assert err.message == "unknown V0 layer type 'innerprod'"
    assert err.layer == "fc"
    assert err.span.line == 2 and err.span.col == line_col(text, 'type: "innerprod"')[1]
    assert err.hint == "did you mean 'innerproduct'?"


def line_col(text: str, needle: str) -> tuple[int, int]:
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def test_error_v0_layer_without_type():
    err = error_of('layers { layer { name: "x" } }')
    assert err.message == "V0 layer has no 'type'" and err.layer == "x"
    assert "conv" in err.hint


def test_error_padding_into_non_conv_layer():
    text = (
        'input: "x"\n'
        'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" }\n'
        'layers { layer { name: "r" type: "relu" } bottom: "px" top: "y" }\n'
    )
    err = error_of(text)
    assert "padding layer 'p'" in err.message and "'relu'" in err.message
    assert err.layer == "r" and err.span.line == 3


def test_error_padding_into_multi_input_conv():
    text = (
        'input: "x"\ninput: "z"\n'
        'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" }\n'
        'layers { layer { name: "c" type: "conv" } bottom: "px" bottom: "z" top: "y" }\n'
    )
    err = error_of(text)
    assert "more than one bottom" in err.message and err.span.line == 4


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        (
            'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\n',
            "the net has 1 input(s) but 3 'input_dim' values; 'input_dim' needs exactly 4",
            2,
        ),
        (
            'input: "a"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\ninput_dim: 9\n',
            "the net has 1 input(s) but 5 'input_dim' values",
            6,
        ),
        (
            'input: "a"\ninput: "b"\ninput_shape { dim: 1 }\n',
            "the net has 2 input(s) but 1 'input_shape' entries",
            3,
        ),
        (
            'input: "a"\ninput_dim: 1\ninput_shape { dim: 1 }\n',
            "the net gives both 'input_dim' and 'input_shape'",
            2,
        ),
        ("\ninput_dim: 1\n", "the net gives 'input_dim' but no 'input' names", 2),
    ],
)
def test_error_inputs(text, message, line):
    err = error_of(text)
    assert err.message.startswith(message)
    assert err.span.line == line
    assert err.hint


def test_error_message_shows_the_source_line(tmp_path):
    path = tmp_path / "old.prototxt"
    text = 'layers {\n  layer { name: "fc" type: "innerprod" }\n}\n'
    path.write_text(text)
    with pytest.raises(UserError) as info:
        upgrade_net(*parse_text(text, caffe_pb2.NetParameter, str(path)))
    shown = str(info.value)
    assert re.search(r"old\.prototxt:2:\d+: error: layer 'fc': unknown V0 layer type", shown)
    assert 'type: "innerprod"' in shown and "hint: did you mean 'innerproduct'?" in shown


# --------------------------------------------------------------------------- solvers


def solver_of(text: str) -> tuple[caffe_pb2.SolverParameter, SourceMap]:
    return parse_text(text, caffe_pb2.SolverParameter, "solver.prototxt")


def test_every_solver_type_enum_becomes_its_string():
    enum = caffe_pb2.SolverParameter.SolverType
    assert set(enum.keys()) == set(SOLVER_TYPE_NAMES)
    want = {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"}
    assert set(SOLVER_TYPE_NAMES.values()) == want
    for name, string in SOLVER_TYPE_NAMES.items():
        solver, spans = solver_of(f"base_lr: 0.1\nsolver_type: {name}\n")
        assert solver_needs_upgrade(solver)
        out, moved = upgrade_solver(solver, spans)
        assert out.type == string
        assert not out.HasField("solver_type")
        assert moved.get(("type",)).line == 2
        assert out == caffe_pb2.SolverParameter(base_lr=0.1, type=string)


def test_solver_with_both_types_is_refused():
    solver, spans = solver_of('type: "Adam"\nsolver_type: NESTEROV\n')
    with pytest.raises(UserError) as info:
        upgrade_solver(solver, spans)
    assert "both the old 'solver_type' and the new 'type'" in info.value.message
    assert info.value.span.line == 2


def test_current_solver_is_unchanged():
    solver, spans = solver_of('type: "Adam"\nnet: "train.prototxt"\n')
    assert not solver_needs_upgrade(solver)
    assert upgrade_solver(solver, spans)[0] == solver


def test_solver_inline_v1_nets_are_upgraded():
    text = 'solver_type: ADAGRAD\ntest_net_param {\n  layers { name: "r" type: RELU }\n}\n'
    out, moved = upgrade_solver(*solver_of(text))
    assert out.type == "AdaGrad"
    assert out.test_net_param[0].layer[0] == caffe_pb2.LayerParameter(name="r", type="ReLU")
    assert moved.get(("test_net_param", 0, "layer", 0)).line == 3


# --------------------------------------------------------------------------- corpus


def corpus_files(pattern: str) -> list[Path]:
    return sorted(BVLC.rglob(pattern)) if BVLC.is_dir() else []


@needs_corpus
def test_corpus_nets_all_upgrade():
    nets = [p for p in corpus_files("*.prototxt") if "solver" not in p.name]
    assert len(nets) > 25
    for path in nets:
        text = path.read_text()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net, _ = upgrade_net(*parse_text(text, caffe_pb2.NetParameter, str(path)))
        assert not net.layers and not net.input and not net_needs_upgrade(net), path


@needs_corpus
def test_corpus_old_format_examples():
    """The corpus's own old-format files: V1 layers in a solver, BatchNorm params."""
    old = [
        p for p in corpus_files("*.prototxt") if re.search(r"^\s*layers\s*\{", p.read_text(), re.M)
    ]
    assert [p.name for p in old] == ["lenet_consolidated_solver.prototxt"]
    solver, moved = upgrade_solver(*solver_of(old[0].read_text()))
    net = solver.net_param
    assert not net.layers and len(net.layer) == 12
    assert [layer.type for layer in net.layer][:4] == ["Data", "Data", "Data", "Convolution"]
    assert net.layer[3].param[1].lr_mult == 2
    assert net.layer[0].transform_param.scale == pytest.approx(1 / 256)
    assert not net.layer[0].data_param.HasField("scale")
    assert (
        moved.get(("net_param", "layer", 3)).line
        == line_of(old[0].read_text(), 'name: "conv1"') - 1
    )

    bn_path = BVLC / "examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt"
    bn_net, _ = parse_text(bn_path.read_text(), caffe_pb2.NetParameter, str(bn_path))
    out, _ = upgrade_net(bn_net)
    batch_norms = [layer for layer in out.layer if layer.type == "BatchNorm"]
    assert len(batch_norms) == 3 and all(not layer.param for layer in batch_norms)
