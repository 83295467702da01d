"""caffe.Net as pycaffe's: names, reshaping on forward, in-place inputs, batches of any
length, backward on any net, shared weights, HDF5 by name, seeds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import caffe
from caffec.errors import UserError

# Input x (4x3) -> scaled in place -> InnerProduct ip (5) -> ReLU (in place) -> InnerProduct
# out (3) -> SoftmaxWithLoss with label (TRAIN and TEST alike), and a DummyData top.
NET = """
name: "small"
layer { name: "x" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "noise" type: "DummyData" top: "noise"
        dummy_data_param { shape { dim: 4 dim: 3 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "scale" type: "Power" bottom: "x" top: "x" power_param { scale: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "noise" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "out" type: "InnerProduct" bottom: "ip" top: "out"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss"
        loss_weight: 2 }
"""


# the same net without the DummyData top, so that its batch size can change
RESHAPABLE = NET.replace(
    NET[NET.index('layer { name: "noise"') : NET.index('layer { name: "scale"')], ""
)
RESHAPABLE = RESHAPABLE.replace(
    'type: "Eltwise" bottom: "x" bottom: "noise" top: "sum" }',
    'type: "Power" bottom: "x" top: "sum" power_param { shift: 0.5 } }',
)


@pytest.fixture(scope="module")
def net_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("net") / "small.prototxt"
    path.write_text(NET)
    return path


def numpy_forward(net: caffe.Net, x: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    """The net's forward in numpy, from its own parameters."""
    (w1, b1), (w2, b2) = (p.data for p in net.params["ip"]), (p.data for p in net.params["out"])
    ip = np.maximum((2 * x + 0.5) @ w1.T + b1, 0)
    out = ip @ w2.T + b2
    z = np.exp(out - out.max(1, keepdims=True))
    prob = z / z.sum(1, keepdims=True)
    loss = -np.mean(np.log(prob[np.arange(len(x)), label.astype(int)]))
    return {"ip": ip, "out": out, "prob": prob, "loss": loss}


def test_names_as_pycaffe_lists_them(net_file: Path) -> None:
    net = caffe.Net(str(net_file).encode(), caffe.TEST)  # pycaffe accepts bytes paths
    assert net.inputs == ["x", "label"]  # Input tops only, not the DummyData top
    assert net.outputs == ["loss"]
    assert net._layer_names == ["x", "noise", "scale", "sum", "ip", "relu", "out", "loss"]
    assert net._blob_names == list(net.blobs) == ["x", "label", "noise", "sum", "ip", "out", "loss"]
    assert net.top_names["scale"] == ["x"] and net.bottom_names["scale"] == ["x"]
    assert net.bottom_names["sum"] == ["x", "noise"] and net.bottom_names["x"] == []
    assert net.top_names["x"] == ["x", "label"]
    assert net.blob_loss_weights["loss"] == 2 and net.blob_loss_weights["out"] == 0
    assert list(net.blob_loss_weights) == net._blob_names


def test_an_input_rewritten_in_place_takes_what_is_written_into_its_blob(net_file: Path) -> None:
    net = caffe.Net(str(net_file), caffe.TEST)
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    label = np.array([0, 1, 2, 1])
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = label
    loss = net.forward()["loss"]
    expected = numpy_forward(net, x, label)
    np.testing.assert_allclose(net.blobs["x"].data, 2 * x, rtol=1e-6)  # after the in-place layer
    np.testing.assert_allclose(loss, expected["loss"], rtol=1e-5)
    # a second forward runs on the blob as the first left it, as in Caffe (one memory)
    net.forward()
    np.testing.assert_allclose(net.blobs["x"].data, 4 * x, rtol=1e-6)


def test_reshape_takes_effect_at_once_and_forward_applies_it(tmp_path: Path) -> None:
    """00-classification's pattern: reshape the input, fill it, forward."""
    (tmp_path / "net.prototxt").write_text(RESHAPABLE)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    weights = [p.data.copy() for layer in ("ip", "out") for p in net.params[layer]]
    net.blobs["x"].reshape(2, 3)
    net.blobs["label"].reshape(2)
    assert net.blobs["x"].data.shape == (2, 3) and net.blobs["x"].shape == (2, 3)
    x = np.array([[1, -2, 3], [0.5, 0.25, -1]], dtype=np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = [2, 0]
    loss = net.forward()["loss"]
    assert net.blobs["ip"].data.shape == (2, 5)
    for before, after in zip(weights, [p.data for layer in ("ip", "out") for p in net.params[layer]],
                             strict=True):  # fmt: skip
        np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(loss, numpy_forward(net, x, np.array([2, 0]))["loss"], rtol=1e-5)
    net.blobs["x"].reshape(2, 3)  # the shape it has: nothing to do
    assert net.blobs["x"].pending_shape is None


def test_forward_all_and_forward_backward_all_go_batch_by_batch(net_file: Path) -> None:
    net = caffe.Net(str(net_file), caffe.TEST, backward=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3)).astype(np.float32)  # 2.5 batches: the last one padded
    label = rng.integers(0, 3, 10).astype(np.float32)
    out = net.forward_all(blobs=["out"], x=x, label=label)
    assert out["out"].shape == (10, 3) and out["loss"].shape == (3,)  # one per batch
    np.testing.assert_allclose(out["out"], numpy_forward(net, x, label)["out"], rtol=1e-5)
    outs, diffs = net.forward_backward_all(blobs=["out"], diffs=["out"], x=x, label=label)
    np.testing.assert_allclose(outs["out"], out["out"], rtol=1e-6)
    assert diffs["x"].shape == (10, 3) and diffs["out"].shape == (10, 3)
    prob = numpy_forward(net, x[:4], label[:4])["prob"]
    prob[np.arange(4), label[:4].astype(int)] -= 1
    np.testing.assert_allclose(diffs["out"][:4], 2 * prob / 4, rtol=1e-4, atol=1e-7)
    with pytest.raises(UserError, match="different numbers of items"):
        net.forward_all(x=x, label=label[:5])


def test_backward_works_on_any_net(net_file: Path) -> None:
    """A TEST net with a loss gets its backward pass on first use, from where its forward
    left it; one with force_backward from the start gives the same gradients."""
    lazy = caffe.Net(str(net_file), caffe.TEST)
    built = caffe.Net(str(net_file), caffe.TEST, backward=True)
    for layer in ("ip", "out"):
        for a, b in zip(lazy.params[layer], built.params[layer], strict=True):
            b.data[...] = a.data
    feed = {"x": np.linspace(-1, 1, 12).reshape(4, 3), "label": np.array([1, 0, 2, 2])}
    lazy.forward(**feed)
    built.forward(**feed)
    lazy.backward()
    built.backward()
    for layer in ("ip", "out"):
        for a, b in zip(lazy.params[layer], built.params[layer], strict=True):
            assert np.abs(b.diff).max() > 0
            np.testing.assert_allclose(a.diff, b.diff, rtol=1e-6)


def test_partial_backward_after_a_rebuild_keeps_the_loss_state(tmp_path: Path) -> None:
    """At -O2 out's and relu's backward are one kernel: backward(end='out') makes the net
    rebuild without fusion, and the SoftmaxWithLoss's probabilities must survive that."""
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    fused = caffe.Net(str(path), caffe.TRAIN, opt_level=2)
    plain = caffe.Net(str(path), caffe.TRAIN, opt_level=1)
    for layer in ("ip", "out"):
        for a, b in zip(fused.params[layer], plain.params[layer], strict=True):
            b.data[...] = a.data
    feed = {"x": np.linspace(-1, 1, 12).reshape(4, 3), "label": np.array([1, 0, 2, 2])}
    fused.forward(**feed)
    plain.forward(**feed)
    fused.backward(end="out")
    plain.backward(end="out")
    assert fused._options.opt_level == 1  # it rebuilt
    assert np.abs(plain.blobs["out"].diff).max() > 0
    np.testing.assert_allclose(fused.blobs["out"].diff, plain.blobs["out"].diff, rtol=1e-6)
    np.testing.assert_allclose(fused.params["out"][0].diff, plain.params["out"][0].diff, rtol=1e-6)


def test_backward_without_a_loss_runs_no_layer(tmp_path: Path) -> None:
    path = tmp_path / "deploy.prototxt"
    path.write_text(NET[: NET.index('layer { name: "loss"')])
    net = caffe.Net(str(path), caffe.TEST)
    net.forward(x=np.ones((4, 3)))
    with pytest.warns(UserWarning, match="no loss and no force_backward"):
        grads = net.backward(out=np.ones((4, 3)))
    assert not grads["x"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.backward()


def test_share_with_makes_one_set_of_weights(net_file: Path, tmp_path: Path) -> None:
    a = caffe.Net(str(net_file), caffe.TEST)
    b = caffe.Net(str(net_file), caffe.TEST, seed=7)
    assert not np.array_equal(a.params["ip"][0].data, b.params["ip"][0].data)
    b.blobs["x"].data[...] = 3
    b.share_with(a)
    np.testing.assert_array_equal(b.blobs["x"].data, 3)  # values carried over
    a.params["ip"][0].data[...] = 0.25
    np.testing.assert_array_equal(b.params["ip"][0].data, 0.25)
    # pycaffe's save_hdf5/load_hdf5: HDF5 whatever the name
    a.save_hdf5(tmp_path / "weights.bin")
    assert (tmp_path / "weights.bin").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    c = caffe.Net(str(net_file), caffe.TEST, seed=9)
    c.load_hdf5(tmp_path / "weights.bin")
    np.testing.assert_array_equal(c.params["ip"][0].data, 0.25)
    np.testing.assert_array_equal(c.params["out"][1].data, a.params["out"][1].data)


def test_set_random_seed_seeds_the_nets_made_after_it(net_file: Path) -> None:
    caffe.set_random_seed(5)
    try:
        first, second = caffe.Net(str(net_file), caffe.TEST), caffe.Net(str(net_file), caffe.TEST)
        np.testing.assert_array_equal(first.params["ip"][0].data, second.params["ip"][0].data)
        caffe.set_random_seed(6)
        third = caffe.Net(str(net_file), caffe.TEST)
        assert not np.array_equal(first.params["ip"][0].data, third.params["ip"][0].data)
    finally:
        caffe.set_random_seed(0)


def test_a_compiled_layers_setup_and_reshape_check_its_shapes(net_file: Path) -> None:
    net = caffe.Net(str(net_file), caffe.TEST)
    layer = net.layer_dict["ip"]
    assert layer.type == "InnerProduct" and [b.data.shape for b in layer.blobs] == [(5, 3), (5,)]
    bottom, top = [net.blobs["sum"]], [net.blobs["ip"]]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    with pytest.raises(UserError, match="compiled for bottom 'sum' of shape 4x3, not 2x3"):
        net.blobs["sum"].reshape(2, 3)
        layer.reshape(bottom, top)
