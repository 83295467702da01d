"""Building one-layer nets in tests, and checking their gradients by finite differences.

Nets are built in float64 with ``force_backward`` so that every input's
gradient is computed; the objective of a check is ``sum(top * R)`` over the
tops with fixed random weights R (a loss top is its own objective, weighted
by its loss weight), exactly what ``net.backward`` differentiates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import caffec


def input_layers(bottoms: dict[str, tuple[int, ...]]) -> str:
    return "".join(
        f'layer {{ name: "input_{name}" type: "Input" top: "{name}" '
        f"input_param {{ shape {{ {' '.join(f'dim: {d}' for d in shape)} }} }} }}\n"
        for name, shape in bottoms.items()
    )


def one_layer_net(
    tmp_path: Path,
    layer: str,
    bottoms: dict[str, tuple[int, ...]],
    phase: int = caffec.TEST,
    dtype: str = "float64",
    name: str = "net",
    opt_level: int = 2,
) -> caffec.Net:
    """A net of Input layers for ``bottoms`` and the given layer text, with force_backward."""
    path = tmp_path / f"{name}.prototxt"
    path.write_text("force_backward: true\n" + input_layers(bottoms) + layer + "\n")
    return caffec.Net(str(path), phase, dtype=dtype, seed=1, opt_level=opt_level)


def randomize_params(net: caffec.Net, rng: np.random.Generator) -> None:
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.shape)


def objective(net: caffec.Net, inputs: dict, weights: dict) -> float:
    """sum(top * weight) over the weighted tops, after a forward pass from ``inputs``."""
    net._exec.counter[1] = 7  # the same random numbers (dropout masks) every pass
    out = net.forward(blobs=list(weights), **inputs)
    return float(sum(np.sum(out[name] * w) for name, w in weights.items()))


def check_gradients(
    net: caffec.Net,
    inputs: dict[str, np.ndarray],
    tops: list[str],
    rng: np.random.Generator,
    wrt: list[str] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    max_checks: int = 40,
) -> None:
    """Compare backward's gradients of inputs and parameters with central differences."""
    loss_weights = dict(net.artifact.manifest.loss_tops)
    weights = {
        t: (
            np.float64(loss_weights[t])
            if t in loss_weights
            else rng.standard_normal(net.blobs[t].shape)
        )
        for t in tops
    }
    objective(net, inputs, weights)
    net.clear_param_diffs()
    diffs = {t: w for t, w in weights.items() if t not in loss_weights}
    grads = net.backward(diffs=list(inputs), **diffs)
    names = wrt if wrt is not None else list(inputs)
    analytic = {f"input {n}": np.array(grads[n]) for n in names}
    arrays = {f"input {n}": inputs[n] for n in names}
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            if blob.learned_diff:
                analytic[f"{layer} param {i}"] = np.array(blob.diff)
                arrays[f"{layer} param {i}"] = blob.data
    assert analytic, "nothing to check"
    for what, grad in analytic.items():
        array = arrays[what]
        flat = array.reshape(-1)
        picks = rng.choice(flat.size, size=min(max_checks, flat.size), replace=False)
        for index in picks:
            saved = flat[index]
            flat[index] = saved + eps
            up = objective(net, inputs, weights)
            flat[index] = saved - eps
            down = objective(net, inputs, weights)
            flat[index] = saved
            numeric = (up - down) / (2 * eps)
            got = grad.reshape(-1)[index]
            assert abs(got - numeric) <= atol + rtol * max(abs(numeric), abs(got)), (
                f"{what}[{index}]: backward gives {got}, finite differences {numeric}"
            )


def run_case(
    tmp_path: Path,
    layer: str,
    bottoms: dict,
    tops: list[str],
    seed: int = 0,
    phase: int = caffec.TEST,
    inputs: dict | None = None,
    blobs: list[np.ndarray] | None = None,
) -> tuple:
    """Build the one-layer net, randomize (or set) its params, run forward once."""
    rng = np.random.default_rng(seed)
    net = one_layer_net(tmp_path, layer, bottoms, phase)
    randomize_params(net, rng)
    for blob, value in zip(net.params.get("x", []), blobs or [], strict=False):
        blob.data[...] = value
    given = inputs or {}
    feed = {n: given.get(n, rng.standard_normal(s)) for n, s in bottoms.items()}
    out = net.forward(blobs=tops, **feed)
    return net, feed, {t: np.array(out[t]) for t in tops}, rng


def params(net: caffec.Net, layer: str = "x") -> list[np.ndarray]:
    return [np.array(b.data) for b in net.params.get(layer, [])]
