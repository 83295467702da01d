"""A net's floating-point work, counted from its layer shapes: what efficiency figures divide.

The convention is the usual one for convolutional nets: only the layers that are matrix
products count (Convolution, Deconvolution, InnerProduct), at 2 FLOPs per multiply-add,
whatever algorithm computes them (Winograd's fewer multiplications are not subtracted).
A layer's forward is 2 x its multiply-adds; in a training step, where the layer runs
backward, each bottom that receives a gradient costs the same again (not a data layer's
top, unless the net sets ``force_backward``), and so do its weights where they learn
(``lr_mult`` not 0). Biases, activations, pooling, normalisation, elementwise layers,
losses and the solver's update are not counted: they are a small part of the FLOPs, and
memory-bound.

Which layers run backward, and which bottoms and weights get gradients, is read from the
kernel graph after ``autodiff``, so the count follows the rules caffec compiled by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from caffec.compiler.ir import LayerGraph, Op
from caffec.compiler.kernels import KernelGraph
from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph

COUNTED = ("Convolution", "Deconvolution", "InnerProduct")


@dataclass(frozen=True)
class LayerFlops:
    """One counted layer's FLOPs: its forward, and its data and weight gradients in the
    training step (0 where they do not run)."""

    layer: str
    type: str
    forward: int
    data_grad: int
    weight_grad: int


@dataclass(frozen=True)
class NetFlops:
    """The FLOPs of a net's counted layers, in execution order."""

    layers: tuple[LayerFlops, ...]

    @property
    def forward(self) -> int:
        return sum(layer.forward for layer in self.layers)

    @property
    def backward(self) -> int:
        return sum(layer.data_grad + layer.weight_grad for layer in self.layers)

    @property
    def step(self) -> int:
        """A training step's: forward and backward."""
        return self.forward + self.backward


def multiply_adds(op: Op) -> list[int]:
    """The forward multiply-adds of a counted layer, one number per bottom (each bottom has
    its own top; the weights are shared); empty for a layer that is not counted.

    A convolution's output element sums its group's input channels over the kernel (the
    weights' shape after its first axis); a deconvolution spreads each input element over
    as many outputs; an inner product multiplies each input element by ``num_output``
    weights."""
    if op.type not in COUNTED or not op.params:
        return []
    weights = op.params[0].shape
    per_element = math.prod(weights[1:])
    if op.type == "Convolution":
        return [math.prod(top.shape or ()) * per_element for top in op.tops]
    if op.type == "Deconvolution":
        return [math.prod(bottom.shape or ()) * per_element for bottom in op.bottoms]
    outputs = op.param.inner_product_param.num_output
    return [math.prod(bottom.shape or ()) * outputs for bottom in op.bottoms]


def count_flops(graph: LayerGraph, kgraph: KernelGraph | None = None) -> NetFlops:
    """The FLOPs of ``graph`` (after shape inference and params), by the convention of the
    module docstring. ``kgraph`` is the same net's kernel graph after ``autodiff`` (or any
    pass after it), which says what runs backward; without one, forward only."""
    runs: set[str] = set()
    diffs: dict[str, list] = {}
    learns: set[str] = set()
    if kgraph is not None:
        runs = {step.layer for step in kgraph.backward}
        diffs = {entry["name"]: entry["bottom_diff_buffers"] for entry in kgraph.layers}
        learns = {p.layer for p in kgraph.params
                  if p.index == 0 and p.grad is not None and p.lr_mult != 0}  # fmt: skip
    layers = []
    for op in graph.ops:
        pairs = multiply_adds(op)
        if not pairs:
            continue
        data = weight = 0
        if op.name in runs:
            data = sum(
                2 * n for n, diff in zip(pairs, diffs[op.name], strict=True) if diff is not None
            )
            weight = 2 * sum(pairs) if op.name in learns else 0
        layers.append(LayerFlops(op.name, op.type, 2 * sum(pairs), data, weight))
    return NetFlops(tuple(layers))


def net_flops(path: str | Path, options: Options) -> NetFlops:
    """The FLOPs of the net at ``path`` as ``options`` compile it (a ``caffec.Net``'s):
    lowered and differentiated again (a fraction of a second), not built."""
    graph = load_layer_graph(path, options)
    return count_flops(graph, build_kernel_graph(graph, options, after="autodiff"))
