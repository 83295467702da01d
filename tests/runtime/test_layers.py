"""Every compiled layer: forward against the numpy references, backward by finite differences.

Each case is a one-layer net in float64; the table gives the layer, its
bottoms' shapes, and the reference to compare with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import reference as R
from gradcheck import check_gradients, params, run_case

import caffec

# (layer text, bottoms, reference(inputs, params) -> tops)
ELEMENTWISE = [
    ('type: "ReLU" relu_param { negative_slope: 0.125 }', lambda x: R.relu(x, negative_slope=0.125)),
    ('type: "ReLU"', lambda x: R.relu(x)),
    ('type: "Sigmoid"', R.sigmoid),
    ('type: "TanH"', R.tanh),
    ('type: "AbsVal"', R.absval),
    ('type: "ELU" elu_param { alpha: 0.75 }', lambda x: R.elu(x, alpha=0.75)),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 3 }',
     lambda x: R.power(x, power=2.0, scale=0.5, shift=3.0)),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.25 }',
     lambda x: R.dropout(x, np.ones_like(x), ratio=0.25, phase="TEST")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "ref"), ELEMENTWISE, ids=[b.split('"')[1] for b, _ in ELEMENTWISE]
)
def test_elementwise(tmp_path: Path, body: str, ref) -> None:
    layer = f'layer {{ name: "x" bottom: "a" top: "y" {body} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": (2, 3, 4, 5)}, ["y"])
    np.testing.assert_allclose(out["y"], ref(feed["a"])[0], rtol=1e-12, atol=1e-12)
    check_gradients(net, feed, ["y"], rng)


def test_in_place_relu_keeps_caffes_blob_view(tmp_path: Path) -> None:
    layer = 'layer { name: "x" type: "ReLU" bottom: "a" top: "a" }'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": (3, 4)}, ["a"])
    np.testing.assert_array_equal(out["a"], np.maximum(feed["a"], 0))
    check_gradients(net, feed, ["a"], rng)


def test_prelu(tmp_path: Path) -> None:
    for shared in ("false", "true"):
        layer = (f'layer {{ name: "x" type: "PReLU" bottom: "a" top: "y" '
                 f"prelu_param {{ channel_shared: {shared} }} }}")  # fmt: skip
        net, feed, out, rng = run_case(tmp_path, layer, {"a": (2, 3, 4)}, ["y"])
        (slope,) = params(net)
        expected = R.prelu(feed["a"], slope, channel_shared=shared == "true")[0]
        np.testing.assert_allclose(out["y"], expected, rtol=1e-12)
        check_gradients(net, feed, ["y"], rng)


def test_dropout_in_train_drops_and_scales(tmp_path: Path) -> None:
    layer = 'layer { name: "x" type: "Dropout" bottom: "a" top: "y" dropout_param { dropout_ratio: 0.25 } }'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": (50, 40)}, ["y"], phase=caffec.TRAIN,
                                   inputs={"a": np.ones((50, 40))})  # fmt: skip
    kept = out["y"] != 0
    assert 0.72 < kept.mean() < 0.78
    np.testing.assert_allclose(out["y"][kept], 1 / 0.75)
    again = net.forward(a=np.ones((50, 40)))["y"]
    assert (again != out["y"]).any(), "a new mask each iteration"
    check_gradients(net, {"a": rng.standard_normal((50, 40))}, ["y"], rng)


@pytest.mark.parametrize(
    ("param", "shape"),
    [("num_output: 7", (5, 3, 2, 2)), ("num_output: 4 axis: 2", (2, 3, 5)),
     ("num_output: 6 transpose: true", (4, 5)), ("num_output: 3 bias_term: false", (2, 9))],
)  # fmt: skip
def test_inner_product(tmp_path: Path, param: str, shape: tuple) -> None:
    layer = f'layer {{ name: "x" type: "InnerProduct" bottom: "a" top: "y" inner_product_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    p = net.layer_dict["x"].blobs
    axis = 2 if "axis: 2" in param else 1
    expected = R.inner_product(feed["a"], p[0].data, p[1].data if len(p) > 1 else None, axis=axis,
                               transpose="transpose" in param)[0]  # fmt: skip
    np.testing.assert_allclose(out["y"], expected, rtol=1e-11)
    check_gradients(net, feed, ["y"], rng)


CONV_CASES = [
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 7), {}),
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1", (2, 2, 7, 6), {"stride": (2, 2), "pad": (1, 1)}),
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1", (1, 6, 5, 5), {"group": 3, "pad": (1, 1)}),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 dilation: 2", (1, 2, 8, 7), {"dilation": (2, 2)}),
    ("num_output: 5 kernel_size: 1", (2, 3, 4, 4), {}),
    ("num_output: 3 kernel_size: 2 bias_term: false stride_h: 2 stride_w: 1", (1, 2, 5, 5),
     {"stride": (2, 1)}),
    # im2col + GEMM, and direct (depthwise: one channel per group in and out)
    ("num_output: 8 kernel_size: 3 pad: 1", (2, 3, 5, 5), {"pad": (1, 1)}),
    ("num_output: 4 kernel_size: 3 group: 4 stride: 2 pad: 1", (2, 4, 7, 7),
     {"group": 4, "stride": (2, 2), "pad": (1, 1)}),
    ("num_output: 6 kernel_size: 3 group: 3 dilation: 2 pad: 2", (1, 3, 6, 5),
     {"group": 3, "dilation": (2, 2), "pad": (2, 2)}),
    ("num_output: 3 kernel_size: 3 group: 3 dilation: 2 pad: 2", (1, 3, 6, 5),
     {"group": 3, "dilation": (2, 2), "pad": (2, 2)}),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "kw"), CONV_CASES)
def test_convolution(tmp_path: Path, param: str, shape: tuple, kw: dict) -> None:
    layer = f'layer {{ name: "x" type: "Convolution" bottom: "a" top: "y" convolution_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    p = params(net)
    expected = R.convolution(feed["a"], p[0], p[1] if len(p) > 1 else None, **kw)[0]
    np.testing.assert_allclose(out["y"], expected, rtol=1e-10, atol=1e-12)
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(
    ("param", "shape", "kw"),
    [("num_output: 3 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 4), {"stride": (2, 2), "pad": (1, 1)}),
     ("num_output: 4 kernel_size: 3 group: 2", (1, 4, 3, 3), {"group": 2}),
     ("num_output: 2 kernel_size: 1", (1, 3, 2, 2), {}),
     ("num_output: 3 kernel_size: 3 stride: 2 group: 3 pad: 1", (2, 3, 3, 4),
      {"stride": (2, 2), "group": 3, "pad": (1, 1)})],
)  # fmt: skip
def test_deconvolution(tmp_path: Path, param: str, shape: tuple, kw: dict) -> None:
    layer = f'layer {{ name: "x" type: "Deconvolution" bottom: "a" top: "y" convolution_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    p = params(net)
    expected = R.deconvolution(feed["a"], p[0], p[1], **kw)[0]
    np.testing.assert_allclose(out["y"], expected, rtol=1e-10, atol=1e-12)
    check_gradients(net, feed, ["y"], rng)


POOL_CASES = [
    ("pool: MAX kernel_size: 3 stride: 2", (2, 3, 7, 6)),
    ("pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 4, 4)),
    ("pool: AVE kernel_size: 3 stride: 2", (2, 1, 7, 7)),
    ("pool: AVE global_pooling: true", (2, 3, 5, 4)),
    ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2", (1, 2, 4, 7)),
]


@pytest.mark.parametrize(("param", "shape"), POOL_CASES)
def test_pooling(tmp_path: Path, param: str, shape: tuple) -> None:
    layer = (
        f'layer {{ name: "x" type: "Pooling" bottom: "a" top: "y" pooling_param {{ {param} }} }}'
    )
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    words = param.split()
    fields = {words[i].rstrip(":"): words[i + 1] for i in range(0, len(words), 2)}
    kernel = (int(fields.get("kernel_h", fields.get("kernel_size", 0))),
              int(fields.get("kernel_w", fields.get("kernel_size", 0))))  # fmt: skip
    stride = (int(fields.get("stride_h", fields.get("stride", 1))),
              int(fields.get("stride_w", fields.get("stride", 1))))  # fmt: skip
    pad = (int(fields.get("pad", 0)),) * 2
    expected = R.pooling(feed["a"], method=fields["pool"], kernel=kernel, stride=stride, pad=pad,
                         global_pooling="global_pooling" in fields)[0]  # fmt: skip
    np.testing.assert_allclose(out["y"], expected, rtol=1e-12)
    check_gradients(net, feed, ["y"], rng)


def test_max_pooling_mask_top(tmp_path: Path) -> None:
    layer = ('layer { name: "x" type: "Pooling" bottom: "a" top: "y" top: "mask" '
             "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }")  # fmt: skip
    net, feed, out, _ = run_case(tmp_path, layer, {"a": (1, 2, 4, 5)}, ["y", "mask"])
    y, mask = R.pooling(feed["a"], method="MAX", kernel=(2, 2), stride=(2, 2))
    np.testing.assert_array_equal(out["mask"], mask)


@pytest.mark.parametrize(("axis", "shape"), [(1, (3, 5)), (1, (2, 4, 3, 2)), (-1, (2, 3, 4))])
def test_softmax(tmp_path: Path, axis: int, shape: tuple) -> None:
    layer = f'layer {{ name: "x" type: "Softmax" bottom: "a" top: "y" softmax_param {{ axis: {axis} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    np.testing.assert_allclose(out["y"], R.softmax(feed["a"], axis=axis)[0], rtol=1e-12)
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(
    ("loss_param", "kw"),
    [("", {}), ("loss_param { ignore_label: 2 }", {"ignore_label": 2}),
     ("loss_param { ignore_label: 1 normalization: FULL }", {"ignore_label": 1, "normalization": "FULL"}),
     ("loss_param { normalization: BATCH_SIZE }", {"normalization": "BATCH_SIZE"}),
     ("loss_param { normalization: NONE }", {"normalization": "NONE"}),
     ("loss_param { normalize: false }", {"normalize": False})],
)  # fmt: skip
def test_softmax_with_loss(tmp_path: Path, loss_param: str, kw: dict) -> None:
    layer = (f'layer {{ name: "x" type: "SoftmaxWithLoss" bottom: "a" bottom: "label" top: "loss" '
             f"top: \"prob\" loss_weight: 2 loss_weight: 0 {loss_param} }}")  # fmt: skip
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(3, 1, 2)).astype(float)
    net, feed, out, rng = run_case(tmp_path, layer, {"a": (3, 4, 2), "label": (3, 1, 2)},
                                   ["loss", "prob"], inputs={"label": labels})  # fmt: skip
    loss, prob = R.softmax_with_loss(feed["a"], labels, **kw)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-12)
    np.testing.assert_allclose(out["prob"], prob, rtol=1e-12)
    check_gradients(net, feed, ["loss"], rng, wrt=["a"])


def test_accuracy(tmp_path: Path) -> None:
    layer = ('layer { name: "x" type: "Accuracy" bottom: "a" bottom: "label" top: "acc" '
             'top: "per_class" accuracy_param { top_k: 2 ignore_label: 3 } }')  # fmt: skip
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((40, 5))
    scores[0, :] = 1.0  # ties count against the label
    labels = rng.integers(0, 5, size=40).astype(float)
    _, _, out, _ = run_case(tmp_path, layer, {"a": (40, 5), "label": (40,)}, ["acc", "per_class"],
                            inputs={"a": scores, "label": labels})  # fmt: skip
    acc, per_class = R.accuracy(scores, labels, top_k=2, ignore_label=3)
    np.testing.assert_allclose(out["acc"], acc, rtol=1e-12)
    np.testing.assert_allclose(out["per_class"], per_class, rtol=1e-12)


def test_concat_slice_split_flatten_reshape(tmp_path: Path) -> None:
    layers = """
layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" concat_param { axis: 1 } }
layer { name: "s" type: "Slice" bottom: "c" top: "s0" top: "s1" top: "s2"
        slice_param { axis: 2 slice_point: 1 slice_point: 3 } }
layer { name: "sp" type: "Split" bottom: "s1" top: "t0" top: "t1" }
layer { name: "f" type: "Flatten" bottom: "t0" top: "f" }
layer { name: "r" type: "Reshape" bottom: "t1" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
"""
    bottoms = {"a": (2, 3, 4, 2), "b": (2, 1, 4, 2)}
    tops = ["c", "s0", "s1", "s2", "f", "r"]
    net, feed, out, rng = run_case(tmp_path, layers, bottoms, tops)
    c = R.concat(feed["a"], feed["b"], axis=1)[0]
    s0, s1, s2 = R.slice(c, axis=2, slice_point=(1, 3))
    np.testing.assert_array_equal(out["c"], c)
    for name, expected in (("s0", s0), ("s1", s1), ("s2", s2)):
        np.testing.assert_array_equal(out[name], expected)
    np.testing.assert_array_equal(out["f"], s1.reshape(2, -1))
    np.testing.assert_array_equal(out["r"], s1.reshape(2, -1, 2))
    check_gradients(net, feed, ["s0", "s2", "f", "r"], rng)


@pytest.mark.parametrize(
    ("param", "kw"),
    [("operation: SUM coeff: 0.5 coeff: -2 coeff: 1", {"operation": "SUM", "coeff": (0.5, -2, 1)}),
     ("operation: PROD", {"operation": "PROD"}), ("operation: MAX", {"operation": "MAX"})],
)  # fmt: skip
def test_eltwise(tmp_path: Path, param: str, kw: dict) -> None:
    layer = (f'layer {{ name: "x" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
             f"eltwise_param {{ {param} }} }}")  # fmt: skip
    bottoms = {"a": (2, 3, 4), "b": (2, 3, 4), "c": (2, 3, 4)}
    net, feed, out, rng = run_case(tmp_path, layer, bottoms, ["y"])
    np.testing.assert_allclose(
        out["y"], R.eltwise(feed["a"], feed["b"], feed["c"], **kw)[0], rtol=1e-12
    )
    check_gradients(net, feed, ["y"], rng)


def test_dummy_data_and_silence(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(
        'layer { name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
        "shape { dim: 2 dim: 3 } shape { dim: 1000 } "
        'data_filler { type: "constant" value: 7 } data_filler { type: "gaussian" std: 2 } } }\n'
        'layer { name: "s" type: "Silence" bottom: "c" }\n'
    )
    net = caffec.Net(str(path), caffec.TEST)
    out = net.forward(blobs=["c", "g"])
    np.testing.assert_array_equal(out["c"], np.full((2, 3), 7))
    first = out["g"].copy()
    assert 1.7 < first.std() < 2.3
    assert (net.forward(blobs=["g"])["g"] != first).any(), "non-constant fillers refill"
