"""``caffec time``: Caffe's benchmark of a net, layer by layer (and kernel by kernel).

As Caffe's ``time`` command: one forward and backward first, then
``iterations`` rounds that time every layer's forward step and every
backward step separately, and report the averages. The data layers' tops
hold whatever was last fed (random numbers here): this times the compiled
computation, not the data readers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from caffec.runtime.compiled_net import CompiledNet


def _timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def _run_and_wait(net: CompiledNet, direction: str, begin: int, end: int) -> None:
    """Run steps of a pass and wait until they are done (on a GPU they run asynchronously)."""
    if direction == "kernels":
        net._exec.run(direction, begin, end)
    else:
        net._run(direction, begin, end)  # with the Python layers' calls
    net._exec.synchronize()


def benchmark(
    net: CompiledNet, iterations: int, log: Callable[[str], None], kernels: bool = False
) -> dict[str, float]:
    """Log Caffe's time report for ``net`` and return its totals in ms."""
    m = net.artifact.manifest
    rng = np.random.default_rng(0)
    for name in m.inputs:
        data = net._exec.host(m.inputs[name])
        data[...] = rng.integers(0, 2, data.shape) if "label" in name else rng.random(data.shape)
    run = functools.partial(_run_and_wait, net)
    forward, backward = m.forward, m.backward
    log("Performing Forward")
    outputs = net.forward(**{n: net._exec.host(s) for n, s in m.inputs.items()})
    loss = sum(w * float(np.sum(outputs[n])) for n, w in m.loss_tops if n in outputs)
    log(f"Initial loss: {loss:g}")
    if backward:
        log("Performing Backward")
        net.backward()
    net._exec.synchronize()  # else the first step timed (on a GPU) waits for that backward
    log("*** Benchmark begins ***")
    log(f"Testing for {iterations} iterations.")
    per_forward = np.zeros(len(forward))
    per_backward = np.zeros(len(backward))
    total_forward = total_backward = 0.0
    start = time.perf_counter()
    for j in range(iterations):
        began = time.perf_counter()
        for i in range(len(forward)):
            per_forward[i] += _timed(lambda i=i: run("forward", i, i + 1))
        middle = time.perf_counter()
        for i in range(len(backward)):
            per_backward[i] += _timed(lambda i=i: run("backward", i, i + 1))
        ended = time.perf_counter()
        total_forward += (middle - began) * 1000
        total_backward += (ended - middle) * 1000
        log(f"Iteration: {j + 1} forward-backward time: {(ended - began) * 1000:.4g} ms.")
    total = (time.perf_counter() - start) * 1000
    log("Average time per layer: ")
    backward_of = {s.layer: per_backward[i] for i, s in enumerate(backward)}
    for i, step in enumerate(forward):
        log(f"{step.layer:>10}\tforward: {per_forward[i] / iterations:.5g} ms.")
        spent = backward_of.get(step.layer, 0.0) / iterations
        log(f"{step.layer:>10}\tbackward: {spent:.5g} ms.")
    if kernels:
        _kernel_report(net, iterations, log)
    result = {
        "forward": total_forward / iterations,
        "backward": total_backward / iterations,
        "forward_backward": (total_forward + total_backward) / iterations,
        "total": total,
    }
    log(f"Average Forward pass: {result['forward']:.5g} ms.")
    log(f"Average Backward pass: {result['backward']:.5g} ms.")
    log(f"Average Forward-Backward: {result['forward_backward']:.5g} ms.")
    log(f"Total Time: {total:.5g} ms.")
    log("*** Benchmark ends ***")
    return result


def _kernel_report(net: CompiledNet, iterations: int, log: Callable[[str], None]) -> None:
    m = net.artifact.manifest
    rows = [(d, s.layer, k) for d in ("forward", "backward", "update") for s in m.steps(d)
            for k in s.kernels]  # fmt: skip
    times = np.zeros(len(rows))
    for _ in range(iterations):
        for i in range(len(rows)):
            times[i] += _timed(lambda i=i: _run_and_wait(net, "kernels", i, i + 1))
    log("Average time per kernel: ")
    for (direction, layer, kernel), total in zip(rows, times, strict=True):
        log(f"{kernel:>28}\t{direction} of {layer}: {total / iterations:.5g} ms.")
