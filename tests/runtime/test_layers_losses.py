"""MultinomialLogisticLoss, HingeLoss, InfogainLoss and HDF5Output: forward against numpy
references (tests/reference.py, and InfogainLoss's here, from BVLC master's definition),
backward by finite differences (float64), and a clear error for every input Caffe refuses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as R
from gradcheck import check_gradients, one_layer_net, run_case

import caffec
from caffec.errors import UserError
from caffec.formats.binaryproto_writer import write_blobproto
from caffec.runtime.compiled_net import CompiledNet

h5py = pytest.importorskip("h5py")

THRESHOLD = R.LOG_THRESHOLD  # Caffe's kLOG_THRESHOLD


def loss_layer(type_: str, bottoms: str, params: str = "") -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    return f'layer {{ name: "x" type: "{type_}" {bottom} top: "loss" {params} }}'


def class_labels(rng: np.random.Generator, shape: tuple[int, ...], classes: int) -> np.ndarray:
    return rng.integers(0, classes, shape).astype(float)


# ----------------------------------------------------------------------------- references


def infogain_loss(x: np.ndarray, labels: np.ndarray, h: np.ndarray, axis: int,
                  ignore: int | None, normalization: str) -> tuple[float, np.ndarray]:  # fmt: skip
    """The loss and the softmax, per BVLC master's infogain_loss_layer.cpp."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    prob = e / e.sum(axis=axis, keepdims=True)
    rows = np.moveaxis(prob, axis, -1).reshape(-1, x.shape[axis])
    flat = labels.reshape(-1).astype(int)
    valid = flat != ignore if ignore is not None else np.ones(len(flat), bool)
    terms = -(h.reshape(len(rows[0]), -1)[flat[valid]] * np.log(np.maximum(rows[valid], THRESHOLD)))
    # Caffe's BATCH_SIZE is outer_num_: the count of the axes before the class axis
    normalizer = {"VALID": valid.sum(), "FULL": len(flat), "BATCH_SIZE": np.prod(x.shape[:axis]),
                  "NONE": 1}[normalization]  # fmt: skip
    return float(terms.sum() / max(1, normalizer)), prob


# ----------------------------------------------------------------------------- MultinomialLogisticLoss

MULTINOMIAL_CASES = [
    ("", (4, 5), (4,), 1.0),
    ("loss_weight: 2.5", (3, 2, 2, 2), (3, 1, 1, 1), 2.5),  # dim = 8 classes per item
    ("", (1, 3), (1, 1), 1.0),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "label_shape", "weight"), MULTINOMIAL_CASES)
def test_multinomial_logistic_loss(tmp_path: Path, param: str, shape: tuple, label_shape: tuple,
                                   weight: float) -> None:  # fmt: skip
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 1.0, shape)
    labels = class_labels(rng, label_shape, int(np.prod(shape[1:])))
    layer = loss_layer("MultinomialLogisticLoss", "p l", param)
    net, feed, out, rng = run_case(tmp_path, layer, {"p": shape, "l": label_shape}, ["loss"],
                                   inputs={"p": p, "l": labels})  # fmt: skip
    np.testing.assert_allclose(out["loss"], R.multinomial_logistic_loss(p, labels)[0], rtol=1e-12)
    assert dict(net.artifact.manifest.loss_tops)["loss"] == weight
    check_gradients(net, feed, ["loss"], rng, wrt=["p"])


def test_multinomial_logistic_loss_floors_the_probability_as_caffe(tmp_path: Path) -> None:
    """A probability under 1e-20 counts as 1e-20, and the gradient there is Caffe's
    -1 / (num * 1e-20) (the floor is not differentiated)."""
    p = np.array([[1e-30, 0.5, 0.5], [0.25, 0.25, 0.5]])
    labels = np.array([0.0, 2.0])
    layer = loss_layer("MultinomialLogisticLoss", "p l")
    net, _, out, _ = run_case(tmp_path, layer, {"p": (2, 3), "l": (2,)}, ["loss"],
                              inputs={"p": p, "l": labels})  # fmt: skip
    np.testing.assert_allclose(out["loss"], (-np.log(1e-20) - np.log(0.5)) / 2, rtol=1e-12)
    grad = net.backward(diffs=["p"])["p"]
    expected = np.zeros_like(p)
    expected[0, 0], expected[1, 2] = -1 / (2 * 1e-20), -1 / (2 * 0.5)
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


# ----------------------------------------------------------------------------- HingeLoss

HINGE_CASES = [
    ("", "L1", (4, 5), (4,)),
    ("hinge_loss_param { norm: L1 }", "L1", (2, 3, 2, 2), (2,)),
    ("hinge_loss_param { norm: L2 }", "L2", (4, 5), (4, 1)),
    ("hinge_loss_param { norm: L2 } loss_weight: 0.5", "L2", (3, 7), (3,)),
]  # fmt: skip


@pytest.mark.parametrize(("param", "norm", "shape", "label_shape"), HINGE_CASES)
def test_hinge_loss(tmp_path: Path, param: str, norm: str, shape: tuple,
                    label_shape: tuple) -> None:  # fmt: skip
    rng = np.random.default_rng(2)
    labels = class_labels(rng, label_shape, int(np.prod(shape[1:])))
    layer = loss_layer("HingeLoss", "a l", param)
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape, "l": label_shape}, ["loss"],
                                   inputs={"l": labels})  # fmt: skip
    np.testing.assert_allclose(
        out["loss"], R.hinge_loss(feed["a"], labels, norm=norm)[0], rtol=1e-12
    )
    check_gradients(net, feed, ["loss"], rng, wrt=["a"])


def test_hinge_loss_l1_has_no_gradient_where_the_margin_is_met(tmp_path: Path) -> None:
    """Scores beyond the margin (x <= -1 off the label, x >= 1 at it) contribute nothing."""
    x = np.array([[2.0, -1.5, 0.25], [-3.0, 0.5, 1.5]])
    labels = np.array([0.0, 2.0])
    layer = loss_layer("HingeLoss", "a l")
    net, _, out, _ = run_case(tmp_path, layer, {"a": (2, 3), "l": (2,)}, ["loss"],
                              inputs={"a": x, "l": labels})  # fmt: skip
    np.testing.assert_allclose(out["loss"], (1.25 + 1.5) / 2, rtol=1e-12)
    grad = net.backward(diffs=["a"])["a"]
    np.testing.assert_allclose(grad, [[0, 0, 0.5], [0, 0.5, 0]], rtol=1e-12)


# ----------------------------------------------------------------------------- InfogainLoss

INFOGAIN_CASES = [
    # (infogain_loss_param, other fields, scores shape, labels shape, axis, ignore_label,
    #  normalization, a second top)
    ("", "", (4, 5), (4,), 1, None, "VALID", False),
    ("axis: 1", "loss_param { ignore_label: 1 }", (3, 4, 2), (3, 2), 1, 1, "VALID", True),
    ("axis: 2", "loss_param { normalization: FULL }", (2, 3, 4), (2, 3), 2, None, "FULL", False),
    ("axis: -1", "loss_param { normalization: BATCH_SIZE ignore_label: 0 }", (3, 2, 3), (3, 2),
     2, 0, "BATCH_SIZE", False),
    ("", "loss_param { normalization: NONE }", (2, 3, 2, 2), (2, 2, 2), 1, None, "NONE", True),
]  # fmt: skip


@pytest.mark.parametrize("from_file", [False, True], ids=["H bottom", "H file"])
@pytest.mark.parametrize(("infogain", "param", "shape", "label_shape", "axis", "ignore", "mode",
                          "prob_top"), INFOGAIN_CASES)  # fmt: skip
def test_infogain_loss(tmp_path: Path, from_file: bool, infogain: str, param: str, shape: tuple,
                       label_shape: tuple, axis: int, ignore: int | None, mode: str,
                       prob_top: bool) -> None:  # fmt: skip
    rng = np.random.default_rng(3)
    classes = shape[axis]
    labels = class_labels(rng, label_shape, classes)
    h = rng.uniform(0, 2, (classes, classes))
    bottoms = {"a": shape, "l": label_shape}
    if from_file:
        write_blobproto(tmp_path / "h.binaryproto", h.reshape(1, 1, classes, classes))
        infogain += f' source: "{tmp_path / "h.binaryproto"}"'
    else:
        bottoms["H"] = (classes, classes)
    tops = ["loss", "prob"] if prob_top else ["loss"]
    layer = ('layer { name: "x" type: "InfogainLoss" '
             + "".join(f'bottom: "{b}" ' for b in bottoms)
             + "".join(f'top: "{t}" ' for t in tops)
             + f"infogain_loss_param {{ {infogain} }} {param} }}")  # fmt: skip
    net, feed, out, rng = run_case(tmp_path, layer, bottoms, tops, inputs={"l": labels, "H": h})
    loss, prob = infogain_loss(feed["a"], labels, h, axis, ignore, mode)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-12)
    if prob_top:
        np.testing.assert_allclose(out["prob"], prob, rtol=1e-12)
    check_gradients(net, feed, ["loss"], rng, wrt=["a"])


def test_infogain_loss_with_the_identity_is_softmax_with_loss(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x, labels = rng.standard_normal((5, 6)), class_labels(rng, (5,), 6)
    found = []
    for type_, bottoms in (("InfogainLoss", "a l H"), ("SoftmaxWithLoss", "a l")):
        shapes = {"a": (5, 6), "l": (5,), "H": (6, 6)} if type_ == "InfogainLoss" else \
            {"a": (5, 6), "l": (5,)}  # fmt: skip
        _, _, out, _ = run_case(tmp_path, loss_layer(type_, bottoms), shapes, ["loss"],
                                inputs={"a": x, "l": labels, "H": np.eye(6)})  # fmt: skip
        found.append(out["loss"])
    np.testing.assert_allclose(found[0], found[1], rtol=1e-12)


def test_infogain_loss_reads_the_file_when_the_net_is_made(tmp_path: Path) -> None:
    """The runtime reads the file as Caffe's setup does, so an artifact takes the file's
    values of the day; a file whose size changed since the net was compiled is refused."""
    path = tmp_path / "h.binaryproto"
    write_blobproto(path, np.eye(3).reshape(1, 1, 3, 3))
    layer = loss_layer("InfogainLoss", "a l", f'infogain_loss_param {{ source: "{path}" }}')
    net = one_layer_net(tmp_path, layer, {"a": (2, 3), "l": (2,)})
    x, labels = np.zeros((2, 3)), np.array([0.0, 2.0])
    np.testing.assert_allclose(net.forward(a=x, l=labels)["loss"], np.log(3), rtol=1e-12)
    write_blobproto(path, 2 * np.eye(3).reshape(1, 1, 3, 3))
    again = CompiledNet(net.artifact)
    np.testing.assert_allclose(again.forward(a=x, l=labels)["loss"], 2 * np.log(3), rtol=1e-12)
    write_blobproto(path, np.eye(4).reshape(1, 1, 4, 4))
    with pytest.raises(UserError, match="h.binaryproto holds a blob of shape"):
        CompiledNet(net.artifact)


LABELED = [
    ("MultinomialLogisticLoss", {"a": (2, 3), "l": (2,)}),
    ("HingeLoss", {"a": (2, 3), "l": (2,)}),
    ("InfogainLoss", {"a": (2, 3), "l": (2,), "H": (3, 3)}),
]


@pytest.mark.parametrize(("type_", "shapes"), LABELED)
def test_a_label_out_of_range_is_named(tmp_path: Path, type_: str, shapes: dict) -> None:
    net = one_layer_net(tmp_path, loss_layer(type_, " ".join(shapes)), shapes)
    inputs = {"a": np.full((2, 3), 0.5), "l": np.array([1.0, 3.0]), "H": np.eye(3)}
    with pytest.raises(UserError, match="label 3 of item 1") as info:
        net.forward(**{n: inputs[n] for n in shapes})
    assert info.value.layer == "x"


def test_infogain_loss_ignores_an_ignore_label_outside_the_classes(tmp_path: Path) -> None:
    shapes = {"a": (2, 3), "l": (2,), "H": (3, 3)}
    layer = loss_layer("InfogainLoss", "a l H", "loss_param { ignore_label: 255 }")
    net = one_layer_net(tmp_path, layer, shapes)
    out = net.forward(a=np.zeros((2, 3)), l=np.array([255.0, 1.0]), H=np.eye(3))
    np.testing.assert_allclose(out["loss"], np.log(3), rtol=1e-12)  # one valid prediction


# ----------------------------------------------------------------------------- bad fields

BAD = [
    ("MultinomialLogisticLoss", "a l", "", {"a": (4, 5), "l": (4, 2)}, "one class index per item"),
    ("MultinomialLogisticLoss", "a l", "", {"a": (4, 5), "l": (3,)}, "same first"),
    ("HingeLoss", "a l", "", {"a": (4, 5), "l": (4, 2)}, "one class index per item"),
    ("InfogainLoss", "a l", "", {"a": (4, 5), "l": (4,)}, "needs its infogain matrix H"),
    ("InfogainLoss", "a l", 'infogain_loss_param { source: "missing.binaryproto" }',
     {"a": (4, 5), "l": (4,)}, "'missing.binaryproto' does not exist"),
    ("InfogainLoss", "a l H", "", {"a": (4, 5), "l": (4,), "H": (4, 4)}, "must be 5 x 5"),
    ("InfogainLoss", "a l H", "infogain_loss_param { axis: 2 }",
     {"a": (4, 5), "l": (4,), "H": (5, 5)}, "axis 2 is out of range"),
    ("InfogainLoss", "a l H", "", {"a": (4, 5, 2), "l": (4,), "H": (5, 5)}, "4 labels for predictions of shape 4x5x2"),
    ("InfogainLoss", "a l H", "loss_param { normalize: true }",
     {"a": (4, 5), "l": (4,), "H": (5, 5)}, "deprecated loss_param.normalize"),
]  # fmt: skip


@pytest.mark.parametrize(("type_", "bottoms", "param", "shapes", "message"), BAD)
def test_bad_fields_name_the_layer(tmp_path: Path, type_: str, bottoms: str, param: str,
                                   shapes: dict, message: str) -> None:  # fmt: skip
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, loss_layer(type_, bottoms, param), shapes)
    assert info.value.layer == "x" and info.value.span is not None


def test_an_infogain_file_that_is_not_a_blob_is_named(tmp_path: Path) -> None:
    path = tmp_path / "h.binaryproto"
    path.write_text('name: "not a blob"\n')
    layer = loss_layer("InfogainLoss", "a l", f'infogain_loss_param {{ source: "{path}" }}')
    with pytest.raises(UserError, match="cannot read the infogain matrix.*text prototxt") as info:
        one_layer_net(tmp_path, layer, {"a": (2, 3), "l": (2,)})
    assert info.value.layer == "x"


# ----------------------------------------------------------------------------- HDF5Output


def hdf5_output(path: Path) -> str:
    return (f'layer {{ name: "out" type: "HDF5Output" bottom: "d" bottom: "l" '
            f'hdf5_output_param {{ file_name: "{path}" }} }}')  # fmt: skip


HDF5_CASES = [
    # (data shape, label shape, each item's data and label in the file: Caffe's legacy axes)
    ((3, 2, 4, 5), (3,), (2, 4, 5), (1, 1, 1), "float64"),
    ((2, 6), (2, 2), (6, 1, 1), (2, 1, 1), "float32"),
]  # fmt: skip


@pytest.mark.parametrize(("shape", "label_shape", "data_item", "label_item", "dtype"), HDF5_CASES)
def test_hdf5_output_appends_each_forward(tmp_path: Path, shape: tuple, label_shape: tuple,
                                          data_item: tuple, label_item: tuple,
                                          dtype: str) -> None:  # fmt: skip
    path = tmp_path / "out.h5"
    path.write_bytes(b"an older file, which the net's setup replaces")
    net = one_layer_net(tmp_path, hdf5_output(path), {"d": shape, "l": label_shape}, dtype=dtype)
    with h5py.File(path, "r") as f:
        assert list(f) == [], "setup leaves an empty file"
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal(shape), rng.standard_normal(label_shape)) for _ in range(2)]
    for data, labels in batches:
        net.forward(d=data, l=labels)
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["data", "label"]
        for name, k, item in (("data", 0, data_item), ("label", 1, label_item)):
            expected = np.concatenate([b[k].reshape(-1, *item) for b in batches]).astype(dtype)
            assert f[name].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(f[name][...], expected)
    assert net.layers[-1].type == "HDF5Output"
    net.backward()  # Caffe's backward does nothing; force_backward does not ask for one


def test_hdf5_output_runs_between_compiled_layers(tmp_path: Path) -> None:
    """The file gets the value the layer before computed in the same pass."""
    path = tmp_path / "out.h5"
    layer = ('layer { name: "abs" type: "AbsVal" bottom: "a" top: "d" } '
             + hdf5_output(path) + ' layer { name: "y" type: "Power" bottom: "d" top: "y" }')  # fmt: skip
    net = one_layer_net(tmp_path, layer, {"a": (2, 3), "l": (2,)})
    a = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]])
    net.forward(a=a, l=np.array([0.0, 1.0]))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data"][:, :, 0, 0], np.abs(a))


def test_on_a_gpu_the_file_gets_the_device_values(tmp_path: Path, any_gpu: Any) -> None:
    """On a GPU the host call reads the bottoms' device values, and InfogainLoss's matrix file
    is uploaded."""
    path, matrix = tmp_path / "out.h5", tmp_path / "h.binaryproto"
    write_blobproto(matrix, np.arange(9.0).reshape(1, 1, 3, 3))
    layer = ('layer { name: "abs" type: "AbsVal" bottom: "a" top: "d" } ' + hdf5_output(path)
             + loss_layer("InfogainLoss", "a l", f'infogain_loss_param {{ source: "{matrix}" }}'))  # fmt: skip
    net = one_layer_net(tmp_path, layer, {"a": (2, 3), "l": (2,)})
    assert net.artifact.manifest.target.name == "cuda"
    a, labels = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]]), np.array([2.0, 0.0])
    loss = net.forward(a=a, l=labels)["loss"]
    h = np.arange(9.0).reshape(3, 3)
    np.testing.assert_allclose(loss, infogain_loss(a, labels, h, 1, None, "VALID")[0], rtol=1e-12)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data"][:, :, 0, 0], np.abs(a))
        np.testing.assert_array_equal(f["label"][:, 0, 0, 0], labels)


HDF5_BAD = [
    ({"d": (2, 3), "l": (3,)}, "same number of items"),
    ({"d": (2, 3, 1, 1, 1), "l": (2,)}, "more than 4 axes"),
]


@pytest.mark.parametrize(("shapes", "message"), HDF5_BAD)
def test_hdf5_output_bad_bottoms(tmp_path: Path, shapes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, hdf5_output(tmp_path / "out.h5"), shapes)
    assert info.value.layer == "out" and info.value.span is not None


def test_hdf5_output_needs_a_file_name(tmp_path: Path) -> None:
    layer = 'layer { name: "out" type: "HDF5Output" bottom: "d" bottom: "l" }'
    with pytest.raises(UserError, match="needs hdf5_output_param.file_name") as info:
        one_layer_net(tmp_path, layer, {"d": (2, 3), "l": (2,)})
    assert info.value.layer == "out"


def test_hdf5_output_to_a_missing_folder_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no such folder" / "out.h5"
    with pytest.raises(UserError, match="cannot create the HDF5 output file") as info:
        one_layer_net(tmp_path, hdf5_output(path), {"d": (2, 3), "l": (2,)})
    assert info.value.layer == "out" and str(path) in str(info.value)


def test_hdf5_output_without_h5py_says_what_to_install(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    with pytest.raises(UserError, match="with the Python package 'h5py'") as info:
        one_layer_net(tmp_path, hdf5_output(tmp_path / "out.h5"), {"d": (2, 3), "l": (2,)})
    assert "pip install h5py" in (info.value.hint or "")


def test_hdf5_output_refuses_items_of_another_shape_in_one_file(tmp_path: Path) -> None:
    """A net rebuilt for new input shapes keeps appending to its file: the items' shape must
    stay (the batch size may change)."""
    path = tmp_path / "out.h5"
    net = one_layer_net(tmp_path, hdf5_output(path), {"d": (2, 3), "l": (2,)})
    net.forward(d=np.ones((2, 3)), l=np.zeros(2))
    net.blobs["d"].reshape(4, 3)
    net.blobs["l"].reshape(4)
    net.reshape()
    net.forward(d=np.ones((4, 3)), l=np.zeros(4))
    with h5py.File(path, "r") as f:
        assert f["data"].shape == (6, 3, 1, 1)
    net.blobs["d"].reshape(4, 5)
    net.reshape()
    with pytest.raises(UserError, match=r"holds data items of shape 3x1x1") as info:
        net.forward(d=np.ones((4, 5)), l=np.zeros(4))
    assert info.value.layer == "out"


def test_hdf5_output_in_train_phase_with_a_loss(tmp_path: Path) -> None:
    """Beside a loss, the net trains through its other layers; HDF5Output gets no backward."""
    layer = (hdf5_output(tmp_path / "out.h5")
             + ' layer { name: "loss" type: "EuclideanLoss" bottom: "d" bottom: "l" top: "loss" }')  # fmt: skip
    net = one_layer_net(tmp_path, layer, {"d": (2, 1), "l": (2, 1)}, caffec.TRAIN)
    net.forward(d=np.array([[1.0], [2.0]]), l=np.zeros((2, 1)))
    grads = net.backward(diffs=["d"])
    np.testing.assert_allclose(grads["d"], [[0.5], [1.0]])
