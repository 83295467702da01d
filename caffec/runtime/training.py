"""Training as Caffe's Solver does it, over compiled nets: the loop, the learning rate,
tests, Caffe's log lines, and snapshots.

The update itself is generated code (the train artifact's ``update`` step);
this module decides the learning rate of each iteration, runs forward,
backward and update the right number of times, tests the test nets (which
share the train net's parameter arrays), and writes and restores snapshots.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError
from caffec.formats.snapshots import load_blobs, read_solver_snapshot, write_solver_snapshot
from caffec.runtime.compiled_net import CompiledNet
from caffec.runtime.debug_info import DebugInfo, check_loss, check_weights
from caffec.runtime.distributed import DataParallel, is_root
from caffec.runtime.glog import caffe_log


@dataclass
class SolverSettings:
    """The SolverParameter fields the training loop needs, as plain values."""

    type: str = "SGD"
    base_lr: float = 0.01
    lr_policy: str = "fixed"
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: list[int] = field(default_factory=list)
    momentum: float = 0.0
    momentum2: float = 0.999
    max_iter: int = 0
    iter_size: int = 1
    display: int = 0
    average_loss: int = 1
    test_iter: list[int] = field(default_factory=list)
    test_interval: int = 0
    test_initialization: bool = True
    test_compute_loss: bool = False
    snapshot: int = 0
    snapshot_prefix: str = ""
    snapshot_after_train: bool = True
    snapshot_format: str = "BINARYPROTO"
    debug_info: bool = False


POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def learning_rate(s: SolverSettings, iteration: int, current_step: int) -> tuple[float, int]:
    """Caffe's GetLearningRate: the rate at ``iteration`` and the multistep position after it."""
    policy = s.lr_policy
    if policy == "fixed":
        return s.base_lr, current_step
    if policy == "step":
        if s.stepsize <= 0:
            raise UserError('lr_policy "step" needs stepsize > 0')
        return s.base_lr * s.gamma ** (iteration // s.stepsize), current_step
    if policy == "exp":
        return s.base_lr * s.gamma**iteration, current_step
    if policy == "inv":
        return s.base_lr * (1 + s.gamma * iteration) ** (-s.power), current_step
    if policy == "multistep":
        while current_step < len(s.stepvalue) and iteration >= s.stepvalue[current_step]:
            current_step += 1
        return s.base_lr * s.gamma**current_step, current_step
    if policy == "poly":
        return s.base_lr * (1 - iteration / s.max_iter) ** s.power, current_step
    if policy == "sigmoid":
        return s.base_lr / (1 + math.exp(-s.gamma * (iteration - s.stepsize))), current_step
    from caffec.errors import did_you_mean

    if not policy:
        raise UserError("the solver sets no lr_policy", hint=f"set one of: {', '.join(POLICIES)}")
    raise UserError(
        f"unknown lr_policy '{policy}'",
        hint=did_you_mean(policy, POLICIES) or f"policies: {', '.join(POLICIES)}",
    )


class Progress:
    """A one-line progress bar on an interactive terminal, erased before each log line."""

    WIDTH = 30

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.active = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.shown = False
        self._last = 0.0

    def show(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.active or total <= 0 or now - self._last < 0.2:
            return
        self._last = now
        filled = self.WIDTH * done // total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} iterations")
        self.stream.flush()
        self.shown = True

    def erase(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * (self.WIDTH + 40) + "\r")
            self.stream.flush()
            self.shown = False


class TrainingLoop:
    """Caffe's Solver over a compiled train net and its test nets."""

    def __init__(
        self,
        settings: SolverSettings,
        net: CompiledNet,
        test_nets: list[CompiledNet],
        log: Callable[[str], None] = caffe_log,
        check_divergence: bool = True,
    ) -> None:
        self.settings = settings
        self.check_divergence = check_divergence
        self.net = net
        self.test_nets = test_nets
        self.progress = Progress()
        self._log = log
        self.iter = 0
        self.current_step = 0
        self._losses: deque[float] = deque(maxlen=max(1, settings.average_loss))
        m = net.artifact.manifest
        if not m.update:
            raise UserError("the train net was compiled without a solver update step")
        self.stop_requested = False
        self.snapshot_requested = False
        self._stop_agreed = False  # data-parallel: some rank was asked to stop
        self.debug = DebugInfo(net, self.log) if settings.debug_info else None
        if self.debug is not None:
            net.step_hook = self.debug.after_step
        # Caffe's Solver::Callback objects: on_start() before each iteration's passes,
        # on_gradients_ready() after them, before the update
        self.callbacks: list[Any] = []
        self.parallel: DataParallel | None = None

    def add_callback(self, callback: Any) -> None:
        """Call ``callback.on_start()`` and ``callback.on_gradients_ready()`` every iteration;
        a :class:`DataParallel` also averages the logged loss over its ranks."""
        self.callbacks.append(callback)
        if isinstance(callback, DataParallel):
            self.parallel = callback

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for (by a signal): on any rank, when data-parallel, so
        that every rank stops after the same iteration."""
        return self._stop_agreed if self.parallel is not None else self.stop_requested

    def log(self, message: str, level: str = "I") -> None:
        if not is_root():  # rank 0 alone logs, as in Caffe
            return
        self.progress.erase()
        if self._log is caffe_log:
            caffe_log(message, level=level)
        else:
            self._log(message)

    # --- one iteration ----------------------------------------------------------------------
    def _rate_for_step(self) -> float:
        rate, self.current_step = learning_rate(self.settings, self.iter, self.current_step)
        return rate

    def _apply_update(self, rate: float) -> None:
        scaled = rate
        if self.settings.type == "Adam":  # Caffe folds the bias correction into the rate
            t = self.iter + 1
            s = self.settings
            scaled = rate * math.sqrt(1 - s.momentum2**t) / (1 - s.momentum**t)
        self.net._exec.of_kind("hyper", overwrite=True)[0] = scaled
        self.net._exec.run("update", 0, 1)
        if self.debug is not None:
            self.debug.after_update()

    def _forward_backward(self) -> float:
        loss = 0.0
        for _ in range(self.settings.iter_size):
            outputs = self.net.forward()
            loss += self._weighted_loss(self.net, outputs)
            if self.check_divergence:
                check_loss(self.net, outputs, self.iter)
            self.net.backward()
            if self.debug is not None:
                self.debug.after_backward()
        return loss / self.settings.iter_size

    @staticmethod
    def _weighted_loss(net: CompiledNet, outputs: dict[str, np.ndarray]) -> float:
        weights = dict(net.artifact.manifest.loss_tops)
        return float(sum(weights[n] * float(np.sum(outputs[n])) for n in weights if n in outputs))

    def step(self, iterations: int) -> None:
        """Run ``iterations`` iterations, as Caffe's Solver::Step."""
        s = self.settings
        stop = self.iter + iterations
        started, started_iter = time.perf_counter(), self.iter
        while self.iter < stop and not self.stopping:
            self.net.clear_param_diffs()
            if (
                s.test_interval
                and self.iter % s.test_interval == 0
                and (self.iter > 0 or s.test_initialization)
                and is_root()
            ):
                self.test_all()
            for callback in self.callbacks:
                callback.on_start()
            loss = self._forward_backward()
            for callback in self.callbacks:
                callback.on_gradients_ready()
            snapshot_now = self.snapshot_requested
            if self.parallel is not None:
                loss, (self._stop_agreed, snapshot_now) = self.parallel.agree(
                    loss, self.stop_requested, self.snapshot_requested
                )
            self._losses.append(loss)
            smoothed = sum(self._losses) / len(self._losses)
            display = s.display and self.iter % s.display == 0
            rate = self._rate_for_step()
            if display:
                lapse = time.perf_counter() - started
                per_second = (self.iter - started_iter) / lapse if lapse > 0 else 0.0
                self.log(
                    f"Iteration {self.iter} ({per_second:g} iter/s, {lapse:.3f}s/{s.display} "
                    f"iters), loss = {smoothed:g}"
                )
                started, started_iter = time.perf_counter(), self.iter
                self._log_outputs("Train", self.net, self.net.forward_outputs())
                self.log(f"Iteration {self.iter}, lr = {rate:g}")
            self._apply_update(rate)
            self.iter += 1
            self.progress.show(self.iter, max(s.max_iter, stop))
            if (s.snapshot and self.iter % s.snapshot == 0) or snapshot_now:
                self.snapshot_on_root()
                self.snapshot_requested = False

    def solve(self) -> None:
        """Caffe's Solver::Solve: step to max_iter, a final snapshot, a final test."""
        s = self.settings
        self.log("Solving " + (self.net.artifact.manifest.name or "net"))
        self.log(f"Learning Rate Policy: {s.lr_policy}")
        self.step(s.max_iter - self.iter)
        if s.snapshot_after_train and (not s.snapshot or self.iter % s.snapshot != 0):
            self.snapshot_on_root()
        if self.stopping:
            self.log("Optimization stopped early.")
            return
        if s.display and self.iter % s.display == 0:
            outputs = self.net.forward()
            self.log(f"Iteration {self.iter}, loss = {self._weighted_loss(self.net, outputs):g}")
        if s.test_interval and self.iter % s.test_interval == 0 and is_root():
            self.test_all()
        self.progress.erase()
        self.log("Optimization Done.")

    # --- tests ------------------------------------------------------------------------------
    def test_all(self) -> list[dict[str, float]]:
        return [self.test(i) for i in range(len(self.test_nets))]

    def test(self, index: int) -> dict[str, float]:
        """Average each output of test net ``index`` over its test_iter batches, and log it."""
        self.log(f"Iteration {self.iter}, Testing net (#{index})")
        net = self.test_nets[index]
        iterations = self.settings.test_iter[index]
        sums: dict[str, np.ndarray] = {}
        for _ in range(iterations):
            for name, value in net.forward().items():
                sums[name] = sums.get(name, 0) + np.asarray(value, dtype=np.float64)
        means = {name: total / iterations for name, total in sums.items()}
        self._log_outputs("Test", net, means)
        return {name: float(np.mean(v)) for name, v in means.items()}

    def _log_outputs(self, kind: str, net: CompiledNet, outputs: dict[str, Any]) -> None:
        weights = dict(net.artifact.manifest.loss_tops)
        k = 0
        for name in net.outputs:
            for value in np.asarray(outputs[name]).reshape(-1):
                line = f"    {kind} net output #{k}: {name} = {value:g}"
                if weights.get(name):
                    line += f" (* {weights[name]:g} = {weights[name] * value:g} loss)"
                self.log(line)
                k += 1

    # --- snapshots --------------------------------------------------------------------------
    def snapshot_paths(self) -> tuple[Path, Path]:
        prefix = self.settings.snapshot_prefix or "snapshot"
        suffix = ".h5" if self.settings.snapshot_format == "HDF5" else ""
        return (Path(f"{prefix}_iter_{self.iter}.caffemodel{suffix}"),
                Path(f"{prefix}_iter_{self.iter}.solverstate{suffix}"))  # fmt: skip

    def snapshot_on_root(self) -> None:
        """Snapshot on rank 0 only: every rank holds the same weights."""
        if is_root():
            self.snapshot()

    def snapshot(self) -> tuple[Path, Path]:
        """Write the weights and the solver state (both atomically), as Caffe names them."""
        model, state = self.snapshot_paths()
        if self.check_divergence:  # the last good snapshot stays the last one
            check_weights(self.net, self.iter)
        kind = "HDF5" if self.settings.snapshot_format == "HDF5" else "binary proto"
        self.log(f"Snapshotting to {kind} file {model}")
        self.net.save(model)
        self.log(f"Snapshotting solver state to {kind} file {state}")
        write_solver_snapshot(state, self.iter, str(model), self._ordered_histories(),
                              self.current_step)  # fmt: skip
        return model, state

    def _ordered_histories(self) -> list[np.ndarray]:
        """Caffe's order: every parameter's first history, then every second one (Adam...)."""
        m = self.net.artifact.manifest
        histories = [self.net._exec.host(slot) for _, slot in m.histories]
        per = m.solver.histories_per_param
        return [histories[i * per + h] for h in range(per)
                for i in range(len(histories) // per)]  # fmt: skip

    def restore(self, path: str | Path) -> None:
        """Continue from a .solverstate: its weights, histories, iteration and lr position."""
        self.log(f"Restoring previous solver status from {path}")
        snapshot = read_solver_snapshot(path)
        load_blobs(snapshot.history, self._ordered_histories(), f"{path}'s solver history",
                   "resume with the solver type and net the snapshot was taken with")  # fmt: skip
        if snapshot.learned_net:
            try:
                self.net.copy_from(snapshot.learned_net)
            except UserError as err:  # the weights' error alone does not say who named them
                raise UserError(
                    f"{path} names its weights as learned_net '{snapshot.learned_net}': "
                    f"{err.message}",
                    layer=err.layer,
                    hint=err.hint
                    if Path(snapshot.learned_net).exists()
                    else "Caffe looks learned_net up from the working directory: resume from "
                    "the folder the training ran in",
                ) from None
        self.iter = snapshot.iteration
        self.current_step = snapshot.current_step
        self.net.skip_iterations(self.iter * self.settings.iter_size)
