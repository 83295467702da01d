"""Loading weights of any Caffe format into today's: a V1 caffemodel upgrades like a V1 prototxt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffec.formats import caffe_pb2
from caffec.formats.snapshots import read_weights


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


def test_blobs_load_by_caffes_shape_rule_or_say_what_does_not_fit() -> None:
    import pytest

    from caffec.errors import UserError
    from caffec.formats.binaryproto import Blob
    from caffec.formats.snapshots import load_blobs

    legacy = Blob(np.arange(3, dtype=np.float32).reshape(1, 1, 1, 3), None, legacy_shape=True)
    target = np.zeros(3, np.float32)
    load_blobs([legacy], [target], "layer 'ip'", "fix it")  # a 1x1x1xN bias fits N
    np.testing.assert_array_equal(target, [0, 1, 2])
    with pytest.raises(UserError, match="layer 'ip' holds 1 blobs where the net has 2") as err:
        load_blobs([legacy], [target, target], "layer 'ip'", "fix it")
    assert err.value.hint == "fix it"
    square = Blob(np.zeros((2, 2), np.float32), None, legacy_shape=False)
    with pytest.raises(UserError, match="layer 'ip': blob 0 has shape 2x2, the net's has 4"):
        load_blobs([square], [np.zeros(4, np.float32)], "layer 'ip'", "fix it")


def test_weights_and_solver_state_round_trip_in_both_formats(tmp_path: Path) -> None:
    from caffec.formats.snapshots import (
        read_solver_snapshot,
        weights_by_name,
        write_solver_snapshot,
        write_weights,
    )

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    for suffix in ("", ".h5"):
        model = tmp_path / f"net.caffemodel{suffix}"
        write_weights(model, "net", [("ip", "InnerProduct", [w]), ("relu", "ReLU", [])])
        blobs = weights_by_name(model)
        np.testing.assert_array_equal(blobs["ip"][0].data, w)
        state = tmp_path / f"net.solverstate{suffix}"
        write_solver_snapshot(state, 7, str(model), [w], current_step=2)
        snapshot = read_solver_snapshot(state)
        assert (snapshot.iteration, snapshot.learned_net, snapshot.current_step) == (
            7,
            str(model),
            2,
        )
        np.testing.assert_array_equal(snapshot.history[0].data, w)
