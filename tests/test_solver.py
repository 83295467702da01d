"""Solvers: each update rule and lr policy against a numpy transcription of Caffe's code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import caffec
from caffec.errors import UserError
from caffec.runtime.training import SolverSettings, learning_rate
from caffec.solver import AdamSolver, SGDSolver, get_solver

NET = """
name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a"
        param { name: "shared" lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "b" type: "InnerProduct" bottom: "x" top: "b"
        param { name: "shared" lr_mult: 1 decay_mult: 1 } param { lr_mult: 0.5 decay_mult: 3 }
        inner_product_param { num_output: 5 bias_filler { type: "constant" value: 0.25 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
layer { name: "relu" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "frozen" type: "InnerProduct" bottom: "sum" top: "c"
        param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "label" top: "loss" }
"""


def caffe_update(kind: str, s: dict, w, g, hist, rate, lr_mult, decay_mult, t, clip_scale):
    """Caffe's SGDSolver family, transcribed: Normalize, Regularize, ComputeUpdateValue, Update."""
    # the prototxt stores these as float32, and Caffe computes with what it stored
    s = {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in s.items()}
    g = g * clip_scale / s.get("iter_size", 1)
    decay = s.get("weight_decay", 0) * decay_mult
    g = g + decay * (np.sign(w) if s.get("regularization_type") == "L1" else w)
    lr = rate * lr_mult
    m, d = s.get("momentum", 0), s.get("delta", 1e-8)
    if kind == "SGD":
        hist[0] = m * hist[0] + lr * g
        step = hist[0]
    elif kind == "Nesterov":
        previous = hist[0].copy()
        hist[0] = m * hist[0] + lr * g
        step = (1 + m) * hist[0] - m * previous
    elif kind == "AdaGrad":
        hist[0] = hist[0] + g * g
        step = lr * g / (np.sqrt(hist[0]) + d)
    elif kind == "RMSProp":
        rd = s.get("rms_decay", 0.99)
        hist[0] = rd * hist[0] + (1 - rd) * g * g
        step = lr * g / (np.sqrt(hist[0]) + d)
    elif kind == "AdaDelta":
        hist[0] = m * hist[0] + (1 - m) * g * g
        update = g * np.sqrt((hist[1] + d) / (hist[0] + d))
        hist[1] = m * hist[1] + (1 - m) * update * update
        step = lr * update
    else:  # Adam
        m2 = s.get("momentum2", 0.999)
        hist[0] = m * hist[0] + (1 - m) * g
        hist[1] = m2 * hist[1] + (1 - m2) * g * g
        correction = math.sqrt(1 - m2**t) / (1 - m**t)
        step = lr * correction * hist[0] / (np.sqrt(hist[1]) + d)
    return w - step


CASES = [
    ("SGD", {"momentum": 0.9, "weight_decay": 0.0005}),
    ("SGD", {"momentum": 0.5, "weight_decay": 0.01, "regularization_type": "L1", "iter_size": 3}),
    ("SGD", {"momentum": 0.9, "weight_decay": 0.001, "clip_gradients": 0.05}),
    ("Nesterov", {"momentum": 0.95, "weight_decay": 0.002}),
    ("AdaGrad", {"weight_decay": 0.001, "delta": 1e-6}),
    ("RMSProp", {"rms_decay": 0.98, "weight_decay": 0.0005}),
    ("AdaDelta", {"momentum": 0.95, "delta": 1e-6, "weight_decay": 0.0005}),
    ("Adam", {"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8, "iter_size": 2}),
]


def solver_file(tmp_path: Path, kind: str, settings: dict, extra: str = "") -> Path:
    (tmp_path / "net.prototxt").write_text(NET)
    lines = [f'net: "{tmp_path / "net.prototxt"}"', f'type: "{kind}"', "base_lr: 0.1",
             'lr_policy: "inv" gamma: 0.1 power: 0.75', "max_iter: 100", "random_seed: 3"]  # fmt: skip
    lines += [f"{k}: {v!r}".replace("'", '"') for k, v in settings.items()]
    path = tmp_path / "solver.prototxt"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def learnable(solver) -> list[tuple[str, int, float, float]]:
    """(layer, index, lr_mult, decay_mult) of the parameters the solver updates (owners)."""
    return [(p.layer, p.index, p.lr_mult, p.decay_mult)
            for p in solver.net.artifact.manifest.params
            if p.grad is not None and p.shared_with is None and p.lr_mult != 0]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "settings"), CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)]
)
def test_update_rules_match_caffe(tmp_path: Path, kind: str, settings: dict) -> None:
    solver = get_solver(solver_file(tmp_path, kind, settings), dtype="float64", log=lambda m: None)
    rng = np.random.default_rng(0)
    net = solver.net
    params = learnable(solver)
    assert [(layer, i) for layer, i, _, _ in params] == [("a", 0), ("a", 1), ("b", 1)]
    per = 2 if kind in ("AdaDelta", "Adam") else 1
    history = {(layer, i): [np.zeros(net.params[layer][i].data.shape) for _ in range(per)]
               for layer, i, _, _ in params}  # fmt: skip
    frozen = net.params["frozen"][0].data.copy()
    for it in range(4):
        net.blobs["x"].data[...] = rng.standard_normal((4, 3))
        net.blobs["label"].data[...] = rng.integers(0, 3, 4)
        before = {(layer, i): net.params[layer][i].data.copy() for layer, i, _, _ in params}
        net.clear_param_diffs()  # the gradient of one pass; the step sums iter_size of them
        net.forward()
        net.backward()
        passes = settings.get("iter_size", 1)
        grads = {(layer, i): net.params[layer][i].diff * passes for layer, i, _, _ in params}
        solver.step(1)
        rate = learning_rate(solver.settings, it, 0)[0]
        assert rate == pytest.approx(0.1 * (1 + 0.1 * it) ** -0.75)
        clip = settings.get("clip_gradients", -1)
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        scale = clip / norm if 0 <= clip < norm else 1.0
        for layer, i, lr_mult, decay_mult in params:
            expected = caffe_update(kind, settings, before[(layer, i)], grads[(layer, i)], history[(layer, i)],
                                    rate, lr_mult, decay_mult, it + 1, scale)  # fmt: skip
            np.testing.assert_allclose(net.params[layer][i].data, expected, rtol=1e-6, atol=1e-12)
            # what Caffe's ApplyUpdate leaves in the diff: the step subtracted from the weights
            np.testing.assert_allclose(net.params[layer][i].diff, before[(layer, i)] - expected,
                                       rtol=1e-6, atol=1e-12)  # fmt: skip
    np.testing.assert_array_equal(net.params["frozen"][0].data, frozen)
    np.testing.assert_array_equal(net.params["a"][0].data, net.params["b"][0].data)  # shared


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"lr_policy": "fixed"}, lambda it: 0.1),
        ({"lr_policy": "step", "gamma": 0.5, "stepsize": 3}, lambda it: 0.1 * 0.5 ** (it // 3)),
        ({"lr_policy": "exp", "gamma": 0.9}, lambda it: 0.1 * 0.9**it),
        ({"lr_policy": "inv", "gamma": 0.1, "power": 0.75}, lambda it: 0.1 * (1 + 0.1 * it) ** -0.75),
        ({"lr_policy": "multistep", "gamma": 0.1, "stepvalue": [2, 5]},
         lambda it: 0.1 * 0.1 ** ((it >= 2) + (it >= 5))),
        ({"lr_policy": "poly", "power": 2.0, "max_iter": 10}, lambda it: 0.1 * (1 - it / 10) ** 2),
        ({"lr_policy": "sigmoid", "gamma": -0.5, "stepsize": 4},
         lambda it: 0.1 / (1 + math.exp(0.5 * (it - 4)))),
    ],
)  # fmt: skip
def test_lr_policies(policy: dict, expected) -> None:
    settings = SolverSettings(base_lr=0.1, **policy)
    step = 0
    for it in range(9):
        rate, step = learning_rate(settings, it, step)
        assert rate == pytest.approx(expected(it), rel=1e-12)


def test_solver_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown lr_policy 'invv'"):
        learning_rate(SolverSettings(lr_policy="invv"), 0, 0)
    with pytest.raises(UserError, match="unknown solver type 'Adamm'"):
        get_solver(solver_file(tmp_path, "Adamm", {}), log=lambda m: None)
    assert SGDSolver(solver_file(tmp_path, "SGD", {}), log=lambda m: None).iter == 0


def test_python_solvers_follow_pycaffe(tmp_path: Path) -> None:
    """pycaffe takes the mode from set_mode_*, never from the file's solver_mode, and its typed
    constructors build their own type whatever the file's type says."""
    gpu = solver_file(tmp_path, "SGD", {}, "solver_mode: GPU\n")
    solver = AdamSolver(gpu, log=lambda m: None)
    assert solver.net.artifact.manifest.target.name == "c"
    assert solver.settings.type == "Adam" and solver.net.artifact.manifest.solver.type == "Adam"
    assert solver.net.artifact.manifest.solver.histories_per_param == 2


RANDOM_NET = """
name: "noisy"
layer { name: "d" type: "DummyData" top: "x" top: "label" dummy_data_param {
  shape { dim: 8 dim: 6 } shape { dim: 8 }
  data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.25 } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""

SCORED_NET = RANDOM_NET + (  # with a test net's accuracy
    'layer { name: "acc" type: "Accuracy" bottom: "y" bottom: "label" top: "accuracy" '
    "include { phase: TEST } }\n"
)


@pytest.mark.parametrize(("fmt", "suffix"), [("BINARYPROTO", ""), ("HDF5", ".h5")])
def test_resume_continues_the_same_trajectory_bit_for_bit(
    tmp_path: Path, fmt: str, suffix: str
) -> None:
    """Random data (DummyData) and random dropout masks: both must pick up where they were."""
    (tmp_path / "net.prototxt").write_text(RANDOM_NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.05\nmomentum: 0.9\nweight_decay: 0.001\n'
        f'lr_policy: "step" gamma: 0.5 stepsize: 7\nmax_iter: 20\nsnapshot: 10\n'
        f'snapshot_prefix: "{tmp_path / "run"}"\nrandom_seed: 5\nsnapshot_format: {fmt}\n'
    )
    straight = get_solver(solver, log=lambda m: None)
    straight.solve()
    resumed = get_solver(solver, log=lambda m: None)
    resumed.solve(tmp_path / f"run_iter_10.solverstate{suffix}")
    assert resumed.iter == straight.iter == 20
    for name, blobs in straight.net.params.items():
        for a, b in zip(blobs, resumed.net.params[name], strict=True):
            np.testing.assert_array_equal(a.data, b.data)
    assert (tmp_path / f"run_iter_20.caffemodel{suffix}").exists()
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))
    loaded = caffec.Net(str(tmp_path / "net.prototxt"), caffec.TEST,
                        weights=str(tmp_path / f"run_iter_20.caffemodel{suffix}"))  # fmt: skip
    np.testing.assert_array_equal(loaded.params["ip2"][0].data, straight.net.params["ip2"][0].data)


def test_log_lines_are_caffes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    (tmp_path / "net.prototxt").write_text(SCORED_NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        f'net: "{tmp_path / "net.prototxt"}"\ntest_iter: 3\ntest_interval: 4\nbase_lr: 0.01\n'
        f'lr_policy: "fixed"\ndisplay: 2\nmax_iter: 4\nsnapshot_prefix: "{tmp_path / "s"}"\n'
    )
    get_solver(solver).solve()
    lines = capsys.readouterr().err.splitlines()  # on stderr, as glog writes
    glog = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] (.*)$")
    # (the solver's parameters, logged first, run over several lines)
    messages = [match.group(1) for line in lines if (match := glog.match(line))]
    assert "Iteration 0, Testing net (#0)" in messages
    assert any(re.fullmatch(r"    Test net output #0: accuracy = [\d.e-]+", m) for m in messages)
    assert any(re.fullmatch(r"    Test net output #1: loss = [\d.e-]+ \(\* 1 = [\d.e-]+ loss\)", m)
               for m in messages)  # fmt: skip
    assert any(re.fullmatch(r"Iteration 2 \([\d.e+-]+ iter/s, [\d.]+s/2 iters\), loss = [\d.e-]+", m)
               for m in messages)  # fmt: skip
    assert any(re.fullmatch(r"    Train net output #0: loss = [\d.e-]+ \(\* 1 = [\d.e-]+ loss\)", m)
               for m in messages)  # fmt: skip
    assert "Iteration 2, lr = 0.01" in messages
    assert "Iteration 4, Testing net (#0)" in messages
    assert f"Snapshotting to binary proto file {tmp_path / 's'}_iter_4.caffemodel" in messages
    assert messages[-1] == "Optimization Done."


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from caffec.runtime.training import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = Progress(terminal)
    bar.show(5, 10)
    assert terminal.getvalue() == "\r[" + "#" * 15 + "." * 15 + "] 5/10 iterations"
    bar.erase()
    assert terminal.getvalue().endswith("\r") and not bar.shown
    piped = io.StringIO()
    Progress(piped).show(5, 10)
    assert piped.getvalue() == ""
