"""Caffe's log: glog lines on stderr with caffec's own source lines, what Net::Init and the
solver log as they build, and snapshots that carry the whole net."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import caffec
from caffec.formats.binaryproto import read_caffemodel
from caffec.runtime.glog import caffe_log, net_setup_lines

NET = """
name: "small"
layer { name: "x" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        loss_weight: 2 }
"""
GLOG = re.compile(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ (\S+):(\d+)\] (.*)")


def test_lines_go_to_stderr_with_their_source(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    caffe_log("hello")
    out, err = capsys.readouterr()
    match = GLOG.fullmatch(err.strip())
    assert not out and match and match.group(1) == "test_glog.py" and match.group(3) == "hello"
    monkeypatch.setenv("GLOG_minloglevel", "1")  # glog's switch: no INFO lines
    caffe_log("quiet")
    assert capsys.readouterr().err == ""


def test_net_setup_lines_as_caffe_logs_them(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(NET)
    net = caffec.Net(str(tmp_path / "net.prototxt"), caffec.TRAIN)
    lines = net_setup_lines(net.artifact.manifest)
    assert lines[:4] == ["Creating Layer x", "x -> x", "x -> label", "Setting up x"]
    assert "ip <- x" in lines and "relu -> ip (in-place)" in lines
    assert lines[lines.index("Setting up ip") + 1] == "Top shape: 4 5 (20)"
    setup = lines.index("Setting up loss")
    assert lines[setup + 1 : setup + 3] == ["Top shape: (1)", "    with loss weight 2"]
    memory = [int(line.split(": ")[1]) for line in lines if line.startswith("Memory required")]
    # Caffe counts every top as it is set up, an in-place top again: 12+4, +20, +20, +1
    assert memory == [64, 144, 224, 228]
    assert lines[-1] == "Network initialization done."


def test_the_solver_logs_how_it_builds_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(NET)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{tmp_path / "net.prototxt"}"\ntest_iter: 1\ntest_interval: 100\n'
                           f'base_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'
                           f'snapshot_prefix: "{tmp_path / "s"}"\n')  # fmt: skip
    lines: list[str] = []
    solver = caffec.get_solver(str(solver_file), log=lines.append)
    starts = [line.split("\n")[0] for line in lines]
    expected = ["Initializing solver from parameters: ",
                f"Creating training net from net file: {tmp_path / 'net.prototxt'}",
                "Network initialization done.",
                f"Creating test net (#0) specified by net file: {tmp_path / 'net.prototxt'}",
                "Network initialization done.", "Solver scaffolding done."]  # fmt: skip
    assert [line for line in starts if line in expected] == expected
    assert 'lr_policy: "fixed"' in lines[0]
    solver.solve()
    assert "Learning Rate Policy: fixed" in lines
    model, state = solver.snapshot()
    solver.restore(state)
    assert f"Restoring previous solver status from {state}" in lines
    # the snapshot is a whole net, as Caffe's: layers with their blobs and settings
    saved = read_caffemodel(model)
    ip = next(layer for layer in saved.net.layer if layer.name == "ip")
    assert list(ip.bottom) == ["x"] and list(ip.top) == ["ip"]
    assert ip.inner_product_param.num_output == 5 and len(saved.blobs_by_name()["ip"]) == 2
    assert [layer.name for layer in saved.net.layer] == ["x", "ip", "relu", "loss"]
