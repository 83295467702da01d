"""Training that diverges stops with exit 2, naming where, and leaves the last good snapshot;
debug_info logs Caffe's per-layer lines."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from nets import solver_beside

import caffec
from caffec.cli import main
from caffec.formats.snapshots import weights_by_name
from caffec.runtime.debug_info import Diverged

REGRESSION = """
name: "regression"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "ip1"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "y" top: "loss" }
"""


def write_solver(folder: Path, extra: str) -> Path:
    return solver_beside(folder, REGRESSION, f'lr_policy: "fixed"\nmax_iter: 60\n'
                                             f'snapshot_prefix: "{folder / "s"}"\n{extra}')  # fmt: skip


def train(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["train", *argv])
    return status, capsys.readouterr().err


def test_divergence_stops_training_and_keeps_the_last_good_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    solver = write_solver(tmp_path, "base_lr: 1e10\nsnapshot: 1\n")
    status, err = train(capsys, "-solver", str(solver))
    assert status == 2 and "Traceback" not in err
    match = re.search(r"error: training diverged at iteration (\d+): (.*)", err)
    assert match, err
    assert "layer '" in match.group(2) and "base_lr" in err  # where, and what to try
    iteration = int(match.group(1))
    snapshots = sorted(tmp_path.glob("s_iter_*.caffemodel"), key=lambda p: p.stat().st_mtime)
    assert snapshots and int(snapshots[-1].name.split("_")[2].split(".")[0]) <= iteration
    for blobs in weights_by_name(snapshots[-1]).values():
        assert all(np.isfinite(b.data).all() for b in blobs)
    status, err = train(capsys, "-solver", str(solver), "--allow-divergence")
    assert status == 0 and "Optimization Done" in err


def test_a_python_solver_raises_it_too(tmp_path: Path) -> None:
    solver = caffec.get_solver(str(write_solver(tmp_path, "base_lr: 1e10\n")),
                               log=lambda line: None)  # fmt: skip
    with pytest.raises(Diverged, match="training diverged at iteration") as info:
        solver.step(60)
    assert info.value.iteration >= 1 and "layer '" in info.value.message


def test_debug_info_logs_caffes_lines(tmp_path: Path) -> None:
    lines: list[str] = []
    solver = caffec.get_solver(
        str(write_solver(tmp_path, "base_lr: 0.01\ndebug_info: true\n")),
        log=lines.append,
    )
    solver.step(1)
    net = solver.net
    forward = [line for line in lines if line.startswith("    [Forward]")]
    assert [line.split(",")[0] for line in forward[:2]] == ["    [Forward] Layer data"] * 2
    top = next(line for line in forward if line.startswith("    [Forward] Layer ip2, top blob ip2"))
    assert float(top.split("data: ")[1]) == pytest.approx(np.abs(net.blobs["ip2"].data).mean(),
                                                          rel=1e-5)  # fmt: skip
    # in-place: relu's top is logged after relu, ip1's before it (the values Caffe shows)
    ip1 = float(
        next(x for x in forward if x.startswith("    [Forward] Layer ip1, top")).split(": ")[1]
    )
    relu = float(
        next(x for x in forward if x.startswith("    [Forward] Layer relu, top")).split(": ")[1]
    )
    assert relu <= ip1 and relu == pytest.approx(np.abs(net.blobs["ip1"].data).mean(), rel=1e-5)
    assert any(x.startswith("    [Forward] Layer ip1, param blob 0 data: ") for x in forward)
    backward = [line for line in lines if line.startswith("    [Backward]")]
    assert backward[0].startswith("    [Backward] Layer loss, bottom blob ip2 diff: ")
    assert any(x.startswith("    [Backward] Layer ip1, param blob 1 diff: ") for x in backward)
    assert any(x.startswith("    [Backward] All net params (data, diff): L1 norm = (")
               for x in backward)  # fmt: skip
    update = [line for line in lines if line.startswith("    [Update]")]
    assert len(update) == 4 and update[0].startswith("    [Update] Layer ip1, param 0 data: ")
