"""The passes that save memory by changing what runs: recomputation and reordering.

Each must leave every number the user can read exactly as the reference build
(-O0) computes it: these compare whole training steps bit for bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from nets import same_params, train_step

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    layer_graph_of,
    load_layer_graph,
)
from caffec.formats import caffe_pb2
from caffec.frontend.loader import parse_net
from caffec.runtime.compiled_net import CompiledNet

LENET = Path(__file__).resolve().parents[2] / "examples/mnist/lenet_train_test.prototxt"

# conv -> ReLU -> MAX pool twice (the second ReLU leaky, with padding and ragged windows),
# then a ReLU that feeds a fully connected layer, not a pooling
NET = """
name: "relu_pool"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 13 dim: 13 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: -0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 5 kernel_size: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" relu_param { negative_slope: 0.1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu3" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
SOLVER = caffe_pb2.SolverParameter(type="SGD", base_lr=0.1, momentum=0.9)


def _build(options: Options, out: Path) -> tuple[CompiledNet, list[str]]:
    net, spans = parse_net(NET, "relu_pool.prototxt")
    graph = layer_graph_of(net, spans, options)
    kgraph = build_kernel_graph(graph, options)
    return CompiledNet(write_artifact(kgraph, out), seed=1), [op.name for op in graph.ops]


def test_pooling_runs_before_relu_in_lean_builds_with_identical_training(tmp_path: Path) -> None:
    # bit for bit: without the threads' partial sums of weight gradients and the direct
    # weight gradient (both sum in another order)
    base = Options(phase="TRAIN", backward=True, solver=SOLVER, skip=frozenset({"parallel_loops"}),
                   choose_algorithms=False)  # fmt: skip
    reference, order = _build(replace(base, opt_level=0), tmp_path / "ref")
    lean, lean_order = _build(replace(base, keep_blobs=False), tmp_path / "lean")
    kept, kept_order = _build(base, tmp_path / "kept")
    assert order == kept_order  # pycaffe's view: the layers as written
    assert lean_order == ["data", "conv1", "pool1", "relu1", "conv2", "pool2", "relu2",
                          "ip1", "relu3", "ip2", "loss"]  # fmt: skip
    for net in (lean, kept):
        same_params(reference, net)
    rng = np.random.default_rng(5)
    for _ in range(3):
        feed = {"data": rng.standard_normal((4, 3, 13, 13)), "label": rng.integers(0, 3, 4)}
        losses = [float(train_step(net, feed, 0.1)["loss"]) for net in (reference, lean, kept)]
        assert losses[0] == losses[1] == losses[2]
        for name, blobs in reference.params.items():
            for net in (lean, kept):
                for a, b in zip(blobs, net.params[name], strict=True):
                    np.testing.assert_array_equal(a.diff, b.diff, name)
                    np.testing.assert_array_equal(a.data, b.data, name)


@pytest.mark.parametrize("keep_blobs", [True, False])
def test_pooling_masks_are_found_again_only_where_the_input_is_kept(keep_blobs: bool) -> None:
    """LeNet's pooling inputs (convolution outputs) are needed by nothing in backward: a lean
    build keeps the masks (smaller than the inputs); with every blob readable, the inputs are
    kept anyway and the masks go."""
    options = Options(phase="TRAIN", shapes={"data": (8, 1, 28, 28)}, keep_blobs=keep_blobs)
    kgraph = build_kernel_graph(load_layer_graph(LENET, options), options)
    masks = [b for b in kgraph.buffers if b.name.endswith("argmax")]
    grads = [k for step in kgraph.backward for k in step.kernels() if k.prim == "pool_grad"]
    assert len(grads) == 2
    if keep_blobs:
        assert not masks and all(k.attrs.get("recompute") for k in grads)
        assert [k.reads[1].buffer.name for k in grads] == ["conv2", "conv1"]
    else:
        assert len(masks) == 2 and not any(k.attrs.get("recompute") for k in grads)
    unoptimized = build_kernel_graph(
        load_layer_graph(LENET, options), replace(options, opt_level=0)
    )
    assert len([b for b in unoptimized.buffers if b.name.endswith("argmax")]) == 2


# two branches (one convolution with padding, one 1x1 after a pooling) joined by a Concat
# over channels, then a convolution over the joined blob, as in an inception block
INCEPTION = """
name: "inception"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 3 dim: 4 dim: 9 dim: 9 } shape { dim: 3 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu_a" type: "ReLU" bottom: "a" top: "a" }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "b" type: "Convolution" bottom: "pool" top: "b"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu_b" type: "ReLU" bottom: "b" top: "b" }
layer { name: "joined" type: "Concat" bottom: "a" bottom: "b" top: "joined" }
layer { name: "c" type: "Convolution" bottom: "joined" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "flat" type: "Flatten" bottom: "c" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_concat_branches_write_into_the_joined_blob_in_lean_builds(tmp_path: Path) -> None:
    base = Options(phase="TRAIN", backward=True, solver=SOLVER)
    net, spans = parse_net(INCEPTION, "inception.prototxt")
    builds = []
    for name, options in [("ref", replace(base, opt_level=0)),
                          ("lean", replace(base, keep_blobs=False))]:  # fmt: skip
        kgraph = build_kernel_graph(layer_graph_of(net, spans, options), options)
        builds.append((kgraph, CompiledNet(write_artifact(kgraph, tmp_path / name), seed=1)))
    (ref_graph, reference), (lean_graph, lean) = builds
    copies = [k for k in lean_graph.primitives() if k.prim == "copy"]
    assert not copies  # no Concat copies forward, Flatten's input written in place
    assert len([k for k in ref_graph.primitives() if k.prim == "copy"]) >= 4
    same_params(reference, lean)
    rng = np.random.default_rng(2)
    for _ in range(3):
        feed = {"data": rng.standard_normal((3, 4, 9, 9)), "label": rng.integers(0, 3, 3)}
        losses = [float(train_step(net_, feed, 0.1)["loss"]) for net_ in (reference, lean)]
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
        for name, blobs in reference.params.items():
            for a, b in zip(blobs, lean.params[name], strict=True):
                np.testing.assert_allclose(b.diff, a.diff, rtol=1e-5, atol=1e-6, err_msg=name)
                np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-6, err_msg=name)
