"""Cases for the layers caffec had before the catalog: activations, vision, structure,
losses, normalization (one or two settings each; their own tests cover the fields)."""

from __future__ import annotations

import numpy as np

from catalog import Case, layer


def labels(name: str, shape: tuple[int, ...], classes: int):  # noqa: ANN201 - a Feed
    return lambda rng: {name: rng.integers(0, classes, shape).astype(float)}


IMAGE = {"a": (2, 3, 5, 4)}

CASES = [
    Case("ReLU", layer("ReLU"), IMAGE),
    Case("ReLU", layer("ReLU", "relu_param { negative_slope: 0.25 }", tops="a"), IMAGE,
         id="leaky in place"),
    Case("Sigmoid", layer("Sigmoid"), IMAGE),
    Case("TanH", layer("TanH", tops="a"), IMAGE, id="in place"),
    Case("AbsVal", layer("AbsVal"), IMAGE),
    Case("Power", layer("Power", "power_param { power: 2 scale: 0.5 shift: 0.25 }"), IMAGE),
    Case("ELU", layer("ELU", "elu_param { alpha: 0.5 }"), IMAGE),
    Case("PReLU", layer("PReLU"), IMAGE),
    Case("Dropout", layer("Dropout", "dropout_param { dropout_ratio: 0.25 }"), IMAGE,
         phase="TRAIN"),
    Case("Softmax", layer("Softmax"), IMAGE),
    Case("LRN", layer("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }"), IMAGE),
    Case("LRN", layer("LRN", "lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }"), IMAGE,
         id="within"),
    Case("Pooling", layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",
                          tops="y mask"), IMAGE, id="max with mask", no_grad=("mask",)),
    Case("Pooling", layer("Pooling", "pooling_param { pool: AVE kernel_size: 3 pad: 1 }"), IMAGE,
         id="ave"),
    Case("Convolution", layer("Convolution", "convolution_param { num_output: 4 kernel_size: 3 "
                              "pad: 1 group: 1 }"), IMAGE, id="core"),
    Case("Deconvolution", layer("Deconvolution", "convolution_param { num_output: 2 "
                                "kernel_size: 2 stride: 2 }"), IMAGE, id="core"),
    Case("InnerProduct", layer("InnerProduct", "inner_product_param { num_output: 3 }"), IMAGE),
    Case("Crop", layer("Crop", "crop_param { axis: 2 offset: 1 }", bottoms="a b"),
         {"a": (2, 3, 5, 4), "b": (1, 1, 3, 2)}, no_grad=("b",)),
    Case("BatchNorm", layer("BatchNorm"), IMAGE, phase="TRAIN"),
    Case("Scale", layer("Scale", "scale_param { bias_term: true }"), IMAGE),
    Case("Bias", layer("Bias", bottoms="a b"), {"a": (2, 3, 5, 4), "b": (3,)}),
    Case("Concat", layer("Concat", bottoms="a b"), {"a": (2, 3, 2, 2), "b": (2, 1, 2, 2)}),
    Case("Slice", layer("Slice", "slice_param { slice_point: 1 }", tops="y z"), IMAGE),
    Case("Split", layer("Split", tops="y z"), IMAGE),
    Case("Flatten", layer("Flatten"), IMAGE),
    Case("Reshape", layer("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }"), IMAGE),
    Case("Eltwise", layer("Eltwise", "eltwise_param { operation: PROD }", bottoms="a b"),
         {"a": (2, 3), "b": (2, 3)}),
    Case("Eltwise", layer("Eltwise", "eltwise_param { operation: MAX }", bottoms="a b"),
         {"a": (2, 3), "b": (2, 3)}, id="max"),
    Case("Reduction", layer("Reduction", "reduction_param { operation: SUMSQ axis: 1 }"), IMAGE),
    Case("Silence", 'layer { name: "x" type: "Silence" bottom: "a" }', {"a": (2, 3)}),
    Case("SoftmaxWithLoss", layer("SoftmaxWithLoss", bottoms="a label", tops="loss"),
         {"a": (4, 5), "label": (4,)}, feed=labels("label", (4,), 5), no_grad=("label",)),
    Case("SigmoidCrossEntropyLoss",
         layer("SigmoidCrossEntropyLoss", bottoms="a t", tops="loss"), {"a": (3, 4), "t": (3, 4)},
         feed=lambda rng: {"t": (rng.random((3, 4)) < 0.5).astype(float)}, no_grad=("t",)),
    Case("EuclideanLoss", layer("EuclideanLoss", bottoms="a b", tops="loss"),
         {"a": (3, 4), "b": (3, 4)}),
    Case("ContrastiveLoss", layer("ContrastiveLoss", bottoms="a b sim", tops="loss"),
         {"a": (4, 3), "b": (4, 3), "sim": (4,)},
         feed=lambda rng: {"sim": np.array([1.0, 0.0, 1.0, 0.0])}, no_grad=("sim",)),
    Case("Accuracy", layer("Accuracy", bottoms="a label"), {"a": (4, 5), "label": (4,)},
         feed=labels("label", (4,), 5), backward=False, no_grad=("label",)),
    Case("DummyData", 'layer { name: "x" type: "DummyData" top: "y" dummy_data_param { '
         'shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 0.5 } } }', {},
         backward=False),
]  # fmt: skip
