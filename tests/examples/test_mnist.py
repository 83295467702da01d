"""examples/mnist end to end on MNIST-format IDX files written here: train_lenet.sh converts
them into LMDBs and trains on a copy of the solver shortened to a few iterations, with
batches of 8, and prints the last test accuracy."""

from __future__ import annotations

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

pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")

EXAMPLE = "examples/mnist"


def test_train_lenet_on_idx_files(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE)
    arrays = write_mnist(tmp_path / "idx", train=32, test=16)
    set_fields(root / EXAMPLE / "lenet_solver.prototxt", max_iter=4, snapshot=4, test_iter=1,
               test_interval=2, display=1)  # fmt: skip
    set_fields(root / EXAMPLE / "lenet_train_test.prototxt", batch_size=8)
    out = check_ok(run_script(root, f"{EXAMPLE}/train_lenet.sh", tmp_path / "idx"))
    assert "wrote 32 records" in out and "wrote 16 records" in out
    assert "Iteration 4, Testing net (#0)" in out
    assert "LeNet test accuracy after" in out.splitlines()[-1]
    first = caffe_pb2.Datum.FromString(next(iter_db(root / EXAMPLE / "mnist_test_lmdb", "LMDB"))[1])
    assert first.data == arrays["t10k-images-idx3-ubyte"][0].astype(np.uint8).tobytes()
    assert (root / EXAMPLE / "lenet_iter_4.caffemodel").is_file()
    assert (root / EXAMPLE / "lenet_train.log").is_file()


def test_train_lenet_names_a_missing_file(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE)
    (tmp_path / "empty").mkdir()
    result = run_script(root, f"{EXAMPLE}/train_lenet.sh", tmp_path / "empty")
    assert result.returncode == 2 and "no train-images-idx3-ubyte" in result.stdout
