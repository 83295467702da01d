"""The GPU path's gradient reduction on the CPU: NCCL stubbed at its calls only.

Each rank is a thread with its own solver; the fake communicator sums the ranks' arrays
at the addresses NCCL would be given. Bucketing, ordering, the division by the number
of ranks and the solver's compiled update are the real ones.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from caffec.runtime.distributed import CollectiveTimeout, DataParallel, NcclCollective
from caffec.solver import Solver

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: BATCH dim: 1 dim: 8 dim: 8 } shape { dim: BATCH } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv" top: "ip1"
        inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
SOLVER = (
    'net: "{net}"\nbase_lr: 0.1\nmomentum: 0.9\nweight_decay: 0.001\nlr_policy: "fixed"\n'
    "max_iter: 10\nrandom_seed: 3\n"
)
C_TYPES = {7: ctypes.c_float, 8: ctypes.c_double, 1: ctypes.c_uint8}


class FakeNccl:
    """cupy.cuda.nccl's constants."""

    NCCL_UINT8, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 1, 7, 8, 0


class Hub:
    """What the ranks' communicators share: a barrier, the arrays given, a log of calls."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=30)
        self.given: list[Any] = [None] * size
        self.calls: list[tuple[int, str, int]] = []


class FakeComm:
    """A NcclCommunicator whose calls read and write host memory at the addresses given."""

    def __init__(self, hub: Hub, rank: int) -> None:
        self.hub, self.rank = hub, rank

    @staticmethod
    def _array(address: int, count: int, dtype: int) -> np.ndarray:
        return np.ctypeslib.as_array((C_TYPES[dtype] * count).from_address(address))

    def _gathered(self, name: str, send: int, count: int, dtype: int) -> list[np.ndarray]:
        self.hub.calls.append((self.rank, name, count))
        self.hub.given[self.rank] = self._array(send, count, dtype).copy()
        self.hub.barrier.wait()
        arrays = list(self.hub.given)
        self.hub.barrier.wait()
        return arrays

    def allReduce(self, send: int, recv: int, count: int, dtype: int, op: int, stream: int) -> None:  # noqa: N802
        assert op == FakeNccl.NCCL_SUM and stream == 0
        total = sum(self._gathered("allReduce", send, count, dtype))
        self._array(recv, count, dtype)[...] = total

    def bcast(self, buff: int, count: int, dtype: int, root: int, stream: int) -> None:
        arrays = self._gathered("bcast", buff, count, dtype)
        self._array(buff, count, dtype)[...] = arrays[root]

    def allGather(self, send: int, recv: int, count: int, dtype: int, stream: int) -> None:  # noqa: N802
        arrays = self._gathered("allGather", send, count, dtype)
        self._array(recv, count * self.hub.size, dtype)[...] = np.concatenate(arrays)

    def abort(self) -> None:
        self.hub.calls.append((self.rank, "abort", 0))


def solver(tmp_path: Path, batch: int, **solver_fields: str) -> Solver:
    net = tmp_path / f"net{batch}.prototxt"
    net.write_text(NET.replace("BATCH", str(batch)))
    path = tmp_path / f"solver{batch}.prototxt"
    path.write_text(
        SOLVER.format(net=net) + "".join(f"{k}: {v}\n" for k, v in solver_fields.items())
    )
    return Solver(path, log=lambda _line: None)


def batches(iterations: int, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((batch, 1, 8, 8)).astype(np.float32),
             rng.integers(0, 10, batch).astype(np.float32)) for _ in range(iterations)]  # fmt: skip


def iterate(s: Solver, data: np.ndarray, label: np.ndarray, parallel: DataParallel | None) -> None:
    """One iteration as TrainingLoop.step runs it, on a batch given."""
    s.net.clear_param_diffs()
    s.net.forward(data=data, label=label)
    s.net.backward()
    if parallel is not None:
        parallel.on_gradients_ready()
    s.loop._apply_update(s.loop._rate_for_step())
    s.loop.iter += 1


def run_ranks(solvers: list[Solver], work: Any) -> None:
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            work(rank, solvers[rank])
        except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(solvers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("bucket_bytes", [64, 1 << 20])
def test_two_ranks_equal_one_process_with_both_batches(tmp_path: Path, bucket_bytes: int) -> None:
    ranks, batch, iterations = 2, 6, 5
    single = solver(tmp_path, ranks * batch)
    solvers = [solver(tmp_path, batch) for _ in range(ranks)]
    hub = Hub(ranks)
    parallels: list[DataParallel] = [
        DataParallel(s.net, NcclCollective(FakeComm(hub, r), r, ranks, FakeNccl), bucket_bytes)
        for r, s in enumerate(solvers)
    ]
    # rank 1 starts from other weights: bcast hands it rank 0's
    for blobs in solvers[1].net.params.values():
        for blob in blobs:
            blob.data[...] += 1
    run_ranks(solvers, lambda r, s: parallels[r].bcast())
    data = batches(iterations, ranks * batch)

    def train(rank: int, s: Solver) -> None:
        for x, y in data:
            part = slice(rank * batch, (rank + 1) * batch)
            iterate(s, x[part], y[part], parallels[rank])

    run_ranks(solvers, train)
    for x, y in data:
        iterate(single, x, y, None)
    for layer, blobs in single.net.params.items():
        for i, blob in enumerate(blobs):
            for s in solvers:  # the same update on each rank: the same weights, bit for bit
                assert np.array_equal(
                    s.net.params[layer][i].data, solvers[0].net.params[layer][i].data
                )
            np.testing.assert_allclose(solvers[0].net.params[layer][i].data, blob.data,
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
            # what Caffe's update leaves in the diff: the step, from the averaged gradient
            np.testing.assert_allclose(solvers[0].net.params[layer][i].diff, blob.diff,
                                       rtol=1e-4, atol=1e-7)  # fmt: skip

    reductions = [count for rank, name, count in hub.calls if rank == 0 and name == "allReduce"]
    sizes = [b.flat.size for b in parallels[0].buckets]
    assert reductions == sizes * iterations
    if bucket_bytes == 64:  # each gradient alone, the last layer's first (backward's order)
        last_param = solvers[0].net.params["ip2"][1]
        assert sizes[0] == last_param.count and len(sizes) == 6
    else:
        assert len(sizes) == 1


def test_the_cuda_target_s_buffers_are_reduced_on_the_device(tmp_path: Path, emulated_gpu) -> None:
    """The CUDA target (generated CUDA C on the emulated device): the gradients are reduced in
    the device's buffers, host copies written before bcast are uploaded first, and those the
    reduction made stale are read again. The ranks share the one emulated device, so they take
    turns for the passes and meet only in the collectives."""
    ranks, batch = 2, 3
    single = solver(tmp_path, ranks * batch)
    solvers = [solver(tmp_path, batch) for _ in range(ranks)]
    assert single.net.artifact.manifest.target.name == "cuda"
    hub = Hub(ranks)
    parallels = [DataParallel(s.net, NcclCollective(FakeComm(hub, r), r, ranks, FakeNccl))
                 for r, s in enumerate(solvers)]  # fmt: skip
    for s in (single, solvers[0]):  # host copies written, not yet on the device
        s.net.params["ip2"][0].data[...] = 0.05
    run_ranks(solvers, lambda r, s: parallels[r].bcast())
    assert np.all(solvers[1].net.params["ip2"][0].data == np.float32(0.05))
    for x, y in batches(2, ranks * batch):
        for rank, s in enumerate(solvers):
            s.net.clear_param_diffs()
            s.net.forward(data=x[rank * batch : (rank + 1) * batch],
                          label=y[rank * batch : (rank + 1) * batch])  # fmt: skip
            s.net.backward()
        run_ranks(solvers, lambda r, s: parallels[r].on_gradients_ready())
        for s in solvers:
            s.loop._apply_update(s.loop._rate_for_step())
        iterate(single, x, y, None)
    for layer, blobs in single.net.params.items():
        for i, blob in enumerate(blobs):
            for s in solvers:
                np.testing.assert_allclose(s.net.params[layer][i].data, blob.data,
                                           rtol=1e-5, atol=1e-6)  # fmt: skip


def test_every_rank_applies_the_solver_update(tmp_path: Path) -> None:
    """Adam's histories and bias correction run per rank on the averaged gradient."""
    ranks, batch = 2, 4
    single = solver(tmp_path, ranks * batch, type='"Adam"', momentum2="0.999")
    solvers = [solver(tmp_path, batch, type='"Adam"', momentum2="0.999") for _ in range(ranks)]
    hub = Hub(ranks)
    parallels = [DataParallel(s.net, NcclCollective(FakeComm(hub, r), r, ranks, FakeNccl))
                 for r, s in enumerate(solvers)]  # fmt: skip
    data = batches(3, ranks * batch)

    def train(rank: int, s: Solver) -> None:
        for x, y in data:
            iterate(s, x[rank * batch : (rank + 1) * batch], y[rank * batch : (rank + 1) * batch],
                    parallels[rank])  # fmt: skip

    run_ranks(solvers, train)
    for x, y in data:
        iterate(single, x, y, None)
    # Adam divides by sqrt(v): a gradient near 0 turns float32's summation differences into
    # steps of up to lr * 1e-4
    for layer, blobs in single.net.params.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_allclose(solvers[1].net.params[layer][i].data, blob.data,
                                       rtol=1e-5, atol=1e-4)  # fmt: skip


def test_ranks_with_other_nets_are_refused(tmp_path: Path) -> None:
    hub = Hub(2)
    solvers = [solver(tmp_path, 4), solver(tmp_path, 5)]
    parallels = [DataParallel(s.net, NcclCollective(FakeComm(hub, r), r, 2, FakeNccl))
                 for r, s in enumerate(solvers)]  # fmt: skip
    messages: list[str] = []

    def check(rank: int, s: Solver) -> None:
        try:
            parallels[rank].check_agreement({"batch": {n: b.shape for n, b in s.net.blobs.items()}})
        except Exception as err:  # noqa: BLE001
            messages.append(str(err))

    run_ranks(solvers, check)
    assert len(messages) == 2
    assert any("rank 1 trains with other batch than rank 0" in m for m in messages), messages


def test_a_collective_that_never_finishes_times_out() -> None:
    class Stream:
        ptr = 1

        @staticmethod
        def record() -> Any:
            return type("Event", (), {"done": False})()

    hub = Hub(1)
    collective = NcclCollective(FakeComm(hub, 0), 0, 1, FakeNccl, Stream(), timeout=0.2)
    with pytest.raises(CollectiveTimeout, match="waited 0.2 s for the other ranks"):
        collective.wait(Stream.record(), "the gradient allreduce")
    assert (0, "abort", 0) in hub.calls


def test_the_gpu_launcher_ends_with_a_failed_rank_s_status(monkeypatch, tmp_path: Path) -> None:
    """`train -gpu 0,1` starts a process per GPU with its rank; one that fails (here: no
    solver file) ends the launch with its exit status."""
    from caffec.runtime import distributed

    monkeypatch.setattr(distributed, "new_nccl_uid", lambda: [7] * 128)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "-solver", "missing.prototxt", "-gpu", "0,1"]
    assert distributed.spawn_gpu_ranks(argv, [0, 1], timeout=5) == 2


def logged(s: Solver, hub: Hub, rank: int) -> None:
    """Log the runs of the net's backward and update steps in the hub's calls, among the
    collective's, as (rank, direction, (begin, end))."""
    run = s.net._exec.run

    def logging_run(direction: str, begin: int, end: int) -> None:
        if direction != "forward":
            hub.calls.append((rank, direction, (begin, end)))
        run(direction, begin, end)

    s.net._exec.run = logging_run


def data_parallel_solvers(tmp_path: Path, ranks: int, batch: int, overlap: bool,
                          iter_size: int) -> tuple[list[Solver], list[DataParallel], Hub]:  # fmt: skip
    """``ranks`` solvers joined through the stub, by ``Solver.data_parallel`` (gradients one a
    bucket), their backward and update runs logged."""
    folder = tmp_path / f"overlap{overlap}"
    folder.mkdir(exist_ok=True)
    solvers = [solver(folder, batch, iter_size=str(iter_size),
                      layer_wise_reduce=str(overlap).lower()) for _ in range(ranks)]  # fmt: skip
    hub = Hub(ranks)
    parallels: list[Any] = [None] * ranks

    def join(rank: int, s: Solver) -> None:
        collective = NcclCollective(FakeComm(hub, rank), rank, ranks, FakeNccl)
        parallels[rank] = s.data_parallel(collective, bucket_bytes=64)

    run_ranks(solvers, join)
    for rank, s in enumerate(solvers):
        logged(s, hub, rank)
    return solvers, parallels, hub


def expected_calls(parallel: DataParallel, overlap: bool, iter_size: int) -> list[tuple]:
    """One iteration's calls on a rank: backward's runs, each bucket's allReduce right after
    the segment that finished its gradients (all after backward without overlap), the loss's
    allReduce, the update."""
    ends = len(parallel.net.artifact.manifest.backward)
    points = parallel._bucket_points() if overlap else [ends] * len(parallel.buckets)
    sizes = [bucket.flat.size for bucket in parallel.buckets]
    calls: list[tuple] = [("backward", (0, ends))] * (iter_size - 1 if overlap else iter_size)
    calls += [("allReduce", n) for n, p in zip(sizes, points, strict=True) if p == 0]
    cuts = sorted({p for p in points if 0 < p < ends}) if overlap else []
    for begin, end in zip([0, *cuts], [*cuts, ends], strict=True):
        calls += [("backward", (begin, end))] if overlap else []
        calls += [("allReduce", n) for n, p in zip(sizes, points, strict=True) if p == end]
    return [*calls, ("allReduce", 3), ("update", (0, 1))]  # the loss and two flags


def train_fed(solvers: list[Solver], data: list[tuple[np.ndarray, np.ndarray]],
              batch: int) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Train each rank, in a thread, on its part of each batch of ``data``; their weights."""

    def train(rank: int, s: Solver) -> None:
        def feed() -> None:  # the rank's part of this iteration's batch
            x, y = data[s.iter]
            s.net.blobs["data"].data[...] = x[rank * batch : (rank + 1) * batch]
            s.net.blobs["label"].data[...] = y[rank * batch : (rank + 1) * batch]

        s.add_callback(feed, lambda: None)
        s.step(len(data))

    run_ranks(solvers, train)
    return [{f"{layer}/{i}": b.data.copy() for layer, blobs in s.net.params.items()
             for i, b in enumerate(blobs)} for s in solvers]  # fmt: skip


def check_overlap(tmp_path: Path, ranks: int, iter_size: int) -> DataParallel:
    """Train with and without layer_wise_reduce: each rank's calls in the order
    :func:`expected_calls` gives, and the same weights on every rank, bit for bit; rank 0's
    overlapping DataParallel."""
    batch, iterations = 4, 3
    data = batches(iterations, ranks * batch)
    weights, overlapping = {}, []
    for overlap in (True, False):
        solvers, parallels, hub = data_parallel_solvers(tmp_path, ranks, batch, overlap,
                                                        iter_size)  # fmt: skip
        weights[overlap] = train_fed(solvers, data, batch)
        for rank in range(ranks):
            calls = [(name, what) for r, name, what in hub.calls
                     if r == rank and name in ("backward", "update", "allReduce")]  # fmt: skip
            assert calls == expected_calls(parallels[rank], overlap, iter_size) * iterations
        overlapping += parallels[:1] if overlap else []
    for rank in range(ranks):
        for name, value in weights[True][rank].items():
            assert np.array_equal(value, weights[False][rank][name]), name
            assert np.array_equal(value, weights[True][0][name]), name
    return overlapping[0]


@pytest.mark.parametrize("iter_size", [1, 2])
def test_the_reduction_overlaps_the_last_backward_in_segments(tmp_path: Path,
                                                              iter_size: int) -> None:  # fmt: skip
    """layer_wise_reduce: the iteration's last backward runs in segments, each bucket's
    allReduce issued as soon as the segment that finishes its gradients has run; the weights
    are those of reducing after backward, bit for bit (the same sums)."""
    ends = set(check_overlap(tmp_path, 2, iter_size)._bucket_points())
    assert len(ends) >= 3, ends  # segments to overlap: ip2's, ip1's and conv's gradients


def test_the_cuda_target_reduces_between_backward_s_segments(tmp_path: Path,
                                                             emulated_gpu) -> None:  # fmt: skip
    """The CUDA target on the emulated device, one rank (ranks in threads would share the one
    device): backward's segments run as launches of their steps, the buckets reduced in the
    device's buffers between them."""
    parallel = check_overlap(tmp_path, 1, 2)
    assert parallel.net.artifact.manifest.target.name == "cuda"
    assert len(set(parallel._bucket_points())) >= 3
