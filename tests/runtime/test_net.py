"""caffec.Net end to end: real weights on real images, a numpy forward, the runtime alone,
hostile names, and the errors a user meets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference as R
from conftest import REPO

import caffec
from caffec.errors import UserError
from caffec.formats.idx import read_idx

LENET = REPO / "examples/mnist/lenet.prototxt"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def lenet_weights(corpus: Path) -> Path:
    return corpus / "weights/lenet_iter_10000.caffemodel"


@pytest.fixture(scope="module")
def lenet_net(lenet_weights: Path) -> caffec.Net:
    return caffec.Net(str(LENET), str(lenet_weights), caffec.TEST)


def test_caffe_trained_lenet_on_fashion_mnist_gives_probabilities(lenet_net: caffec.Net) -> None:
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(
            "Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)"
        )
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[:64]
    x = images.reshape(64, 1, 28, 28).astype(np.float32) / 255
    prob = lenet_net.forward(data=x)["prob"]
    assert prob.shape == (64, 10)
    assert np.all(prob >= 0) and np.all(prob <= 1)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)


def numpy_lenet(x: np.ndarray, p: dict) -> np.ndarray:
    """LeNet's forward written with the independent references."""
    y = R.convolution(x, p["conv1"][0], p["conv1"][1])[0]
    y = R.pooling(y, method="MAX", kernel=(2, 2), stride=(2, 2))[0]
    y = R.convolution(y, p["conv2"][0], p["conv2"][1])[0]
    y = R.pooling(y, method="MAX", kernel=(2, 2), stride=(2, 2))[0]
    y = R.relu(R.inner_product(y, *p["ip1"])[0])[0]
    y = R.inner_product(y, *p["ip2"])[0]
    return R.softmax(y)[0]


def test_random_lenet_equals_a_numpy_forward(tmp_path: Path) -> None:
    net = caffec.Net(str(LENET), caffec.TEST, seed=3)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.shape) * 0.1
    x = rng.random((64, 1, 28, 28)).astype(np.float32)
    prob = net.forward(data=x)["prob"]
    params = {
        name: [b.data.astype(np.float64) for b in blobs] for name, blobs in net.params.items()
    }
    np.testing.assert_allclose(
        prob, numpy_lenet(x.astype(np.float64), params), rtol=1e-5, atol=1e-7
    )


def test_an_artifact_runs_without_the_compiler(tmp_path: Path, lenet_weights: Path) -> None:
    """A fresh process that cannot import lark, networkx or jinja2 still runs the artifact."""
    from caffec.codegen.artifact_writer import write_artifact
    from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph

    out = tmp_path / "lenet.caffec"
    write_artifact(build_kernel_graph(load_layer_graph(LENET, Options()), Options()), out)
    x = np.random.default_rng(1).random((64, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import sys
for name in ("lark", "networkx", "jinja2"):
    sys.modules[name] = None  # importing any of them now fails
import numpy as np
from caffec.runtime.compiled_net import CompiledNet
net = CompiledNet({str(out)!r}, {str(lenet_weights)!r})
np.save({str(tmp_path / "prob.npy")!r}, net.forward(data=np.load({str(tmp_path / "x.npy")!r}))["prob"])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("lark", "networkx", "jinja2") and sys.modules[m]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    here = caffec.Net(str(LENET), str(lenet_weights), caffec.TEST).forward(data=x)["prob"]
    np.testing.assert_array_equal(np.load(tmp_path / "prob.npy"), here)


HOSTILE = ['a"b', "back\\slash", "end */ comment", "new\nline", "int", "static", "main", "%s%n"]


def test_hostile_names_never_reach_the_c_source(tmp_path: Path) -> None:
    def q(name: str) -> str:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    text = f'layer {{ name: {q(HOSTILE[0])} type: "Input" top: {q(HOSTILE[1])} input_param {{ shape {{ dim: 2 dim: 3 }} }} }}\n'
    previous = HOSTILE[1]
    for i, name in enumerate(HOSTILE[2:]):
        text += (f"layer {{ name: {q(name)} type: \"InnerProduct\" bottom: {q(previous)} "
                 f"top: {q(name + str(i))} inner_product_param {{ num_output: 3 }} }}\n")  # fmt: skip
        previous = name + str(i)
    path = tmp_path / "hostile.prototxt"
    path.write_text(text)
    net = caffec.Net(str(path), caffec.TEST, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3))
    expected = x
    for name in HOSTILE[2:]:
        w, b = (blob.data for blob in net.params[name])
        w[...] = rng.standard_normal(w.shape)
        b[...] = rng.standard_normal(b.shape)
        expected = expected @ w.T + b
    out = net.forward(**{HOSTILE[1]: x})
    np.testing.assert_allclose(out[previous], expected, rtol=1e-12)
    source = (net.artifact.path / "kernels.c").read_text()
    for name in HOSTILE:
        if name not in ("int", "static", "main"):  # C keywords appear in C anyway
            assert name not in source
    assert "main" not in source.replace("remaining", "")
    manifest = json.loads((net.artifact.path / "manifest.json").read_text())
    assert HOSTILE[1] in manifest["inputs"]


def test_partial_forward_and_backward(lenet_net: caffec.Net) -> None:
    x = np.random.default_rng(2).random((64, 1, 28, 28)).astype(np.float32)
    full = lenet_net.forward(data=x)["prob"].copy()
    lenet_net.blobs["ip2"].data[...] = 0
    lenet_net.forward(data=x, end="relu1")  # (relu1 writes ip1 in place, as in Caffe)
    assert not lenet_net.blobs["ip2"].data.any(), "stopped after relu1"
    out = lenet_net.forward(start="ip2")
    np.testing.assert_array_equal(out["prob"], full)


def test_partial_runs_never_split_a_fused_kernel(tmp_path: Path) -> None:
    """ip1's GEMM and relu1 run as one kernel at -O2: an artifact refuses to stop between
    them; caffec.Net rebuilds itself once without fusion, keeping parameters and inputs."""
    from caffec.codegen.artifact_writer import write_artifact
    from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph
    from caffec.runtime.compiled_net import CompiledNet

    lenet = REPO / "examples/mnist/lenet.prototxt"
    options = Options(shapes={"data": (4, 1, 28, 28)})
    kgraph = build_kernel_graph(load_layer_graph(lenet, options), options)
    artifact = CompiledNet(write_artifact(kgraph, tmp_path / "lenet"))
    x = np.random.default_rng(3).random((4, 1, 28, 28))
    with pytest.raises(UserError, match="'ip1' and 'relu1' run as one fused kernel"):
        artifact.forward(data=x, end="ip1")
    with pytest.raises(UserError, match="fused"):
        artifact.forward(start="relu1")

    net = caffec.Net(str(lenet), caffec.TEST, shapes={"data": (4, 1, 28, 28)})
    rng = np.random.default_rng(4)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.data.shape) * 0.1
    full = net.forward(data=x)["prob"].copy()
    weights = net.params["ip1"][0].data.copy()
    net.blobs["data"].data[...] = x
    net.forward(end="ip1")  # rebuilds at -O1: relu1 has not run yet
    assert not any(s.joined for s in net.artifact.manifest.forward)
    np.testing.assert_array_equal(net.params["ip1"][0].data, weights)
    assert (net.blobs["ip1"].data < 0).any()
    np.testing.assert_allclose(net.forward(start="relu1")["prob"], full, rtol=1e-5)
    with pytest.raises(UserError, match="opt_level"):
        caffec.Net(str(lenet), caffec.TEST, opt_level=3)


def test_train_net_backward_accumulates_param_gradients(tmp_path: Path) -> None:
    net = caffec.Net(str(REPO / "examples/mnist/lenet_train_test.prototxt"), caffec.TRAIN,
                     shapes={"data": (8, 1, 28, 28)})  # fmt: skip
    rng = np.random.default_rng(0)
    net.forward(data=rng.random((8, 1, 28, 28)), label=rng.integers(0, 10, 8))
    assert 1.5 < float(net.blobs["loss"].data) < 3.5  # about log(10) at the start
    net.clear_param_diffs()
    net.backward()
    first = net.params["conv1"][0].diff.copy()
    assert np.abs(first).sum() > 0
    net.backward()
    np.testing.assert_allclose(
        net.params["conv1"][0].diff, 2 * first, atol=1e-5 * np.abs(first).max()
    )


def test_reshape_rebuilds_with_the_same_parameters(lenet_net: caffec.Net) -> None:
    net = caffec.Net(str(LENET), caffec.TEST, seed=5)
    before = net.params["ip1"][0].data.copy()
    net.blobs["data"].reshape(3, 1, 28, 28)
    net.reshape()
    assert net.blobs["prob"].data.shape == (3, 10)
    np.testing.assert_array_equal(net.params["ip1"][0].data, before)
    assert net.forward(data=np.zeros((3, 1, 28, 28)))["prob"].shape == (3, 10)


def test_save_and_copy_from_round_trip(tmp_path: Path, lenet_weights: Path) -> None:
    net = caffec.Net(str(LENET), str(lenet_weights), caffec.TEST)
    net.save(tmp_path / "copy.caffemodel")
    again = caffec.Net(str(LENET), caffec.TEST, weights=str(tmp_path / "copy.caffemodel"))
    for name, blobs in net.params.items():
        for a, b in zip(blobs, again.params[name], strict=True):
            np.testing.assert_array_equal(a.data, b.data)


def test_user_errors(tmp_path: Path, lenet_net: caffec.Net) -> None:
    with pytest.raises(UserError, match="no such weights file"):
        caffec.Net(str(LENET), str(tmp_path / "missing.caffemodel"), caffec.TEST)
    other = tmp_path / "wide.prototxt"
    other.write_text(LENET.read_text().replace("num_output: 500", "num_output: 300"))
    with pytest.raises(UserError) as info:
        caffec.Net(
            str(other),
            str(REPO.parent / "shared/corpus/weights/lenet_iter_10000.caffemodel"),
            caffec.TEST,
        )
    assert "layer 'ip1'" in info.value.message and "500x800" in info.value.message
    assert "300x800" in info.value.message
    with pytest.raises(UserError, match="has shape 2x1x28x28, the net expects 64x1x28x28"):
        lenet_net.forward(data=np.zeros((2, 1, 28, 28)))
    with pytest.raises(UserError, match="dtype <U1"):
        lenet_net.forward(data=np.full((64, 1, 28, 28), "x"))
    with pytest.raises(UserError, match="no blob named 'probs'"):
        lenet_net.forward(blobs=["probs"])
    with pytest.raises(UserError, match="no blob named 'image'"):
        lenet_net.forward(image=np.zeros((64, 1, 28, 28)))
    with pytest.warns(UserWarning, match="no loss and no force_backward"):
        assert not lenet_net.backward(prob=np.ones((64, 10)))["data"].any()


def test_memory_data_takes_batches_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "memory.prototxt"
    path.write_text(
        'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
        "memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 } }\n"
    )
    net = caffec.Net(str(path), caffec.TEST)
    data = np.arange(12, dtype=np.float32).reshape(4, 1, 1, 3)
    net.set_input_arrays(data, np.array([0, 1, 2, 3]))
    first = net.forward(blobs=["data", "label"])
    np.testing.assert_array_equal(first["data"], data[:2])
    np.testing.assert_array_equal(net.forward(blobs=["label"])["label"], [2, 3])
    np.testing.assert_array_equal(net.forward(blobs=["label"])["label"], [0, 1])
    with pytest.raises(UserError, match="not a multiple of the batch size 2"):
        net.set_input_arrays(data[:3], np.zeros(3))


@pytest.mark.parametrize(
    ("model", "shape"),
    [("bvlc_reference_caffenet", (2, 3, 227, 227)), ("bvlc_googlenet", (2, 3, 224, 224))],
)
def test_big_deploy_nets_compile_and_run(corpus: Path, model: str, shape: tuple) -> None:
    net = caffec.Net(str(corpus / f"bvlc/models/{model}/deploy.prototxt"), caffec.TEST,
                     shapes={"data": shape})  # fmt: skip
    prob = net.forward(data=np.random.default_rng(0).standard_normal(shape))["prob"]
    assert prob.shape == (2, 1000) and np.isfinite(prob).all()
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)


def test_an_artifact_compiled_again_in_the_same_folder_runs_its_new_code(tmp_path: Path) -> None:
    """dlopen would hand back the library first loaded from that path."""
    from caffec.codegen.artifact_writer import write_artifact
    from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph
    from caffec.runtime.compiled_net import CompiledNet

    out = tmp_path / "net.caffec"
    for scale in (2.0, 3.0):
        net_file = tmp_path / "net.prototxt"
        net_file.write_text('input: "x" input_shape { dim: 4 }\nlayer { name: "p" type: "Power" '
                            f'bottom: "x" top: "y" power_param {{ scale: {scale} }} }}')  # fmt: skip
        options = Options(phase="TEST")
        write_artifact(build_kernel_graph(load_layer_graph(net_file, options), options), out)
        y = CompiledNet(out).forward(x=np.ones(4, np.float32))["y"]
        np.testing.assert_array_equal(y, np.full(4, scale, np.float32))
