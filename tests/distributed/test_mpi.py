"""Data-parallel training under mpirun: `mpirun -np 2 caffec train` against one process.

Needs Open MPI and mpi4py (``bash scripts/setup.sh --mpi``); skipped without them. mpirun
runs with --oversubscribe (two ranks on however few cores), unbound (a CI machine's other
work would stall a rank bound to its core) and, as root, with Open MPI's consent variables
set.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from caffec.cli import main
from caffec.formats.snapshots import weights_by_name

try:
    import mpi4py  # noqa: F401

    MISSING = None if shutil.which("mpirun") else "mpirun is not installed"
except ImportError:
    MISSING = "mpi4py is not installed"
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"{MISSING} (bash scripts/setup.sh --mpi installs Open MPI)"
)
WORKER = Path(__file__).with_name("mpi_worker.py")
LOSS = re.compile(r"Iteration \d+ \(.*\), loss = ([\d.e+-]+)")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.tobytes()))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LMDBs of 1000 and 200 28x28 images of 10 classes (a bright bar whose place is the
    class, in noise), and LeNet reading them with a batch of 32 or 64."""
    folder = tmp_path_factory.mktemp("mpi")
    rng = np.random.default_rng(5)
    for name, count in (("train", 1000), ("test", 200)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 100, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        write_idx(folder / "images.gz", images)
        write_idx(folder / "labels.gz", labels)
        status = main(["convert-mnist", str(folder / "images.gz"), str(folder / "labels.gz"),
                       str(folder / f"{name}_lmdb")])  # fmt: skip
        assert status == 0
    net = (REPO / "examples/mnist/lenet_train_test.prototxt").read_text()
    net = net.replace("examples/mnist/mnist_train_lmdb", str(folder / "train_lmdb"))
    net = net.replace("examples/mnist/mnist_test_lmdb", str(folder / "test_lmdb"))
    for batch in (32, 64):
        (folder / f"net{batch}.prototxt").write_text(
            net.replace("batch_size: 64", f"batch_size: {batch}")
        )
    return folder


def solver(folder: Path, batch: int, name: str, **fields: object) -> Path:
    settings = {"test_iter": 2, "test_interval": 1000, "base_lr": 0.01, "momentum": 0.9,
                "weight_decay": 0.0005, "lr_policy": '"inv"', "gamma": 0.0001, "power": 0.75,
                "display": 1, "max_iter": 200, "random_seed": 1701,
                "snapshot_prefix": f'"{folder / name}"', **fields}  # fmt: skip
    path = folder / f"{name}.prototxt"
    path.write_text(f'net: "{folder / f"net{batch}.prototxt"}"\n'
                    + "".join(f"{k}: {v}\n" for k, v in settings.items()))  # fmt: skip
    return path


def mpirun(ranks: int, *command: str, cwd: Path, timeout: float = 300,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """``mpirun -np ranks command`` (as root too), its output captured."""
    variables = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                     OMPI_MCA_btl_vader_single_copy_mechanism="none",
                     OMPI_MCA_hwloc_base_binding_policy="none", **(env or {}))  # fmt: skip
    return subprocess.run(["mpirun", "--oversubscribe", "-np", str(ranks), *command], cwd=cwd,
                          env=variables, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def train(ranks: int, solver_file: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "caffec.cli", "train", "-solver", str(solver_file), *flags]
    if ranks == 1:
        return subprocess.run(command, cwd=solver_file.parent, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    return mpirun(ranks, *command, cwd=solver_file.parent)


def losses(log: str) -> np.ndarray:
    return np.array([float(x) for x in LOSS.findall(log)])


def weights(path: Path) -> dict[str, np.ndarray]:
    return {f"{layer}/{i}": b.data for layer, blobs in weights_by_name(path).items()
            for i, b in enumerate(blobs)}  # fmt: skip


def test_two_ranks_follow_one_process_with_twice_the_batch(folder: Path) -> None:
    """float32: equal to the printed digits for the first iterations, then within the drift
    float32's summation order alone gives (docs/distributed.md: the bound)."""
    two = train(2, solver(folder, 32, "two"))
    one = train(1, solver(folder, 64, "one"))
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:] + one.stderr[-3000:]
    assert "Data-parallel ranks: 2" in two.stderr
    a, b = losses(two.stderr), losses(one.stderr)
    assert len(a) == len(b) == 200
    relative = np.abs(a - b) / b
    assert relative[:15].max() < 1e-4, relative[:15]
    assert relative.max() < 0.06, relative.max()
    assert abs(a[-50:].mean() - b[-50:].mean()) < 0.01 * b[-50:].mean()
    assert a[-20:].mean() < 0.5 * a[:5].mean()  # it learns
    # rank 0 alone logs and snapshots
    assert two.stderr.count("Solving LeNet") == 1
    assert (folder / "two_iter_200.caffemodel").exists()


def test_float64_ranks_hold_the_same_weights_as_one_process(folder: Path) -> None:
    """float64 (summation order out of the picture): the loss curves agree to every printed
    digit, and at each snapshot every rank's weights are rank 0's."""
    two_solver = solver(folder, 32, "two64", snapshot=30, max_iter=60)
    two = mpirun(2, sys.executable, str(WORKER), str(two_solver), "60", "30", cwd=folder,
                 env={"WORKER_DTYPE": "float64"})  # fmt: skip
    os.makedirs(folder / "single", exist_ok=True)
    one = subprocess.run([sys.executable, str(WORKER), str(solver(folder, 64, "one64")), "60",
                          "60"], cwd=folder / "single", capture_output=True, text=True,
                         env=dict(os.environ, WORKER_DTYPE="float64"), timeout=300)  # fmt: skip
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:] + one.stderr[-3000:]
    assert np.array_equal(losses(two.stderr), losses(one.stderr))
    for iteration in (30, 60):
        ranks = [np.load(folder / f"rank{r}_iter{iteration}.npz") for r in (0, 1)]
        snapshot = weights(folder / f"two64_iter_{iteration}.caffemodel")
        for name, value in snapshot.items():
            assert np.array_equal(ranks[0][name], value) and np.array_equal(ranks[1][name], value)
    single = np.load(folder / "single" / "rank0_iter60.npz")
    for name in single:
        np.testing.assert_allclose(ranks[0][name], single[name], rtol=1e-9, atol=1e-12)


def test_resume_restarts_every_rank_at_the_same_records(folder: Path) -> None:
    straight = train(2, solver(folder, 32, "straight", max_iter=40, snapshot=20))
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed_solver = solver(folder, 32, "straight", max_iter=40, snapshot=20)
    resumed = train(2, resumed_solver, "-snapshot", str(folder / "straight_iter_20.solverstate"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert np.array_equal(losses(straight.stderr)[20:], losses(resumed.stderr))


def test_ranks_with_other_solvers_are_refused(folder: Path) -> None:
    solver(folder, 32, "rank0")
    solver(folder, 32, "rank1", base_lr=0.02)
    command = (f"exec {sys.executable} -m caffec.cli train -solver "
               f"{folder}/rank$OMPI_COMM_WORLD_RANK.prototxt")  # fmt: skip
    result = mpirun(2, "sh", "-c", command, cwd=folder)
    assert result.returncode == 2, result.stderr[-3000:]
    message = "rank 1 trains with other solver than rank 0"
    assert result.stderr.count(message) == 1, result.stderr[-3000:]


@pytest.mark.parametrize("fault", ["hang", "die"])
def test_a_rank_that_fails_ends_the_job_and_leaves_the_snapshot(folder: Path, fault: str) -> None:
    work = folder / fault
    work.mkdir()
    path = solver(folder, 32, f"{fault}/snap", snapshot=10)
    result = mpirun(2, sys.executable, str(WORKER), str(path), "40", "40", fault, "25",
                    cwd=work, env={"WORKER_TIMEOUT": "15"}, timeout=300)  # fmt: skip
    assert result.returncode != 0, result.stderr[-3000:]
    if fault == "hang":  # rank 0 gave up waiting, and said why (15 s: a loaded machine's
        # stalls before the hang must not end the job at another collective)
        assert "rank 0 of 2: the gradient allreduce" in result.stderr, result.stderr[-3000:]
        assert "waited 15 s for the other ranks" in result.stderr
    last = weights(work / "snap_iter_20.caffemodel")
    assert set(last) == {"conv1/0", "conv1/1", "conv2/0", "conv2/1", "ip1/0", "ip1/1", "ip2/0",
                         "ip2/1"}  # fmt: skip
    assert not (work / "snap_iter_30.caffemodel").exists()


def test_a_stop_asked_of_one_rank_stops_every_rank_after_the_same_iteration(folder: Path) -> None:
    work = folder / "stop"
    work.mkdir()
    path = solver(folder, 32, "stop/snap")
    result = mpirun(2, sys.executable, str(WORKER), str(path), "40", "40", "stop", "7",
                    cwd=work, env={"WORKER_TIMEOUT": "20"}, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [np.load(work / f"rank{r}_iter8.npz") for r in (0, 1)]
    for name in ranks[0]:
        assert np.array_equal(ranks[0][name], ranks[1][name])


@pytest.mark.parametrize("iter_size", [1, 2])
def test_the_overlapped_reduction_gives_the_same_weights_bit_for_bit(folder: Path,
                                                                      iter_size: int) -> None:  # fmt: skip
    """layer_wise_reduce (Caffe's default) cuts each iteration's last backward into segments
    and starts each bucket's Iallreduce after the segment that finished it; false reduces
    after backward. Small buckets, so that LeNet has several: the same sums, so the same
    float32 weights on every rank, bit for bit."""
    iterations = 12
    runs, weights = {}, {}
    for overlap in ("true", "false"):
        work = folder / f"overlap_{overlap}_{iter_size}"
        work.mkdir()
        path = solver(folder, 32, f"overlap_{overlap}_{iter_size}/snap", iter_size=iter_size,
                      layer_wise_reduce=overlap)  # fmt: skip
        result = mpirun(2, sys.executable, str(WORKER), str(path), str(iterations),
                        str(iterations), cwd=work, env={"WORKER_BUCKET_BYTES": "65536"})  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[overlap] = [int(n) for n in re.findall(r"rank \d: (\d+) backward runs", result.stdout)]
        assert len(runs[overlap]) == 2, result.stdout
        weights[overlap] = [np.load(work / f"rank{r}_iter{iterations}.npz") for r in (0, 1)]
    reference = weights["true"][0]
    for rank in (*weights["true"], *weights["false"]):
        for name in reference:
            assert np.array_equal(rank[name], reference[name]), name
    assert runs["false"] == [iterations * iter_size] * 2
    assert min(runs["true"]) > iterations * iter_size  # the last backward ran in segments
