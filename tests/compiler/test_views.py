"""Concat, Flatten, Slice and Split without copies where every blob stays readable.

Fusion drops the copies these layers make: a Concat's bottoms live inside its
top, a Flatten's, Slice's and Split's tops at their bottoms, and ``net.blobs``
shows each as a numpy view of where it lives. Data and diffs must be what the
reference build (-O0) computes, forward and backward.
"""

from __future__ import annotations

from pathlib import Path

from test_fusion_equivalence import SOLVER, check_equivalent

from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of
from caffec.frontend.loader import parse_net

NET = """
name: "views"
force_backward: true
layer { name: "in" type: "Input" top: "data" top: "target" top: "target2"
        input_param { shape { dim: 3 dim: 3 dim: 6 dim: 6 } shape { dim: 3 dim: 1 }
                      shape { dim: 3 dim: 2 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c2" type: "Convolution" bottom: "data" top: "c2"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu2" type: "ReLU" bottom: "c2" top: "c2" }
layer { name: "cat" type: "Concat" bottom: "c1" bottom: "c2" top: "cat" }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "slice" type: "Slice" bottom: "ip" top: "a" top: "b" slice_param { slice_point: 1 } }
layer { name: "split" type: "Split" bottom: "b" top: "b1" top: "b2" }
layer { name: "loss_a" type: "EuclideanLoss" bottom: "a" bottom: "target" top: "loss_a" }
layer { name: "loss_b1" type: "EuclideanLoss" bottom: "b1" bottom: "target2" top: "loss_b1" }
layer { name: "tanh_b2" type: "TanH" bottom: "b2" top: "t2" }
layer { name: "loss_b2" type: "EuclideanLoss" bottom: "t2" bottom: "target2" top: "loss_b2"
        loss_weight: 0.5 }
"""


def _graph(options: Options):  # noqa: ANN202
    net, spans = parse_net(NET)
    return layer_graph_of(net, spans, options)


OPTIONS = Options(phase="TRAIN", backward=True, solver=SOLVER)


def test_copies_are_dropped_and_blobs_become_views() -> None:
    kgraph = build_kernel_graph(_graph(OPTIONS), OPTIONS)
    assert not [p for step in kgraph.forward for i in step.instrs if getattr(i, "prim", "") == "copy"
                for p in [i]], "no copy runs forward"  # fmt: skip
    views = {name for name, b in kgraph.blobs.items() if b.data_view is not None}
    assert {"c1", "c2", "a", "b"} <= views
    assert {"cat", "flat"} & views and {"b1", "b2"} & views
    c2 = kgraph.blobs["c2"].data_view
    assert c2 is not None and c2.offset == 4 * 16 and c2.strides == (96, 16, 4, 1)


def test_views_hold_what_the_reference_build_computes(tmp_path: Path) -> None:
    check_equivalent(_graph, OPTIONS, tmp_path)
