"""LeNet training step (batch 64) with caffec, against a baseline measured in the same run.

The baseline is PyTorch's CPU step for the same net and solver when torch is
installed (pinned to the same number of threads), otherwise a numpy
implementation of the same step (BLAS matrix products, im2col by strides).
caffec is timed twice: with its Input layers filled by the caller (the
compute alone) and reading Fashion-MNIST from an LMDB through its data
layer (to show the data pipeline's share of the step).

    python benchmarks/lenet_train.py [--iterations 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

REPO = Path(__file__).resolve().parents[1]
BATCH = 64


def caffec_step_ms(iterations: int, feed_from_lmdb: bool) -> tuple[float, float]:
    """(ms per iteration, share of it spent waiting for data)."""
    from caffec.solver import Solver

    folder = Path(tempfile.mkdtemp())
    net = (REPO / "examples/mnist/lenet_train_test.prototxt").read_text()
    if feed_from_lmdb:
        from caffec.tools import convert_mnist

        fashion = Path("/usr/share/datasets/fashion-mnist")
        images, labels = (fashion / f"train-{k}-ubyte.gz" for k in ("images-idx3", "labels-idx1"))
        convert_mnist(images, labels, folder / "train_lmdb")
        net = net.replace("examples/mnist/mnist_train_lmdb", str(folder / "train_lmdb"))
    else:
        net = net.replace('type: "Data"', 'type: "Input"', 1).replace(
            'data_param { source: "examples/mnist/mnist_train_lmdb" batch_size: 64 backend: LMDB }',
            "input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 } }",
        )
    (folder / "net.prototxt").write_text(net)
    (folder / "solver.prototxt").write_text(
        f'net: "{folder / "net.prototxt"}"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\n'
        'lr_policy: "inv"\ngamma: 0.0001\npower: 0.75\nmax_iter: 100000\nsolver_mode: CPU\n'
    )
    solver = Solver(folder / "solver.prototxt", log=lambda message: None)
    if not feed_from_lmdb:
        rng = np.random.default_rng(0)
        solver.net.blobs["data"].data[...] = rng.random((BATCH, 1, 28, 28))
        solver.net.blobs["label"].data[...] = rng.integers(0, 10, BATCH)
    solver.step(5)
    feeders = list((getattr(solver.net, "_open_feeders", None) or {}).values())
    waited = sum(f.waited for f in feeders)
    start = time.perf_counter()
    solver.step(iterations)
    elapsed = time.perf_counter() - start
    waited = sum(f.waited for f in feeders) - waited
    solver.net.close()
    return elapsed / iterations * 1000, waited / elapsed


def torch_step_ms(iterations: int, threads: int) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    x = torch.rand(BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations * 1000


class NumpyLeNet:
    """LeNet's forward, backward and SGD-with-momentum step in plain numpy."""

    def __init__(self, rng: np.random.Generator) -> None:
        shapes = {"c1": (20, 1, 5, 5), "c2": (50, 20, 5, 5), "f1": (500, 800), "f2": (10, 500)}
        self.w = {k: rng.standard_normal(s).astype(np.float32) * 0.05 for k, s in shapes.items()}
        self.b = {k: np.zeros(s[0], np.float32) for k, s in shapes.items()}
        self.v = {
            k: np.zeros_like(a)
            for k, a in {**self.w, **{k + "b": b for k, b in self.b.items()}}.items()
        }

    @staticmethod
    def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, c, _, _ = x.shape
        o, _, k, _ = w.shape
        cols = sliding_window_view(x, (k, k), axis=(2, 3))  # n c oh ow k k
        oh, ow = cols.shape[2:4]
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k)
        y = cols @ w.reshape(o, -1).T + b
        return y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2), cols

    @staticmethod
    def conv_back(dy: np.ndarray, cols: np.ndarray, x_shape: tuple, w: np.ndarray) -> tuple:
        n, c, h, wd = x_shape
        o, _, k, _ = w.shape
        d2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)
        dw, db = (d2.T @ cols).reshape(w.shape), d2.sum(0)
        dcols = (d2 @ w.reshape(o, -1)).reshape(n, h - k + 1, wd - k + 1, c, k, k)
        dx = np.zeros(x_shape, np.float32)
        for i in range(k):
            for j in range(k):
                dx[:, :, i : i + h - k + 1, j : j + wd - k + 1] += dcols[..., i, j].transpose(
                    0, 3, 1, 2
                )
        return dx, dw, db

    @staticmethod
    def pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        mask = x == y.repeat(2, 2).repeat(2, 3)
        return y, mask

    def step(self, x: np.ndarray, labels: np.ndarray) -> float:
        w, b = self.w, self.b
        c1, cols1 = self.conv(x, w["c1"], b["c1"])
        p1, m1 = self.pool(c1)
        c2, cols2 = self.conv(p1, w["c2"], b["c2"])
        p2, m2 = self.pool(c2)
        flat = p2.reshape(BATCH, -1)
        h = flat @ w["f1"].T + b["f1"]
        r = np.maximum(h, 0)
        z = r @ w["f2"].T + b["f2"]
        e = np.exp(z - z.max(1, keepdims=True))
        prob = e / e.sum(1, keepdims=True)
        loss = -np.log(prob[np.arange(BATCH), labels]).mean()
        dz = prob
        dz[np.arange(BATCH), labels] -= 1
        dz /= BATCH
        g = {"f2": dz.T @ r, "f2b": dz.sum(0)}
        dh = (dz @ w["f2"]) * (h > 0)
        g["f1"], g["f1b"] = dh.T @ flat, dh.sum(0)
        dp2 = (dh @ w["f1"]).reshape(p2.shape)
        dc2 = m2 * dp2.repeat(2, 2).repeat(2, 3)
        dp1, g["c2"], g["c2b"] = self.conv_back(dc2, cols2, p1.shape, w["c2"])
        dc1 = m1 * dp1.repeat(2, 2).repeat(2, 3)
        _, g["c1"], g["c1b"] = self.conv_back(dc1, cols1, x.shape, w["c1"])
        for key, grad in g.items():
            target = b[key[:-1]] if key.endswith("b") else w[key]
            self.v[key] = 0.9 * self.v[key] + 0.01 * (grad + 0.0005 * target)
            target -= self.v[key]
        return float(loss)


def numpy_step_ms(iterations: int) -> float:
    rng = np.random.default_rng(0)
    model = NumpyLeNet(rng)
    x = rng.random((BATCH, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, BATCH)
    for _ in range(3):
        model.step(x, labels)
    start = time.perf_counter()
    for _ in range(iterations):
        model.step(x, labels)
    return (time.perf_counter() - start) / iterations * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    compute, _ = caffec_step_ms(args.iterations, feed_from_lmdb=False)
    print(f"caffec LeNet step (batch {BATCH}, inputs given): {compute:8.2f} ms")
    if Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        fed, share = caffec_step_ms(args.iterations, feed_from_lmdb=True)
        print(f"caffec LeNet step reading Fashion-MNIST LMDB:  {fed:8.2f} ms "
              f"(waiting for data: {100 * share:.1f}% of the step)")  # fmt: skip
    try:
        baseline, name = torch_step_ms(args.iterations, args.threads), "PyTorch CPU"
    except ImportError:
        baseline, name = numpy_step_ms(args.iterations), "numpy"
    print(f"{name} LeNet step:{' ' * (30 - len(name))}{baseline:8.2f} ms")
    print(f"caffec / {name} time ratio: {compute / baseline:.2f} (below 1: caffec is faster)")


if __name__ == "__main__":
    main()
