"""The ``caffe`` package itself: pycaffe's names, one schema, and a word when shadowing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2
from caffec.formats import caffe_pb2 as caffec_pb2

PYCAFFE_NAMES = [
    "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
    "AdamSolver", "get_solver", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
    "TRAIN", "TEST", "Layer", "Classifier", "Detector", "io", "NetSpec", "layers", "params",
    "to_proto", "layer_type_list", "init_log", "log", "get_solver",
]  # fmt: skip


def test_pycaffe_names_are_there() -> None:
    missing = [name for name in PYCAFFE_NAMES if not hasattr(caffe, name)]
    assert not missing
    assert (caffe.TRAIN, caffe.TEST) == (0, 1)
    types = caffe.layer_type_list()
    assert {"Convolution", "Python", "SoftmaxWithLoss"} <= set(types) and types == sorted(types)


def test_log_writes_glog_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    caffe.init_log()
    caffe.log("hello")
    err = capsys.readouterr().err
    assert re.match(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ pycaffe.py:0\] hello$", err.strip())


def test_one_schema_under_both_names() -> None:
    assert caffe_pb2 is caffec_pb2
    net = caffe_pb2.NetParameter(name="x")
    copy = caffec_pb2.NetParameter()
    copy.CopyFrom(net)
    assert isinstance(copy, caffe_pb2.NetParameter) and copy.name == "x"


def test_text_format_round_trips_the_corpus(corpus: Path) -> None:
    files = sorted(corpus.rglob("*.prototxt"))
    assert files
    for path in files:
        message = caffe_pb2.SolverParameter() if "solver" in path.name else caffe_pb2.NetParameter()
        text_format.Merge(path.read_text(), message)
        again = type(message)()
        text_format.Merge(text_format.MessageToString(message), again)
        assert again == message, path


@pytest.mark.parametrize("real_first", [True, False])
def test_a_real_caffe_beside_it_is_named(tmp_path: Path, real_first: bool) -> None:
    real = tmp_path / "site" / "caffe"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("")
    (real / "_caffe.so").write_bytes(b"")  # what marks BVLC's pycaffe
    ours = str(Path(caffe.__file__).parent.parent)
    paths = [str(real.parent), ours] if real_first else [ours, str(real.parent)]
    run = subprocess.run([sys.executable, "-c", "import caffe, caffec"], capture_output=True, cwd=tmp_path,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})  # fmt: skip
    assert run.returncode == 0, run.stderr
    expected = "gave a real Caffe" if real_first else "the real Caffe's at"
    assert expected in run.stderr and str(real) in run.stderr
    assert run.stderr.count("UserWarning") == 1
