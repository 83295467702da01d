"""Data-parallel throughput: LeNet's images/s on 1 and 2 MPI ranks here, and a model of N ranks.

Each rank trains Caffe's LeNet (batch 64 per rank, Fashion-MNIST from
examples/mnist/mnist_train_lmdb, made by examples/mnist/train_lenet.sh) and
times its steps; rank 0 also times the gradient allreduce alone. The model
then predicts a step on N ranks as compute + ring allreduce (the CPU runtime
reduces after backward, so the two add up):

    step(N) = compute + 2 (N - 1) / N * gradient_bytes / bandwidth + 2 (N - 1) * latency

where ``compute`` is the step of one rank on its share of the machine's cores
(measured alone with that many threads). It is checked against the measured
2-rank figure, then applied to ResNet-50 and GoogLeNet at 8 and 64 ranks with
the compute times and links stated in ``SCENARIOS``. The ranks of one machine
run unbound (``--bind-to none``): bound to a core each, a rank waits whenever
other work holds its core, and every rank waits for the slowest.

    python benchmarks/scaling.py [--iterations 100] [--ranks 1,2]

``--overlap`` compares instead, on 2 ranks, the reduction overlapped with backward
(the solver's ``layer_wise_reduce``, Caffe's default) against the reduction after
backward, alternating the two ``--repeats`` times, on LeNet and on GoogLeNet (fed by a
DummyData layer, batch 8 per rank): images/s, and the time a step waits in
``on_gradients_ready`` for the reductions to finish (what overlapping can hide).

    python benchmarks/scaling.py --overlap [--nets lenet,googlenet] [--repeats 3]
        [--bucket-bytes 4194304]

Needs Open MPI and mpi4py (``bash scripts/setup.sh --mpi``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
GOOGLENET = REPO.parent / "shared/corpus/bvlc/models/bvlc_googlenet/train_val.prototxt"
GOOGLENET_BATCH = 8

# gradient bytes (float32): ResNet-50's 25.5M learned parameters; bvlc_googlenet's train net
# with its two auxiliary classifiers, 13.4M
MODELS = {"ResNet-50": 25.5e6 * 4, "GoogLeNet": 13.4e6 * 4}
# step times, batch 32 per rank: GoogLeNet's measured (docs/performance.md: 2279 ms on the
# 2-core machine, 103.5 ms on an H200); ResNet-50's scaled from it by forward FLOPs
# (3.9 G against 1.6 G per image)
COMPUTE = {
    "CPU, 2 cores": {"GoogLeNet": 2.279, "ResNet-50": 2.279 * 3.9 / 1.6},
    "H200": {"GoogLeNet": 0.1035, "ResNet-50": 0.1035 * 3.9 / 1.6},
}
# (where the ranks run, compute, ranks per machine, link bandwidth bytes/s, latency s)
SCENARIOS = [
    ("CPU machines, one rank each, 10 GbE", "CPU, 2 cores", 1, 1.25e9, 50e-6),
    ("CPU machines, one rank each, 100 Gb InfiniBand", "CPU, 2 cores", 1, 12.5e9, 5e-6),
    ("8 H200s per machine over NVLink; machines on 100 Gb InfiniBand", "H200", 8, 12.5e9, 5e-6),
]


def step_seconds(compute: float, ranks: int, nbytes: float, bandwidth: float,
                 latency: float) -> float:  # fmt: skip
    """The model: a rank's compute, then a ring allreduce of the gradients."""
    return compute + 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def googlenet_solver(folder: Path, batch: int) -> Path:
    """bvlc_googlenet's train net with its Data layers replaced by random DummyData (no
    ImageNet needed), and a plain SGD solver for it."""
    from google.protobuf import text_format

    from caffec.formats import caffe_pb2

    net = caffe_pb2.NetParameter()
    text_format.Merge(GOOGLENET.read_text(), net)
    layers = [layer for layer in net.layer if layer.type != "Data"]
    del net.layer[:]
    dummy = net.layer.add(name="data", type="DummyData", top=["data", "label"])
    for dims, filler in (((batch, 3, 224, 224), "gaussian"), ((batch,), "constant")):
        dummy.dummy_data_param.shape.add(dim=dims)
        dummy.dummy_data_param.data_filler.add(type=filler)
    net.layer.extend(layers)
    (folder / "googlenet.prototxt").write_text(text_format.MessageToString(net))
    path = folder / "googlenet_solver.prototxt"
    path.write_text(f'net: "{folder / "googlenet.prototxt"}"\nbase_lr: 0.001\nmomentum: 0.9\n'
                    'lr_policy: "fixed"\nmax_iter: 1000000\nrandom_seed: 1\n')  # fmt: skip
    return path


def worker(args: argparse.Namespace) -> None:
    """One rank: time the net's steps (and, on rank 0, the allreduce alone, and how long
    each step waited for the reduction); rank 0 prints JSON."""
    import tempfile

    import caffec

    collective = caffec.join_mpi() if "OMPI_COMM_WORLD_SIZE" in os.environ else None
    folder = Path(tempfile.mkdtemp(prefix="caffec-scaling-"))
    path, batch = REPO / "examples/mnist/lenet_solver.prototxt", BATCH
    if args.net == "googlenet":
        path, batch = googlenet_solver(folder, GOOGLENET_BATCH), GOOGLENET_BATCH
    solver = caffec.SGDSolver(path, log=lambda _line: None)
    solver.param.layer_wise_reduce = args.overlap_on
    parallel = None
    waited: list[float] = []
    if collective is not None:
        parallel = solver.data_parallel(collective, args.bucket_bytes)
        reduce = parallel.on_gradients_ready

        def timed() -> None:
            started = time.perf_counter()
            reduce()
            waited.append(time.perf_counter() - started)

        parallel.on_gradients_ready = timed  # type: ignore[method-assign]
    solver.step(args.warmup)  # data threads, caches
    del waited[:]
    started = time.perf_counter()
    solver.step(args.iterations)
    seconds = (time.perf_counter() - started) / args.iterations
    ranks = 1 if collective is None else collective.size
    result = {"ranks": ranks, "step_ms": seconds * 1e3, "images_per_s": ranks * batch / seconds}
    if parallel is not None:
        result["waited_ms"] = sum(waited) / len(waited) * 1e3
        result["buckets"] = len(parallel.buckets)
        result["segments"] = len(set(parallel._bucket_points()))
        started = time.perf_counter()
        for _ in range(20):
            parallel.on_gradients_ready()
        result["allreduce_ms"] = (time.perf_counter() - started) / 20 * 1e3
        result["gradient_bytes"] = sum(b.nbytes for b in parallel.buckets)
    if caffec.solver_rank() == 0:
        print(json.dumps(result), flush=True)


def measure(ranks: int, iterations: int, threads: int | None = None, *flags: str) -> dict:
    """Rank 0's figures for ``ranks`` ranks, each on ``threads`` threads (None: every core);
    ``flags`` for the worker."""
    command = [sys.executable, __file__, "--worker", "--iterations", str(iterations), *flags]
    if ranks > 1:
        command = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks), *command]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if threads is not None:
        env["CAFFEC_NUM_THREADS"] = str(threads)
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_overlap(args: argparse.Namespace) -> None:
    """2 ranks, the reduction overlapped with backward against after it, alternating."""
    print(f"2 ranks, {os.cpu_count()} cores, buckets of {args.bucket_bytes} bytes, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for net in args.nets.split(","):
        iterations = args.iterations if net == "lenet" else max(1, args.iterations // 10)
        figures: dict[str, list[dict]] = {"on": [], "off": []}
        for _ in range(args.repeats):
            for mode in ("on", "off"):
                flags = ["--net", net, "--bucket-bytes", str(args.bucket_bytes),
                         "--warmup", str(max(2, iterations // 5))]  # fmt: skip
                r = measure(
                    2, iterations, None, *flags, *(["--overlap-on"] if mode == "on" else [])
                )
                figures[mode].append(r)
                print(f"  {net}, overlap {mode}: {r['images_per_s']:.1f} images/s, step "
                      f"{r['step_ms']:.1f} ms, waited {r['waited_ms']:.2f} ms for the reduction "
                      f"({r['buckets']} buckets, {r['segments']} segment ends; allreduce alone "
                      f"{r['allreduce_ms']:.2f} ms of {r['gradient_bytes'] / 1e6:.1f} MB)",
                      flush=True)  # fmt: skip
        for mode, runs in figures.items():
            rates = sorted(r["images_per_s"] for r in runs)
            waits = sorted(r["waited_ms"] for r in runs)
            print(f"{net}, overlap {mode}: {rates[0]:.1f}-{rates[-1]:.1f} images/s "
                  f"(median {rates[len(rates) // 2]:.1f}), waited "
                  f"{waits[0]:.2f}-{waits[-1]:.2f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="compare the reduction overlapped with backward against after it",
    )
    parser.add_argument("--nets", default="lenet,googlenet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-bytes", type=int, default=4 << 20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--net", default="lenet", help=argparse.SUPPRESS)
    parser.add_argument("--overlap-on", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.overlap:
        compare_overlap(args)
        return
    cores = os.cpu_count() or 1
    print(f"LeNet, batch {BATCH} per rank, {cores} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    for n in map(int, args.ranks.split(",")):
        threads = max(1, cores // n)
        r = measure(n, args.iterations, threads if n > 1 else None)
        extra = f", allreduce {r['allreduce_ms']:.2f} ms" if "allreduce_ms" in r else ""
        shared = f" of {threads} threads" if n > 1 else ""
        print(f"  {n} rank(s){shared}: {r['images_per_s']:.0f} images/s, "
              f"step {r['step_ms']:.1f} ms{extra}")  # fmt: skip
        if n > 1:  # the model on this machine: a rank's compute on its cores, the allreduce
            alone = measure(1, args.iterations, threads)
            predicted = alone["step_ms"] + r["allreduce_ms"]
            print(f"    model: one rank alone on {threads} threads, {alone['step_ms']:.1f} ms, "
                  f"+ the allreduce = {predicted:.1f} ms: "
                  f"{n * BATCH / predicted * 1e3:.0f} images/s")  # fmt: skip
    print("\nModel, batch 32 per rank: images/s (efficiency against ranks x one rank)")
    for name, where, per_machine, bandwidth, latency in SCENARIOS:
        for model, nbytes in MODELS.items():
            compute = COMPUTE[where][model]
            cells = []
            for ranks in (8, 64):
                # inside a machine NVLink is not the bottleneck: the ring runs at the link's pace
                step = step_seconds(compute, ranks, nbytes, bandwidth, latency)
                if ranks <= per_machine:
                    step = step_seconds(compute, ranks, nbytes, 300e9, 2e-6)
                cells.append(f"{ranks} ranks {ranks * 32 / step:,.0f} ({compute / step:.0%})")
            print(f"  {name}, {model}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
