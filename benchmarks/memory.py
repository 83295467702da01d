"""Arena sizes of the memory planner against Caffe's allocation, for the corpus's big nets.

For each net: the naive size (what Caffe allocates: every blob's data, the diffs
backward computes, each layer's workspaces and states), and caffec's arena at
``-O0`` (every value its own memory), at the default level (every blob stays
readable, as pycaffe expects), and lean (``--outputs-only``: only the outputs,
what ``caffec train`` and ``caffec run`` use), each also as a fraction of the
naive size. These are the numbers ``caffec compile --report`` prints; planning
needs no C compiler, so this runs in seconds.

    python benchmarks/memory.py [--corpus ../shared/corpus]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    load_layer_graph,
)

REPO = Path(__file__).resolve().parents[1]
NETS = [  # (label, path under the corpus or the repo, phase, input shape)
    ("LeNet TRAIN, batch 64", "examples/mnist/lenet_train_test.prototxt", "TRAIN", (64, 1, 28, 28)),
    ("CaffeNet TRAIN, batch 64", "bvlc/models/bvlc_reference_caffenet/train_val.prototxt",
     "TRAIN", (64, 3, 227, 227)),
    ("GoogLeNet TRAIN, batch 32", "bvlc/models/bvlc_googlenet/train_val.prototxt", "TRAIN",
     (32, 3, 224, 224)),
    ("GoogLeNet TEST, batch 32", "bvlc/models/bvlc_googlenet/deploy.prototxt", "TEST",
     (32, 3, 224, 224)),
]  # fmt: skip
MIB = 2**20


def arena(path: Path, options: Options) -> tuple[int, int]:
    """(arena bytes, naive bytes) of the net at ``path`` built with ``options``."""
    kgraph = build_kernel_graph(load_layer_graph(path, options), options)
    return kgraph.memory_plan.arena_bytes, kgraph.memory_plan.naive_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    args = parser.parse_args()
    print("| net | naive | `-O0` | default | `--outputs-only` |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, name, phase, shape in NETS:
        path = REPO / name if name.startswith("examples/") else args.corpus / name
        if not path.exists():
            print(f"| {label} | skipped: no {path} (give --corpus) |")
            continue
        base = Options(phase=phase, shapes={"data": shape}, backward=phase == "TRAIN")
        reference, naive = arena(path, replace(base, opt_level=0))
        default, _ = arena(path, base)
        lean, _ = arena(path, replace(base, keep_blobs=False))
        cells = [f"{naive / MIB:.1f}"] + [
            f"{size / MIB:.1f} ({size / naive:.0%})" for size in (reference, default, lean)
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
