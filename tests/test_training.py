"""Training end to end as a user runs it: convert IDX files, `caffec train`, `caffec test`."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from caffec.cli import main
from caffec.formats.idx import read_idx

# Debian's dataset-fashion-mnist, or a copy elsewhere (scripts/gpu_check.sh carries one)
FASHION = Path(os.environ.get("CAFFEC_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzipped), MNIST's format: magic, dims, big-endian data."""
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.tobytes()))


@pytest.fixture(scope="module")
def small_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 2000 training and 500 test images of Fashion-MNIST as IDX files."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            "Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)"
        )
    folder = tmp_path_factory.mktemp("fashion")
    for name, count in (("train", 2000), ("t10k", 500)):
        for kind in ("images-idx3", "labels-idx1"):
            array = read_idx(FASHION / f"{name}-{kind}-ubyte.gz")[:count]
            write_idx(folder / f"{name}-{kind}-ubyte.gz", np.ascontiguousarray(array))
    return folder


def test_convert_train_and_test(small_fashion: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, db in (("train", "mnist_train_lmdb"), ("t10k", "mnist_test_lmdb")):
        status = main(["convert-mnist", str(small_fashion / f"{name}-images-idx3-ubyte.gz"),
                       str(small_fashion / f"{name}-labels-idx1-ubyte.gz"), db])  # fmt: skip
        assert status == 0
    net = (REPO / "examples/mnist/lenet_train_test.prototxt").read_text()
    net = net.replace("examples/mnist/", "").replace("batch_size: 100", "batch_size: 50")
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\ntest_iter: 10\ntest_interval: 300\nbase_lr: 0.01\nmomentum: 0.9\n'
        'weight_decay: 0.0005\nlr_policy: "inv"\ngamma: 0.0001\npower: 0.75\ndisplay: 50\n'
        'max_iter: 300\nsnapshot_prefix: "lenet"\nrandom_seed: 1701\nsolver_mode: CPU\n'
    )
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    out = capsys.readouterr().err
    losses = [float(x) for x in re.findall(r"Iteration \d+ \(.*\), loss = ([\d.e-]+)", out)]
    assert losses[0] > 2.0 and losses[-1] < 0.5 * losses[0], losses
    accuracy = float(re.findall(r"Test net output #0: accuracy = ([\d.]+)", out)[-1])
    assert accuracy > 0.6
    assert (tmp_path / "lenet_iter_300.caffemodel").exists()

    status = main(["test", "-model", "net.prototxt", "-weights", "lenet_iter_300.caffemodel",
                   "-iterations", "10"])  # fmt: skip
    assert status == 0
    scored = capsys.readouterr().err
    assert float(re.findall(r"\] accuracy = ([\d.]+)", scored)[-1]) == pytest.approx(accuracy)

    # resume from the snapshot for 100 more iterations
    text = (tmp_path / "solver.prototxt").read_text().replace("max_iter: 300", "max_iter: 400")
    (tmp_path / "solver.prototxt").write_text(text)
    assert (
        main(["train", "-solver", "solver.prototxt", "-snapshot", "lenet_iter_300.solverstate"])
        == 0
    )
    resumed = capsys.readouterr().err
    assert (
        "Iteration 300, Testing net (#0)" in resumed
        and (tmp_path / "lenet_iter_400.caffemodel").exists()
    )


def test_train_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "solver.prototxt").write_text('net: "missing.prototxt"\nbase_lr: 0.1\n')
    assert main(["train", "-solver", str(tmp_path / "solver.prototxt")]) == 2
    assert "missing.prototxt' does not exist" in capsys.readouterr().err
    assert main(["train", "-solver", str(tmp_path / "solver.prototxt"), "-gpu", "0"]) == 2
    assert "drop -gpu" in capsys.readouterr().err
    (tmp_path / "gpu.prototxt").write_text('net: "n.prototxt"\nsolver_mode: GPU\n')
    assert main(["train", "-solver", str(tmp_path / "gpu.prototxt")]) == 2
    assert "-cpu" in capsys.readouterr().err


def test_signals_snapshot_and_stop(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from test_solver import RANDOM_NET

    (tmp_path / "net.prototxt").write_text(RANDOM_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\ndisplay: 1\nmax_iter: 10000000\n'
        'snapshot_prefix: "sig"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "caffec", "train", "-solver", "solver.prototxt"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen = []
    assert proc.stderr is not None  # the log, as glog writes it
    for line in proc.stderr:
        seen.append(line)
        if "Iteration 5, lr" in line:
            proc.send_signal(signal.SIGHUP)  # default effect: snapshot
        if "Snapshotting solver state" in line:
            proc.send_signal(signal.SIGINT)  # default effect: stop
    assert proc.wait(timeout=60) == 0
    text = "".join(seen)
    assert "Optimization stopped early." in text
    # the snapshot SIGHUP asked for, and the one taken before stopping (maybe the same iteration)
    assert text.count("Snapshotting to binary proto file") == 2
    assert list(tmp_path.glob("sig_iter_*.solverstate"))


@pytest.mark.gpu
def test_lenet_trains_on_the_gpu_as_on_the_cpu(small_fashion: Path, tmp_path: Path,
                                               monkeypatch, real_gpu) -> None:  # fmt: skip
    """500 iterations from the same seed on GPU 0 and on the CPU. In float64 the logged
    losses agree within 1e-3 and the test accuracies are the same. In float32 the two
    targets' orders of summation differ in the last bit, and SGD amplifies that (seen on an
    H200: 1e-4 at iteration 20, 2e-2 later, test accuracies 0.814 and 0.824 or 0.844 on two
    machines' CPUs; two C builds for different vector widths drift 1e-2 apart too), so there
    the first loss (before any update) is the same, every loss is near, and the accuracies
    are close."""
    from caffec.runtime import gpu
    from caffec.solver import get_solver

    monkeypatch.chdir(tmp_path)
    for name, db in (("train", "mnist_train_lmdb"), ("t10k", "mnist_test_lmdb")):
        assert main(["convert-mnist", str(small_fashion / f"{name}-images-idx3-ubyte.gz"),
                     str(small_fashion / f"{name}-labels-idx1-ubyte.gz"), db]) == 0  # fmt: skip
    net = (REPO / "examples/mnist/lenet_train_test.prototxt").read_text()
    (tmp_path / "net.prototxt").write_text(net.replace("examples/mnist/", ""))
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\ntest_iter: 5\ntest_interval: 500\nbase_lr: 0.01\nmomentum: 0.9\n'
        'weight_decay: 0.0005\nlr_policy: "inv"\ngamma: 0.0001\npower: 0.75\ndisplay: 20\n'
        'max_iter: 500\nsnapshot_prefix: "lenet"\nrandom_seed: 1701\n'
    )

    def curve(lines: list[str], pattern: str) -> np.ndarray:
        return np.array([float(x) for line in lines for x in re.findall(pattern, line)])

    losses, accuracy = {}, {}
    for dtype in ("float64", "float32"):
        for where in ("gpu", "cpu"):
            lines: list[str] = []
            (gpu.set_mode_gpu if where == "gpu" else gpu.set_mode_cpu)()
            solver = get_solver("solver.prototxt", log=lines.append, dtype=dtype)
            assert solver.net.artifact.manifest.target.name == ("cuda" if where == "gpu" else "c")
            solver.solve()
            losses[dtype, where] = curve(lines, r"Iteration \d+ \(.*\), loss = ([\d.e-]+)")
            accuracy[dtype, where] = curve(lines, r"accuracy = ([\d.]+)")
        drift = np.abs(losses[dtype, "gpu"] - losses[dtype, "cpu"])
        print(f"{dtype}: largest loss difference {drift.max():.2g}, accuracy "
              f"{accuracy[dtype, 'gpu'][-1]} (GPU), {accuracy[dtype, 'cpu'][-1]} (CPU)")  # fmt: skip
    assert len(losses["float64", "gpu"]) == len(losses["float64", "cpu"]) >= 25
    np.testing.assert_allclose(losses["float64", "gpu"], losses["float64", "cpu"], atol=1e-3)
    np.testing.assert_allclose(accuracy["float64", "gpu"], accuracy["float64", "cpu"], atol=1e-3)
    float32 = losses["float32", "gpu"], losses["float32", "cpu"]
    assert float32[0][0] == pytest.approx(float32[1][0], rel=1e-5)
    np.testing.assert_allclose(*float32, atol=0.05)
    assert accuracy["float32", "gpu"][-1] == pytest.approx(accuracy["float32", "cpu"][-1], abs=0.05)
    assert min(accuracy["float32", "gpu"][-1], accuracy["float32", "cpu"][-1]) > 0.6
