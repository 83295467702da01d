"""Building the layer graph: SSA versions for in-place tops, fan-out, and structural errors."""

from __future__ import annotations

import pytest
from conftest import graph_from_text

from caffec.errors import UserError

INPUT = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'


def test_in_place_tops_become_new_versions_with_the_blob_name_kept() -> None:
    graph = graph_from_text(
        INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        "inner_product_param { num_output: 4 } }\n"
        'layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }\n'
        'layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" }\n'
    )
    relu, drop = graph.op("relu"), graph.op("drop")
    assert [v.name for v in relu.bottoms] == ["ip"]
    assert [v.name for v in relu.tops] == ["ip'"]
    assert [v.name for v in drop.bottoms] == ["ip'"]
    assert [v.name for v in drop.tops] == ["ip''"]
    assert {v.blob for v in (relu.tops[0], drop.tops[0])} == {"ip"}
    assert [v.name for v in graph.outputs()] == ["ip''"]
    # every value has exactly one producer
    for value in graph.values.values():
        assert graph.graph.in_degree(value) == 1


def test_fan_out_is_one_value_with_several_consumers() -> None:
    graph = graph_from_text(
        INPUT + 'layer { name: "a" type: "ReLU" bottom: "data" top: "a" }\n'
        'layer { name: "b" type: "Sigmoid" bottom: "data" top: "b" }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }\n'
    )
    data = graph.values["data"]
    assert [op.name for op in graph.consumers(data)] == ["a", "b"]
    assert not any(op.type == "Split" for op in graph.ops)
    edge = graph.graph.edges[graph.values["b"], graph.op("sum")]
    assert edge["index"] == 1


def test_blob_name_reused_by_a_later_version_does_not_collide() -> None:
    graph = graph_from_text(
        INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
        'layer { name: "s" type: "Sigmoid" bottom: "data" top: "data\'" }\n'
    )
    assert len({v.name for v in graph.values.values()}) == 3


@pytest.mark.parametrize(
    ("net", "line", "col", "words", "hint"),
    [
        (
            INPUT + 'layer { name: "r" type: "ReLU" bottom: "dta" top: "r" }',
            2,
            32,
            ["bottom 'dta' is not produced"],
            "did you mean 'data'?",
        ),
        (
            INPUT + 'layer { name: "r" type: "ReLU" bottom: "late" top: "r" }\n'
            'layer { name: "s" type: "ReLU" bottom: "data" top: "late" }',
            2,
            32,
            ["bottom 'late' is not produced by any earlier layer"],
            "written above it",
        ),
        (
            INPUT + 'layer { name: "q" type: "ReLU" bottom: "data" top: "x" }\n'
            'layer { name: "r" type: "Sigmoid" bottom: "data" top: "x" }',
            3,
            50,
            ["top 'x' is already produced"],
            "give the top a new name",
        ),
        (
            INPUT + 'layer { name: "r" type: "RELU" bottom: "data" top: "x" }',
            2,
            1,
            ["unknown layer type 'RELU'"],
            "did you mean 'ReLU'?",
        ),
        (
            INPUT + 'layer { name: "r" type: "Convolutoin" bottom: "data" top: "x" }',
            2,
            1,
            ["unknown layer type"],
            "did you mean 'Convolution'?",
        ),
        (
            INPUT + 'layer { name: "r" type: "Eltwise" bottom: "data" top: "x" }',
            2,
            1,
            ["Eltwise layer takes at least 2 bottoms, this one has 1"],
            None,
        ),
        (
            INPUT + 'layer { name: "r" type: "SoftmaxWithLoss" bottom: "data" top: "x" }',
            2,
            1,
            ["takes exactly 2 bottoms"],
            None,
        ),
        (
            INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" }',
            2,
            1,
            ["takes exactly 1 tops, this one has 0"],
            None,
        ),
    ],
)
def test_structural_errors(net: str, line: int, col: int, words: list, hint: str | None) -> None:
    with pytest.raises(UserError) as info:
        graph_from_text(net)
    err = info.value
    assert err.layer == "r"
    assert (err.span.file, err.span.line, err.span.col) == ("net.prototxt", line, col)
    for word in words:
        assert word in err.message
    if hint:
        assert hint in err.hint


def test_too_many_param_specs_and_bad_sharing() -> None:
    with pytest.raises(UserError, match="3 param"):
        graph_from_text(
            INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" '
            "param {} param {} param {} inner_product_param { num_output: 2 } }"
        )
    with pytest.raises(UserError, match="cannot share param 'w' with layer 'a'"):
        graph_from_text(
            INPUT + 'layer { name: "a" type: "InnerProduct" bottom: "data" top: "y" '
            'param { name: "w" } inner_product_param { num_output: 2 } }\n'
            'layer { name: "b" type: "InnerProduct" bottom: "data" top: "z" '
            'param { name: "w" } inner_product_param { num_output: 3 } }'
        )


def test_shared_params_of_equal_shape_are_accepted() -> None:
    graph = graph_from_text(
        INPUT + 'layer { name: "a" type: "InnerProduct" bottom: "data" top: "y" '
        'param { name: "w" } inner_product_param { num_output: 2 } }\n'
        'layer { name: "b" type: "InnerProduct" bottom: "data" top: "z" '
        'param { name: "w" } inner_product_param { num_output: 2 } }'
    )
    assert graph.op("b").params[0].shape == (2, 3)


def test_shape_flag_must_name_a_data_top() -> None:
    with pytest.raises(UserError) as info:
        graph_from_text(INPUT, shapes={"dat": (1, 2)})
    assert "data tops in this net: data" in info.value.hint


def test_a_bad_filler_is_reported_at_its_layer() -> None:
    with pytest.raises(UserError) as info:
        graph_from_text(
            INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" '
            'inner_product_param { num_output: 2 weight_filler { type: "xavierr" } } }'
        )
    assert info.value.layer == "ip" and info.value.span.line == 2
    assert "xavierr" in info.value.message and "xavier" in info.value.hint
