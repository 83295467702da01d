"""Winograd F(4x4, 3x3) against the algorithm -O2 would choose without it, per layer shape.

Each case is one 3x3 convolution at stride 1 with a ReLU after it (a TEST-phase forward,
batch 1 unless ``--batch`` says otherwise), from GoogLeNet, CaffeNet and VGG-16. Both builds
are -O2 and differ only in whether the layer runs Winograd; they take turns, forward by
forward, and each time is the median (a busy machine's slow spells hit both, and the
median leaves them out). Prints the algorithm the CPU target's cost model picks, what runs
without Winograd, both times and their ratio (below 1: Winograd is faster).

With ``--net`` (a deploy net, e.g. the corpus' GoogLeNet), the whole net instead: each
layer's forward step with and without Winograd, the two builds taking turns every
iteration, the median of each; printed for the layers that run Winograd, and the sum of
every layer's median.

    python benchmarks/winograd.py [--batch 1] [--iterations 40] [--only conv3,4a]
    python benchmarks/winograd.py --net ../shared/corpus/bvlc/models/bvlc_googlenet/deploy.prototxt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# name: (input channels, output channels, height and width, groups); pad 1 throughout
CASES = {
    "googlenet conv2": (64, 192, 56, 1),
    "googlenet 3a": (96, 128, 28, 1),
    "googlenet 3b": (128, 192, 28, 1),
    "googlenet 4a": (96, 208, 14, 1),
    "googlenet 4c": (128, 256, 14, 1),
    "googlenet 4e": (160, 320, 14, 1),
    "googlenet 5b": (192, 384, 7, 1),
    "caffenet conv3": (256, 384, 13, 1),
    "caffenet conv4": (384, 384, 13, 2),
    "caffenet conv5": (384, 256, 13, 2),
    "vgg conv1_2": (64, 64, 224, 1),
    "vgg conv2_2": (128, 128, 112, 1),
    "vgg conv3_2": (256, 256, 56, 1),
    "vgg conv4_2": (512, 512, 28, 1),
    "vgg conv5_2": (512, 512, 14, 1),
    # the cost model's limits: channels, and blocks of output per image
    "32 to 32, 28 wide": (32, 32, 28, 1),
    "32 to 64, 56 wide": (32, 64, 56, 1),
    "64 to 64, 28 wide": (64, 64, 28, 1),
    "64 to 64, 56 wide": (64, 64, 56, 1),
    "128, 20 wide": (128, 128, 20, 1),
    "128, 24 wide": (128, 128, 24, 1),
}


@contextmanager
def winograd_rule(rule: Callable[[Any], bool]) -> Iterator[None]:
    """The CPU target's Winograd rule replaced by ``rule`` while building."""
    from caffec.compiler.targets import cpu

    saved = cpu._winograd_pays
    cpu._winograd_pays = rule
    try:
        yield
    finally:
        cpu._winograd_pays = saved


def compile_net(path: Path, out: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> Any:
    """The TEST net at ``path`` compiled into ``out`` (not the build cache, whose key does not
    see the rule), its inputs random."""
    from caffec.codegen.artifact_writer import write_artifact
    from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph
    from caffec.driver import cpu_target
    from caffec.runtime.compiled_net import CompiledNet

    options = Options(phase="TEST", shapes=shapes or {}, target=cpu_target())
    net = CompiledNet(write_artifact(build_kernel_graph(load_layer_graph(path, options), options),
                                     out))  # fmt: skip
    rng = np.random.default_rng(0)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.random(net.blobs[name].data.shape)
    return net


def build(folder: Path, case: tuple[int, int, int, int], batch: int) -> Any:
    channels, outputs, size, group = case
    path = folder / f"net_{len(list(folder.iterdir()))}.prototxt"
    path.write_text(
        f'input: "x" input_shape {{ dim: {batch} dim: {channels} dim: {size} dim: {size} }}\n'
        f'layer {{ name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: {outputs} group: {group} kernel_size: 3 pad: 1 "
        f'weight_filler {{ type: "gaussian" std: 0.1 }} }} }}\n'
        'layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }\n'
    )
    return compile_net(path, path.with_suffix(".caffec"))


def median_ms(runs: list[Callable[[], Any]], iterations: int) -> list[float]:
    """Each run's median time in ms over ``iterations``, the runs taking turns, after two
    warm-up turns."""
    samples = np.zeros((iterations + 2, len(runs)))
    for iteration in range(iterations + 2):
        for number, run in enumerate(runs):
            start = time.perf_counter()
            run()
            samples[iteration, number] = time.perf_counter() - start
    return list(np.median(samples[2:], axis=0) * 1000)


def time_net(path: Path, batch: int, iterations: int) -> None:
    """Each layer's forward with and without Winograd (see the module docstring)."""
    from caffec.compiler.pipeline import Options, load_layer_graph

    graph = load_layer_graph(path, Options(phase="TEST"))
    inputs = [top for op in graph.ops if op.type == "Input" for top in op.tops]
    shapes = {value.name: (batch, *value.shape[1:]) for value in inputs}
    with tempfile.TemporaryDirectory() as folder:
        winograd = compile_net(path, Path(folder) / "winograd", shapes)
        with winograd_rule(lambda shape: False):
            other = compile_net(path, Path(folder) / "other", shapes)
        nets = (winograd, other)
        steps = winograd.artifact.manifest.forward
        samples = np.zeros((iterations + 2, 2, len(steps)))  # two iterations to warm up
        for iteration in range(iterations + 2):
            for number, net in enumerate(nets):
                for i in range(len(steps)):
                    start = time.perf_counter()
                    net._run("forward", i, i + 1)
                    samples[iteration, number, i] = time.perf_counter() - start
        spent = np.median(samples[2:], axis=0) * 1000  # medians: a busy machine's spikes out
        algorithms = {layer.name: layer.algorithm for layer in winograd.artifact.manifest.layers}
        others = {layer.name: layer.algorithm for layer in other.artifact.manifest.layers}
        print(f"{'layer':<28}{'other':<30}{'winograd ms':>12}{'other ms':>10}{'ratio':>7}")
        for i, step in enumerate(steps):
            if (algorithms.get(step.layer) or "").startswith("winograd"):
                print(f"{step.layer:<28}{others[step.layer]:<30}{spent[0, i]:>12.2f}"
                      f"{spent[1, i]:>10.2f}{spent[0, i] / spent[1, i]:>7.2f}")  # fmt: skip
        total = spent.sum(axis=1)
        print(f"{'whole forward':<58}{total[0]:>12.2f}{total[1]:>10.2f}{total[0] / total[1]:>7.2f}")


def algorithm(net: Any) -> str:
    return next(layer.algorithm for layer in net.artifact.manifest.layers if layer.name == "conv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--only", help="cases whose names contain one of these, by commas")
    parser.add_argument("--net", type=Path, help="time this deploy net's layers instead")
    args = parser.parse_args()
    if args.net:
        time_net(args.net, args.batch, args.iterations)
        return
    wanted = args.only.split(",") if args.only else [""]
    print(f"{'layer':<18}{'chosen':<28}{'other':<26}{'winograd ms':>12}{'other ms':>10}"
          f"{'ratio':>7}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        for name, case in CASES.items():
            if not any(part in name for part in wanted):
                continue
            chosen = build(Path(folder), case, args.batch)
            with winograd_rule(lambda shape: True):
                winograd = build(Path(folder), case, args.batch)
            with winograd_rule(lambda shape: False):
                other = build(Path(folder), case, args.batch)
            ours, theirs = median_ms([winograd.forward, other.forward], args.iterations)
            print(f"{name:<18}{algorithm(chosen):<28}{algorithm(other):<26}{ours:>12.2f}"
                  f"{theirs:>10.2f}{ours / theirs:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
