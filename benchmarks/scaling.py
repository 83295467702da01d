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


def worker(iterations: int) -> None:
    """One rank: time LeNet's steps (and, on rank 0, the allreduce alone); rank 0 prints JSON."""
    import caffec

    collective = caffec.join_mpi() if "OMPI_COMM_WORLD_SIZE" in os.environ else None
    solver = caffec.SGDSolver(REPO / "examples/mnist/lenet_solver.prototxt",
                              log=lambda _line: None)  # fmt: skip
    parallel = solver.data_parallel(collective) if collective is not None else None
    solver.step(10)  # warm up: data threads, caches
    started = time.perf_counter()
    solver.step(iterations)
    seconds = (time.perf_counter() - started) / iterations
    ranks = 1 if collective is None else collective.size
    result = {"ranks": ranks, "step_ms": seconds * 1e3, "images_per_s": ranks * BATCH / seconds}
    if parallel is not None:
        started = time.perf_counter()
        for _ in range(20):
            parallel.on_gradients_ready()
        result["allreduce_ms"] = (time.perf_counter() - started) / 20 * 1e3
        result["gradient_bytes"] = sum(b.nbytes for b in parallel.buckets)
    if caffec.solver_rank() == 0:
        print(json.dumps(result), flush=True)


def measure(ranks: int, iterations: int, threads: int | None = None) -> dict:
    """Rank 0's figures for ``ranks`` ranks, each on ``threads`` threads (None: every core)."""
    command = [sys.executable, __file__, "--worker", "--iterations", str(iterations)]
    if ranks > 1:
        command = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks), *command]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if threads is not None:
        env["CAFFEC_NUM_THREADS"] = str(threads)
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.iterations)
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
