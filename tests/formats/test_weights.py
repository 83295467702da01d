"""Loading weights of any Caffe format into today's: a V1 caffemodel upgrades like a V1 prototxt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffec.formats import caffe_pb2
from caffec.formats.weights import read_weights


def test_v1_caffemodel_upgrades_with_its_blobs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    net = caffe_pb2.NetParameter(name="old")
    conv = net.layers.add(name="conv", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    conv.bottom.append("data")
    conv.top.append("conv")
    conv.blobs_lr.extend([1, 2])
    conv.convolution_param.num_output = 4
    for array in (weight, bias):
        blob = conv.blobs.add(num=1, channels=1, height=1, width=array.size)
        blob.data.extend(array.ravel().tolist())
    relu = net.layers.add(name="relu", type=caffe_pb2.V1LayerParameter.RELU)
    relu.bottom.append("conv")
    relu.top.append("conv")
    path = tmp_path / "old.caffemodel"
    path.write_bytes(net.SerializeToString())

    model = read_weights(path)
    assert model.format == "current"
    assert [(layer.name, layer.type) for layer in model.net.layer] == [
        ("conv", "Convolution"),
        ("relu", "ReLU"),
    ]
    assert [p.lr_mult for p in model.net.layer[0].param] == [1, 2]
    assert [b.data.ravel().tolist() for b in model.blobs[0]] == [
        weight.ravel().tolist(),
        bias.ravel().tolist(),
    ]
    assert model.blobs[0][0].legacy_shape and model.blobs[0][0].matches((4 * 3 * 3 * 3,))
    assert model.blobs[1] == []


def test_current_caffemodel_is_returned_as_read(corpus: Path) -> None:
    model = read_weights(corpus / "weights/lenet_iter_10000.caffemodel")
    assert model.format == "current"
    assert model.blobs_by_name()["conv1"][0].shape == (20, 1, 5, 5)


def test_real_lenet_weights_fit_the_lenet_layer_graph(corpus: Path) -> None:
    from caffec.compiler.pipeline import Options, load_layer_graph

    weights = corpus / "weights"
    graph = load_layer_graph(weights / "lenet.prototxt", Options(phase="TEST"))
    blobs = read_weights(weights / "lenet_iter_10000.caffemodel").blobs_by_name()
    with_params = [op for op in graph.ops if op.params]
    assert [op.name for op in with_params] == ["conv1", "conv2", "ip1", "ip2"]
    for op in with_params:
        assert [b.shape for b in blobs[op.name]] == [p.shape for p in op.params]
