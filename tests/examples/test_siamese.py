"""examples/siamese end to end on MNIST-format IDX files written here: create_mnist_siamese.sh's
pair databases, train_mnist_siamese.sh (ContrastiveLoss) shortened with its MAX_ITER variable
on a copy of the net with small batches, and plot_features.py's chart of the learnt 2-D
features."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from example_tools import (  # noqa: F401 - the fixtures this module's tests use
    caffec_bin_fixture,
    check_ok,
    run_script_fixture,
    sandbox_fixture,
    set_fields,
    write_mnist,
)

from caffec.formats import caffe_pb2
from caffec.formats.databases import iter_db

pytest.importorskip("plyvel", reason="plyvel (the `data` extra) is not installed")

EXAMPLE = "examples/siamese"


def test_siamese_example_end_to_end(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE)
    arrays = write_mnist(tmp_path / "idx")
    out = check_ok(run_script(root, f"{EXAMPLE}/create_mnist_siamese.sh", tmp_path / "idx"))
    assert "wrote 40 pairs" in out and "wrote 20 pairs" in out
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    flat = {image.tobytes(): i for i, image in enumerate(images.astype(np.uint8))}
    pairs = list(iter_db(root / EXAMPLE / "mnist_siamese_train_leveldb", "LEVELDB"))
    assert [k for k, _ in pairs] == [b"%08d" % i for i in range(40)]
    for _, value in pairs:
        datum = caffe_pb2.Datum.FromString(value)
        assert (datum.channels, datum.height, datum.width) == (2, 28, 28)
        first, second = flat[datum.data[:784]], flat[datum.data[784:]]
        assert datum.label == int(labels[first] == labels[second])

    set_fields(root / EXAMPLE / "mnist_siamese_solver.prototxt", test_iter=1, test_interval=2,
               display=1, snapshot=4)  # fmt: skip
    set_fields(root / EXAMPLE / "mnist_siamese_train_test.prototxt", batch_size=8)
    out = check_ok(run_script(root, f"{EXAMPLE}/train_mnist_siamese.sh", env={"MAX_ITER": "4"}))
    assert "Iteration 4, Testing net (#0)" in out and "Optimization Done." in out
    log = (root / EXAMPLE / "mnist_siamese_train.log").read_text()
    assert "Test net output #0: loss = " in log
    weights = root / EXAMPLE / "mnist_siamese_iter_4.caffemodel"
    assert weights.is_file()

    chart = tmp_path / "features.png"
    result = subprocess.run(
        [sys.executable, str(root / EXAMPLE / "plot_features.py"), "-i", str(tmp_path / "idx"),
         "-o", str(chart), "-n", "20"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )  # fmt: skip
    printed = check_ok(result)
    assert (
        f"wrote {chart} (20 images, weights {EXAMPLE}/mnist_siamese_iter_4.caffemodel)" in printed
    )
    assert "nearest-neighbour accuracy of the features: " in printed
    assert chart.read_bytes()[:4] == b"\x89PNG"


def test_siamese_scripts_say_what_is_missing(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE)
    result = run_script(root, f"{EXAMPLE}/create_mnist_siamese.sh", tmp_path / "nowhere")
    assert result.returncode == 2 and "give a folder of MNIST-format IDX files" in result.stdout
    (tmp_path / "empty").mkdir()
    result = run_script(root, f"{EXAMPLE}/create_mnist_siamese.sh", tmp_path / "empty")
    assert result.returncode == 2 and "no train-images-idx3-ubyte" in result.stdout
    result = run_script(root, f"{EXAMPLE}/train_mnist_siamese.sh")
    assert result.returncode == 2 and "run examples/siamese/create_mnist_siamese.sh first" in (
        result.stdout
    )
    result = subprocess.run(
        [sys.executable, str(root / EXAMPLE / "plot_features.py")], cwd=root,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "run examples/siamese/train_mnist_siamese.sh first" in (
        result.stdout
    )
    assert "Traceback" not in result.stdout
