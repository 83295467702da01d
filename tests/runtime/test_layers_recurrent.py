"""RNN, LSTM and LSTMUnit: forward against numpy references written from Caffe's unrolled
nets, backward by finite differences, the state one forward hands the next, Caffe's
parameter blobs, and the errors for bottoms that do not fit.

Every case restarts some sequences mid-batch (a 0 marker after t = 0). The gradient checks
run forward many times, so without ``expose_hidden`` their markers are 0 at t = 0: the
state the previous forward left then does not count, as in Caffe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradcheck import check_gradients, one_layer_net, params, randomize_params

import caffec
from caffec.errors import UserError
from caffec.solver import get_solver

# ----------------------------------------------------------------------------- references


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def rnn_reference(x, cont, blobs, static=None, h0=None):
    """Caffe's unrolled RNN: the outputs (T, N, H) and the final hidden state (1, N, H)."""
    steps, streams = cont.shape
    w_xh, b_h, *rest = blobs
    w_s, w_hh, w_ho, b_o = rest if static is not None else [None, *rest]
    h = np.zeros((streams, b_h.size)) if h0 is None else h0.reshape(streams, -1)
    fixed = b_h + (static.reshape(streams, -1) @ w_s.T if static is not None else 0)
    outputs = []
    for t in range(steps):
        h = np.tanh(x[t].reshape(streams, -1) @ w_xh.T + fixed + (cont[t][:, None] * h) @ w_hh.T)
        outputs.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(outputs), h[None]


def lstm_unit_reference(c_prev, gates, cont):
    """Caffe's LSTMUnit over (N, H) cells: c and h."""
    hidden = c_prev.shape[-1]
    i, f, o = (sigmoid(gates[:, k * hidden : (k + 1) * hidden]) for k in range(3))
    g = np.tanh(gates[:, 3 * hidden :])
    c = cont[:, None] * f * c_prev + i * g
    return c, o * np.tanh(c)


def lstm_reference(x, cont, blobs, static=None, h0=None, c0=None):
    """Caffe's unrolled LSTM: the hidden states (T, N, H), and the final h and c (1, N, H)."""
    steps, streams = cont.shape
    w_xc, b_c, *rest = blobs
    w_s, w_hc = rest if static is not None else [None, *rest]
    hidden = w_hc.shape[1]
    h = np.zeros((streams, hidden)) if h0 is None else h0.reshape(streams, hidden)
    c = np.zeros((streams, hidden)) if c0 is None else c0.reshape(streams, hidden)
    fixed = b_c + (static.reshape(streams, -1) @ w_s.T if static is not None else 0)
    outputs = []
    for t in range(steps):
        gates = x[t].reshape(streams, -1) @ w_xc.T + fixed + (cont[t][:, None] * h) @ w_hc.T
        c, h = lstm_unit_reference(c, gates, cont[t])
        outputs.append(h)
    return np.stack(outputs), h[None], c[None]


REFERENCES = {"RNN": rnn_reference, "LSTM": lstm_reference}
STATES = {"RNN": ("h",), "LSTM": ("h", "c")}

# ----------------------------------------------------------------------------- nets


def recurrent_layer(type_: str, hidden: int, static: bool, expose: bool) -> str:
    """The layer under test; bottoms x, cont[, s][, h0[, c0]]; tops y[, hT[, cT]]."""
    bottoms = ["x", "cont"] + (["s"] if static else [])
    tops = ["y"]
    if expose:
        bottoms += [f"{s}0" for s in STATES[type_]]
        tops += [f"{s}T" for s in STATES[type_]]
    return (
        f'layer {{ name: "x" type: "{type_}" '
        + " ".join(f'bottom: "{b}"' for b in bottoms)
        + " "
        + " ".join(f'top: "{t}"' for t in tops)
        + f" recurrent_param {{ num_output: {hidden}"
        + (" expose_hidden: true" if expose else "")
        + " } }"
    )


def recurrent_bottoms(type_, steps, streams, step_shape, hidden, static, expose) -> dict:
    bottoms = {"x": (steps, streams, *step_shape), "cont": (steps, streams)}
    if static:
        bottoms["s"] = (streams, *static)
    if expose:
        bottoms |= {f"{s}0": (1, streams, hidden) for s in STATES[type_]}
    return bottoms


def markers(steps: int, streams: int, first: float) -> np.ndarray:
    """Stream 0 runs one sequence; stream 1 starts a new one at t = 2 (and t = 4)."""
    cont = np.ones((steps, streams))
    cont[0] = first
    cont[2::2, 1] = 0
    return cont


def feed_for(bottoms: dict, cont: np.ndarray, rng: np.random.Generator) -> dict:
    return {n: cont if n == "cont" else rng.standard_normal(s) for n, s in bottoms.items()}


def reference_outputs(type_: str, feed: dict, blobs: list[np.ndarray]) -> dict:
    out = REFERENCES[type_](feed["x"], feed["cont"], blobs, feed.get("s"), *(
        feed.get(f"{s}0") for s in STATES[type_]))  # fmt: skip
    return dict(zip(["y"] + [f"{s}T" for s in STATES[type_]], out, strict=True))


# (type, T, N, step shape, H, static shape or None, expose_hidden)
CASES = [
    ("RNN", 3, 2, (4,), 3, None, False),
    ("RNN", 4, 2, (2, 3), 2, (3,), False),
    ("RNN", 4, 2, (3,), 3, None, True),
    ("RNN", 3, 2, (2,), 4, (2, 2), True),
    ("LSTM", 3, 2, (4,), 3, None, False),
    ("LSTM", 4, 2, (3,), 2, (3,), False),
    ("LSTM", 4, 2, (2, 2), 3, None, True),
    ("LSTM", 3, 2, (3,), 2, (2, 1), True),
]


def case_id(case: tuple) -> str:
    type_, steps, _, _, hidden, static, expose = case
    return f"{type_}-T{steps}-H{hidden}" + ("-static" if static else "") + (
        "-expose" if expose else "")  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_recurrent_forward_and_gradients(tmp_path: Path, case: tuple) -> None:
    type_, steps, streams, step_shape, hidden, static, expose = case
    bottoms = recurrent_bottoms(type_, steps, streams, step_shape, hidden, static, expose)
    net = one_layer_net(tmp_path, recurrent_layer(type_, hidden, bool(static), expose), bottoms)
    rng = np.random.default_rng(3)
    randomize_params(net, rng)
    feed = feed_for(bottoms, markers(steps, streams, 1.0 if expose else 0.0), rng)
    tops = ["y"] + ([f"{s}T" for s in STATES[type_]] if expose else [])
    out = net.forward(blobs=tops, **feed)
    expected = reference_outputs(type_, feed, params(net))
    for top in tops:
        np.testing.assert_allclose(out[top], expected[top], rtol=1e-12, atol=1e-14)
    check_gradients(net, feed, tops, rng, wrt=[n for n in bottoms if n != "cont"])


def test_marker_zero_at_the_start_makes_the_initial_state_irrelevant(tmp_path: Path) -> None:
    """With cont = 0 at t = 0 the exposed initial states get no gradient, as the
    reference says: they do not count."""
    bottoms = recurrent_bottoms("LSTM", 3, 2, (2,), 2, None, True)
    net = one_layer_net(tmp_path, recurrent_layer("LSTM", 2, False, True), bottoms)
    rng = np.random.default_rng(5)
    randomize_params(net, rng)
    feed = feed_for(bottoms, markers(3, 2, 0.0), rng)
    first = net.forward(**feed)["y"].copy()
    net.backward(diffs=["h0", "c0"], y=rng.standard_normal((3, 2, 2)))
    assert not net.blobs["h0"].diff.any() and not net.blobs["c0"].diff.any()
    feed |= {"h0": rng.standard_normal((1, 2, 2)), "c0": rng.standard_normal((1, 2, 2))}
    np.testing.assert_array_equal(net.forward(**feed)["y"], first)


# ----------------------------------------------------------------------------- carried state


@pytest.fixture(params=[("c", 0), ("c", 1), ("c", 2), ("cuda", 2)],
                ids=["c-O0", "c-O1", "c-O2", "cuda-O2"])  # fmt: skip
def build(request: pytest.FixtureRequest) -> int:
    """The C target at each -O level (memory is shared from -O1 on), and the CUDA target on
    the emulated device; the level."""
    target, level = request.param
    if target == "cuda":
        request.getfixturevalue("emulated_gpu")
    return level


@pytest.mark.parametrize("type_", ["RNN", "LSTM"])
def test_each_forward_starts_from_the_state_the_last_one_ended_with(
    tmp_path: Path, type_: str, build: int
) -> None:
    bottoms = recurrent_bottoms(type_, 3, 2, (3,), 2, (2,), False)
    net = one_layer_net(tmp_path, recurrent_layer(type_, 2, True, False), bottoms,
                        opt_level=build)  # fmt: skip
    rng = np.random.default_rng(11)
    randomize_params(net, rng)
    blobs = params(net)
    initial = [None] * len(STATES[type_])  # Caffe starts from zeros
    for first in (1.0, 1.0, 0.0, 1.0):  # the last two: a reset, then carried again
        feed = feed_for(bottoms, markers(3, 2, first), rng)
        got = np.array(net.forward(**feed)["y"])
        expected, *initial = REFERENCES[type_](feed["x"], feed["cont"], blobs, feed["s"], *initial)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_backward_uses_the_state_forward_started_from(tmp_path: Path) -> None:
    """The carried state is part of the second forward's input: the weight gradients of a
    second pass (cont = 1 at t = 0) differentiate through it, with it held fixed."""
    bottoms = recurrent_bottoms("LSTM", 3, 2, (2,), 2, None, False)
    net = one_layer_net(tmp_path, recurrent_layer("LSTM", 2, False, False), bottoms)
    rng = np.random.default_rng(13)
    randomize_params(net, rng)
    feed = feed_for(bottoms, markers(3, 2, 1.0), rng)
    net.forward(**feed)  # leaves a state
    weights = rng.standard_normal((3, 2, 2))
    net.forward(**feed)
    net.clear_param_diffs()
    net.backward(y=weights)
    analytic = [np.array(b.diff) for b in net.params["x"]]
    _, h0, c0 = lstm_reference(feed["x"], feed["cont"], params(net))  # the state it started from
    eps = 1e-6
    for blob, grad in zip(net.params["x"], analytic, strict=True):
        flat = blob.data.reshape(-1)
        for index in range(0, flat.size, max(1, flat.size // 7)):
            saved = flat[index]
            values = []
            for delta in (eps, -eps):
                flat[index] = saved + delta
                y = lstm_reference(feed["x"], feed["cont"], params(net), None, h0, c0)[0]
                values.append(np.sum(y * weights))
            flat[index] = saved
            numeric = (values[0] - values[1]) / (2 * eps)
            assert abs(grad.reshape(-1)[index] - numeric) <= 1e-7 + 1e-5 * abs(numeric)


DELAY_NET = """
layer { name: "in" type: "Input" top: "x" top: "cont" top: "target"
        input_param { shape { dim: 5 dim: 4 dim: 1 } shape { dim: 5 dim: 4 }
                      shape { dim: 5 dim: 4 dim: 1 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 8 weight_filler { type: "uniform" min: -0.3 max: 0.3 } } }
layer { name: "out" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 1 axis: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""


@pytest.mark.parametrize("carried", [True, False])
def test_training_through_the_carried_state(tmp_path: Path, carried: bool) -> None:
    """Truncated backpropagation through time, as Caffe trains: each batch is the next 5
    steps of 4 endless streams, and the target is the input one step back, so at t = 0
    it is the last input of the previous batch, known only through the state the previous
    forward left. The lean training build learns it; with every batch a new sequence
    (cont = 0 at t = 0) that part of the loss stays."""
    (tmp_path / "net.prototxt").write_text(DELAY_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\ntype: "Adam"\nbase_lr: 0.02\n'
        'lr_policy: "fixed"\nmax_iter: 1000\nrandom_seed: 3\n')  # fmt: skip
    solver = get_solver(tmp_path / "solver.prototxt", log=lambda m: None, dtype="float64",
                        outputs_only=True)  # fmt: skip
    net = solver.net
    stream = np.random.default_rng(0).uniform(-1, 1, (1 + 5 * 300, 4))
    cont = np.ones((5, 4))
    cont[0] = 1.0 if carried else 0.0
    losses = []
    for start in range(1, 1 + 5 * 300, 5):
        net.blobs["x"].data[...] = stream[start : start + 5, :, None]
        net.blobs["cont"].data[...] = cont
        net.blobs["target"].data[...] = stream[start - 1 : start + 4, :, None]
        solver.step(1)
        losses.append(float(net.blobs["loss"].data))
    final = np.mean(losses[-50:])
    # a miss at t = 0 alone costs about E[u^2] / 2 = 1/6 (u uniform in [-1, 1]); untrained,
    # the loss is about 5 times that
    assert final < 0.01 if carried else 0.1 < final < 0.25


# ----------------------------------------------------------------------------- Caffe's blobs


@pytest.mark.parametrize(
    ("type_", "static", "shapes"),
    [
        ("RNN", False, [(3, 8), (3,), (3, 3), (3, 3), (3,)]),
        ("RNN", True, [(3, 8), (3,), (3, 5), (3, 3), (3, 3), (3,)]),
        ("LSTM", False, [(12, 8), (12,), (12, 3)]),
        ("LSTM", True, [(12, 8), (12,), (12, 5), (12, 3)]),
    ],
)
def test_parameter_blobs_are_caffes(tmp_path: Path, type_: str, static: bool, shapes) -> None:
    """W_x (over the axes after T and N), b, [W_static (over the axes after N)], W_h, and
    for RNN W_ho and b_o: the order in which Caffe's unrolled net first uses them."""
    bottoms = {"x": (2, 1, 2, 4), "cont": (2, 1)} | ({"s": (1, 5)} if static else {})
    layer = recurrent_layer(type_, 3, static, False).replace(
        "num_output: 3", 'num_output: 3 weight_filler { type: "constant" value: 0.5 } '
        'bias_filler { type: "constant" value: -2 }')  # fmt: skip
    net = one_layer_net(tmp_path, layer, bottoms)
    assert [b.shape for b in net.params["x"]] == shapes
    for blob in net.params["x"]:
        assert np.all(blob.data == (0.5 if len(blob.shape) == 2 else -2))
    assert net.blobs["y"].shape == (2, 1, 3)


# ----------------------------------------------------------------------------- LSTMUnit

UNIT_CASES = [(2, 3, [1.0, 0.0]), (3, 1, [0.0, 1.0, 1.0]), (1, 4, [1.0])]


@pytest.mark.parametrize(("streams", "hidden", "cont"), UNIT_CASES)
def test_lstm_unit(tmp_path: Path, streams: int, hidden: int, cont: list[float]) -> None:
    layer = ('layer { name: "x" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "cont" '
             'top: "cn" top: "hn" }')  # fmt: skip
    bottoms = {"c": (1, streams, hidden), "g": (1, streams, 4 * hidden), "cont": (1, streams)}
    net = one_layer_net(tmp_path, layer, bottoms)
    rng = np.random.default_rng(streams)
    feed = {"c": rng.standard_normal(bottoms["c"]), "g": 2 * rng.standard_normal(bottoms["g"]),
            "cont": np.array([cont])}  # fmt: skip
    out = net.forward(**feed)
    c, h = lstm_unit_reference(feed["c"][0], feed["g"][0], feed["cont"][0])
    np.testing.assert_allclose(out["cn"][0], c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["hn"][0], h, rtol=1e-12, atol=1e-14)
    check_gradients(net, feed, ["cn", "hn"], rng, wrt=["c", "g"])


# ----------------------------------------------------------------------------- errors

ERRORS = [
    ("RNN", "num_output: 0", {"x": (2, 1, 3), "cont": (2, 1)}, "num_output must be positive"),
    ("RNN", "num_output: 2", {"x": (2, 3), "cont": (2, 3)}, "at least 3 axes"),
    ("LSTM", "num_output: 2", {"x": (2, 1, 3), "cont": (2, 2)}, "markers must be T x N"),
    ("LSTM", "num_output: 2", {"x": (2, 1, 3), "cont": (2, 1), "s": (2, 3)},
     "static input must be N x"),
    ("LSTM", "num_output: 2", {"x": (2, 1, 3), "cont": (2, 1), "s": (1,)},
     "static input must be N x"),
    ("LSTM", "num_output: 2 expose_hidden: true", {"x": (2, 1, 3), "cont": (2, 1)},
     "takes x, cont, optionally x_static, then h_0, c_0"),
    ("LSTM", "num_output: 2 expose_hidden: true",
     {"x": (2, 1, 3), "cont": (2, 1), "h0": (1, 1, 2), "c0": (1, 1, 3)},
     "initial c must be 1x1x2"),
    ("RNN", "num_output: 2", {"x": (2, 1, 3), "cont": (2, 1), "s": (1, 2), "t": (1, 2)},
     "takes x, cont, optionally x_static; got 4"),
]  # fmt: skip


@pytest.mark.parametrize(("type_", "param", "bottoms", "message"), ERRORS)
def test_bad_bottoms_are_refused_at_the_layer(tmp_path, type_, param, bottoms, message) -> None:
    tops = ' top: "hT" top: "cT"' if "expose" in param else ""
    layer = (f'layer {{ name: "r" type: "{type_}" '
             + " ".join(f'bottom: "{b}"' for b in bottoms)
             + f' top: "y"{tops} recurrent_param {{ {param} }} }}')  # fmt: skip
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, layer, bottoms)
    assert info.value.layer == "r" and info.value.span is not None


def test_exposed_states_need_their_tops(tmp_path: Path) -> None:
    layer = ('layer { name: "r" type: "RNN" bottom: "x" bottom: "cont" bottom: "h0" top: "y" '
             "recurrent_param { num_output: 2 expose_hidden: true } }")  # fmt: skip
    with pytest.raises(UserError, match="has 2 tops"):
        one_layer_net(tmp_path, layer, {"x": (2, 1, 3), "cont": (2, 1), "h0": (1, 1, 2)})


@pytest.mark.parametrize(
    ("bottoms", "message"),
    [
        ({"c": (1, 2, 3), "g": (1, 2, 10), "cont": (1, 2)}, "gate inputs must be 1 x N x 4H"),
        ({"c": (2, 2, 3), "g": (2, 2, 12), "cont": (2, 2)}, "previous cell state must be 1"),
        ({"c": (1, 2, 3), "g": (1, 2, 12), "cont": (1, 3)}, "markers must be 1 x N"),
    ],
)
def test_lstm_unit_refuses_bad_bottoms(tmp_path: Path, bottoms: dict, message: str) -> None:
    layer = ('layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "cont" '
             'top: "cn" top: "hn" }')  # fmt: skip
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, layer, bottoms)
    assert info.value.layer == "u"


def test_markers_get_no_gradient(tmp_path: Path) -> None:
    """force_backward reaches x but not the markers, which Caffe never differentiates."""
    bottoms = recurrent_bottoms("RNN", 3, 2, (2,), 2, None, False)
    net = one_layer_net(tmp_path, recurrent_layer("RNN", 2, False, False), bottoms,
                        caffec.TRAIN)  # fmt: skip
    rng = np.random.default_rng(2)
    randomize_params(net, rng)
    net.forward(**feed_for(bottoms, markers(3, 2, 0.0), rng))
    net.backward(y=np.ones((3, 2, 2)))
    assert net.blobs["x"].diff.any() and not net.blobs["cont"].diff.any()
