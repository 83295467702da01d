"""`caffec plot`: training logs (caffec's, and Caffe's older lines) read into the loss, the
learning rate and each test output; every chart type drawn; bad input exiting 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from caffec.cli import main
from caffec.tools.plot import CAFFE_CHART_TYPES, parse_log

pytest.importorskip("matplotlib", reason="matplotlib (the `draw` extra) is not installed")

LOG = """\
I1231 23:59:58.000000 100 solver.py:143] Initializing solver from parameters:
I1231 23:59:59.000000 100 training.py:250] Iteration 0, Testing net (#0)
I1231 23:59:59.500000 100 training.py:269]     Test net output #0: accuracy = 0.1
I1231 23:59:59.500000 100 training.py:269]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1231 23:59:59.600000 100 training.py:250] Iteration 0, Testing net (#1)
I1231 23:59:59.700000 100 training.py:269]     Test net output #0: accuracy = 0.12
I1231 23:59:59.800000 100 training.py:211] Iteration 0 (0 iter/s, 1.2s/100 iters), loss = 2.4
I1231 23:59:59.800000 100 training.py:269]     Train net output #0: loss = 2.4 (* 1 = 2.4 loss)
I1231 23:59:59.800000 100 training.py:217] Iteration 0, lr = 0.01
I0101 00:00:08.000000 100 solver.cpp:228] Iteration 100, loss = 0.5
I0101 00:00:08.000000 100 solver.cpp:464] Iteration 100, lr = 0.0099
I0101 00:00:10.000000 100 training.py:250] Iteration 100, Testing net (#0)
I0101 00:00:10.500000 100 training.py:269]     Test net output #0: accuracy = 0.8
I0101 00:00:10.500000 100 training.py:269]     Test net output #1: loss = 0.6 (* 1 = 0.6 loss)
"""


def write_log(tmp_path: Path, text: str = LOG, name: str = "run.log") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_log_is_read_into_series(tmp_path: Path) -> None:
    log = parse_log(write_log(tmp_path))
    assert log.train_loss.iters == [0, 100] and log.train_loss.values == [2.4, 0.5]
    assert log.learning_rate.values == [0.01, 0.0099]
    assert log.test_scores["accuracy"].values == [0.1, 0.8]
    assert log.test_scores["accuracy (#1)"].values == [0.12]
    assert log.test_losses["loss"].iters == [0, 100]
    # the seconds run on over New Year (glog writes no year)
    assert log.train_loss.seconds == pytest.approx([1.8, 10.0])
    assert log.test_scores["accuracy"].seconds == pytest.approx([1.5, 12.5])


@pytest.mark.parametrize("chart", ["summary", "test-accuracy", "test-loss", "learning-rate",
                                   "train-loss", *map(str, CAFFE_CHART_TYPES)])  # fmt: skip
def test_every_chart_is_drawn(tmp_path: Path, capsys, chart: str) -> None:
    out = tmp_path / "chart.png"
    assert main(["plot", str(write_log(tmp_path)), str(out), "--chart", chart]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "2 training points" in printed and f"wrote {out}" in printed


def test_several_logs_and_other_formats(tmp_path: Path, capsys) -> None:
    first, second = write_log(tmp_path, name="a.log"), write_log(tmp_path, name="b.log")
    out = tmp_path / "both.svg"
    assert main(["plot", str(first), str(second), str(out), "--x", "seconds",
                 "--title", "two runs"]) == 0  # fmt: skip
    assert b"<svg" in out.read_bytes()[:400]
    assert capsys.readouterr().out.count("2 training points") == 2


def test_a_log_without_accuracy_draws_the_loss_alone(tmp_path: Path) -> None:
    siamese = "".join(line + "\n" for line in LOG.splitlines() if "accuracy" not in line)
    out = tmp_path / "loss.png"
    assert main(["plot", str(write_log(tmp_path, siamese)), str(out)]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    ("make", "argv", "message"),
    [
        (None, ["missing.log", "o.png"], "no log file"),
        ("not a log\n", ["{log}", "o.png"], "has no training lines"),
        ("I0101 00:00:01.000000 1 x.py:1] Iteration 5 (1 iter/s, 1s/1 iters), loss = 1\n",
         ["{log}", "o.png", "--chart", "test-accuracy"], "has no test accuracy to plot"),
        (LOG, ["{log}", "o.notaformat"], "end the file name with .png"),
        (LOG, ["{log}", "{tmp}/no/such/folder/o.png"], "cannot write"),
    ],
)  # fmt: skip
def test_bad_input_exits_2(tmp_path: Path, capsys, make, argv, message) -> None:
    log = write_log(tmp_path, make) if make else tmp_path / "missing.log"
    argv = [a.format(log=log, tmp=tmp_path) for a in argv]
    argv = [str(tmp_path / a) if a in ("o.png", "o.notaformat", "missing.log") else a
            for a in argv]  # fmt: skip
    assert main(["plot", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_an_unknown_chart_is_refused_by_the_parser(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["plot", str(write_log(tmp_path)), str(tmp_path / "o.png"), "--chart", "8"])
    assert stop.value.code == 2
