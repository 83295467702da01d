"""FLOPs counted from layer shapes (caffec.compiler.flops) against hand-computed numbers."""

from __future__ import annotations

from pathlib import Path

from conftest import graph_from_text

from caffec.compiler.flops import LayerFlops, count_flops
from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph

LENET = Path(__file__).resolve().parents[2] / "examples/mnist/lenet_train_test.prototxt"


def test_lenet_training_step_counts_every_gradient_but_the_datas() -> None:
    """LeNet at batch 64: conv1 20x24x24 outputs of 1x5x5, conv2 50x8x8 of 20x5x5, ip1
    800 -> 500, ip2 500 -> 10; backward sends no gradient into the data layer's top."""
    options = Options(phase="TRAIN", shapes={"data": (64, 1, 28, 28), "label": (64,)})
    graph = load_layer_graph(LENET, options)
    flops = count_flops(graph, build_kernel_graph(graph, options, after="autodiff"))
    macs = {"conv1": 64 * 20 * 24 * 24 * 25, "conv2": 64 * 50 * 8 * 8 * 500,
            "ip1": 64 * 800 * 500, "ip2": 64 * 500 * 10}  # fmt: skip
    assert flops.layers == tuple(
        LayerFlops(name, "Convolution" if name.startswith("conv") else "InnerProduct",
                   2 * n, 0 if name == "conv1" else 2 * n, 2 * n)
        for name, n in macs.items()
    )  # fmt: skip
    assert flops.forward == 293_504_000
    assert flops.step == 293_504_000 + 256_640_000 + 293_504_000


def test_forward_only_without_a_kernel_graph() -> None:
    options = Options(phase="TEST", shapes={"data": (64, 1, 28, 28)})
    flops = count_flops(load_layer_graph(LENET, options))
    assert flops.forward == 293_504_000
    assert flops.backward == 0


SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 2 dim: 4 dim: 6 dim: 6 } shape { dim: 2 } } }
layer { name: "frozen" type: "Convolution" bottom: "x" top: "a"
        param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 3 group: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "a" top: "b"
        convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "b" top: "b" }
layer { name: "fc" type: "InnerProduct" bottom: "b" top: "c"
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "y" top: "loss" }
"""


def test_a_frozen_grouped_convolution_a_deconvolution_and_the_layers_not_counted() -> None:
    """frozen: 2 groups of 4 outputs from 2 channels, 3x3, 4x4 out: no gradient of its own
    weights and none into its input (nothing upstream learns), so it does not run backward;
    up: each of a's 8x4x4 elements spreads over 2x2x2 outputs (b is 2x8x8), its data
    gradient is not needed (frozen learns nothing) but its weights learn; fc: 128 -> 3 with
    both gradients. ReLU and the loss are not counted."""
    graph = graph_from_text(SMALL, phase="TRAIN")
    options = Options(phase="TRAIN")
    flops = count_flops(graph, build_kernel_graph(graph, options, after="autodiff"))
    frozen, up, fc = 2 * 8 * 4 * 4 * (2 * 3 * 3), 2 * 8 * 4 * 4 * (2 * 2 * 2), 2 * 128 * 3
    assert flops.layers == (
        LayerFlops("frozen", "Convolution", 2 * frozen, 0, 0),
        LayerFlops("up", "Deconvolution", 2 * up, 0, 2 * up),
        LayerFlops("fc", "InnerProduct", 2 * fc, 2 * fc, 2 * fc),
    )
    assert flops.step == 2 * frozen + 4 * up + 6 * fc
