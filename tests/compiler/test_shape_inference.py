"""Shape inference per layer type, against shapes computed by hand from Caffe's rules."""

from __future__ import annotations

import pytest
from conftest import graph_from_text

from caffec.errors import UserError


def bottom_name(i: int) -> str:
    return "data" if i == 0 else f"b{i}"


def net_with_one_layer(body: str, bottoms: tuple, tops: int) -> str:
    """Input layers of the given shapes feeding one layer named "x" on line len(bottoms) + 1."""
    inputs = "".join(
        f'layer {{ name: "in{i}" type: "Input" top: "{bottom_name(i)}" '
        f"input_param {{ shape {{ {' '.join(f'dim: {d}' for d in shape)} }} }} }}\n"
        for i, shape in enumerate(bottoms)
    )
    wires = "".join(f'bottom: "{bottom_name(i)}" ' for i in range(len(bottoms)))
    wires += "".join(f'top: "t{i}" ' for i in range(tops))
    return inputs + f'layer {{ name: "x" {wires} {body} }}'


def one_layer(body: str, *bottoms: tuple[int, ...], tops: int = 1) -> list[tuple[int, ...]]:
    """Shapes of the tops of one layer fed by Input layers of the given shapes."""
    graph = graph_from_text(net_with_one_layer(body, bottoms, tops))
    return [v.shape for v in graph.op("x").tops]


def params_of(body: str, *bottoms: tuple[int, ...]) -> list[tuple[int, ...]]:
    graph = graph_from_text(net_with_one_layer(body, bottoms, 1))
    return [p.shape for p in graph.op("x").params]


CASES = [
    # (layer body, bottoms, expected tops)
    (
        'type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 }',
        [(64, 1, 28, 28)],
        [(64, 20, 24, 24)],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 96 kernel_size: 11 stride: 4 }',
        [(10, 3, 227, 227)],
        [(10, 96, 55, 55)],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 8 kernel_h: 3 kernel_w: 5 pad_h: 1 '
        "pad_w: 0 stride_h: 2 stride_w: 1 }",
        [(2, 4, 9, 9)],
        [(2, 8, 5, 5)],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 dilation: 2 pad: 2 }',
        [(1, 2, 7, 8)],
        [(1, 4, 7, 8)],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 3 }',
        [(1, 9, 5, 5)],
        [(1, 6, 3, 3)],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 kernel_size: 1 '
        "kernel_size: 2 }",
        [(1, 3, 5, 5, 5)],
        [(1, 2, 3, 5, 4)],
    ),
    (
        'type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 }',
        [(1, 5, 8, 8)],
        [(1, 3, 16, 16)],
    ),
    # Pooling: ceil rounding (CIFAR's 3/2 pooling of 32 -> 16) and the clipped last window
    (
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
        [(1, 32, 32, 32)],
        [(1, 32, 16, 16)],
    ),
    (
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
        [(1, 96, 55, 55)],
        [(1, 96, 27, 27)],
    ),
    (
        'type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }',
        [(1, 1, 4, 4)],
        [(1, 1, 3, 3)],
    ),
    (
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }',
        [(1, 1, 5, 5)],
        [(1, 1, 3, 3)],
    ),  # ceil gives 4, the fourth window starts in the pad
    (
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }',
        [(1, 1, 8, 8)],
        [(1, 1, 3, 3)],
    ),
    (
        'type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
        [(2, 1024, 7, 7)],
        [(2, 1024, 1, 1)],
    ),
    ('type: "InnerProduct" inner_product_param { num_output: 500 }', [(64, 50, 4, 4)], [(64, 500)]),
    (
        'type: "InnerProduct" inner_product_param { num_output: 7 axis: 2 }',
        [(3, 4, 5, 6)],
        [(3, 4, 7)],
    ),
    (
        'type: "InnerProduct" inner_product_param { num_output: 7 axis: -1 }',
        [(3, 4, 5)],
        [(3, 4, 7)],
    ),
    ('type: "ReLU"', [(2, 3)], [(2, 3)]),
    ('type: "LRN" lrn_param { local_size: 5 }', [(1, 8, 3, 3)], [(1, 8, 3, 3)]),
    ('type: "Concat"', [(2, 3, 4, 4), (2, 5, 4, 4)], [(2, 8, 4, 4)]),
    ('type: "Concat" concat_param { axis: -1 }', [(2, 3), (2, 4)], [(2, 7)]),
    ('type: "Concat" concat_param { concat_dim: 0 }', [(2, 3), (4, 3)], [(6, 3)]),
    ('type: "Flatten"', [(2, 3, 4, 5)], [(2, 60)]),
    ('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [(2, 3, 4, 5)], [(2, 12, 5)]),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [(2, 3, 4)], [(2, 12)]),
    (
        'type: "Reshape" reshape_param { shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 }',
        [(3, 4, 5)],
        [(3, 2, 2, 5)],
    ),
    (
        'type: "Reshape" reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 }',
        [(3, 4)],
        [(3, 4, 1)],
    ),
    (
        'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -1 }',
        [(2, 3), (2, 3)],
        [(2, 3)],
    ),
    ('type: "Softmax" softmax_param { axis: 2 }', [(2, 3, 4)], [(2, 3, 4)]),
    ('type: "SoftmaxWithLoss"', [(64, 10), (64,)], [()]),
    ('type: "SoftmaxWithLoss"', [(2, 5, 3, 3), (2, 1, 3, 3)], [()]),
    ('type: "EuclideanLoss"', [(4, 3, 2), (4, 6)], [()]),
    ('type: "SigmoidCrossEntropyLoss"', [(4, 784), (4, 1, 28, 28)], [()]),
    ('type: "ContrastiveLoss"', [(8, 2), (8, 2), (8,)], [()]),
    ('type: "Accuracy" accuracy_param { top_k: 5 }', [(50, 1000), (50,)], [()]),
    ('type: "BatchNorm"', [(2, 16, 3, 3)], [(2, 16, 3, 3)]),
    ('type: "Scale" scale_param { bias_term: true }', [(2, 16, 3, 3)], [(2, 16, 3, 3)]),
    ('type: "Scale" scale_param { axis: 0 }', [(2, 16, 3, 3), (2, 16)], [(2, 16, 3, 3)]),
    ('type: "Scale"', [(2, 16, 3, 3), (16,)], [(2, 16, 3, 3)]),
    ('type: "Bias" bias_param { axis: 0 num_axes: -1 }', [(2, 3)], [(2, 3)]),
    (
        'type: "Crop" crop_param { axis: 2 offset: 1 }',
        [(1, 3, 10, 10), (1, 1, 5, 6)],
        [(1, 3, 5, 6)],
    ),
    ('type: "ArgMax" argmax_param { top_k: 3 }', [(5, 10)], [(5, 1, 3)]),
    ('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [(5, 10, 2, 2)], [(5, 2, 2, 1)]),
    ('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', [(5, 10, 3)], [(5, 2, 3)]),
    ('type: "PReLU"', [(2, 6, 3)], [(2, 6, 3)]),
    ('type: "ELU"', [(2, 6)], [(2, 6)]),
    ('type: "Power" power_param { power: 2 }', [(2, 6)], [(2, 6)]),
    ('type: "AbsVal"', [(2, 6)], [(2, 6)]),
    ('type: "Sigmoid"', [(2, 6)], [(2, 6)]),
    ('type: "TanH"', [(2, 6)], [(2, 6)]),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', [(2, 6)], [(2, 6)]),
]


@pytest.mark.parametrize(("body", "bottoms", "expected"), CASES)
def test_top_shapes(body: str, bottoms: list, expected: list) -> None:
    assert one_layer(body, *bottoms, tops=len(expected)) == expected


def test_multi_top_layers() -> None:
    assert one_layer(
        'type: "Slice" slice_param { slice_point: 1 slice_point: 4 }', (2, 6, 3), tops=3
    ) == [(2, 1, 3), (2, 3, 3), (2, 2, 3)]
    assert one_layer('type: "Slice" slice_param { slice_dim: 0 }', (4, 3), tops=2) == [
        (2, 3),
        (2, 3),
    ]
    assert one_layer('type: "Split"', (3, 4), tops=3) == [(3, 4)] * 3
    assert (
        one_layer(
            'type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }', (1, 2, 5, 5), tops=2
        )
        == [(1, 2, 3, 3)] * 2
    )
    assert one_layer('type: "Accuracy"', (6, 4), (6,), tops=2) == [(), (4,)]
    assert one_layer('type: "SoftmaxWithLoss"', (6, 4), (6,), tops=2) == [(), (6, 4)]


PARAM_CASES = [
    (
        'type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 }',
        [(1, 3, 9, 9)],
        [(20, 3, 5, 5), (20,)],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 3 '
        "bias_term: false }",
        [(1, 9, 5, 5)],
        [(6, 3, 3, 3)],
    ),
    (
        'type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 2 group: 2 }',
        [(1, 4, 5, 5)],
        [(4, 3, 2, 2), (6,)],
    ),
    (
        'type: "InnerProduct" inner_product_param { num_output: 500 }',
        [(64, 50, 4, 4)],
        [(500, 800), (500,)],
    ),
    (
        'type: "InnerProduct" inner_product_param { num_output: 5 transpose: true }',
        [(2, 3)],
        [(3, 5), (5,)],
    ),
    ('type: "BatchNorm"', [(2, 16, 3, 3)], [(16,), (16,), (1,)]),
    ('type: "Scale" scale_param { bias_term: true }', [(2, 16, 3, 3)], [(16,), (16,)]),
    ('type: "Scale" scale_param { axis: 1 num_axes: 2 }', [(2, 16, 3, 3)], [(16, 3)]),
    ('type: "Scale" scale_param { num_axes: 0 }', [(2, 16)], [()]),
    ('type: "Bias"', [(2, 16, 3, 3)], [(16,)]),
    ('type: "PReLU"', [(2, 6, 3)], [(6,)]),
    ('type: "PReLU" prelu_param { channel_shared: true }', [(2, 6, 3)], [(1,)]),
    ('type: "ReLU"', [(2, 6)], []),
]


@pytest.mark.parametrize(("body", "bottoms", "expected"), PARAM_CASES)
def test_param_shapes(body: str, bottoms: list, expected: list) -> None:
    assert params_of(body, *bottoms) == expected


def test_fillers_follow_caffe_defaults() -> None:
    graph = graph_from_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true } }\n'
        'layer { name: "p" type: "PReLU" bottom: "y" top: "z" }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "z" top: "w" inner_product_param '
        '{ num_output: 2 weight_filler { type: "xavier" } } }'
    )
    scale, bias = graph.op("s").params
    assert (scale.filler.type, scale.filler.value) == ("constant", 1.0)
    assert (bias.filler.type, bias.filler.value) == ("constant", 0.0)
    assert graph.op("p").params[0].filler.value == pytest.approx(0.25)
    weight, ip_bias = graph.op("ip").params
    assert weight.filler.type == "xavier" and ip_bias.filler.type == "constant"


ERROR_CASES = [
    # (body, bottoms, tops, words the message must contain)
    (
        'type: "Convolution" convolution_param { num_output: 4 kernel_size: 7 }',
        [(1, 1, 5, 5)],
        1,
        ["Convolution", "kernel extent 7", "data 1x1x5x5"],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 group: 2 }',
        [(1, 3, 5, 5)],
        1,
        ["group 2 must divide", "(3)"],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 4 }',
        [(1, 3, 5, 5)],
        1,
        ["no kernel size"],
    ),
    (
        'type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 kernel_size: 2 '
        "kernel_size: 3 }",
        [(1, 3, 5, 5)],
        1,
        ["3 values", "2 spatial axes"],
    ),
    ('type: "Pooling" pooling_param { kernel_size: 2 }', [(1, 3, 5)], 1, ["4-D bottom"]),
    (
        'type: "Pooling" pooling_param { kernel_size: 2 pad: 2 }',
        [(1, 3, 5, 5)],
        1,
        ["smaller than the kernel"],
    ),
    (
        'type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }',
        [(1, 3, 5, 5)],
        2,
        ["only MAX pooling has a second top"],
    ),
    (
        'type: "InnerProduct" inner_product_param { num_output: 4 axis: 3 }',
        [(2, 3)],
        1,
        ["axis 3 is out of range"],
    ),
    ('type: "Concat"', [(2, 3, 4), (2, 3, 5)], 1, ["concat axis 1", "2x3x4, 2x3x5"]),
    ('type: "Eltwise"', [(2, 3), (2, 4)], 1, ["same shape"]),
    ('type: "Slice" slice_param { slice_point: 2 }', [(2, 6)], 3, ["1 slice_points for 3 tops"]),
    ('type: "Slice"', [(2, 5)], 2, ["does not split evenly"]),
    (
        'type: "Reshape" reshape_param { shape { dim: 5 dim: -1 } }',
        [(2, 3)],
        1,
        ["cannot infer the -1 dim"],
    ),
    ('type: "SoftmaxWithLoss"', [(64, 10), (32,)], 1, ["same first (batch) axis"]),
    ('type: "SoftmaxWithLoss"', [(2, 10, 3), (2,)], 1, ["2 labels", "6 in all"]),
    ('type: "Accuracy" accuracy_param { top_k: 20 }', [(4, 10), (4,)], 1, ["top_k 20"]),
    ('type: "LRN" lrn_param { local_size: 4 }', [(1, 3, 5, 5)], 1, ["odd"]),
    (
        'type: "Crop" crop_param { offset: 3 }',
        [(1, 3, 10, 10), (1, 1, 8, 8)],
        1,
        ["runs past its size 10"],
    ),
    ('type: "Dropout" dropout_param { dropout_ratio: 1.5 }', [(2, 3)], 1, ["dropout_ratio"]),
    ('type: "Scale"', [(2, 16, 3), (2, 8)], 1, ["does not match"]),
]


@pytest.mark.parametrize(("body", "bottoms", "tops", "words"), ERROR_CASES)
def test_shape_errors_name_layer_shapes_and_location(
    body: str, bottoms: list, tops: int, words: list
) -> None:
    text = net_with_one_layer(body, bottoms, tops)
    with pytest.raises(UserError) as info:
        graph_from_text(text)
    err = info.value
    assert err.layer == "x"
    assert err.span is not None and err.span.line == len(bottoms) + 1 and err.span.col == 1
    for word in words:
        assert word in err.message, err.message


PY_LAYER = 'type: "Python" python_param { module: "%s" layer: "Doubler" param_str: "3" }'


def test_python_layers_are_shape_inferred_by_their_own_reshape(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "doubler_mod.py").write_text(
        "class Doubler:\n"
        "    def setup(self, bottom, top):\n"
        "        self.k = int(self.param_str)\n"
        "    def reshape(self, bottom, top):\n"
        "        top[0].reshape(bottom[0].num, bottom[0].channels * self.k)\n"
        "        top[1].reshape(*bottom[0].data.shape)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert one_layer(PY_LAYER % "doubler_mod", (2, 5, 4), tops=2) == [(2, 15), (2, 5, 4)]


def test_python_layer_whose_module_is_missing() -> None:
    with pytest.raises(UserError) as info:
        one_layer(PY_LAYER % "no_such_module_here", (2, 5))
    assert "cannot import the Python layer module 'no_such_module_here'" in info.value.message
    assert "PYTHONPATH" in info.value.hint
