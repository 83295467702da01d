"""NetState rules and filtering behave as Caffe's Net::FilterNet / StateMeetsRule."""

from __future__ import annotations

from pathlib import Path

import pytest

from caffec.errors import InternalError, UserError
from caffec.formats import caffe_pb2
from caffec.formats.source_map import SourceMap
from caffec.formats.upgrade import upgrade_net
from caffec.frontend.netstate import (
    filter_net,
    layer_included,
    make_solver_state,
    make_state,
    state_meets_rule,
)
from caffec.frontend.textformat import parse_text

BVLC = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "bvlc"
needs_corpus = pytest.mark.skipif(not BVLC.is_dir(), reason="../shared/corpus is not here")

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def state(text: str) -> caffe_pb2.NetState:
    return parse_text(text, caffe_pb2.NetState)[0]


def rule(text: str) -> caffe_pb2.NetStateRule:
    return parse_text(text, caffe_pb2.NetStateRule)[0]


@pytest.mark.parametrize(
    ("state_text", "rule_text", "meets"),
    [
        ("phase: TRAIN", "", True),
        ("phase: TRAIN", "phase: TRAIN", True),
        ("phase: TRAIN", "phase: TEST", False),
        ("", "phase: TEST", True),  # NetState's phase defaults to TEST
        ("", "phase: TRAIN", False),
        ("level: 2", "min_level: 2", True),
        ("level: 1", "min_level: 2", False),
        ("level: 2", "max_level: 2", True),
        ("level: 3", "max_level: 2", False),
        ("", "max_level: -1", False),  # level defaults to 0
        ("level: 1", "min_level: 0 max_level: 1", True),
        ('stage: "a" stage: "b"', 'stage: "a"', True),
        ('stage: "a" stage: "b"', 'stage: "a" stage: "b"', True),
        ('stage: "a"', 'stage: "a" stage: "b"', False),  # needs ALL its stages
        ("", 'stage: "a"', False),
        ('stage: "a"', 'not_stage: "b"', True),
        ('stage: "a" stage: "b"', 'not_stage: "b"', False),
        ('stage: "a"', 'not_stage: "b" not_stage: "a"', False),  # NONE of its not_stages
        ('phase: TRAIN level: 1 stage: "s"', 'phase: TRAIN min_level: 1 stage: "s"', True),
        ('phase: TRAIN level: 1 stage: "s"', 'phase: TEST min_level: 1 stage: "s"', False),
    ],
)
def test_state_meets_rule(state_text, rule_text, meets):
    assert state_meets_rule(state(state_text), rule(rule_text)) is meets


def layer(text: str) -> caffe_pb2.LayerParameter:
    return parse_text(text, caffe_pb2.LayerParameter)[0]


@pytest.mark.parametrize(
    ("layer_text", "train", "test"),
    [
        ('name: "always"', True, True),
        ("include { phase: TRAIN }", True, False),
        ("include { phase: TEST }", False, True),
        ("exclude { phase: TEST }", True, False),
        ("include { phase: TRAIN } include { phase: TEST }", True, True),  # any include rule
        ("exclude { phase: TRAIN } exclude { phase: TEST }", False, False),  # any exclude rule
        ('include { phase: TEST stage: "deploy" }', False, False),
        ('exclude { stage: "deploy" }', True, True),
    ],
)
def test_include_and_exclude_semantics(layer_text, train, test):
    lay = layer(layer_text)
    assert layer_included(lay, state("phase: TRAIN"), SourceMap(), ("layer", 0)) is train
    assert layer_included(lay, state("phase: TEST"), SourceMap(), ("layer", 0)) is test


NET = """name: "n"
state { phase: TRAIN stage: "base" }
layer { name: "train_data" type: "DummyData" top: "x" include { phase: TRAIN } }
layer { name: "test_data" type: "DummyData" top: "x" include { phase: TEST } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" }
layer { name: "deep" type: "ReLU" bottom: "y" top: "y" include { min_level: 1 } }
layer { name: "not_deploy" type: "Accuracy" bottom: "y" top: "a" exclude { stage: "deploy" } }
layer { name: "deploy_only" type: "Softmax" bottom: "y" top: "p"
  include { stage: "deploy" } }
"""


def net_of(text: str) -> tuple[caffe_pb2.NetParameter, SourceMap]:
    return parse_text(text, caffe_pb2.NetParameter, "net.prototxt")


def names(net: caffe_pb2.NetParameter) -> list[str]:
    return [lay.name for lay in net.layer]


def test_filter_net_keeps_the_layers_the_state_allows():
    net, spans = net_of(NET)
    train = filter_net(net, make_state(net, TRAIN), spans)[0]
    assert names(train) == ["train_data", "ip", "not_deploy"]
    test = filter_net(net, make_state(net, TEST), spans)[0]
    assert names(test) == ["test_data", "ip", "not_deploy"]
    deep_deploy = filter_net(net, make_state(net, TEST, level=1, stages=["deploy"]), spans)[0]
    assert names(deep_deploy) == ["test_data", "ip", "deep", "deploy_only"]


def test_filter_net_copies_the_rest_and_records_the_state():
    net, spans = net_of(NET)
    before = net.SerializeToString()
    chosen = make_state(net, TEST)
    out, _ = filter_net(net, chosen, spans)
    assert net.SerializeToString() == before
    assert out.name == "n" and out.state == chosen


def test_filter_net_renumbers_spans():
    net, spans = net_of(NET)
    out, moved = filter_net(net, make_state(net, TEST), spans)
    assert out.layer[0].name == "test_data"
    assert moved.get(("layer", 0)).line == 4
    assert moved.get(("layer", 1, "type")).line == 5
    assert moved.get(("layer", 2, "exclude", 0, "stage", 0)).line == 7
    assert moved.get(("name",)).line == 1
    assert not any(p[:1] == ("layer",) and len(p) > 1 and p[1] > 2 for p in moved)


def test_layer_with_include_and_exclude_is_refused():
    text = 'layer { name: "a" type: "ReLU" }\nlayer {\n  name: "both"\n  include { phase: TRAIN }\n'
    text += "  exclude { phase: TEST }\n}\n"
    net, spans = net_of(text)
    with pytest.raises(UserError) as info:
        filter_net(net, make_state(net, TRAIN), spans)
    err = info.value
    assert err.message == "this layer has both 'include' and 'exclude' rules"
    assert err.layer == "both"
    assert (err.span.file, err.span.line, err.span.col) == ("net.prototxt", 5, 3)
    assert "include" in err.hint


def test_filter_net_wants_an_upgraded_net():
    net, spans = net_of('layers { name: "old" type: RELU }')
    with pytest.raises(InternalError):
        filter_net(net, make_state(net, TEST), spans)


def test_make_state_follows_caffes_net_constructor():
    net, _ = net_of('state { phase: TRAIN level: 3 stage: "own" }')
    got = make_state(net, TEST, level=1, stages=("asked",))
    assert got.phase == TEST  # the caller's phase wins
    assert got.level == 1  # so does the caller's level
    assert list(got.stage) == ["own", "asked"]  # stages add up
    assert make_state(net, TRAIN).level == 0
    assert list(net.state.stage) == ["own"]  # the net is not changed


def test_make_solver_state_lets_the_net_and_the_solver_override():
    plain, _ = net_of("")
    assert make_solver_state(plain, TRAIN).phase == TRAIN
    assert make_solver_state(plain, TEST).phase == TEST
    own, _ = net_of('state { phase: TEST stage: "own" }')
    got = make_solver_state(own, TRAIN)
    assert got.phase == TEST and list(got.stage) == ["own"]
    got = make_solver_state(own, TRAIN, state('phase: TRAIN level: 2 stage: "solver"'))
    assert (got.phase, got.level, list(got.stage)) == (TRAIN, 2, ["own", "solver"])


# --------------------------------------------------------------------------- corpus


def corpus_net(relative: str) -> tuple[caffe_pb2.NetParameter, SourceMap]:
    path = BVLC / relative
    return upgrade_net(*parse_text(path.read_text(), caffe_pb2.NetParameter, str(path)))


@needs_corpus
def test_lenet_train_test_phases():
    net, spans = corpus_net("examples/mnist/lenet_train_test.prototxt")
    train, _ = filter_net(net, make_state(net, TRAIN), spans)
    test, _ = filter_net(net, make_state(net, TEST), spans)
    body = ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2"]
    assert names(train) == ["mnist", *body, "loss"]
    assert names(test) == ["mnist", *body, "accuracy", "loss"]
    assert train.layer[0].data_param.source.endswith("mnist_train_lmdb")
    assert test.layer[0].data_param.source.endswith("mnist_test_lmdb")


@needs_corpus
def test_caffenet_train_val_phases():
    net, spans = corpus_net("models/bvlc_reference_caffenet/train_val.prototxt")
    train, _ = filter_net(net, make_state(net, TRAIN), spans)
    test, moved = filter_net(net, make_state(net, TEST), spans)
    assert "accuracy" not in names(train) and "accuracy" in names(test)
    assert len(train.layer) == len(net.layer) - 2 and len(test.layer) == len(net.layer) - 1
    assert train.layer[0].transform_param.mirror and not test.layer[0].transform_param.mirror
    # Spans of the test net point at the test layers in the file.
    assert moved.get(("layer", 0)) == spans.get(("layer", 1))


@needs_corpus
def test_every_corpus_net_filters_in_both_phases():
    paths = [p for p in sorted(BVLC.rglob("*.prototxt")) if "solver" not in p.name]
    assert paths
    for path in paths:
        net, spans = corpus_net(str(path.relative_to(BVLC)))
        for phase in (TRAIN, TEST):
            out, _ = filter_net(net, make_state(net, phase), spans)
            assert 0 < len(out.layer) <= len(net.layer), path
