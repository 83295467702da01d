"""What the whole-program passes buy: the same nets built at -O0, -O1 and -O2, timed in one run.

-O0 is the reference build (every value its own memory, one kernel per primitive),
-O1 plans memory (sharing, in-place writes, recomputation) and -O2 also fuses
kernels. Printed per net: the kernel count, the arena, the time per run, and the
ratio to -O0. The work: a LeNet training step (batch 64: forward, backward, SGD
update, inputs given) and a CaffeNet forward pass (batch 10, deploy net).

    python benchmarks/optimization_levels.py [--iterations 20] [--corpus ../shared/corpus]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    load_layer_graph,
)
from caffec.formats import caffe_pb2
from caffec.runtime.compiled_net import CompiledNet

REPO = Path(__file__).resolve().parents[1]
SOLVER = caffe_pb2.SolverParameter(type="SGD", base_lr=0.01, momentum=0.9, weight_decay=5e-4)


def build(path: Path, options: Options, level: int, out: Path) -> tuple[CompiledNet, int, int]:
    """The net at ``-O level``, its kernel count and its arena in bytes."""
    opts = replace(options, opt_level=level)
    kgraph = build_kernel_graph(load_layer_graph(path, opts), opts)
    artifact = write_artifact(kgraph, out / f"O{level}")
    net = CompiledNet(artifact, seed=1)
    return net, len(kgraph.kernels()), kgraph.memory_plan.arena_bytes


def time_ms(run: object, iterations: int) -> float:
    """The median time of ``run()`` over ``iterations`` runs, after two warm-up runs."""
    for _ in range(2):
        run()  # type: ignore[operator]
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def bench(label: str, path: Path, options: Options, work: str, iterations: int) -> None:
    out = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    baseline = None
    for level in (0, 1, 2):
        net, kernels, arena = build(path, options, level, out)
        feed = {}
        for name in net.inputs:
            shape = net.blobs[name].data.shape
            feed[name] = rng.integers(0, 10, shape) if "label" in name else rng.random(shape)

        def step(net: CompiledNet = net, feed: dict = feed) -> None:
            net.forward(**feed)
            if work == "train":
                net.backward()
                net._exec.of_kind("hyper")[0] = 0.01
                net._exec.run("update", 0, len(net.artifact.manifest.update))

        ms = time_ms(step, iterations)
        baseline = baseline or ms
        print(f"| {label} | -O{level} | {kernels} | {arena / 2**20:.1f} | {ms:.2f} | "
              f"{ms / baseline:.2f} |")  # fmt: skip
        net.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    args = parser.parse_args()
    print("| work | level | kernels | arena MiB | ms | ratio to -O0 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    lenet = REPO / "examples/mnist/lenet_train_test.prototxt"
    train = Options(phase="TRAIN", shapes={"data": (64, 1, 28, 28)}, backward=True, solver=SOLVER)
    bench("LeNet training step, batch 64", lenet, train, "train", args.iterations)
    caffenet = args.corpus / "bvlc/models/bvlc_reference_caffenet/deploy.prototxt"
    if not caffenet.exists():
        print(f"| CaffeNet forward, batch 10 | skipped: no {caffenet} (give --corpus) |")
        return
    forward = Options(phase="TEST", shapes={"data": (10, 3, 227, 227)})
    bench("CaffeNet forward, batch 10", caffenet, forward, "forward", args.iterations)


if __name__ == "__main__":
    main()
