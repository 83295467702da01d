"""The solver step as kernels: one fused update per learnable parameter, after backward.

Caffe's ``ApplyUpdate`` in order: clip the gradients by their global L2 norm
(``clip_gradients``), divide them by ``iter_size``, add the weight decay
(L2: decay * w, L1: decay * sign(w)), then apply the solver's rule, subtract
the result from the weights and leave it in the gradient (where pycaffe users
read it after ``solver.step``). Here all of that is one ``map`` per
parameter (plus one norm reduction when clipping). The learning rate of the
iteration, with Adam's bias correction folded in, is a scalar the runtime
writes into the ``hyper`` buffer before running the step; everything else
is a constant of the build.
"""

from __future__ import annotations

from typing import Any

from caffec.compiler.kernels import Buffer, KernelGraph, Step
from caffec.compiler.primitives import pmap, reduce
from caffec.errors import UserError

# (history buffers, lets, history expressions, weight step) per solver type; g is the
# regularised gradient, lr the parameter's learning rate this iteration.
RULES: dict[str, tuple[int, list[tuple[str, str]], list[str], str]] = {
    "SGD": (1, [("h_new", "momentum * h0 + lr * g")], ["h_new"], "h_new"),
    "Nesterov": (
        1,
        [("h_new", "momentum * h0 + lr * g")],
        ["h_new"],
        "(1 + momentum) * h_new - momentum * h0",
    ),
    "AdaGrad": (1, [("h_new", "h0 + g * g")], ["h_new"], "lr * g / (sqrt(h_new) + delta)"),
    "RMSProp": (
        1,
        [("h_new", "rms_decay * h0 + (1 - rms_decay) * g * g")],
        ["h_new"],
        "lr * g / (sqrt(h_new) + delta)",
    ),
    "AdaDelta": (
        2,
        [
            ("h_new", "momentum * h0 + (1 - momentum) * g * g"),
            ("u", "g * sqrt((h1 + delta) / (h_new + delta))"),
            ("h1_new", "momentum * h1 + (1 - momentum) * u * u"),
        ],
        ["h_new", "h1_new"],
        "lr * u",
    ),
    "Adam": (
        2,
        [
            ("m", "momentum * h0 + (1 - momentum) * g"),
            ("v", "momentum2 * h1 + (1 - momentum2) * g * g"),
        ],
        ["m", "v"],
        "lr * m / (sqrt(v) + delta)",
    ),
}


def solver_type(solver: Any) -> str:
    if solver.type not in RULES:
        from caffec.errors import did_you_mean

        raise UserError(
            f"unknown solver type '{solver.type}'",
            hint=did_you_mean(solver.type, RULES) or f"types: {', '.join(RULES)}",
        )
    return solver.type


def add_solver_updates(kgraph: KernelGraph, solver: Any) -> KernelGraph:
    """Append the update step of ``solver`` (a SolverParameter) to a graph with backward."""
    kind = solver_type(solver)
    if kind == "AdaGrad" and solver.momentum != 0:
        raise UserError("AdaGrad takes no momentum", hint="remove momentum from the solver")
    regularization = solver.regularization_type
    if regularization not in ("L1", "L2"):
        raise UserError(f"unknown regularization_type '{regularization}'", hint='use "L2" or "L1"')
    n_histories, lets, history_exprs, step = RULES[kind]
    rate = Buffer("learning rate", (1,), "hyper")
    kgraph.buffers.append(rate)
    learnable = [(i, p) for i, p in enumerate(kgraph.params)
                 if p.grad is not None and p.shared_with is None and p.lr_mult != 0]  # fmt: skip
    instrs = []
    clip = solver.clip_gradients
    if clip >= 0:
        norm = Buffer("gradient norm", (1,), "workspace")
        kgraph.buffers.append(norm)
        instrs.append(pmap((1,), [(norm, "0")]))
        for _, p in learnable:
            instrs.append(reduce(p.grad, norm, (p.grad.size,), [0], op="sumsq", accumulate=True))
        # the factor every gradient is scaled by: Caffe's clip_gradients / ||g|| when above it
        instrs.append(pmap((1,), [(norm, "sqrt(n) > clip ? clip / sqrt(n) : 1")], {"n": norm},
                           {"clip": clip}))  # fmt: skip
    for index, p in learnable:
        histories = []
        for h in range(n_histories):
            buffer = Buffer(f"{p.layer} param {p.index} history {h}", p.data.shape, "history")
            kgraph.buffers.append(buffer)
            kgraph.histories.append((index, buffer))
            histories.append(buffer)
        decay = solver.weight_decay * p.decay_mult
        scale = "c / iter_size" if clip >= 0 else "1 / iter_size"
        penalty = (
            "decay * w" if regularization == "L2" else "decay * (w > 0 ? 1 : (w < 0 ? -1 : 0))"
        )
        inputs: dict[str, Any] = {"w": p.data, "grad": p.grad, "r": (rate, (1,))}
        if clip >= 0:
            inputs["c"] = (norm, (1,))
        inputs.update({f"h{h}": b for h, b in enumerate(histories)})
        shape = (p.data.size,)
        consts = {
            "iter_size": float(solver.iter_size), "decay": decay, "lr_mult": p.lr_mult,
            "momentum": solver.momentum, "momentum2": solver.momentum2,
            "delta": solver.delta, "rms_decay": solver.rms_decay,
        }  # fmt: skip
        all_lets = [("g", f"grad * {scale} + {penalty}"), ("lr", "r * lr_mult"), *lets]
        outputs = [(b, expr) for b, expr in zip(histories, history_exprs, strict=True)]
        outputs.append((p.data, f"w - ({step})"))
        outputs.append((p.grad, step))  # what Caffe's ApplyUpdate leaves in the diff
        instrs.append(pmap(shape, outputs, inputs, consts, lets=all_lets))
    kgraph.update = [Step("solver", kind, instrs)]
    kgraph.solver = {"type": kind, "histories_per_param": n_histories}
    kgraph.number_buffers()
    return kgraph
