"""Drawing nets: pycaffe's caffe.draw on a NetParameter read as draw_net.py reads it, and
``caffec draw``; the graph's nodes, labels and phase filter, the files, the errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO
from google.protobuf import text_format

import caffe
from caffe import draw
from caffec.cli import main
from caffec.errors import UserError
from caffec.formats import caffe_pb2

pydot = pytest.importorskip("pydot", reason="pydot (the `draw` extra) is not installed")
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is not installed"
)

LENET = REPO / "examples/mnist/lenet_train_test.prototxt"


def lenet() -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    text_format.Merge(LENET.read_text(), net)
    return net


def labels(graph) -> dict[str, str]:
    """Each node's label (the text drawn), by node name."""
    return {node.get_name(): node.get("label") for node in graph.get_nodes()}


def edges(graph) -> set[tuple[str, str]]:
    """Edges as (label of the source, label of the destination)."""
    text = labels(graph)
    return {(text[e.get_source()], text[e.get_destination()]) for e in graph.get_edges()}


def test_layers_are_boxes_blobs_octagons_and_in_place_loops() -> None:
    graph = draw.get_pydot_graph(lenet(), "LR")
    assert graph.get_name() == "LeNet" and graph.get("rankdir") == "LR"
    nodes = {node.get("label"): node for node in graph.get_nodes()}
    conv1 = nodes["conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"]
    assert (conv1.get("shape"), conv1.get("fillcolor")) == ("box", "#FF5050")
    assert "pool1\n(Pooling MAX)\nkernel size: 2\nstride: 2\npad: 0" in nodes
    assert nodes["ip2"].get("shape") == "octagon"
    relu = "relu1\n(ReLU)"
    assert nodes[relu].get("fillcolor") == "#90EE90"
    assert {("ip1", relu), (relu, "ip1")} <= edges(graph)
    # both phases' data layers feed the one data blob
    assert sum(label == "mnist\n(Data)" for label in labels(graph).values()) == 2
    batch = {e.get("label") for e in graph.get_edges() if e.get("label")}
    assert {"Batch 64", "Batch 100", "20", "50", "500", "10"} == batch


def test_phase_rankdir_lr_mult_and_unlabelled_edges() -> None:
    test = draw.get_pydot_graph(lenet(), "TB", phase=caffe.TEST, display_lrm=True)
    text = set(labels(test).values())
    assert "accuracy (Accuracy)" in text and "mnist (Data)" in text
    assert "conv1 (Convolution) kernel size: 5 stride: 1 pad: 0 lr mult: 1.0, 2.0" in text
    train = draw.get_pydot_graph(lenet(), "BT", label_edges=False, phase=caffe_pb2.TRAIN)
    assert "accuracy (Accuracy)" not in set(labels(train).values())
    assert not any(e.get("label") for e in train.get_edges())


def test_phase_rules_and_old_formats() -> None:
    net = text_format.Parse(
        r"""name: "rules"
        layers { name: "in" type: DUMMY_DATA top: "x" }
        layers { name: "only\\train" type: RELU bottom: "x" top: "y" include { phase: TRAIN } }
        layers { name: "not_test" type: SIGMOID bottom: "x" top: "z" exclude { phase: TEST } }
        layers { name: "staged" type: TANH bottom: "x" top: "w" include { stage: "deploy" } }
        """,
        caffe_pb2.NetParameter(),
    )  # a V1 net: drawn after the upgrade caffec reads every net with
    drawn = set(labels(draw.get_pydot_graph(net, "LR", phase=caffe.TEST)).values())
    assert drawn == {"in\n(DummyData)", "x", "staged\n(TanH)", "w"}
    drawn = set(labels(draw.get_pydot_graph(net, "LR")).values())
    assert (
        "only\\\\train\n(ReLU)" in drawn and "not_test\n(Sigmoid)" in drawn
    )  # the backslash doubled for Graphviz
    both = caffe_pb2.NetParameter()
    both.layer.add(name="odd", type="ReLU", include=[{"phase": 0}], exclude=[{"phase": 1}])
    with pytest.raises(UserError, match="both include and exclude"):
        draw.get_pydot_graph(both, "LR", phase=caffe.TRAIN)
    with pytest.raises(UserError, match="rankdir"):
        draw.get_pydot_graph(both, "XY")


@needs_dot
def test_draw_net_renders_and_writes_files(tmp_path: Path) -> None:
    assert draw.draw_net(lenet(), "LR").startswith(b"\x89PNG")
    assert b"<svg" in draw.draw_net(lenet(), "TB", ext="svg", phase=caffe.TEST)
    draw.draw_net_to_file(lenet(), str(tmp_path / "lenet.pdf"), display_lrm=True)
    assert (tmp_path / "lenet.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.pdf"]
    with pytest.raises(UserError, match=r"cannot write a \.txt file") as err:
        draw.draw_net_to_file(lenet(), str(tmp_path / "lenet.txt"))
    assert err.value.hint == "name the output .svg, .png, .pdf or .dot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.pdf"]


def test_missing_pydot_or_graphviz_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert draw.draw_net(lenet(), "LR", ext="dot").startswith(b"digraph LeNet {")
    with pytest.raises(UserError, match="Graphviz's 'dot' program") as err:
        draw.draw_net(lenet(), "LR", ext="png")
    assert "apt-get install graphviz" in err.value.hint
    monkeypatch.setitem(sys.modules, "pydot", None)
    with pytest.raises(UserError, match="needs the Python package 'pydot'") as err:
        draw.get_pydot_graph(lenet(), "LR")
    assert err.value.hint == "pip install 'caffec[draw]'"


# --- caffec draw ------------------------------------------------------------------------


def test_cli_draw_writes_the_suffixs_format(capsys, tmp_path: Path) -> None:
    out = tmp_path / "lenet.dot"
    assert main(["draw", str(LENET), str(out), "--phase", "test", "--rankdir", "TB",
                 "--display-lrm"]) == 0  # fmt: skip
    assert capsys.readouterr().out == f"wrote {out}\n"
    dot = out.read_text()
    assert dot.startswith("digraph LeNet {\nrankdir=TB;") and "lr mult: 1.0, 2.0" in dot
    assert "Batch 64" not in dot and "Batch 100" in dot


@needs_dot
def test_cli_draw_svg(capsys, tmp_path: Path) -> None:
    assert main(["draw", str(LENET), str(tmp_path / "lenet.svg")]) == 0
    assert "<svg" in (tmp_path / "lenet.svg").read_text()


def test_cli_draw_bad_input_exits_2(capsys, tmp_path: Path) -> None:
    assert main(["draw", str(tmp_path / "missing.prototxt"), str(tmp_path / "x.svg")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["draw", str(LENET), str(tmp_path / "noformat")]) == 2
    assert "suffix names the format" in capsys.readouterr().err
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "a" type: "ReLU" bottom: "x" top: "x" kernel_size: 3 }')
    assert main(["draw", str(bad), str(tmp_path / "bad.dot")]) == 2
    assert "kernel_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["draw", str(LENET), str(tmp_path / "x.svg"), "--rankdir", "up"])
    assert exit_.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.prototxt"]
