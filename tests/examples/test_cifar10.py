"""examples/cifar10 end to end, on CIFAR-10 files written here in the data set's exact binary
format (a label byte, then the red, green and blue 32x32 planes): create_cifar10.sh's LMDBs
and mean, and each training script on shrunk copies of the solvers (a few iterations, batches
of 10, each stage resumed from the last one's snapshot as the scripts do)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from example_tools import (  # noqa: F401 - the fixtures this module's tests use
    OUTPUTS,
    REPO,
    caffec_bin_fixture,
    check_ok,
    run_script_fixture,
    sandbox_fixture,
    set_fields,
)

from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import read_blobproto
from caffec.formats.databases import iter_db

pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")

EXAMPLE = "examples/cifar10"
PER_BATCH, TEST = 6, 5  # records in each data_batch_N.bin, in test_batch.bin


def write_cifar(folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Six CIFAR-10 batch files in ``folder``; the training and test records (N x 3073)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        count = TEST if name == "test_batch.bin" else PER_BATCH
        records = rng.integers(0, 256, size=(count, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, size=count)
        (folder / name).write_bytes(records.tobytes())
        batches.append(records)
    return np.concatenate(batches[:5]), batches[5]


@pytest.fixture(scope="module")
def made(tmp_path_factory, caffec_bin) -> tuple[Path, np.ndarray, np.ndarray]:
    """A checkout with examples/cifar10 in which create_cifar10.sh ran on files written here
    (once for this module's tests); the training and test records."""
    import os
    import shutil
    import subprocess

    tmp = tmp_path_factory.mktemp("cifar10")
    root = tmp / "checkout"
    shutil.copytree(REPO / EXAMPLE, root / EXAMPLE, ignore=OUTPUTS)
    train, test = write_cifar(tmp / "download" / "cifar-10-batches-bin")
    env = {**os.environ, "PATH": f"{caffec_bin}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", f"{EXAMPLE}/create_cifar10.sh", str(tmp / "download")],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, check=False)  # fmt: skip
    check_ok(result)
    return root, train, test


def created(made, tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A copy of ``made``'s checkout, for one test to train in."""
    import shutil

    root, train, test = made
    shutil.copytree(root, tmp_path / "checkout")
    return tmp_path / "checkout", train, test


def test_create_cifar10_writes_the_records_and_the_mean(made) -> None:
    root, train, test = made
    for name, records in (("train", train), ("test", test)):
        got = list(iter_db(root / EXAMPLE / f"cifar10_{name}_lmdb", "LMDB"))
        assert [k for k, _ in got] == [b"%05d" % i for i in range(len(records))]
        for (_, value), record in zip(got, records, strict=True):
            datum = caffe_pb2.Datum.FromString(value)
            assert (datum.channels, datum.height, datum.width) == (3, 32, 32)
            assert datum.label == record[0] and datum.data == record[1:].tobytes()
    mean = read_blobproto(root / EXAMPLE / "mean.binaryproto")
    expected = train[:, 1:].reshape(-1, 3, 32, 32).mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(mean.data.reshape(3, 32, 32), expected, rtol=1e-5)


def test_create_cifar10_takes_the_archive_as_downloaded(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE)
    write_cifar(tmp_path / "cifar-10-batches-bin")
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    out = check_ok(run_script(root, f"{EXAMPLE}/create_cifar10.sh", archive))
    assert f"wrote {5 * PER_BATCH} records to" in out and "Done." in out


def test_create_cifar10_without_data_says_where_to_get_it(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE)
    result = run_script(root, f"{EXAMPLE}/create_cifar10.sh", tmp_path / "nowhere")
    assert result.returncode == 2 and "cifar-10-binary.tar.gz" in result.stdout
    (tmp_path / "empty").mkdir()
    result = run_script(root, f"{EXAMPLE}/create_cifar10.sh", tmp_path / "empty")
    assert result.returncode == 2 and "Traceback" not in result.stdout
    result = run_script(root, f"{EXAMPLE}/train_quick.sh")
    assert (
        result.returncode == 2 and "run examples/cifar10/create_cifar10.sh first" in result.stdout
    )
    bad = tmp_path / "not.tar.gz"
    bad.write_bytes(b"not an archive")
    result = run_script(root, f"{EXAMPLE}/create_cifar10.sh", bad)
    assert result.returncode == 2 and "is not CIFAR-10's .tar.gz" in result.stdout


def shrink(root: Path, stages: dict[str, int], nets: list[str]) -> None:
    """Each solver's max_iter (and snapshot) set to its stage's end, tests of one batch every
    2 iterations; each net's batches of 10."""
    for solver, end in stages.items():
        set_fields(root / EXAMPLE / solver, max_iter=end, snapshot=end, test_iter=1,
                   test_interval=2, display=1)  # fmt: skip
    for net in nets:
        set_fields(root / EXAMPLE / net, batch_size=10)


def test_train_quick_trains_then_resumes_at_the_lower_rate(
    made, run_script, tmp_path, capsys
) -> None:
    root, _, _ = created(made, tmp_path)
    shrink(root, {"cifar10_quick_solver.prototxt": 4, "cifar10_quick_solver_lr1.prototxt": 6},
           ["cifar10_quick_train_test.prototxt"])  # fmt: skip
    out = check_ok(run_script(root, f"{EXAMPLE}/train_quick.sh"))
    assert "Restoring previous solver status from examples/cifar10/cifar10_quick_iter_4" in out
    log = (root / EXAMPLE / "cifar10_quick_train.log").read_text()
    assert "Iteration 4, lr = 0.0001" in log and "Iteration 6, Testing net (#0)" in log
    assert (root / EXAMPLE / "cifar10_quick_iter_6.caffemodel.h5").is_file()  # HDF5 stage

    from caffec.cli import main

    assert (
        main(["plot", str(root / EXAMPLE / "cifar10_quick_train.log"), str(tmp_path / "q.png")])
        == 0
    )
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "5 test passes" in capsys.readouterr().out  # 0, 2, 4, then 4, 6 resumed


def test_train_full_runs_its_three_stages(made, run_script, tmp_path) -> None:
    root, _, _ = created(made, tmp_path)
    shrink(root, {"cifar10_full_solver.prototxt": 2, "cifar10_full_solver_lr1.prototxt": 3,
                  "cifar10_full_solver_lr2.prototxt": 4},
           ["cifar10_full_train_test.prototxt"])  # fmt: skip
    out = check_ok(run_script(root, f"{EXAMPLE}/train_full.sh"))
    assert (
        "Restoring previous solver status from examples/cifar10/cifar10_full_iter_2.solverstate.h5"
        in out
    )
    assert (
        "Restoring previous solver status from examples/cifar10/cifar10_full_iter_3.solverstate.h5"
        in out
    )
    log = (root / EXAMPLE / "cifar10_full_train.log").read_text()
    assert "Iteration 3, lr = 1e-05" in log
    assert (root / EXAMPLE / "cifar10_full_iter_4.caffemodel.h5").is_file()


@pytest.mark.parametrize("bn", ["", "_bn"])
def test_train_full_sigmoid(made, run_script, tmp_path, bn: str) -> None:
    root, _, _ = created(made, tmp_path)
    shrink(root, {f"cifar10_full_sigmoid_solver{bn}.prototxt": 4},
           [f"cifar10_full_sigmoid_train_test{bn}.prototxt"])  # fmt: skip
    check_ok(run_script(root, f"{EXAMPLE}/train_full_sigmoid{bn}.sh"))
    log = (root / EXAMPLE / f"cifar10_full_sigmoid{bn}_train.log").read_text()
    assert "Iteration 4, Testing net (#0)" in log and "Optimization Done." in log
    assert (root / EXAMPLE / f"cifar10_full_sigmoid{bn}_iter_4.caffemodel").is_file()
