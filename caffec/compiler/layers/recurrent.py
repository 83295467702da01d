"""RNN, LSTM and LSTMUnit: Caffe's recurrent layers, lowered step by step.

Caffe runs RNN and LSTM through an unrolled net of InnerProduct, Scale, Eltwise,
TanH and LSTMUnit layers; caffec lowers the same arithmetic directly, with the
same parameter blobs in the same order, so Caffe's caffemodels load:

* the input projections of all T steps are one GEMM (``pre = x W_x' + b``, plus
  ``W_s x_static`` at every step where a static input is given);
* per step t, the previous hidden state times the continuation marker
  (``hc[t] = cont[t] * h[t-1]``) goes through one GEMM into ``pre[t]``, and one
  map applies the unit (tanh for RNN, Caffe's LSTMUnit for LSTM);
* backward walks the steps in reverse, each a map for the unit's gradient and a
  GEMM for the recurrent term; the weight gradients are then one GEMM each.

The hidden states h_0..h_T (and the cells c_0..c_T) live in one buffer each. As in
Caffe, without ``expose_hidden`` a forward starts from the state the previous
forward ended with (zero before the first), which ``cont = 0`` at t = 0 discards;
with ``expose_hidden`` the initial states are bottoms and the final ones tops.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from caffec.compiler.ir import Op, ParamBlob, Shape
from caffec.compiler.kernels import Buffer, Operand
from caffec.compiler.layers.common import count
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import gemm, pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import shape_text

SIGMOID = "1 / (1 + exp(-{}))"


# ----------------------------------------------------------------------------- LSTM unit


def _gate_loads(pre: Operand, hidden: int, per_element: int) -> dict[str, Any]:
    """The four gate inputs (i, f, o, g: Caffe's order) of the element a map computes, as
    gathers from ``pre`` laid out (N, 4, H); the map has ``per_element`` entries per row."""
    row = f"(i / {per_element}) * {4 * hidden}"
    return {
        name: (pre, f"{row} + {k * hidden} + i % {hidden}")
        for k, name in enumerate(("xi", "xf", "xo", "xg"))
    }


# The gate activations from their inputs; Caffe multiplies the forget gate by the marker.
GATES = [
    ("gi", SIGMOID.format("xi")),
    ("sf", SIGMOID.format("xf")),
    ("gf", "cont * sf"),
    ("go", SIGMOID.format("xo")),
    ("gg", "tanh(xg)"),
]


def _used(lets: list[tuple[str, str]], exprs: list[str]) -> list[tuple[str, str]]:
    """The temporaries ``exprs`` need, directly or through other temporaries (a map computes
    every temporary it is given, and a gate's exp costs)."""
    names = {n for e in exprs for n in re.findall(r"\w+", e)}
    kept = []
    for name, expr in reversed(lets):
        if name in names:
            kept.append((name, expr))
            names |= set(re.findall(r"\w+", expr))
    return kept[::-1]


def emit_unit(
    ctx: LowerContext,
    rows: int,
    hidden: int,
    pre: Operand,
    c_prev: Operand,
    cont: Operand,
    c_out: Operand,
    h_out: Operand,
) -> None:
    """c = f * c_prev + i * g and h = o * tanh(c) for ``rows`` x ``hidden`` cells."""
    inputs = {**_gate_loads(pre, hidden, hidden), "cp": c_prev, "cont": (cont, (rows, 1))}
    ctx.emit(
        pmap(
            (rows, hidden),
            [(c_out, "c"), (h_out, "go * tanh(c)")],
            inputs,
            lets=[*GATES, ("c", "gf * cp + gi * gg")],
        )
    )


@dataclass(frozen=True)
class Incoming:
    """The gradients a unit's outputs receive: ``dc`` (of c, or None: zero) and the gradient
    of h as an expression over named (operand, view over (rows, hidden)) inputs."""

    dc: Operand | None
    dh: str
    dh_inputs: dict[str, tuple[Operand, Shape]]

    def over(self, shape: Shape) -> dict[str, tuple[Operand, Shape]]:
        """The inputs viewed for a map over ``shape`` (rows, [gates,] hidden)."""
        views = {n: (o, (*v[:1], *([1] * (len(shape) - 2)), v[1]))
                 for n, (o, v) in self.dh_inputs.items()}  # fmt: skip
        if self.dc is not None:
            views["dc"] = (self.dc, (shape[0], *([1] * (len(shape) - 2)), shape[-1]))
        return views

    @property
    def lets(self) -> list[tuple[str, str]]:
        """dh, and ct: the whole gradient of c, through c itself and through h."""
        through_h = "dh * go * (1 - tc * tc)"
        return [("dh", self.dh), ("ct", f"dc + {through_h}" if self.dc is not None else through_h)]


def emit_unit_grad(
    ctx: LowerContext,
    rows: int,
    hidden: int,
    pre: Operand,
    c_prev: Operand,
    c: Operand,
    cont: Operand,
    incoming: Incoming,
    dpre: tuple[Operand, bool] | None,
    dc_prev: tuple[Operand, bool] | None,
) -> None:
    """The gradients of the gate inputs (laid out as ``pre``) and of c_prev."""
    lets = [*GATES, ("tc", "tanh(c)"), *incoming.lets]
    if dpre is not None:
        shape = (rows, 4, hidden)
        inputs = {**_gate_loads(pre, hidden, 4 * hidden), **incoming.over(shape),
                  "cp": (c_prev, (rows, 1, hidden)), "c": (c, (rows, 1, hidden)),
                  "cont": (cont, (rows, 1, 1))}  # fmt: skip
        grads = ("k == 0 ? ct * gg * gi * (1 - gi)"
                 " : k == 1 ? ct * cp * cont * sf * (1 - sf)"
                 " : k == 2 ? dh * tc * go * (1 - go)"
                 " : ct * gi * (1 - gg * gg)")  # fmt: skip
        ctx.emit(
            pmap(shape, [(dpre[0], grads)], inputs, coords={"k": 1}, lets=lets, accumulate=dpre[1])
        )
    if dc_prev is not None:
        shape = (rows, hidden)
        inputs = {**_gate_loads(pre, hidden, hidden), **incoming.over(shape), "c": c,
                  "cont": (cont, (rows, 1))}  # fmt: skip
        ctx.emit(pmap(shape, [(dc_prev[0], "ct * gf")], inputs, lets=_used(lets, ["ct * gf"]),
                      accumulate=dc_prev[1]))  # fmt: skip


# ----------------------------------------------------------------------------- RNN and LSTM


@dataclass(frozen=True)
class Geometry:
    """T steps of N streams, I inputs per step, H hidden units, ``gates`` gate inputs per
    unit, S static inputs per stream (0: no static input), and whether the initial and
    final states are bottoms and tops."""

    steps: int
    streams: int
    inputs: int
    hidden: int
    gates: int
    static: int
    expose: bool

    @property
    def width(self) -> int:
        """The gate inputs per stream and step."""
        return self.gates * self.hidden

    @property
    def first_state(self) -> int:
        """The bottom index of the first exposed initial state."""
        return 3 if self.static else 2

    @property
    def recurrent_weight(self) -> int:
        """The parameter index of W_hh (RNN) or W_hc (LSTM)."""
        return 3 if self.static else 2


# Emits step t's gradient of the gate inputs (into the operand) from the gradient of h_t,
# an expression over named (operand, view over (N, H)) inputs.
StepGrad = Callable[[int, str, dict[str, tuple[Operand, Shape]], Operand], None]
Target = tuple[Buffer, bool] | None  # where a bottom's gradient goes, and whether it adds


def _whole(target: Target) -> tuple[Operand, bool] | None:
    """A gradient target (``ctx.dx``) as an operand over its whole buffer."""
    return None if target is None else (Operand(target[0]), target[1])


def _step(g: Geometry, t: int, per_stream: int) -> int:
    """The offset of step ``t`` in a (T, N, per_stream) buffer."""
    return t * g.streams * per_stream


class Recurrent(ABC):
    """What RNN and LSTM share: Caffe's RecurrentLayer bottoms and tops, the input and
    recurrent projections, and the walk over the steps."""

    gates: int  # gate inputs per hidden unit
    states: tuple[str, ...]  # the recurrent states, in Caffe's order of bottoms and tops

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 1  # Caffe never differentiates the continuation markers

    def _has_static(self, layer: LayerParameter, bottoms: int) -> bool:
        exposed = len(self.states) if layer.recurrent_param.expose_hidden else 0
        return bottoms > 2 + exposed

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        p = layer.recurrent_param
        if p.num_output <= 0:
            raise ShapeError("num_output must be positive", hint="set recurrent_param.num_output")
        names = ", ".join(f"{s}_0" for s in self.states)
        exposed = len(self.states) if p.expose_hidden else 0
        if len(bottoms) not in (2 + exposed, 3 + exposed):
            wanted = "x, cont, optionally x_static" + (f", then {names}" if exposed else "")
            raise ShapeError(
                f"takes {wanted}; got {len(bottoms)} bottoms",
                hint="expose_hidden adds a bottom and a top per recurrent state"
                if exposed else "set recurrent_param.expose_hidden to give the initial state",
            )  # fmt: skip
        if len(layer.top) != 1 + exposed:
            finals = ", ".join(f"{s}_T" for s in self.states)
            raise ShapeError(
                f"has {1 + exposed} tops (the output{f', then {finals}' if exposed else ''}); "
                f"got {len(layer.top)}",
                hint="expose_hidden adds a bottom and a top per recurrent state",
            )
        x, cont = bottoms[0], bottoms[1]
        if len(x) < 3:
            raise ShapeError(
                f"the input must be T x N x ... (at least 3 axes), got {shape_text(x)}",
                hint="give each step's input as its own axes after T and N",
            )
        steps, streams = x[:2]
        if cont != (steps, streams):
            raise ShapeError(
                f"the continuation markers must be T x N = {steps}x{streams}, got "
                f"{shape_text(cont)}",
                hint="the second bottom holds one marker per step and stream",
            )
        static = self._has_static(layer, len(bottoms))
        if static and (len(bottoms[2]) < 2 or bottoms[2][0] != streams):
            raise ShapeError(
                f"the static input must be N x ... with N = {streams} and at least 2 axes, "
                f"got {shape_text(bottoms[2])}"
            )
        state = (1, streams, p.num_output)
        for name, shape in zip(self.states, bottoms[2 + static :], strict=False):  # if exposed
            if shape != state:
                raise ShapeError(
                    f"the initial {name} must be {shape_text(state)}, got {shape_text(shape)}"
                )
        return [(steps, streams, p.num_output)] + [state] * exposed

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.recurrent_param
        width = self.gates * p.num_output
        blobs = [
            ParamBlob((width, count(bottoms[0], 2)), p.weight_filler, "weight"),
            ParamBlob((width,), p.bias_filler, "bias"),
        ]
        if self._has_static(layer, len(bottoms)):
            blobs.append(ParamBlob((width, count(bottoms[2], 1)), p.weight_filler, "weight"))
        blobs.append(ParamBlob((width, p.num_output), p.weight_filler, "weight"))
        return blobs

    def geometry(self, op: Op) -> Geometry:
        p = op.param.recurrent_param
        x = op.bottoms[0].shape
        static = self._has_static(op.param, len(op.bottoms))
        return Geometry(steps=x[0], streams=x[1], inputs=count(x, 2), hidden=p.num_output,
                        gates=self.gates,
                        static=count(op.bottoms[2].shape, 1) if static else 0,
                        expose=p.expose_hidden)  # fmt: skip

    def saved(self, ctx: LowerContext, g: Geometry) -> dict[str, Buffer]:
        """What forward keeps for backward: the gate inputs, the states h_0..h_T (and
        c_0..c_T), and each step's h_{t-1} times its marker."""
        t, n, h = g.steps, g.streams, g.hidden
        found = {"pre": ctx.state("gate inputs", (t, n, g.width)),
                 "hc": ctx.state("continued hidden states", (t, n, h))}  # fmt: skip
        for name in self.states:
            found[name] = ctx.state(f"{name} states", (t + 1, n, h))
        return found

    # forward --------------------------------------------------------------------------
    def lower(self, op: Op, ctx: LowerContext) -> None:
        g = self.geometry(op)
        steps, n, hidden, width = g.steps, g.streams, g.hidden, g.width
        saved = self.saved(ctx, g)
        pre, hs, hc = saved["pre"], saved["h"], saved["hc"]
        ctx.emit(gemm(ctx.x(0), ctx.w(0), pre, steps * n, width, g.inputs, trans_b=True,
                      weights_b=True))  # fmt: skip
        inputs: dict[str, Any] = {"p": pre, "b": (ctx.w(1), (1, 1, width))}
        if g.static:
            projected = ctx.workspace("static projection", (n, width))
            ctx.emit(gemm(ctx.x(2), ctx.w(2), projected, n, width, g.static, trans_b=True,
                          weights_b=True))  # fmt: skip
            inputs["s"] = (projected, (1, n, width))
        ctx.emit(pmap((steps, n, width), [(pre, "p + b + s" if g.static else "p + b")], inputs))
        for k, name in enumerate(self.states):  # the initial states
            start = (
                ctx.x(g.first_state + k) if g.expose else Operand(saved[name], steps * n * hidden)
            )
            ctx.emit(pmap((n * hidden,), [(saved[name], "s")], {"s": start}))
        for t in range(steps):
            h_prev = Operand(hc, _step(g, t, hidden))
            ctx.emit(
                pmap((n, hidden), [(h_prev, "cont * h")],
                     {"cont": (Operand(ctx.x(1), t * n), (n, 1)),
                      "h": Operand(hs, _step(g, t, hidden))}),
                gemm(h_prev, ctx.w(g.recurrent_weight), Operand(pre, _step(g, t, width)), n,
                     width, hidden, trans_b=True, accumulate=True, weights_b=True),
            )  # fmt: skip
            self.unit(ctx, g, t, saved)
        self.output(ctx, g, saved)
        for k, name in enumerate(self.states if g.expose else ()):  # the final states
            final = Operand(saved[name], steps * n * hidden)
            ctx.emit(pmap((n * hidden,), [(ctx.y(1 + k), "s")], {"s": final}))

    @abstractmethod
    def unit(self, ctx: LowerContext, g: Geometry, t: int, saved: dict[str, Buffer]) -> None:
        """h_t (and c_t) from the gate inputs of step ``t``."""

    @abstractmethod
    def output(self, ctx: LowerContext, g: Geometry, saved: dict[str, Buffer]) -> None:
        """The first top from h_1..h_T."""

    # backward -------------------------------------------------------------------------
    def grad(self, op: Op, ctx: LowerContext) -> None:
        g = self.geometry(op)
        steps, n, hidden, width = g.steps, g.streams, g.hidden, g.width
        saved = self.saved(ctx, g)
        dx: Target = ctx.dx(0)
        dstatic: Target = ctx.dx(2) if g.static else None
        dstates: list[Target] = [ctx.dx(g.first_state + k) if g.expose else None
                                 for k in range(len(self.states))]  # fmt: skip
        dweights = [ctx.dw(k) for k in range(g.recurrent_weight + 1)]
        recurse = any(d is not None for d in [dx, dstatic, *dstates, *dweights])
        direct = self.output_grad(ctx, g, saved, recurse)
        if direct is None:
            return
        dpre = ctx.workspace("gate input gradients", (steps, n, width))
        recurrent = ctx.workspace("recurrent gradient", (n, hidden))
        w_h = ctx.w(g.recurrent_weight)
        unit_grad = self.unit_grad(ctx, g, saved, dstates)
        for t in reversed(range(steps)):
            dh = "dy"
            dh_inputs = {"dy": (Operand(direct, _step(g, t, hidden)), (n, hidden))}
            if t < steps - 1:  # through h_t's use in the next step, times its marker
                dh += " + cn * r"
                dh_inputs |= {"cn": (Operand(ctx.x(1), (t + 1) * n), (n, 1)),
                              "r": (Operand(recurrent), (n, hidden))}  # fmt: skip
            elif g.expose:  # through the final state's top
                dh += " + dT"
                dh_inputs["dT"] = (Operand(ctx.dy(1)), (n, hidden))
            dpre_t = Operand(dpre, _step(g, t, width))
            unit_grad(t, dh, dh_inputs, dpre_t)
            if t > 0 or dstates[0] is not None:
                ctx.emit(gemm(dpre_t, w_h, recurrent, n, hidden, width, weights_b=True))
        if dstates[0] is not None:
            target, accumulate = dstates[0]
            ctx.emit(pmap((n, hidden), [(target, "cont * r")],
                          {"cont": (ctx.x(1), (n, 1)), "r": recurrent},
                          accumulate=accumulate))  # fmt: skip
        self.projection_grads(ctx, g, saved, dpre, dweights, dx, dstatic)

    def projection_grads(
        self,
        ctx: LowerContext,
        g: Geometry,
        saved: dict[str, Buffer],
        dpre: Buffer,
        dweights: list[Buffer | None],
        dx: Target,
        dstatic: Target,
    ) -> None:
        """From the gate inputs' gradients of all steps: the projections' weights, bias
        and inputs, one GEMM or reduction each (the static ones after summing the steps)."""
        rows, width = g.steps * g.streams, g.width
        if dx is not None:
            ctx.emit(gemm(dpre, ctx.w(0), dx[0], rows, g.inputs, width, accumulate=dx[1],
                          weights_b=True))  # fmt: skip
        if g.static and (dstatic is not None or dweights[2] is not None):
            summed = ctx.workspace("static gradient", (g.streams, width))
            ctx.emit(reduce(dpre, summed, (g.steps, g.streams * width), [0]))
            if dweights[2] is not None:
                ctx.emit(gemm(summed, ctx.x(2), dweights[2], width, g.static, g.streams,
                              trans_a=True, accumulate=True))  # fmt: skip
            if dstatic is not None:
                ctx.emit(gemm(summed, ctx.w(2), dstatic[0], g.streams, g.static, width,
                              accumulate=dstatic[1], weights_b=True))  # fmt: skip
        if dweights[0] is not None:
            ctx.emit(gemm(dpre, ctx.x(0), dweights[0], g.width, g.inputs, rows, trans_a=True,
                          accumulate=True))  # fmt: skip
        if dweights[1] is not None:
            ctx.emit(reduce(dpre, dweights[1], (rows, g.width), [0], accumulate=True))
        if dweights[g.recurrent_weight] is not None:
            ctx.emit(gemm(dpre, saved["hc"], dweights[g.recurrent_weight], g.width, g.hidden,
                          rows, trans_a=True, accumulate=True))  # fmt: skip

    @abstractmethod
    def output_grad(
        self, ctx: LowerContext, g: Geometry, saved: dict[str, Buffer], recurse: bool
    ) -> Buffer | None:
        """The gradients of the output's own parameters; and, where the recurrence needs it
        (``recurse``), the gradient of h_1..h_T from the first top."""

    @abstractmethod
    def unit_grad(
        self,
        ctx: LowerContext,
        g: Geometry,
        saved: dict[str, Buffer],
        dstates: list[Target],
    ) -> StepGrad:
        """The step gradient of this unit; the unit's own state (LSTM's cell) it carries
        from step to step itself, into the initial state's gradient at t = 0."""


@register_layer("RNN", bottoms=(2, 4), tops=(1, 2))
class RNN(Recurrent):
    """h_t = tanh(W_xh x_t + b_h [+ W_xh_static x_static] + W_hh (cont_t h_{t-1})) and
    o_t = tanh(W_ho h_t + b_o). Blobs: W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o."""

    gates = 1
    states = ("h",)

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        p = layer.recurrent_param
        return super().params(layer, bottoms) + [
            ParamBlob((p.num_output, p.num_output), p.weight_filler, "weight"),
            ParamBlob((p.num_output,), p.bias_filler, "bias"),
        ]

    def unit(self, ctx: LowerContext, g: Geometry, t: int, saved: dict[str, Buffer]) -> None:
        ctx.emit(pmap((g.streams, g.hidden), [(Operand(saved["h"], _step(g, t + 1, g.hidden)),
                                               "tanh(p)")],
                      {"p": Operand(saved["pre"], _step(g, t, g.width))}))  # fmt: skip

    def output(self, ctx: LowerContext, g: Geometry, saved: dict[str, Buffer]) -> None:
        rows, hidden = g.steps * g.streams, g.hidden
        w_o, b_o = ctx.w(g.recurrent_weight + 1), ctx.w(g.recurrent_weight + 2)
        states = Operand(saved["h"], _step(g, 1, hidden))
        ctx.emit(
            gemm(states, w_o, ctx.y(0), rows, hidden, hidden, trans_b=True, weights_b=True),
            pmap((rows, hidden), [(ctx.y(0), "tanh(o + b)")],
                 {"o": ctx.y(0), "b": (b_o, (1, hidden))}),
        )  # fmt: skip

    def output_grad(
        self, ctx: LowerContext, g: Geometry, saved: dict[str, Buffer], recurse: bool
    ) -> Buffer | None:
        rows, hidden = g.steps * g.streams, g.hidden
        dw_o, db_o = ctx.dw(g.recurrent_weight + 1), ctx.dw(g.recurrent_weight + 2)
        if not recurse and dw_o is None and db_o is None:
            return None
        dout = ctx.workspace("output gradient", (g.steps, g.streams, hidden))
        ctx.emit(pmap((rows, hidden), [(dout, "dy * (1 - o * o)")],
                      {"dy": ctx.dy(0), "o": ctx.y(0)}))  # fmt: skip
        if dw_o is not None:
            states = Operand(saved["h"], _step(g, 1, hidden))
            ctx.emit(gemm(dout, states, dw_o, hidden, hidden, rows, trans_a=True,
                          accumulate=True))  # fmt: skip
        if db_o is not None:
            ctx.emit(reduce(dout, db_o, (rows, hidden), [0], accumulate=True))
        if not recurse:
            return None
        direct = ctx.workspace("hidden state gradient", (g.steps, g.streams, hidden))
        ctx.emit(gemm(dout, ctx.w(g.recurrent_weight + 1), direct, rows, hidden, hidden,
                      weights_b=True))  # fmt: skip
        return direct

    def unit_grad(
        self,
        ctx: LowerContext,
        g: Geometry,
        saved: dict[str, Buffer],
        dstates: list[Target],
    ) -> StepGrad:
        shape = (g.streams, g.hidden)

        def step(
            t: int, dh: str, dh_inputs: dict[str, tuple[Operand, Shape]], dpre: Operand
        ) -> None:
            h = Operand(saved["h"], _step(g, t + 1, g.hidden))
            incoming = Incoming(None, dh, dh_inputs)
            ctx.emit(pmap(shape, [(dpre, "dh * (1 - h * h)")],
                          {**incoming.over(shape), "h": h}, lets=[("dh", dh)]))  # fmt: skip

        return step


@register_layer("LSTM", bottoms=(2, 5), tops=(1, 3))
class LSTM(Recurrent):
    """Gate inputs W_xc x_t + b_c [+ W_xc_static x_static] + W_hc (cont_t h_{t-1}), split
    i, f, o, g and applied as Caffe's LSTMUnit; the output is h. Blobs: W_xc, b_c,
    [W_xc_static], W_hc."""

    gates = 4
    states = ("h", "c")

    def unit(self, ctx: LowerContext, g: Geometry, t: int, saved: dict[str, Buffer]) -> None:
        cells, hidden = saved["c"], g.hidden
        emit_unit(ctx, g.streams, hidden, Operand(saved["pre"], _step(g, t, g.width)),
                  Operand(cells, _step(g, t, hidden)), Operand(ctx.x(1), t * g.streams),
                  Operand(cells, _step(g, t + 1, hidden)),
                  Operand(saved["h"], _step(g, t + 1, hidden)))  # fmt: skip

    def output(self, ctx: LowerContext, g: Geometry, saved: dict[str, Buffer]) -> None:
        size = g.steps * g.streams * g.hidden
        ctx.emit(
            pmap((size,), [(ctx.y(0), "h")], {"h": Operand(saved["h"], _step(g, 1, g.hidden))})
        )

    def output_grad(
        self, ctx: LowerContext, g: Geometry, saved: dict[str, Buffer], recurse: bool
    ) -> Buffer | None:
        return ctx.dy(0) if recurse else None

    def unit_grad(
        self,
        ctx: LowerContext,
        g: Geometry,
        saved: dict[str, Buffer],
        dstates: list[Target],
    ) -> StepGrad:
        n, hidden = g.streams, g.hidden
        cells = saved["c"]
        carried = ctx.workspace("cell gradient", (g.steps, n, hidden))  # into step t's c

        def step(
            t: int, dh: str, dh_inputs: dict[str, tuple[Operand, Shape]], dpre: Operand
        ) -> None:
            if t == g.steps - 1:
                dc = Operand(ctx.dy(2)) if g.expose else None
            else:
                dc = Operand(carried, _step(g, t, hidden))
            if t > 0:
                dc_prev = (Operand(carried, _step(g, t - 1, hidden)), False)
            else:  # the exposed initial cell's gradient, where it is needed
                dc_prev = _whole(dstates[1])
            emit_unit_grad(ctx, n, hidden, Operand(saved["pre"], _step(g, t, g.width)),
                           Operand(cells, _step(g, t, hidden)),
                           Operand(cells, _step(g, t + 1, hidden)),
                           Operand(ctx.x(1), t * n), Incoming(dc, dh, dh_inputs),
                           (dpre, False), dc_prev)  # fmt: skip

        return step


@register_layer("LSTMUnit", bottoms=3, tops=2)
class LSTMUnit:
    """One LSTM step on its own: bottoms c_prev (1, N, H), the gate inputs (1, N, 4H) in
    the order i, f, o, g, and the markers (1, N); tops c and h (1, N, H)."""

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 2  # Caffe never differentiates the continuation markers

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        c_prev, gates, cont = bottoms
        if len(c_prev) != 3 or c_prev[0] != 1:
            raise ShapeError(
                f"the previous cell state must be 1 x N x H, got {shape_text(c_prev)}",
                hint="LSTMUnit runs one step: the first axis is 1",
            )
        _, streams, hidden = c_prev
        if gates != (1, streams, 4 * hidden):
            raise ShapeError(
                f"the gate inputs must be 1 x N x 4H = 1x{streams}x{4 * hidden} for a cell "
                f"state of {shape_text(c_prev)}, got {shape_text(gates)}",
                hint="the second bottom holds the i, f, o and g gate inputs of each cell",
            )
        if cont != (1, streams):
            raise ShapeError(
                f"the continuation markers must be 1 x N = 1x{streams}, got {shape_text(cont)}"
            )
        return [c_prev, c_prev]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        _, streams, hidden = op.bottoms[0].shape
        emit_unit(ctx, streams, hidden, Operand(ctx.x(1)), Operand(ctx.x(0)), Operand(ctx.x(2)),
                  Operand(ctx.y(0)), Operand(ctx.y(1)))  # fmt: skip

    def grad(self, op: Op, ctx: LowerContext) -> None:
        _, streams, hidden = op.bottoms[0].shape
        dc_prev, dgates = ctx.dx(0), ctx.dx(1)
        incoming = Incoming(Operand(ctx.dy(0)), "dH",
                            {"dH": (Operand(ctx.dy(1)), (streams, hidden))})  # fmt: skip
        emit_unit_grad(ctx, streams, hidden, Operand(ctx.x(1)), Operand(ctx.x(0)),
                       Operand(ctx.y(0)), Operand(ctx.x(2)), incoming,
                       _whole(dgates), _whole(dc_prev))  # fmt: skip
