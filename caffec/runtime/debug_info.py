"""Caffe's ``debug_info``, and the check that training has not diverged.

With ``debug_info: true`` in the solver, Caffe logs after every layer of the
train net the mean absolute value of its tops and parameters (forward) or of
its bottoms' and parameters' gradients (backward), then the L1 and L2 norms of
all parameters and their gradients, and after the update each parameter's
values again. caffec logs the same lines from a net built for it (every blob
kept, no fusion, run one step at a time).

Without it, the loop still checks every iteration's loss (and the weights
before a snapshot): a loss that is NaN, infinite, or stuck at -log of the
smallest float (every probability underflowed) ends training with an error
instead of training on to the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from caffec.errors import UserError

# the loss of a SoftmaxWithLoss whose every probability underflowed: -log(FLT_MIN)
CLAMPED_LOSS = {"float32": -math.log(np.finfo(np.float32).tiny),
                "float64": -math.log(np.finfo(np.float64).tiny)}  # fmt: skip


class Diverged(UserError):
    """Training met non-finite values; ``iteration`` is where."""

    def __init__(self, iteration: int, what: str) -> None:
        super().__init__(
            f"training diverged at iteration {iteration}: {what}",
            hint="lower base_lr, or set clip_gradients; debug_info: true in the solver logs "
            "every layer's values; caffec train --allow-divergence trains on regardless",
        )
        self.iteration = iteration
        self.what = what


def mean_abs(array: np.ndarray) -> float:
    """Caffe's asum / count."""
    return float(np.abs(array).mean()) if array.size else 0.0


def check_loss(net: Any, outputs: dict[str, np.ndarray], iteration: int) -> None:
    """Raise Diverged for a loss top that is not finite, or that every item clamped."""
    clamped = CLAMPED_LOSS[net.artifact.manifest.dtype]
    for name, _ in net.artifact.manifest.loss_tops:
        value = np.asarray(outputs[name], dtype=np.float64)
        if not np.isfinite(value).all():
            raise Diverged(iteration, f"the loss '{name}' is {value.reshape(-1)[0]:g}")
        if value.size == 1 and abs(value.item() - clamped) < 1e-3 * clamped:
            raise Diverged(iteration, f"the loss '{name}' is {value.item():g} = -log of the "
                           "smallest float: every probability underflowed")  # fmt: skip


def check_weights(net: Any, iteration: int) -> None:
    """Raise Diverged naming the first layer whose parameters are not finite."""
    for layer, blobs in net.params.items():
        for index, blob in enumerate(blobs):
            if not np.isfinite(blob.data).all():
                raise Diverged(iteration, f"the weights of layer '{layer}' (param {index}) "
                               "are not finite after the update")  # fmt: skip


def first_nonfinite(net: Any, direction: str, step: int) -> str | None:
    """What of step ``step`` of ``direction`` is not finite, in words (None: all finite)."""
    m = net.artifact.manifest
    layer = _layer(m, m.steps(direction)[step].layer)
    if direction == "forward":
        named = zip(layer.tops, layer.top_slots, strict=True)
        kind = "output"
    else:
        named = zip(layer.bottoms, layer.bottom_diff_slots, strict=True)
        kind = "gradient of its input"
    for blob, slot in named:
        if slot is not None and not np.isfinite(net._exec.host(slot)).all():
            return f"layer '{layer.name}' ({layer.type}) gives a non-finite {kind} '{blob}'"
    for index, param in enumerate(net.params.get(layer.name, [])):
        values = param.data if direction == "forward" else param.diff
        if not np.isfinite(values).all():
            what = "parameter" if direction == "forward" else "parameter gradient"
            return f"layer '{layer.name}' ({layer.type}) has a non-finite {what} {index}"
    return None


class DebugInfo:
    """Logs Caffe's debug_info lines for a net: set ``net.step_hook = info.after_step``."""

    def __init__(self, net: Any, log: Callable[..., None]) -> None:
        self.net = net
        self.log = log
        # names and parameters, the same in every build of the net
        self._layers = {layer.name: layer for layer in self.manifest.layers}

    @property
    def manifest(self) -> Any:
        """The net's manifest now: a net compiles itself again for a Filter's new count."""
        return self.net.artifact.manifest

    def after_step(self, direction: str, step: int) -> None:
        layer = _layer(self.manifest, self.manifest.steps(direction)[step].layer)
        host, params = self.net._exec.host, self.net.params.get(layer.name, [])
        if direction == "forward":
            for top, slot in zip(layer.tops, layer.top_slots, strict=True):
                if slot is not None:
                    self.log(f"    [Forward] Layer {layer.name}, top blob {top} data: "
                             f"{mean_abs(host(slot)):g}")  # fmt: skip
            for index, param in enumerate(params):
                name = display_name(layer, index)
                self.log(f"    [Forward] Layer {layer.name}, param blob {name} data: "
                         f"{mean_abs(param.data):g}")  # fmt: skip
            return
        for bottom, slot in zip(layer.bottoms, layer.bottom_diff_slots, strict=True):
            if slot is not None:
                self.log(f"    [Backward] Layer {layer.name}, bottom blob {bottom} diff: "
                         f"{mean_abs(host(slot)):g}")  # fmt: skip
        for index, param in enumerate(params):
            if param.learned_diff:
                self.log(f"    [Backward] Layer {layer.name}, param blob {index} diff: "
                         f"{mean_abs(param.diff):g}")  # fmt: skip

    def after_backward(self) -> None:
        """The norms of every learnable parameter and its gradient (Caffe logs it as ERROR)."""
        data = [p.data for p in self._learnable()]
        diff = [p.diff for p in self._learnable()]
        l1 = (sum(float(np.abs(a).sum()) for a in data), sum(float(np.abs(a).sum()) for a in diff))
        l2 = (math.sqrt(sum(float((a * a).sum()) for a in data)),
              math.sqrt(sum(float((a * a).sum()) for a in diff)))  # fmt: skip
        self.log(f"    [Backward] All net params (data, diff): L1 norm = ({l1[0]:g}, {l1[1]:g}); "
                 f"L2 norm = ({l2[0]:g}, {l2[1]:g})", level="E")  # fmt: skip

    def after_update(self) -> None:
        for entry in self.manifest.params:
            param = self.net.params[entry.layer][entry.index]
            name = display_name(self._layers[entry.layer], entry.index)
            if entry.shared_with is None:
                self.log(f"    [Update] Layer {entry.layer}, param {name} data: "
                         f"{mean_abs(param.data):g}; diff: {mean_abs(param.diff):g}")  # fmt: skip
            else:
                owner, owner_index = entry.shared_with
                self.log(f"    [Update] Layer {entry.layer}, param blob {name} (owned by layer "
                         f"{owner}, param {display_name(self._layers[owner], owner_index)}) "
                         f"diff: "
                         f"{mean_abs(param.diff):g}")  # fmt: skip

    def _learnable(self) -> list[Any]:
        return [self.net.params[p.layer][p.index] for p in self.manifest.params
                if p.shared_with is None and p.grad is not None]  # fmt: skip


def _layer(manifest: Any, name: str) -> Any:
    return next(layer for layer in manifest.layers if layer.name == name)


def display_name(layer: Any, index: int) -> str:
    """Caffe's name for a layer's parameter: its ParamSpec's name, else its index."""
    specs = layer.param.get("param", [])
    return (specs[index].get("name") if index < len(specs) else None) or str(index)
