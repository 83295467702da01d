"""Filter: the kept items against numpy, gradients by finite differences, and the runtime's
rebuilds when a batch keeps another number of items (caffec.Net, the solvers, an artifact
alone), with the errors a user meets."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from gradcheck import check_gradients, input_layers, one_layer_net

import caffec
from caffec.errors import UserError
from caffec.runtime.compiled_net import CompiledNet
from caffec.solver import SGDSolver

ONE = 'layer { name: "x" type: "Filter" bottom: "a" bottom: "s" top: "y" }'
TWO = 'layer { name: "x" type: "Filter" bottom: "a" bottom: "b" bottom: "s" top: "y" top: "z" }'
PATTERNS = {
    "all kept": [1, 1, 1, 1, 1],
    "some kept": [0, 2, 0, -1, 0.5],
    "first": [1, 0, 0, 0, 0],
    "last": [0, 0, 0, 0, 3],
}


def net_of(tmp_path: Path, layers: str, bottoms: dict, **kwargs: object) -> caffec.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(input_layers(bottoms) + layers)
    return caffec.Net(str(path), caffec.TEST, dtype="float64", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", PATTERNS, ids=list(PATTERNS))
@pytest.mark.parametrize("selector", [(5,), (5, 1)], ids=["(N)", "(N,1)"])
def test_forward_keeps_the_selected_items_in_order(
    tmp_path: Path, pattern: str, selector: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(0)
    bottoms = {"a": (5, 3, 2), "b": (5,), "s": selector}
    net = net_of(tmp_path, TWO, bottoms)
    a, b = rng.standard_normal((5, 3, 2)), rng.standard_normal(5)
    s = np.reshape(PATTERNS[pattern], selector)
    out = net.forward(a=a, b=b, s=s)
    keep = s.reshape(-1) != 0
    np.testing.assert_array_equal(out["y"], a[keep])
    np.testing.assert_array_equal(out["z"], b[keep])


@pytest.mark.parametrize("pattern", ["all kept", "some kept", "last"])
@pytest.mark.parametrize("layer", [ONE, TWO], ids=["one data bottom", "two data bottoms"])
def test_gradients_match_finite_differences(tmp_path: Path, layer: str, pattern: str) -> None:
    rng = np.random.default_rng(1)
    bottoms = {"a": (5, 2, 3), "b": (5, 4), "s": (5,)}
    if layer == ONE:
        del bottoms["b"]
    net = one_layer_net(tmp_path, layer, bottoms)
    inputs = {name: rng.standard_normal(shape) for name, shape in bottoms.items()}
    inputs["s"] = np.array(PATTERNS[pattern], dtype=float)
    data = [name for name in bottoms if name != "s"]
    net.forward(**inputs)  # compiled again for the count kept, so the tops have their shapes
    check_gradients(net, inputs, ["y", "z"][: len(data)], rng, wrt=data)


def test_backward_scatters_into_the_kept_items_and_zeroes_the_rest(tmp_path: Path) -> None:
    net = one_layer_net(tmp_path, TWO, {"a": (4, 3), "b": (4, 2), "s": (4,)})
    rng = np.random.default_rng(2)
    a, b, s = rng.standard_normal((4, 3)), rng.standard_normal((4, 2)), np.array([0, 1, 0, 1.0])
    net.forward(a=a, b=b, s=s)  # keeps 2 of 4: a rebuild
    dy, dz = rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    grads = net.backward(y=dy, z=dz)
    expected_a, expected_b = np.zeros((4, 3)), np.zeros((4, 2))
    expected_a[[1, 3]], expected_b[[1, 3]] = dy, dz
    np.testing.assert_array_equal(grads["a"], expected_a)
    np.testing.assert_array_equal(grads["b"], expected_b)
    np.testing.assert_array_equal(grads["s"], np.zeros(4))  # no gradient to the selector


def test_each_count_compiles_once_and_parameters_carry_over(tmp_path: Path) -> None:
    layers = ONE + (
        '\nlayer { name: "ip" type: "InnerProduct" bottom: "y" top: "p" '
        'inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }'
    )
    net = net_of(tmp_path, layers, {"a": (6, 3), "s": (6,)})
    weights = np.arange(6.0).reshape(2, 3)
    net.params["ip"][0].data[...] = weights
    a = np.random.default_rng(3).standard_normal((6, 3))
    builds = []
    for s in ([1, 1, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1], [1] * 6):
        out = net.forward(a=a, s=np.array(s, dtype=float))
        keep = np.array(s) != 0
        np.testing.assert_allclose(out["p"], a[keep] @ weights.T)
        builds.append(net.artifact.path)
    assert builds[0] == builds[2] and len(set(builds)) == 3  # 3 kept again: the same build
    assert net.artifact.manifest.filters[0].shapes == [[6, 3]]  # every item: no --shape


def test_a_reshaped_input_starts_from_every_item_again(tmp_path: Path) -> None:
    net = net_of(tmp_path, ONE, {"a": (5, 3), "s": (5,)})
    a = np.arange(15.0).reshape(5, 3)
    net.forward(a=a, s=np.array([1, 0, 1, 1, 1.0]))  # compiled for 4 kept
    net.blobs["a"].reshape(3, 3)
    net.blobs["s"].reshape(3)
    net.reshape()  # a batch of 3 cannot keep 4: the count is the next batch's to decide
    assert net.blobs["y"].shape == (3, 3)
    out = net.forward(a=a[:3], s=np.array([0, 1, 1.0]))
    np.testing.assert_array_equal(out["y"], a[1:3])


def test_running_averages_move_once_for_a_batch_that_compiles_again(tmp_path: Path) -> None:
    path = tmp_path / "bn.prototxt"
    path.write_text(
        input_layers({"a": (4, 3), "s": (4,)})
        + 'layer { name: "bn" type: "BatchNorm" bottom: "a" top: "n" }\n'
        + ONE.replace('bottom: "a"', 'bottom: "n"')
    )
    net = caffec.Net(str(path), caffec.TRAIN, dtype="float64")
    a = np.random.default_rng(6).standard_normal((4, 3))
    net.forward(a=a, s=np.array([1, 0, 1, 1.0]))  # keeps 3 of 4: the pass runs again
    mean, _, factor = (blob.data for blob in net.params["bn"])
    assert factor[0] == 1  # one update: Caffe's scale factor after one batch
    np.testing.assert_allclose(mean, a.mean(0))


def test_a_count_given_with_shapes_is_the_compiled_one(tmp_path: Path) -> None:
    net = net_of(tmp_path, ONE, {"a": (5, 3), "s": (5,)}, shapes={"y": (2, 3)})
    assert net.blobs["y"].shape == (2, 3)
    with pytest.raises(UserError, match="one k for all its tops"):
        net_of(tmp_path, ONE, {"a": (5, 3), "s": (5,)}, shapes={"y": (2, 4)})
    with pytest.raises(UserError, match="6 kept items of a batch of 5"):
        net_of(tmp_path, ONE, {"a": (5, 3), "s": (5,)}, shapes={"y": (6, 3)})


def test_chained_filters_rebuild_for_both_counts(tmp_path: Path) -> None:
    layers = (
        'layer { name: "f1" type: "Filter" bottom: "a" bottom: "t" bottom: "s" '
        'top: "a1" top: "t1" }\n'
        'layer { name: "f2" type: "Filter" bottom: "a1" bottom: "t1" top: "a2" }'
    )
    net = net_of(tmp_path, layers, {"a": (6, 2), "t": (6,), "s": (6,)})
    a = np.arange(12.0).reshape(6, 2)
    for s, t in (
        ([1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1]),
        ([1, 1, 1, 1, 1, 0], [1, 0, 1, 0, 1, 0]),
    ):
        s, t = np.array(s, dtype=float), np.array(t, dtype=float)
        out = net.forward(a=a, t=t, s=s)
        np.testing.assert_array_equal(out["a2"], a[s != 0][t[s != 0] != 0])


def test_forward_all_joins_the_kept_items_of_every_batch(tmp_path: Path) -> None:
    layers = ONE + '\nlayer { name: "r" type: "ReLU" bottom: "y" top: "r" }'
    net = net_of(tmp_path, layers, {"a": (3, 2), "s": (3,)})
    a = np.random.default_rng(4).standard_normal((7, 2))
    s = np.array([1, 0, 1, 0, 0, 1, 1.0])  # batches keep 2, 1 and 1 (of the item and padding)
    out = net.forward_all(a=a, s=s)
    np.testing.assert_array_equal(out["r"], np.maximum(a[s != 0], 0))


def test_a_batch_that_keeps_nothing_is_refused(tmp_path: Path) -> None:
    net = net_of(tmp_path, ONE, {"a": (3, 2), "s": (3,)})
    with pytest.raises(UserError) as info:
        net.forward(a=np.ones((3, 2)), s=np.zeros(3))
    assert info.value.layer == "x"
    assert "keeps no item of this batch" in info.value.message
    assert "'s' is 0 for all 3 items" in info.value.message


def test_an_artifact_alone_cannot_compile_itself_for_another_count(tmp_path: Path) -> None:
    built = net_of(tmp_path, ONE, {"a": (3, 2), "s": (3,)})
    net = CompiledNet(built.artifact.path)
    np.testing.assert_array_equal(net.forward(a=np.eye(3, 2), s=np.ones(3))["y"], np.eye(3, 2))
    with pytest.raises(UserError) as info:
        net.forward(a=np.eye(3, 2), s=np.array([1.0, 0, 1]))
    assert "--shape y=2,2" in info.value.hint


def test_shape_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"one value per item, \(N\) or \(N, 1, ...\)"):
        net_of(tmp_path, ONE, {"a": (3, 2), "s": (3, 2)})
    with pytest.raises(UserError, match="must have the selector's 4 items"):
        net_of(tmp_path, ONE, {"a": (3, 2), "s": (4,)})
    with pytest.raises(UserError, match="need 1 tops, not 2"):
        net_of(tmp_path, ONE.replace('top: "y"', 'top: "y" top: "w"'), {"a": (3, 2), "s": (3,)})


def test_a_gradient_to_the_selector_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "learned.prototxt"
    path.write_text(
        input_layers({"a": (4, 3), "t": (4, 3)})
        + 'layer { name: "sel" type: "InnerProduct" bottom: "a" top: "s" '
        "inner_product_param { num_output: 1 } }\n"
        'layer { name: "f" type: "Filter" bottom: "a" bottom: "t" bottom: "s" '
        'top: "fa" top: "ft" }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "fa" bottom: "ft" top: "loss" }'
    )
    with pytest.raises(UserError) as info:
        caffec.Net(str(path), caffec.TRAIN)
    assert info.value.layer == "f" and "propagate_down: false" in info.value.hint
    fixed = path.read_text().replace('top: "fa" top: "ft"', 'top: "fa" top: "ft" '
                                     "propagate_down: true propagate_down: true "
                                     "propagate_down: false")  # fmt: skip
    path.write_text(fixed)
    caffec.Net(str(path), caffec.TRAIN)


TRAIN_NET = """
name: "filtered regression"
layer { name: "d" type: "HDF5Data" top: "data" top: "target" top: "keep"
        hdf5_data_param { source: "list.txt" batch_size: 4 } }
layer { name: "f" type: "Filter" bottom: "data" bottom: "target" bottom: "keep"
        top: "fd" top: "ft" }
layer { name: "ip" type: "InnerProduct" bottom: "fd" top: "p"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "ft" top: "loss" }
"""


def test_training_through_the_solver_follows_each_batch_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((12, 3)), rng.standard_normal((12, 2))
    keep = np.array([1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1], dtype=float)  # 2, 3, 1 per batch
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["data"], f["target"], f["keep"] = x, t, keep
    (tmp_path / "list.txt").write_text("data.h5\n")
    (tmp_path / "net.prototxt").write_text(TRAIN_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 5\n'
        "test_iter: 3\ntest_interval: 100\ntest_initialization: false\n"
    )
    monkeypatch.chdir(tmp_path)
    solver = SGDSolver("solver.prototxt", log=lambda _: None, dtype="float64",
                       outputs_only=True)  # as caffec train builds  # fmt: skip
    w = solver.net.params["ip"][0].data.copy()
    b = solver.net.params["ip"][1].data.copy()
    history = [np.zeros_like(w), np.zeros_like(b)]
    rate, momentum = float(np.float32(0.1)), float(np.float32(0.9))  # as the prototxt holds them
    for iteration in range(5):  # Caffe's SGD with momentum on the kept items of each batch
        rows = slice(4 * (iteration % 3), 4 * (iteration % 3) + 4)
        kept = keep[rows] != 0
        diff = x[rows][kept] @ w.T + b - t[rows][kept]
        for h, g in zip(history, (diff.T @ x[rows][kept] / kept.sum(), diff.sum(0) / kept.sum()),
                        strict=True):  # fmt: skip
            h *= momentum
            h += rate * g
        w, b = w - history[0], b - history[1]
    solver.step(5)
    np.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-10)
    np.testing.assert_allclose(solver.net.params["ip"][1].data, b, rtol=1e-10)
    losses = []
    for batch in range(3):
        rows = slice(4 * batch, 4 * batch + 4)
        kept = keep[rows] != 0
        diff = x[rows][kept] @ w.T + b - t[rows][kept]
        losses.append((diff**2).sum() / 2 / kept.sum())
    tested = solver.loop.test(0)
    assert tested["loss"] == pytest.approx(np.mean(losses), rel=1e-10)
