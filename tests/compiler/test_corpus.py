"""Every net and solver in ../shared/corpus loads, upgrades, and shape-infers in both phases.

Nets whose data sources (LMDB folders, list files) are not in the corpus get
their data shapes the way a user would give them: ``--shape``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CORPUS
from nets import PYLOSS

from caffec.compiler.graph_builder import build_layer_graph
from caffec.compiler.ir import LayerGraph
from caffec.compiler.pipeline import Options, run_passes
from caffec.formats.upgrade import upgrade_net
from caffec.frontend.loader import read_net, read_solver, select_phase

PROTOTXTS = sorted(CORPUS.rglob("*.prototxt")) if CORPUS.is_dir() else []
NETS = [p for p in PROTOTXTS if "solver" not in p.name]
SOLVERS = [p for p in PROTOTXTS if "solver" in p.name]

# Data shapes per example folder, for data layers whose source is absent (N, C, H, W).
DATA_SHAPES = {
    "mnist": {"data": (64, 1, 28, 28)},
    "siamese": {"pair_data": (64, 2, 28, 28)},
    "cifar10": {"data": (100, 3, 32, 32)},
    "hdf5_classification": {"data": (10, 4)},
    "bvlc_googlenet": {"data": (32, 3, 224, 224)},
    "bvlc_alexnet": {"data": (50, 3, 227, 227)},
    "bvlc_reference_caffenet": {"data": (50, 3, 227, 227)},
}

# Nets whose TEST-phase data layers need a stage, as their solvers' test_state gives.
TEST_STAGES = {"mnist_autoencoder.prototxt": ["test-on-test"]}


def compile_net(
    net, spans, phase: str, shapes: dict, base: Path, stages: list | tuple = ()
) -> LayerGraph:
    net, spans = select_phase(net, spans, phase, stages)
    graph = build_layer_graph(net, spans, phase)
    data_tops = {t for layer in net.layer if not layer.bottom for t in layer.top}
    given = {k: v for k, v in shapes.items() if k in data_tops}
    return run_passes(graph, Options(phase=phase, shapes=given, base_dir=base))


@pytest.fixture
def pyloss_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pycaffe example's Python loss module, which the corpus does not ship."""
    (tmp_path / "pyloss.py").write_text(PYLOSS)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("path", NETS, ids=lambda p: str(p.relative_to(CORPUS)))
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_corpus_net_shape_infers(path: Path, phase: str, pyloss_on_path: None) -> None:
    net, spans = read_net(path)
    stages = TEST_STAGES.get(path.name, []) if phase == "TEST" else []
    shapes = DATA_SHAPES.get(path.parent.name, {})
    graph = compile_net(net, spans, phase, shapes, path.parent, stages)
    assert graph.ops, "a net with no layers in this phase"
    for value in graph.values.values():
        assert value.shape is not None and all(d > 0 for d in value.shape), value


@pytest.mark.parametrize("path", SOLVERS, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_solver_loads(path: Path) -> None:
    solver, _ = read_solver(path)
    assert solver.type in {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"}
    assert not solver.HasField("solver_type")
    for inline in [solver.net_param, solver.train_net_param, *solver.test_net_param]:
        if inline.ByteSize():
            net, spans = upgrade_net(inline)
            compile_net(net, spans, "TRAIN", DATA_SHAPES["mnist"], path.parent)
            for state in solver.test_state:
                stages = list(state.stage)
                compile_net(net, spans, "TEST", DATA_SHAPES["mnist"], path.parent, stages)


def shapes_of(graph: LayerGraph) -> dict[str, tuple[int, ...]]:
    return {v.blob: v.shape for v in graph.values.values()}


def test_there_is_a_corpus_to_check(corpus: Path) -> None:
    assert len(NETS) >= 30 and len(SOLVERS) >= 20


def test_lenet_shapes(corpus: Path) -> None:
    net, spans = read_net(corpus / "bvlc/examples/mnist/lenet_train_test.prototxt")
    graph = compile_net(net, spans, "TRAIN", {"data": (64, 1, 28, 28)}, corpus)
    assert shapes_of(graph) == {
        "data": (64, 1, 28, 28), "label": (64,), "conv1": (64, 20, 24, 24),
        "pool1": (64, 20, 12, 12), "conv2": (64, 50, 8, 8), "pool2": (64, 50, 4, 4),
        "ip1": (64, 500), "ip2": (64, 10), "loss": (),
    }  # fmt: skip
    assert [p.shape for p in graph.op("ip1").params] == [(500, 800), (500,)]
    test = compile_net(net, spans, "TEST", {"data": (100, 1, 28, 28)}, corpus)
    assert shapes_of(test)["accuracy"] == ()
    assert "accuracy" not in shapes_of(graph)


def test_cifar10_quick_shapes(corpus: Path) -> None:
    net, spans = read_net(corpus / "bvlc/examples/cifar10/cifar10_quick_train_test.prototxt")
    shapes = shapes_of(compile_net(net, spans, "TRAIN", DATA_SHAPES["cifar10"], corpus))
    assert shapes["conv1"] == (100, 32, 32, 32)
    assert shapes["pool1"] == (100, 32, 16, 16)
    assert shapes["conv2"] == (100, 32, 16, 16)
    assert shapes["pool2"] == (100, 32, 8, 8)
    assert shapes["conv3"] == (100, 64, 8, 8)
    assert shapes["pool3"] == (100, 64, 4, 4)
    assert shapes["ip1"] == (100, 64)
    assert shapes["ip2"] == (100, 10)


def test_caffenet_shapes(corpus: Path) -> None:
    net, spans = read_net(corpus / "bvlc/models/bvlc_reference_caffenet/deploy.prototxt")
    graph = compile_net(net, spans, "TEST", {}, corpus)
    shapes = shapes_of(graph)
    assert shapes["data"] == (10, 3, 227, 227)
    assert shapes["conv1"] == (10, 96, 55, 55)
    assert shapes["pool1"] == (10, 96, 27, 27)
    assert shapes["conv2"] == (10, 256, 27, 27)
    assert shapes["pool2"] == (10, 256, 13, 13)
    assert shapes["conv5"] == (10, 256, 13, 13)
    assert shapes["pool5"] == (10, 256, 6, 6)
    assert shapes["fc6"] == (10, 4096)
    assert shapes["prob"] == (10, 1000)
    assert [p.shape for p in graph.op("conv2").params] == [(256, 48, 5, 5), (256,)]
    assert [p.shape for p in graph.op("fc6").params] == [(4096, 9216), (4096,)]


def test_googlenet_shapes(corpus: Path) -> None:
    net, spans = read_net(corpus / "bvlc/models/bvlc_googlenet/deploy.prototxt")
    shapes = shapes_of(compile_net(net, spans, "TEST", {}, corpus))
    assert shapes["conv1/7x7_s2"] == (10, 64, 112, 112)
    assert shapes["pool1/3x3_s2"] == (10, 64, 56, 56)
    assert shapes["pool2/3x3_s2"] == (10, 192, 28, 28)
    assert shapes["inception_3a/output"] == (10, 256, 28, 28)
    assert shapes["inception_3b/output"] == (10, 480, 28, 28)
    assert shapes["inception_4a/output"] == (10, 512, 14, 14)
    assert shapes["inception_4e/output"] == (10, 832, 14, 14)
    assert shapes["inception_5b/output"] == (10, 1024, 7, 7)
    assert shapes["pool5/7x7_s1"] == (10, 1024, 1, 1)
    assert shapes["prob"] == (10, 1000)


def test_data_shapes_come_from_the_source_when_it_exists(corpus: Path, tmp_path: Path) -> None:
    h5 = corpus / "bvlc/src/caffe/test/test_data/sample_data.h5"
    (tmp_path / "list.txt").write_text(f"{h5}\n")
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
        'hdf5_data_param { source: "list.txt" batch_size: 4 } }\n'
    )
    net, spans = read_net(tmp_path / "net.prototxt")
    graph = compile_net(net, spans, "TRAIN", {}, tmp_path)
    assert shapes_of(graph) == {"data": (4, 8, 6, 5), "label": (4, 1)}


def test_missing_source_names_the_flag_to_give(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caffec.errors import UserError

    monkeypatch.chdir(tmp_path)  # Caffe looks for sources from the working directory first
    net, spans = read_net(corpus / "bvlc/examples/mnist/lenet_train_test.prototxt")
    with pytest.raises(UserError) as info:
        compile_net(net, spans, "TRAIN", {}, corpus)
    assert info.value.layer == "mnist"
    assert "examples/mnist/mnist_train_lmdb' does not exist" in info.value.message
    assert "--shape data=N,C,H,W" in info.value.hint
    assert info.value.span.line == 2


def test_data_shape_from_an_lmdb_source(tmp_path: Path) -> None:
    lmdb = pytest.importorskip("lmdb")
    from caffec.formats import caffe_pb2

    datum = caffe_pb2.Datum(channels=1, height=28, width=28, data=bytes(784), label=3)
    with lmdb.open(str(tmp_path / "train_lmdb"), map_size=1 << 20) as env:
        with env.begin(write=True) as txn:
            txn.put(b"00000000", datum.SerializeToString())
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "data" top: "label" transform_param '
        '{ crop_size: 20 } data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }\n'
    )
    net, spans = read_net(tmp_path / "net.prototxt")
    graph = compile_net(net, spans, "TRAIN", {}, tmp_path)
    assert shapes_of(graph) == {"data": (8, 1, 20, 20), "label": (8,)}


def test_data_shape_from_an_image_list(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    cat = corpus / "bvlc/examples/images/cat.jpg"
    (tmp_path / "list.txt").write_text(f"{cat} 0\n")
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "ImageData" top: "data" top: "label" '
        'image_data_param { source: "list.txt" batch_size: 2 is_color: false } }\n'
    )
    net, spans = read_net(tmp_path / "net.prototxt")
    graph = compile_net(net, spans, "TEST", {}, tmp_path)
    from PIL import Image

    with Image.open(cat) as image:
        assert shapes_of(graph)["data"] == (2, 1, image.height, image.width)
