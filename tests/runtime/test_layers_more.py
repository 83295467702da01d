"""LRN, BatchNorm, Scale, Bias, Crop, Reduction and the regression losses: forward against the numpy
references, backward by finite differences, as in test_layers.py.

Parameter values are exactly representable in float32 (prototxt floats are float32), so
the references get the same numbers the compiled layer does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import reference as R
from gradcheck import check_gradients, one_layer_net, params, run_case

import caffec
from caffec.errors import UserError

# ----------------------------------------------------------------------------- LRN

LRN_CASES = [
    ("local_size: 3 alpha: 0.5 beta: 0.75 k: 2", (2, 7, 3, 4), {"local_size": 3, "alpha": 0.5, "beta": 0.75, "k": 2.0}),
    ("local_size: 5", (1, 6, 3, 3), {"local_size": 5}),
    ("local_size: 5 alpha: 1.5 beta: 0.5 k: 0.75", (2, 3, 2, 5), {"local_size": 5, "alpha": 1.5, "beta": 0.5, "k": 0.75}),
    ("local_size: 3 alpha: 0.75 beta: 0.625 norm_region: WITHIN_CHANNEL", (2, 2, 5, 4),
     {"local_size": 3, "alpha": 0.75, "beta": 0.625, "norm_region": "WITHIN_CHANNEL"}),
    ("local_size: 5 alpha: 2 k: 3 norm_region: WITHIN_CHANNEL", (1, 3, 4, 7),
     {"local_size": 5, "alpha": 2.0, "k": 3.0, "norm_region": "WITHIN_CHANNEL"}),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "kw"), LRN_CASES)
def test_lrn(tmp_path: Path, param: str, shape: tuple, kw: dict) -> None:
    layer = f'layer {{ name: "x" type: "LRN" bottom: "a" top: "y" lrn_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    np.testing.assert_allclose(out["y"], R.lrn(feed["a"], **kw)[0], rtol=1e-12, atol=1e-14)
    check_gradients(net, feed, ["y"], rng)


# ----------------------------------------------------------------------------- BatchNorm


def bn_blobs(rng: np.random.Generator, channels: int, factor: float) -> list[np.ndarray]:
    """Running sums: a mean, a positive variance, and the factor they are scaled by."""
    return [rng.standard_normal(channels) * factor,
            rng.uniform(0.5, 2.0, channels) * factor, np.array([factor])]  # fmt: skip


BN_CASES = [
    # (param text, phase, bottom shape, use_global_stats, maf, eps, factor)
    ("", caffec.TEST, (2, 3, 4, 5), True, 0.999, 1e-5, 2.5),
    ("", caffec.TRAIN, (3, 4, 2, 3), False, 0.999, 1e-5, 2.5),
    ("use_global_stats: false moving_average_fraction: 0.75 eps: 0.25", caffec.TEST, (4, 3),
     False, 0.75, 0.25, 1.0),
    ("use_global_stats: true eps: 0.125", caffec.TRAIN, (2, 5, 3), True, 0.999, 0.125, 4.0),
    ("", caffec.TEST, (3, 2, 3), True, 0.999, 1e-5, 0.0),  # factor 0: the sums count as 0
    ("moving_average_fraction: 0.5", caffec.TRAIN, (7,), False, 0.5, 1e-5, 3.0),
]  # fmt: skip


@pytest.mark.parametrize(("param", "phase", "shape", "use_global", "maf", "eps", "factor"),
                         BN_CASES)  # fmt: skip
def test_batch_norm(tmp_path: Path, param, phase, shape, use_global, maf, eps, factor) -> None:
    layer = f'layer {{ name: "x" type: "BatchNorm" bottom: "a" top: "y" batch_norm_param {{ {param} }} }}'
    channels = shape[1] if len(shape) > 1 else 1
    before = bn_blobs(np.random.default_rng(9), channels, factor)
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"], phase=phase,
                                   blobs=before)  # fmt: skip
    # Caffe's float32 constants, as the prototxt (or its defaults) gives them
    maf, eps = float(np.float32(maf)), float(np.float32(eps))
    y, *after = R.batch_norm(feed["a"], *before, use_global_stats=use_global,
                             moving_average_fraction=maf, eps=eps)  # fmt: skip
    np.testing.assert_allclose(out["y"], y, rtol=1e-10, atol=1e-12)
    for got, expected in zip(params(net), after, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert all(not b.learned_diff for b in net.params["x"]), "the statistics are not learned"
    check_gradients(net, feed, ["y"], rng)


def test_batch_norm_statistics_accumulate_over_forwards(tmp_path: Path) -> None:
    layer = ('layer { name: "x" type: "BatchNorm" bottom: "a" top: "y" '
             "batch_norm_param { moving_average_fraction: 0.75 } }")  # fmt: skip
    rng = np.random.default_rng(4)
    net = one_layer_net(tmp_path, layer, {"a": (4, 2, 3)}, caffec.TRAIN)
    blobs = [np.zeros(2), np.zeros(2), np.zeros(1)]
    for _ in range(3):
        x = rng.standard_normal((4, 2, 3))
        net.forward(a=x)
        _, *blobs = R.batch_norm(x, *blobs, use_global_stats=False, moving_average_fraction=0.75)
    for got, expected in zip(params(net), blobs, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # a TEST net with these statistics normalizes by them
    test = one_layer_net(tmp_path, layer, {"a": (4, 2, 3)}, caffec.TEST, name="test")
    for blob, value in zip(test.params["x"], blobs, strict=True):
        blob.data[...] = value
    x = rng.standard_normal((4, 2, 3))
    np.testing.assert_allclose(test.forward(a=x)["y"],
                               R.batch_norm(x, *blobs, use_global_stats=True)[0], rtol=1e-10)  # fmt: skip


def test_batch_norm_statistics_are_not_learnable(tmp_path: Path) -> None:
    fixed = ('layer { name: "x" type: "BatchNorm" bottom: "a" top: "y" '
             "param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }")  # fmt: skip
    net = one_layer_net(tmp_path, fixed, {"a": (2, 3)}, caffec.TRAIN)
    assert [p.lr_mult for p in net.artifact.manifest.params] == [0, 0, 0]
    learned = 'layer { name: "x" type: "BatchNorm" bottom: "a" top: "y" param { lr_mult: 0 } param { lr_mult: 1 } }'
    with pytest.raises(UserError, match="lr_mult 1") as info:
        one_layer_net(tmp_path, learned, {"a": (2, 3)}, caffec.TRAIN, name="learned")
    assert info.value.layer == "x" and info.value.span is not None


# ----------------------------------------------------------------------------- Scale, Bias

SCALE_CASES = [
    # (param text, bottoms, axis of the reference)
    ("bias_term: true", {"a": (2, 3, 4, 5)}, 1),
    ("axis: 2 num_axes: 2", {"a": (2, 3, 4, 5)}, 2),
    ("num_axes: 0 bias_term: true", {"a": (3, 4)}, 0),
    ("axis: -1 bias_term: true", {"a": (3, 2, 5)}, 2),
    ("axis: 0 num_axes: -1", {"a": (2, 3, 1)}, 0),
    ("bias_term: true", {"a": (2, 3, 4, 5), "s": (3, 4)}, 1),
    ("axis: 0", {"a": (3, 2, 5), "s": (3, 2)}, 0),
    ("axis: -2 bias_term: true", {"a": (2, 3, 5), "s": (3,)}, 1),
    ("axis: 1 bias_term: true", {"a": (2, 3), "s": ()}, 1),  # a scalar second bottom
]  # fmt: skip


@pytest.mark.parametrize(("param", "bottoms", "axis"), SCALE_CASES)
def test_scale(tmp_path: Path, param: str, bottoms: dict, axis: int) -> None:
    tops = "".join(f'bottom: "{name}" ' for name in bottoms)
    layer = f'layer {{ name: "x" type: "Scale" {tops}top: "y" scale_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, bottoms, ["y"])
    p = params(net)
    scale = feed["s"] if "s" in feed else p.pop(0)
    bias = p[0] if "bias_term" in param else None
    expected = R.scale(feed["a"], scale, bias, axis=axis)[0]
    np.testing.assert_allclose(out["y"], expected, rtol=1e-12)
    check_gradients(net, feed, ["y"], rng)


REDUCTION_CASES = [
    ("", (2, 3, 4), {}),
    ("operation: ASUM axis: 1 coeff: 0.5", (3, 2, 5), {"operation": "ASUM", "axis": 1, "coeff": 0.5}),
    ("operation: SUMSQ axis: -1", (2, 3, 4), {"operation": "SUMSQ", "axis": -1}),
    ("operation: MEAN axis: 2 coeff: -2", (2, 3, 2, 3), {"operation": "MEAN", "axis": 2, "coeff": -2.0}),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "kw"), REDUCTION_CASES)
def test_reduction(tmp_path: Path, param: str, shape: tuple, kw: dict) -> None:
    layer = f'layer {{ name: "x" type: "Reduction" bottom: "a" top: "y" reduction_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    expected = R.reduction(feed["a"], **kw)[0]
    assert out["y"].shape == expected.shape
    np.testing.assert_allclose(out["y"], expected, rtol=1e-12)
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize("operation", ["SUM", "SUMSQ", "ASUM"])
def test_one_number_from_a_large_blob_on_the_threads(tmp_path: Path, operation: str) -> None:
    layer = (f'layer {{ name: "x" type: "Reduction" bottom: "a" top: "y" '
             f"reduction_param {{ operation: {operation} }} }}")  # fmt: skip
    net = one_layer_net(tmp_path, layer, {"a": (64, 40, 30)})  # over the threads' threshold
    a = np.random.default_rng(0).standard_normal((64, 40, 30))
    expected = R.reduction(a, operation=operation)[0]
    np.testing.assert_allclose(net.forward(a=a)["y"], expected, rtol=1e-12)


def test_reduction_axis_out_of_range_names_the_layer(tmp_path: Path) -> None:
    layer = 'layer { name: "r" type: "Reduction" bottom: "a" top: "y" reduction_param { axis: 3 } }'
    with pytest.raises(UserError, match="axis 3 is out of range") as info:
        one_layer_net(tmp_path, layer, {"a": (2, 3, 4)})
    assert info.value.layer == "r" and info.value.span is not None


BIAS_CASES = [
    ("", {"a": (2, 3, 4, 5)}, 1),
    ("axis: 1 num_axes: 2", {"a": (2, 3, 4, 5)}, 1),
    ("num_axes: 0", {"a": (5, 3)}, 0),
    ("axis: -1", {"a": (3, 2, 5)}, 2),
    ("", {"a": (2, 3, 4, 5), "b": (3, 4)}, 1),
    ("axis: 0", {"a": (3, 2, 5), "b": (3,)}, 0),
]  # fmt: skip


@pytest.mark.parametrize(("param", "bottoms", "axis"), BIAS_CASES)
def test_bias(tmp_path: Path, param: str, bottoms: dict, axis: int) -> None:
    tops = "".join(f'bottom: "{name}" ' for name in bottoms)
    layer = f'layer {{ name: "x" type: "Bias" {tops}top: "y" bias_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, bottoms, ["y"])
    bias = feed["b"] if "b" in feed else params(net)[0]
    np.testing.assert_allclose(out["y"], R.bias(feed["a"], bias, axis=axis)[0], rtol=1e-12)
    check_gradients(net, feed, ["y"], rng)


def test_scale_and_bias_chain_in_place(tmp_path: Path) -> None:
    """BatchNorm -> Scale(bias_term) written in place over one blob, as ResNets do."""
    path = tmp_path / "net.prototxt"
    path.write_text(
        'force_backward: true\nlayer { name: "in" type: "Input" top: "a" '
        "input_param { shape { dim: 3 dim: 2 dim: 4 } } }\n"
        'layer { name: "bn" type: "BatchNorm" bottom: "a" top: "a" }\n'
        'layer { name: "sc" type: "Scale" bottom: "a" top: "a" scale_param { bias_term: true } }\n'
    )
    net = caffec.Net(str(path), caffec.TRAIN, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    net.params["sc"][0].data[...] = rng.standard_normal(2)
    net.params["sc"][1].data[...] = rng.standard_normal(2)
    x = rng.standard_normal((3, 2, 4))
    out = net.forward(a=x)["a"]
    normed = R.batch_norm(x, np.zeros(2), np.zeros(2), np.zeros(1), use_global_stats=False)[0]
    expected = R.scale(normed, net.params["sc"][0].data, net.params["sc"][1].data)[0]
    np.testing.assert_allclose(out, expected, rtol=1e-10)
    check_gradients(net, {"a": x}, ["a"], rng)


# ----------------------------------------------------------------------------- Crop

CROP_CASES = [
    ("", (2, 3, 7, 6), (1, 1, 4, 3), 2, ()),
    ("offset: 1", (2, 3, 7, 6), (2, 1, 5, 4), 2, (1,)),
    ("axis: 1 offset: 1 offset: 2 offset: 0", (2, 4, 5, 3), (1, 2, 3, 3), 1, (1, 2, 0)),
    ("axis: -1 offset: 2", (3, 2, 7), (1, 1, 4), -1, (2,)),
    ("axis: 0 offset: 1", (4, 3), (2, 1), 0, (1,)),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "like", "axis", "offset"), CROP_CASES)
def test_crop(tmp_path: Path, param: str, shape: tuple, like: tuple, axis: int, offset) -> None:
    layer = f'layer {{ name: "x" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape, "b": like}, ["y"])
    expected = R.crop(feed["a"], feed["b"], axis=axis, offset=offset)[0]
    np.testing.assert_array_equal(out["y"], expected)
    check_gradients(net, feed, ["y"], rng, wrt=["a"])
    grads = net.backward(diffs=["b"], y=np.ones(out["y"].shape))
    np.testing.assert_array_equal(grads["b"], 0)  # the second bottom only gives a shape


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize(
    ("shapes", "weight"), [(((4, 3), (4, 3)), 1.0), (((3, 2, 2), (3, 4)), 2.5), (((5,), (5,)), 0.5)]
)
def test_euclidean_loss(tmp_path: Path, shapes: tuple, weight: float) -> None:
    # propagate_down: Caffe's EuclideanLoss lets force_backward reach both bottoms
    layer = ('layer { name: "x" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" '
             f"loss_weight: {weight} propagate_down: true propagate_down: true }}")  # fmt: skip
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shapes[0], "b": shapes[1]}, ["loss"])
    np.testing.assert_allclose(out["loss"], R.euclidean_loss(feed["a"], feed["b"])[0], rtol=1e-12)
    check_gradients(net, feed, ["loss"], rng)


SCE_CASES = [
    ("", {}),
    ("loss_param { ignore_label: -1 }", {"ignore_label": -1}),
    ("loss_param { ignore_label: -1 normalization: VALID }", {"ignore_label": -1, "normalization": "VALID"}),
    ("loss_param { normalization: FULL }", {"normalization": "FULL"}),
    ("loss_param { normalization: NONE ignore_label: -1 }", {"normalization": "NONE", "ignore_label": -1}),
    ("loss_param { normalize: true ignore_label: -1 }", {"normalize": True, "ignore_label": -1}),
    ("loss_param { normalize: false }", {"normalize": False}),
]  # fmt: skip


@pytest.mark.parametrize(("loss_param", "kw"), SCE_CASES)
def test_sigmoid_cross_entropy_loss(tmp_path: Path, loss_param: str, kw: dict) -> None:
    layer = ('layer { name: "x" type: "SigmoidCrossEntropyLoss" bottom: "a" bottom: "t" '
             f'top: "loss" loss_weight: 1.5 {loss_param} }}')  # fmt: skip
    rng = np.random.default_rng(6)
    targets = rng.uniform(0, 1, (3, 2, 5))
    targets[rng.uniform(size=targets.shape) < 0.3] = -1  # ignored where ignore_label is -1
    scores = 3 * rng.standard_normal((3, 10))
    scores[0, :2] = (40.0, -40.0)  # the stable formula keeps the extremes finite
    net, feed, out, rng = run_case(tmp_path, layer, {"a": (3, 10), "t": (3, 2, 5)}, ["loss"],
                                   inputs={"a": scores, "t": targets})  # fmt: skip
    expected = R.sigmoid_cross_entropy_loss(scores, targets, **kw)[0]
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-12)
    check_gradients(net, feed, ["loss"], rng, wrt=["a"])


def caffe_contrastive_grad(a, b, sim, *, margin, legacy_version, weight):
    """Caffe's ContrastiveLoss backward for bottom 0 (bottom 1's is its negation)."""
    n = a.shape[0]
    diff = (a - b).reshape(n, -1)
    d2 = (diff**2).sum(axis=1)
    alpha = weight / n
    if legacy_version:
        mdist, beta = margin - d2, -alpha * np.ones(n)
    else:
        dist = np.sqrt(d2)
        mdist = margin - dist
        beta = -alpha * mdist / (dist + 1e-4)
    coef = np.where(sim.reshape(n).astype(np.int64) != 0, alpha, np.where(mdist > 0, beta, 0.0))
    return (coef[:, None] * diff).reshape(a.shape)


CONTRASTIVE_CASES = [
    ("margin: 4", (6, 3), 4.0, False),
    ("margin: 1.5", (8, 2, 1, 1), 1.5, False),
    ("margin: 8 legacy_version: true", (6, 3), 8.0, True),
    ("legacy_version: true", (5, 2), 1.0, True),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "margin", "legacy"), CONTRASTIVE_CASES)
def test_contrastive_loss(tmp_path: Path, param: str, shape: tuple, margin: float, legacy) -> None:
    # propagate_down: Caffe's ContrastiveLoss lets force_backward reach both feature bottoms
    layer = ('layer { name: "x" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" '
             'top: "loss" loss_weight: 2 propagate_down: true propagate_down: true '
             f"propagate_down: false contrastive_loss_param {{ {param} }} }}")  # fmt: skip
    n = shape[0]
    rng = np.random.default_rng(7)
    sim = (np.arange(n) % 2).astype(float).reshape(n, 1, 1, 1)
    net, feed, out, rng = run_case(
        tmp_path, layer, {"a": shape, "b": shape, "sim": (n, 1, 1, 1)}, ["loss"],
        inputs={"a": 0.5 * rng.standard_normal(shape), "b": 0.5 * rng.standard_normal(shape),
                "sim": sim},
    )  # fmt: skip
    expected = R.contrastive_loss(feed["a"], feed["b"], sim, margin=margin, legacy_version=legacy)
    np.testing.assert_allclose(out["loss"], expected[0], rtol=1e-12)
    grads = net.backward(diffs=["a", "b"])
    caffe = caffe_contrastive_grad(feed["a"], feed["b"], sim, margin=margin,
                                   legacy_version=legacy, weight=2.0)  # fmt: skip
    np.testing.assert_allclose(grads["a"], caffe, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b"], -caffe, rtol=1e-12, atol=1e-15)
    # Caffe divides by (distance + 1e-4): the exact gradient is that close, no closer
    check_gradients(net, feed, ["loss"], rng, wrt=["a", "b"], rtol=1e-5 if legacy else 1e-3)


# ----------------------------------------------------------------------------- float32

FLOAT32_CASES = [
    ('type: "LRN" bottom: "a" lrn_param { local_size: 3 alpha: 0.5 }', {"a": (2, 5, 3, 3)},
     lambda f: R.lrn(f["a"], local_size=3, alpha=0.5)),
    ('type: "LRN" bottom: "a" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }',
     {"a": (1, 2, 4, 4)}, lambda f: R.lrn(f["a"], local_size=3, norm_region="WITHIN_CHANNEL")),
    ('type: "BatchNorm" bottom: "a" batch_norm_param { use_global_stats: false }',
     {"a": (4, 3, 5)},
     lambda f: R.batch_norm(f["a"], np.zeros(3), np.zeros(3), np.zeros(1),
                            use_global_stats=False)[:1]),
    ('type: "Crop" bottom: "a" bottom: "b" crop_param { axis: 1 offset: 1 }',
     {"a": (2, 4, 5), "b": (2, 2, 3)}, lambda f: R.crop(f["a"], f["b"], axis=1, offset=(1,))),
    ('type: "EuclideanLoss" bottom: "a" bottom: "b"', {"a": (4, 3), "b": (4, 3)},
     lambda f: R.euclidean_loss(f["a"], f["b"])),
    ('type: "SigmoidCrossEntropyLoss" bottom: "a" bottom: "b"', {"a": (4, 3), "b": (4, 3)},
     lambda f: R.sigmoid_cross_entropy_loss(f["a"], f["b"])),
    ('type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s"',
     {"a": (4, 3), "b": (4, 3), "s": (4,)},
     lambda f: R.contrastive_loss(f["a"], f["b"], f["s"])),
]  # fmt: skip


@pytest.mark.parametrize(("body", "bottoms", "ref"), FLOAT32_CASES,
                         ids=[b.split('"')[1] for b, _, _ in FLOAT32_CASES])  # fmt: skip
def test_float32_builds(tmp_path: Path, body: str, bottoms: dict, ref) -> None:
    """The same layers in the default float32 build, forward and backward."""
    net = one_layer_net(tmp_path, f'layer {{ name: "x" top: "y" {body} }}', bottoms,
                        caffec.TRAIN, dtype="float32")  # fmt: skip
    rng = np.random.default_rng(8)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in bottoms.items()}
    if "s" in feed:
        feed["s"] = (np.arange(4) % 2).astype(np.float32)
    out = net.forward(blobs=["y"], **feed)
    np.testing.assert_allclose(out["y"], ref(feed)[0], rtol=2e-5, atol=1e-6)
    grads = net.backward(diffs=["a"], **({} if net.artifact.manifest.loss_tops else
                                         {"y": np.ones(out["y"].shape, np.float32)}))  # fmt: skip
    assert np.isfinite(grads["a"]).all() and np.abs(grads["a"]).sum() > 0
