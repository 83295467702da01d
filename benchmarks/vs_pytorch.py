"""caffec against PyTorch CPU on Caffe's reference nets, measured in the same run.

Each net is read once by caffec's frontend; the PyTorch model is built from
the same layer graph (the same layers, shapes and Caffe's pooling rounding),
so both run the same arithmetic. Training steps are forward, backward and an
SGD-with-momentum update (caffec: its solver, with the net's data layers
replaced by Input layers filled once; PyTorch: ``torch.optim.SGD``); forward
passes are TEST-phase inference. PyTorch runs on the same number of threads
(``--threads``, default: every core). The two take turns, three rounds each,
and each reports its best round: this machine's speed drifts by 10-20%.

With ``--gpu`` both run on GPU 0 instead (caffec in GPU mode: its CUDA target;
PyTorch on ``cuda``, waited for after each iteration, as caffec's step waits to
read the loss): the training steps of LeNet, GoogLeNet at batch 32 and 128 and
ResNet-50 at batch 32 (``benchmarks/nets/resnet50.prototxt``), in the GEMMs'
arithmetic ``--precision`` names (fp32; tf32 or bf16 on tensor cores: caffec's
``precision``, PyTorch's TF32 switches or bfloat16 autocast), and each side's peak
device memory: caffec's bytes in use in CuPy's memory pool after the step (its
arena, parameters, gradients and histories are allocated once, so that is its
peak), PyTorch's ``torch.cuda.max_memory_allocated()`` since its model was built.

Each case prints its FLOPs (convolutions and inner products, counted from the layer
shapes: caffec.compiler.flops) and the rate each side reaches; on the CPU also as a
share of the peak measured by caffec's probe on ``--threads`` threads
(caffec.codegen.peak).

    python benchmarks/vs_pytorch.py [--threads 2] [--only lenet,cifar10_quick,...]
        [--gpu [--precision fp32|tf32|bf16]]

Needs ``torch`` (``pip install torch==2.13.0``); prints ratios caffec / PyTorch
(below 1: caffec is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared/corpus"  # Caffe's examples and models (--corpus)
MODELS = Path("bvlc/models")  # under the corpus
EXAMPLES = Path("bvlc/examples")

# name, prototxt (in the repository, or under the corpus), phase, data shapes, what is timed,
# iterations per round
CASES = [
    ("lenet", REPO / "examples/mnist/lenet_train_test.prototxt", "TRAIN",
     {"data": (64, 1, 28, 28), "label": (64,)}, "train", 30),
    ("cifar10_quick", EXAMPLES / "cifar10/cifar10_quick_train_test.prototxt", "TRAIN",
     {"data": (100, 3, 32, 32), "label": (100,)}, "train", 10),
    ("caffenet_b1", MODELS / "bvlc_reference_caffenet/deploy.prototxt", "TEST",
     {"data": (1, 3, 227, 227)}, "forward", 20),
    ("caffenet_b10", MODELS / "bvlc_reference_caffenet/deploy.prototxt", "TEST",
     {"data": (10, 3, 227, 227)}, "forward", 5),
    ("googlenet_b32", MODELS / "bvlc_googlenet/train_val.prototxt", "TRAIN",
     {"data": (32, 3, 224, 224), "label": (32,)}, "train", 1),
    ("mobilenet_blocks_b32", REPO / "benchmarks/nets/mobilenet_blocks.prototxt", "TRAIN",
     {"data": (32, 3, 112, 112), "label": (32,)}, "train", 3),
]  # fmt: skip
GPU_CASES = [
    ("lenet", REPO / "examples/mnist/lenet_train_test.prototxt", "TRAIN",
     {"data": (64, 1, 28, 28), "label": (64,)}, "train", 200),
    ("googlenet_b32", MODELS / "bvlc_googlenet/train_val.prototxt", "TRAIN",
     {"data": (32, 3, 224, 224), "label": (32,)}, "train", 10),
    ("googlenet_b128", MODELS / "bvlc_googlenet/train_val.prototxt", "TRAIN",
     {"data": (128, 3, 224, 224), "label": (128,)}, "train", 5),
    ("resnet50_b32", REPO / "benchmarks/nets/resnet50.prototxt", "TRAIN",
     {"data": (32, 3, 224, 224), "label": (32,)}, "train", 10),
]  # fmt: skip


def with_inputs(path: Path, phase: str, shapes: dict[str, tuple[int, ...]], out: Path) -> Path:
    """The net of ``phase`` with its data layers replaced by one Input layer of ``shapes``."""
    from caffec.formats import caffe_pb2
    from caffec.formats.text_writer import format_text
    from caffec.frontend.loader import read_net, select_phase

    net, spans = read_net(path)
    net, _ = select_phase(net, spans, phase, (), 0)
    layers = [layer for layer in net.layer if layer.bottom]  # a data layer has no bottoms
    del net.layer[:]
    del net.input[:], net.input_shape[:], net.input_dim[:]
    feed = net.layer.add(name="inputs", type="Input", top=list(shapes))
    for shape in shapes.values():
        feed.input_param.shape.add(dim=list(shape))
    net.layer.extend(layers)
    net.state.CopyFrom(caffe_pb2.NetState(phase=caffe_pb2.TRAIN if phase == "TRAIN" else 0))
    out.write_text(format_text(net))
    return out


def caffec_runner(
    net_file: Path, phase: str, shapes: dict, kind: str, precision: str = "fp32"
) -> Callable[[], Any]:
    """One iteration of ``kind`` (a training step or a forward pass) with caffec, its GEMMs
    in ``precision``."""
    import caffec

    rng = np.random.default_rng(0)
    feed = {name: rng.integers(0, 10, s) if name == "label" else rng.random(s)
            for name, s in shapes.items()}  # fmt: skip
    if kind == "forward":
        net = caffec.Net(str(net_file), caffec.TEST, precision=precision)
        run: Callable[[], Any] = lambda: net.forward(**feed)  # noqa: E731
    else:
        solver_file = net_file.with_suffix(".solver.prototxt")
        solver_file.write_text(
            f'net: "{net_file}"\nbase_lr: 0.001\nmomentum: 0.9\nweight_decay: 0.0005\n'
            'lr_policy: "fixed"\nmax_iter: 1000000\nsolver_mode: CPU\n'
        )
        solver = caffec.get_solver(str(solver_file), log=lambda message: None, outputs_only=True,
                                   precision=precision)  # fmt: skip
        for name, value in feed.items():
            solver.net.blobs[name].data[...] = value
        run = lambda: solver.step(1)  # noqa: E731
    return run


def torch_runner(
    net_file: Path,
    phase: str,
    shapes: dict,
    kind: str,
    device: str = "cpu",
    precision: str = "fp32",
) -> Callable[[], Any]:
    """One iteration of ``kind`` with PyTorch on ``device``, on the model built from the same
    net, in ``precision``: fp32 and tf32 by cuDNN's and cuBLAS's TF32 switches, bf16 by
    autocast (its GEMMs and convolutions in bfloat16, the rest in float32)."""
    import torch

    from caffec.compiler.pipeline import Options, load_layer_graph

    graph = load_layer_graph(net_file, Options(phase=phase))
    model = TorchNet(graph, training=kind == "train").to(device)
    rng = np.random.default_rng(0)
    feed = {
        name: torch.from_numpy(rng.integers(0, 10, s) if name == "label" else rng.random(s))
        for name, s in shapes.items()
    }
    feed = {name: (x if name == "label" else x.float()).to(device) for name, x in feed.items()}
    wait = torch.cuda.synchronize if device == "cuda" else lambda: None
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"

    def autocast() -> Any:
        if precision == "bf16":
            return torch.autocast(device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    if kind == "forward":
        model.eval()

        def run() -> None:
            with torch.no_grad(), autocast():
                model(feed)
            wait()

    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)

        def run() -> None:
            opt.zero_grad()
            with autocast():
                loss = model(feed)
            loss.backward()
            opt.step()
            wait()

    return run


def best_ms(runs: list[Callable[[], Any]], iterations: int, rounds: int = 3) -> list[float]:
    """Each run's best average over ``rounds`` rounds of ``iterations``, the runs taking turns
    (so a slow spell of the machine hits both), after two warm-up iterations each."""
    for run in runs:
        for _ in range(2):
            run()
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for number, run in enumerate(runs):
            start = time.perf_counter()
            for _ in range(iterations):
                run()
            best[number] = min(best[number], (time.perf_counter() - start) / iterations * 1000)
    return best


def TorchNet(graph: Any, training: bool) -> Any:  # noqa: N802 (a class, built when torch is there)
    """A torch module running ``graph``'s layers in order; returns the weighted sum of the
    losses (training) or the blobs."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class ChannelScale(nn.Module):
        """Caffe's Scale of one bottom: a learned factor, and bias, per channel (axis 1)."""

        def __init__(self, channels: int, bias: bool) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

        def forward(self, x: Any) -> Any:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = x * self.weight.view(shape)
            return y if self.bias is None else y + self.bias.view(shape)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ops = [op for op in graph.ops if op.bottoms]  # the feed replaces data layers
            self.layers = nn.ModuleDict()
            for op in self.ops:
                if op.type == "Convolution":
                    p = op.param.convolution_param
                    k = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 1)
                    s = _pair(p.stride, p.stride_h, p.stride_w, 1)
                    pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
                    self.layers[op.name] = nn.Conv2d(
                        op.bottoms[0].shape[1], p.num_output, k, s, pad,
                        dilation=p.dilation[0] if p.dilation else 1, groups=p.group,
                        bias=p.bias_term,
                    )  # fmt: skip
                elif op.type == "InnerProduct":
                    p = op.param.inner_product_param
                    fan_in = int(np.prod(op.bottoms[0].shape[1:]))
                    self.layers[op.name] = nn.Linear(fan_in, p.num_output, bias=p.bias_term)
                elif op.type == "BatchNorm":  # statistics of the batch in training, as Caffe's
                    p = op.param.batch_norm_param
                    self.layers[op.name] = nn.BatchNorm2d(
                        op.bottoms[0].shape[1], eps=p.eps,
                        momentum=1 - p.moving_average_fraction, affine=False,
                    )  # fmt: skip
                elif op.type == "Scale" and len(op.bottoms) == 1:
                    channels = op.bottoms[0].shape[1]
                    self.layers[op.name] = ChannelScale(channels, op.param.scale_param.bias_term)

        def forward(self, feed: dict) -> Any:
            blobs = dict(feed)
            loss = torch.zeros(())
            for op in self.ops:
                xs = [blobs[v.blob] for v in op.bottoms]
                ys = self._layer(op, xs)
                for value, y in zip(op.tops, ys, strict=True):
                    blobs[value.blob] = y
                if "Loss" in op.type:
                    weight = op.param.loss_weight[0] if op.param.loss_weight else 1.0
                    loss = loss + weight * ys[0]
            return loss if training else blobs

        def _layer(self, op: Any, xs: list) -> list:
            t, p = op.type, op.param
            if t in ("Convolution", "BatchNorm") or (t == "Scale" and len(xs) == 1):
                return [self.layers[op.name](xs[0])]
            if t == "Eltwise":
                q = p.eltwise_param
                if q.operation == q.PROD:
                    return [functools.reduce(torch.mul, xs)]
                if q.operation == q.MAX:
                    return [functools.reduce(torch.maximum, xs)]
                coeffs = list(q.coeff) or [1.0] * len(xs)
                return [
                    functools.reduce(torch.add, (c * x for c, x in zip(coeffs, xs, strict=True)))
                ]
            if t == "InnerProduct":
                return [self.layers[op.name](torch.flatten(xs[0], 1))]
            if t == "ReLU":
                return [F.relu(xs[0])]
            if t == "Pooling":
                q = p.pooling_param
                h, w = xs[0].shape[2:]
                k = (h, w) if q.global_pooling else _pair(q.kernel_size, q.kernel_h, q.kernel_w, 1)
                s = (1, 1) if q.global_pooling else _pair(q.stride, q.stride_h, q.stride_w, 1)
                pad = _pair(q.pad, q.pad_h, q.pad_w, 0)
                if q.pool == q.MAX:
                    return [F.max_pool2d(xs[0], k, s, pad, ceil_mode=True)]
                return [F.avg_pool2d(xs[0], k, s, pad, ceil_mode=True, count_include_pad=True)]
            if t == "LRN":
                q = p.lrn_param
                return [F.local_response_norm(xs[0], q.local_size, q.alpha, q.beta, q.k)]
            if t == "Concat":
                return [torch.cat(xs, p.concat_param.axis)]
            if t == "Dropout":
                return [F.dropout(xs[0], p.dropout_param.dropout_ratio, training)]
            if t == "Softmax":
                return [F.softmax(xs[0], 1)]
            if t == "SoftmaxWithLoss":
                return [F.cross_entropy(xs[0], xs[1].long())]
            if t == "Split":
                return [xs[0]] * len(op.tops)
            if t == "Flatten":
                return [torch.flatten(xs[0], 1)]
            if t == "Accuracy":
                return [torch.zeros(())]
            raise NotImplementedError(f"{t} is not translated to PyTorch")

    return Net()


def _pair(both: Any, h: int, w: int, default: int) -> tuple[int, int]:
    """Caffe's (h, w) of a kernel, stride or pad: the _h/_w fields, else the repeated one."""
    if h or w:
        return h, w
    if isinstance(both, int):  # Pooling's fields are single numbers, Convolution's repeated
        return (both, both) if both else (default, default)
    value = both[0] if len(both) else default
    return value, value


def flops_of(net_file: Path, phase: str, kind: str) -> int:
    """The FLOPs of one iteration of ``kind`` (caffec.compiler.flops' convention)."""
    from caffec.compiler.flops import net_flops
    from caffec.compiler.pipeline import Options

    counted = net_flops(net_file, Options(phase=phase, backward=kind == "train"))
    return counted.step if kind == "train" else counted.forward


def device_memory_reset() -> None:
    """Give back what earlier cases left in CuPy's and PyTorch's pools, and restart
    PyTorch's peak."""
    import cupy
    import torch

    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def device_memory() -> tuple[float, float]:
    """MiB: caffec's bytes in use in CuPy's pool (allocated once: its peak), and PyTorch's
    peak allocation since :func:`device_memory_reset`."""
    import cupy
    import torch

    used = cupy.get_default_memory_pool().used_bytes()
    return used / 2**20, torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    from caffec.compiler.pipeline import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--gpu", action="store_true", help="both on GPU 0 (see above)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="the GEMMs' arithmetic (tf32 and bf16: with --gpu)")  # fmt: skip
    parser.add_argument("--corpus", type=Path, default=CORPUS,
                        help="a folder with Caffe's examples/ and models/ under bvlc/")  # fmt: skip
    args = parser.parse_args()
    if args.precision != "fp32" and not args.gpu:
        parser.error(f"--precision {args.precision} runs on a GPU's tensor cores: add --gpu")
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    wanted = set(args.only.split(",")) if args.only else None
    where = f"{args.threads} threads"
    peak = None
    if args.gpu:
        import caffec

        caffec.set_device(0)
        caffec.set_mode_gpu()
        where = f"GPU: {torch.cuda.get_device_name(0)}, {args.precision}"
        rates = f"{'caffec GFLOP/s':>16}{'PyTorch':>10}{'caffec MiB':>12}{'PyTorch MiB':>13}"
    else:
        from caffec.codegen.peak import measure_peak

        peak = measure_peak()
        print(f"peak: {peak.describe()}")
        rates = f"{'caffec GFLOP/s':>16}{'(peak)':>8}{'PyTorch':>10}{'(peak)':>8}"
    print(f"{'case':<22}{'caffec ms':>12}{'PyTorch ms':>12}{'ratio':>8}{'GFLOP':>9}{rates}"
          f"   (PyTorch {torch.__version__}, {where})")  # fmt: skip
    for name, path, phase, shapes, kind, iterations in GPU_CASES if args.gpu else CASES:
        if wanted and name not in wanted:
            continue
        path = path if path.is_absolute() else args.corpus / path
        if not path.exists():
            print(f"{name + ' ' + kind:<22}   skipped: no {path} (give --corpus)")
            continue
        net_file = with_inputs(path, phase, shapes, folder / f"{name}.prototxt")
        device = "cuda" if args.gpu else "cpu"
        if args.gpu:
            device_memory_reset()
        runs = [caffec_runner(net_file, phase, shapes, kind, args.precision),
                torch_runner(net_file, phase, shapes, kind, device, args.precision)]  # fmt: skip
        ours, theirs = best_ms(runs, iterations)
        gflop = flops_of(net_file, phase, kind) / 1e9
        line = (
            f"{name + ' ' + kind:<22}{ours:>12.1f}{theirs:>12.1f}{ours / theirs:>8.2f}{gflop:>9.2f}"
        )
        ours_rate, theirs_rate = gflop / ours * 1000, gflop / theirs * 1000
        if peak is None:
            mine, torchs = device_memory()
            line += f"{ours_rate:>16.0f}{theirs_rate:>10.0f}{mine:>12.0f}{torchs:>13.0f}"
        else:
            reference = peak.at(args.threads)
            line += (f"{ours_rate:>16.1f}{100 * ours_rate / reference:>7.0f}%"
                     f"{theirs_rate:>10.1f}{100 * theirs_rate / reference:>7.0f}%")  # fmt: skip
        print(line, flush=True)
        del runs


if __name__ == "__main__":
    main()
