"""caffec against OpenCV's dnn module on the CPU: forward latency of deploy nets, same process.

Each net is rewritten as a deploy net with one Input layer at the batch size (its
losses and accuracy layers dropped), given random weights by caffec (BatchNorm's
statistics neutral), saved as a .caffemodel, and read by both: caffec compiles it,
OpenCV's ``cv2.dnn.readNetFromCaffe`` imports it. Their outputs are compared
before timing. The two then take turns in the same process (rounds of about
``--seconds`` each), so a slow spell of the machine hits both; each prints the
median of its forward passes, and the ratio caffec / OpenCV (below 1: caffec is
faster), then the net's FLOPs (convolutions and inner products, from the layer shapes:
caffec.compiler.flops) and each library's rate, also as a share of the peak that
caffec's probe measures (caffec.codegen.peak) on as many threads as the library runs.

Nets: the deploy nets of Caffe's models and CIFAR-10 and LeNet under the corpus
(``--corpus``; a missing one is skipped), and every net in ``benchmarks/nets/``.

    python benchmarks/vs_opencv.py [--batches 1,10] [--only cifar10_full,...] [--threads N]

Needs ``opencv-python-headless<5`` (``pip install -e '.[bench]'``).
``--threads`` sets both libraries' threads (caffec: ``CAFFEC_NUM_THREADS``; OpenCV:
``cv2.setNumThreads``); by default each takes its own default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared/corpus"
CORPUS_NETS = [  # under the corpus
    "bvlc/examples/mnist/lenet.prototxt",
    "bvlc/examples/cifar10/cifar10_quick.prototxt",
    "bvlc/examples/cifar10/cifar10_full.prototxt",
    "bvlc/models/bvlc_reference_caffenet/deploy.prototxt",
    "bvlc/models/bvlc_alexnet/deploy.prototxt",
    "bvlc/models/bvlc_googlenet/deploy.prototxt",
]
DROPPED = ("Accuracy", "Silence")  # and every loss: not part of a deployed net's forward


@dataclass
class Case:
    """One net at one batch size, written as a deploy net and its random weights."""

    name: str
    prototxt: Path
    weights: Path
    shape: tuple[int, ...]
    flops: int  # of one forward


def case_names(corpus: Path) -> list[tuple[str, Path]]:
    """(name, prototxt) of every net this benchmark runs; a corpus net that is missing
    comes with its path, which does not exist."""
    nets = [(Path(n).stem if Path(n).stem != "deploy" else Path(n).parent.name, corpus / n)
            for n in CORPUS_NETS]  # fmt: skip
    nets += [(p.stem, p) for p in sorted((REPO / "benchmarks/nets").glob("*.prototxt"))]
    return nets


def deploy_case(name: str, path: Path, batch: int, folder: Path) -> Case:
    """``path``'s TEST net as a deploy net of batch ``batch`` with random weights, in
    ``folder``."""
    import caffec
    from caffec.compiler.flops import net_flops
    from caffec.compiler.pipeline import Options, load_layer_graph
    from caffec.formats.text_writer import format_text
    from caffec.frontend.loader import read_net, select_phase

    graph = load_layer_graph(path, Options(phase="TEST"))
    data = next(op.tops[0] for op in graph.ops if not op.bottoms)  # the first input
    shape = (batch, *data.shape[1:])
    net, spans = read_net(path)
    net, _ = select_phase(net, spans, "TEST", (), 0)
    layers = [layer for layer in net.layer if layer.bottom and layer.type not in DROPPED
              and not layer.type.endswith("Loss")]  # fmt: skip
    del net.layer[:]
    del net.input[:], net.input_shape[:], net.input_dim[:]
    feed = net.layer.add(name="data", type="Input", top=[data.blob])
    feed.input_param.shape.add(dim=list(shape))
    net.layer.extend(layers)
    prototxt = folder / f"{name}_b{batch}.prototxt"
    prototxt.write_text(format_text(net))
    weights = prototxt.with_suffix(".caffemodel")
    model = caffec.Net(str(prototxt), caffec.TEST)
    randomize(model, {layer.name: layer.type for layer in layers})
    model.save(str(weights))
    flops = net_flops(prototxt, Options(phase="TEST")).forward
    return Case(f"{name} b{batch}", prototxt, weights, shape, flops)


def randomize(net: Any, types: dict[str, str]) -> None:
    """Weights of variance 1 / fan-in (activations keep their scale through deep nets);
    BatchNorm's mean 0, variance 1 and scale factor 1."""
    rng = np.random.default_rng(0)
    for layer, blobs in net.params.items():
        for number, blob in enumerate(blobs):
            if types.get(layer) == "BatchNorm":
                blob.data[...] = 0 if number == 0 else 1
            elif number == 0 and blob.data.ndim > 1:
                fan_in = int(np.prod(blob.data.shape[1:]))
                blob.data[...] = rng.normal(0, fan_in**-0.5, blob.data.shape)
            else:
                blob.data[...] = rng.normal(0, 0.1, blob.data.shape)


def runners(case: Case) -> tuple[Callable[[], Any], Callable[[], Any], float]:
    """A forward of ``case`` by caffec and by OpenCV, on the same input; and the largest
    difference of their outputs relative to the largest output."""
    import cv2

    import caffec

    x = np.random.default_rng(1).random(case.shape, dtype=np.float32)
    ours = caffec.Net(str(case.prototxt), str(case.weights), caffec.TEST)
    theirs = cv2.dnn.readNetFromCaffe(str(case.prototxt), str(case.weights))
    output = theirs.getUnconnectedOutLayersNames()[0]
    data = ours.inputs[0]

    def caffec_forward() -> Any:
        return ours.forward(**{data: x})

    def opencv_forward() -> Any:
        theirs.setInput(x)
        return theirs.forward(output)

    expected = np.asarray(opencv_forward()).reshape(-1)
    got = caffec_forward()[ours.outputs[0]].reshape(-1)
    error = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-30))
    return caffec_forward, opencv_forward, error


def time_turns(
    runs: list[Callable[[], Any]],
    rounds: int,
    seconds: float,
    before: dict[int, Callable[[], Any]] | None = None,
) -> list[list[float]]:
    """Each run's forward times in ms, the runs taking turns for ``rounds`` rounds of about
    ``seconds`` each, after a warm-up; ``before[i]``, where given, is called (untimed)
    before each call of run ``i``."""
    times: list[list[float]] = [[] for _ in runs]
    for run in runs:
        for _ in range(3):
            run()
    for _ in range(rounds):
        for number, (run, samples) in enumerate(zip(runs, times, strict=True)):
            end = time.perf_counter() + seconds
            while True:
                if before and number in before:
                    before[number]()
                start = time.perf_counter()
                run()
                samples.append((time.perf_counter() - start) * 1000)
                if start > end:
                    break
    return times


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def load() -> str:
    """The 1-minute load average, to print beside every figure."""
    return f"load {os.getloadavg()[0]:.1f}"


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batches", default="1,10", help="batch sizes separated by commas")
    parser.add_argument("--only", help="net names separated by commas (e.g. cifar10_full)")
    parser.add_argument("--threads", type=int, help="both libraries' threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="one round of one library")
    parser.add_argument("--corpus", type=Path, default=CORPUS,
                        help="a folder with Caffe's examples/ and models/ under bvlc/")  # fmt: skip
    return parser


def cases(args: argparse.Namespace, folder: Path) -> list[Case]:
    """The cases ``args`` select, written into ``folder``; a missing net is reported as
    skipped."""
    wanted = set(args.only.split(",")) if args.only else None
    out = []
    for name, path in case_names(args.corpus):
        if wanted and name not in wanted:
            continue
        if not path.exists():
            print(f"{name:<28}skipped: no {path} (give --corpus)")
            continue
        out += [deploy_case(name, path, int(b), folder) for b in args.batches.split(",")]
    return out


def set_threads(threads: int | None) -> str:
    """Both libraries on ``threads`` threads (None: their defaults); what they run on."""
    import cv2

    from caffec.runtime.threads import thread_policy

    if threads is not None:
        os.environ["CAFFEC_NUM_THREADS"] = str(threads)
        cv2.setNumThreads(threads)
    policy = thread_policy()
    return (f"caffec {policy.threads} threads ({policy.source}), OpenCV {cv2.__version__} "
            f"{cv2.getNumThreads()} threads")  # fmt: skip


def compare(case: Case, args: argparse.Namespace) -> None:
    """Time ``case`` by both libraries in turns and print its line."""
    import cv2

    from caffec.codegen.peak import measure_peak
    from caffec.runtime.threads import thread_policy

    ours, theirs, error = runners(case)
    ours_ms, theirs_ms = (median(t) for t in time_turns([ours, theirs], args.rounds,
                                                         args.seconds))  # fmt: skip
    peak = measure_peak()
    rates = ""
    for ms, threads in ((ours_ms, thread_policy().threads), (theirs_ms, cv2.getNumThreads())):
        gflops = case.flops / ms / 1e6
        rates += f"{gflops:>9.1f}{100 * gflops / peak.at(threads):>5.0f}%"
    print(f"{case.name:<28}{ours_ms:>11.3f}{theirs_ms:>11.3f}{ours_ms / theirs_ms:>8.2f}"
          f"{error:>10.1e}{case.flops / 1e9:>8.3f}{rates}   {load()}")  # fmt: skip


def main() -> None:
    from caffec.codegen.peak import measure_peak

    args = arguments(__doc__.splitlines()[0]).parse_args()
    print(set_threads(args.threads))
    print(f"peak: {measure_peak().describe()}")
    print(f"{'net':<28}{'caffec ms':>11}{'OpenCV ms':>11}{'ratio':>8}{'max diff':>10}"
          f"{'GFLOP':>8}{'caffec GFLOP/s':>15}{'OpenCV GFLOP/s':>15}   load")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="caffec-vs-opencv-") as folder:
        for case in cases(args, Path(folder)):
            compare(case, args)


if __name__ == "__main__":
    main()
