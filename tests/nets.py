"""Helpers for tests: two builds of one net side by side, and solvers written beside nets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# pycaffe's examples/pycaffe/layers/pyloss.py, as users write it (the corpus does not ship it)
PYLOSS = """
import numpy as np


class EuclideanLossLayer:
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                bottom[i].diff[...] = (1 if i == 0 else -1) * self.diff / bottom[i].num
"""


def solver_beside(folder: Path, net: str, fields: str) -> Path:
    """``folder/solver.prototxt`` training ``net`` (written as ``folder/net.prototxt``) with
    the solver ``fields`` (prototxt text)."""
    (folder / "net.prototxt").write_text(net)
    solver = folder / "solver.prototxt"
    solver.write_text(f'net: "{folder / "net.prototxt"}"\n{fields}')
    return solver


def same_params(source: Any, dest: Any) -> None:
    """Give ``dest`` the parameter values of ``source`` (two builds of one net)."""
    for name, blobs in source.params.items():
        for a, b in zip(blobs, dest.params[name], strict=True):
            b.data[...] = a.data


def train_step(net: Any, feed: dict[str, Any], lr: float, backward_passes: int = 1) -> dict:
    """One SGD step as the solver runs it (cleared gradients, forward, backward, the
    generated update at learning rate ``lr``); the outputs of the forward pass, copied."""
    net.clear_param_diffs()
    outputs = {k: v.copy() for k, v in net.forward(**feed).items()}
    for _ in range(backward_passes):
        net.backward()
    net._exec.of_kind("hyper")[0] = lr
    net._exec.run("update", 0, len(net.artifact.manifest.update))
    return outputs
