"""Python layers (``type: "Python"``): forward, backward, learnable blobs, data layers,
training, and the errors of user code, on pycaffe's own examples' shapes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from nets import PYLOSS

import caffe
from caffec.errors import UserError

LAYERS = (
    PYLOSS
    + '''
import caffe


class LearnedScale(caffe.Layer):
    """y = x * w per channel, w a learnable blob set up from param_str."""

    def setup(self, bottom, top):
        self.blobs.add_blob(bottom[0].channels)
        self.blobs[0].data[...] = float(self.param_str)
        self.setups = getattr(self, "setups", 0) + 1

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data[None, :]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[None, :]


class Counter(caffe.Layer):
    """A data layer: batch i holds the numbers i*B .. i*B+B-1 and their parity as labels."""

    def setup(self, bottom, top):
        self.batch = int(self.param_str)
        self.position = 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 2)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        values = np.arange(self.position, self.position + self.batch)
        top[0].data[:, 0] = values
        top[0].data[:, 1] = 1
        top[1].data[...] = values % 2
        self.position += self.batch

    def backward(self, top, propagate_down, bottom):
        pass


class Broken(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise ValueError("the user's bug")


class Growing(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].reshape(bottom[0].num + 1, *bottom[0].data.shape[1:])
'''
)

LINREG = """
name: "LinearRegressionExample"
layer { type: "Input" name: "input" top: "x" top: "y"
        input_param { shape { dim: 10 dim: 3 dim: 2 } shape { dim: 10 dim: 3 dim: 2 } } }
layer { type: "InnerProduct" name: "ipx" top: "ipx" bottom: "x"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { type: "InnerProduct" name: "ipy" top: "ipy" bottom: "y"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { type: "Python" name: "loss" top: "loss" bottom: "ipx" bottom: "ipy"
        python_param { module: "user_layers" layer: "EuclideanLossLayer" } loss_weight: 1 }
"""


@pytest.fixture
def layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the user's layer module, on sys.path as pycaffe users put it."""
    (tmp_path / "user_layers.py").write_text(LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_layers", raising=False)
    return tmp_path


def write(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return str(folder / name)


def test_a_python_loss_runs_forward_and_backward(layers: Path) -> None:
    net = caffe.Net(write(layers, "linreg.prototxt", LINREG), caffe.TRAIN)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 10, 3, 2))
    loss = net.forward(x=x, y=y)["loss"]
    wx, bx = (p.data for p in net.params["ipx"])
    wy, by = (p.data for p in net.params["ipy"])
    diff = (x.reshape(10, 6) @ wx.T + bx) - (y.reshape(10, 6) @ wy.T + by)
    np.testing.assert_allclose(loss, np.sum(diff**2) / 20, rtol=1e-5)
    net.backward()
    np.testing.assert_allclose(net.blobs["ipx"].diff, diff / 10, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.blobs["ipy"].diff, -diff / 10, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.params["ipx"][0].diff, (diff / 10).T @ x.reshape(10, 6),
                               rtol=1e-4, atol=1e-6)  # fmt: skip


SCALE_NET = """
name: "scale"
force_backward: true
layer { type: "Input" name: "input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { type: "Python" name: "scale" bottom: "x" top: "s"
        python_param { module: "user_layers" layer: "LearnedScale" param_str: "0.5" } }
layer { type: "ReLU" name: "relu" bottom: "x" top: "r" }
layer { type: "Eltwise" name: "sum" bottom: "s" bottom: "r" top: "sum" }
layer { type: "Reduction" name: "loss" bottom: "sum" top: "loss"
        reduction_param { operation: SUMSQ } loss_weight: 1 }
"""


@pytest.mark.parametrize("opt_level", [0, 1, 2])
def test_learnable_blobs_and_summed_gradients_match_finite_differences(
    layers: Path, opt_level: int
) -> None:
    """x feeds the Python layer and a ReLU: its gradient is the sum of both routes."""
    net = caffe.Net(write(layers, "scale.prototxt", SCALE_NET), caffe.TRAIN,
                    dtype="float64", opt_level=opt_level)  # fmt: skip
    assert [p.data.tolist() for p in net.params["scale"]] == [[0.5, 0.5, 0.5]]
    net.params["scale"][0].data[...] = [0.5, -1.0, 2.0]
    x = np.random.default_rng(1).standard_normal((4, 3))

    def loss(x: np.ndarray, w: np.ndarray) -> float:
        return float(np.sum((x * w + np.maximum(x, 0)) ** 2))

    w = net.params["scale"][0].data.copy()
    np.testing.assert_allclose(net.forward(x=x)["loss"], loss(x, w), rtol=1e-10)
    net.clear_param_diffs()
    grads = net.backward()
    eps = 1e-6
    for array, analytic in ((x, grads["x"]), (w, net.params["scale"][0].diff)):
        numeric = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            up, down = array.copy(), array.copy()
            up[i] += eps
            down[i] -= eps
            pair = (up, w) if array is x else (x, up), (down, w) if array is x else (x, down)
            numeric[i] = (loss(*pair[0]) - loss(*pair[1])) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    # a rebuild (a new input shape) keeps the layer's object: reshape again, never setup
    instance = net._python.instances["scale"]
    net.blobs["x"].reshape(2, 3)
    net.forward(x=x[:2])
    assert net._python.instances["scale"] is instance and instance.setups == 1


def test_a_python_data_layer_feeds_training(layers: Path) -> None:
    net_text = """
    name: "parity"
    layer { type: "Python" name: "data" top: "data" top: "label"
            python_param { module: "user_layers" layer: "Counter" param_str: "8" } }
    layer { type: "InnerProduct" name: "ip" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 weight_filler { type: "constant" } } }
    layer { type: "SoftmaxWithLoss" name: "loss" bottom: "ip" bottom: "label" top: "loss" }
    """
    net_file = write(layers, "parity.prototxt", textwrap.dedent(net_text))
    solver_file = write(layers, "solver.prototxt", f'net: "{net_file}"\nbase_lr: 0.01\n'
                        'lr_policy: "fixed"\nmax_iter: 3\ndisplay: 0\n')  # fmt: skip
    solver = caffe.SGDSolver(solver_file, log=lambda line: None)
    solver.step(3)
    data = solver.net.blobs["data"].data
    np.testing.assert_array_equal(data[:, 0], np.arange(16, 24))  # the third batch
    np.testing.assert_array_equal(solver.net.blobs["label"].data, np.arange(16, 24) % 2)
    # pycaffe hands out the layer's own object: user code calls its methods on it
    layer = solver.net.layers[list(solver.net._layer_names).index("data")]
    assert layer.type == "Python" and layer.position == 24
    layer.position = 0
    solver.net.forward()
    np.testing.assert_array_equal(solver.net.blobs["data"].data[:, 0], np.arange(8))
    assert solver.net.layer_dict["data"] is layer
    assert np.abs(solver.net.params["ip"][0].data).max() > 0  # it trained
    # and with the command line, as `caffe train` runs Python layers
    run = subprocess.run(
        [sys.executable, "-m", "caffec", "train", "-solver", solver_file],
        capture_output=True, text=True, cwd=layers, env={**os.environ, "PYTHONPATH": str(layers)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Optimization Done" in run.stdout + run.stderr


def test_errors_in_user_code_name_the_layer(layers: Path) -> None:
    for cls, expected in (("Broken", "the user's bug"), ("Growing", "cannot become 5x3")):
        text = SCALE_NET.replace("LearnedScale", cls)
        net = caffe.Net(write(layers, f"{cls}.prototxt", text), caffe.TEST)
        with pytest.raises(UserError, match=expected) as info:
            net.forward(x=np.ones((4, 3)))
        assert info.value.layer == "scale"
    with pytest.raises(UserError, match="user_layers.py.*forward"):  # the user's traceback
        net = caffe.Net(write(layers, "broken.prototxt", SCALE_NET.replace("LearnedScale", "Broken")),
                        caffe.TEST)  # fmt: skip
        net.forward(x=np.ones((4, 3)))
    missing = SCALE_NET.replace('module: "user_layers"', 'module: "no_such_module"')
    with pytest.raises(UserError, match="cannot import the Python layer module 'no_such_module'"):
        caffe.Net(write(layers, "missing.prototxt", missing), caffe.TEST)


def test_python_layers_run_between_the_gpus_kernels(layers: Path, any_gpu) -> None:
    """On the CUDA target the layer sees host copies of the device's buffers, and what it
    writes goes back before the next kernels: the same numbers as on the CPU."""
    from caffec.runtime import gpu

    path = write(layers, "scale.prototxt", SCALE_NET)
    on_gpu = caffe.Net(path, caffe.TRAIN)
    assert on_gpu.artifact.manifest.target.name == "cuda"
    gpu.set_mode_cpu()
    on_cpu = caffe.Net(path, caffe.TRAIN)
    x = np.random.default_rng(2).standard_normal((4, 3))
    for net in (on_gpu, on_cpu):
        net.params["scale"][0].data[...] = [0.5, -1.0, 2.0]
        net.forward(x=x)
        net.backward()
    np.testing.assert_allclose(on_gpu.blobs["loss"].data, on_cpu.blobs["loss"].data, rtol=1e-5)
    np.testing.assert_allclose(on_gpu.blobs["x"].diff, on_cpu.blobs["x"].diff, rtol=1e-5)
    np.testing.assert_allclose(on_gpu.params["scale"][0].diff, on_cpu.params["scale"][0].diff,
                               rtol=1e-5)  # fmt: skip
