"""Direct depthwise convolution against im2col + GEMM, measured in the same run.

The net is the first depthwise-separable blocks of MobileNet v1 (``nets/mobilenet_blocks
.prototxt``, batch 32 at 112 x 112). Both builds are -O2 and differ only in how the
depthwise layers convolve: directly (what -O2 chooses) or by im2col + GEMM per group (what
-O0 and Caffe do). Timed: a forward pass, and forward + backward; the two builds take turns,
three rounds, best round each. Prints ratios direct / im2col (below 1: direct is faster).

    python benchmarks/depthwise.py [--iterations 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from vs_pytorch import best_ms  # the same turns and best rounds (needs no torch)

NET = Path(__file__).resolve().parent / "nets/mobilenet_blocks.prototxt"


def build(choose_algorithms: bool) -> Any:
    from caffec.compiler.pipeline import Options
    from caffec.driver import NetSource, compile_cached, cpu_target
    from caffec.runtime.compiled_net import CompiledNet

    options = Options(phase="TRAIN", backward=True, choose_algorithms=choose_algorithms,
                      target=cpu_target())  # fmt: skip
    net = CompiledNet(compile_cached(NetSource.from_file(NET), options))
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.random(net.blobs["data"].data.shape)
    net.blobs["label"].data[...] = rng.integers(0, 10, net.blobs["label"].data.shape)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    direct, im2col = build(True), build(False)

    def step(net: Any) -> Any:
        def run() -> None:
            net.clear_param_diffs()
            net.forward()
            net.backward()

        return run

    print(f"{'pass':<20}{'direct ms':>12}{'im2col ms':>12}{'ratio':>8}")
    for name, runs in (("forward", [direct.forward, im2col.forward]),
                       ("forward+backward", [step(direct), step(im2col)])):  # fmt: skip
        ours, theirs = best_ms(runs, args.iterations)
        print(f"{name:<20}{ours:>12.1f}{theirs:>12.1f}{ours / theirs:>8.2f}")


if __name__ == "__main__":
    main()
