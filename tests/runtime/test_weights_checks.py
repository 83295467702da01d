"""Weights that do not match the net are said so: Caffe's "Ignoring source layer" lines, a
warning naming the layers that kept their fillers, an error under --strict-weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import caffec
from caffec.cli import main
from caffec.errors import UserError
from caffec.formats.snapshots import write_weights

NET = """
name: "small"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "conv1" type: "InnerProduct" bottom: "x" top: "a"
        inner_product_param { num_output: 4 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "a" top: "b"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 } } }
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """The net, and weights whose first layer's name has one flipped bit ('conv1' -> 'conv9')."""
    (tmp_path / "net.prototxt").write_text(NET)
    weights = tmp_path / "flipped.caffemodel"
    write_weights(weights, "small", [
        ("conv9", "InnerProduct", [np.ones((4, 3), np.float32), np.ones(4, np.float32)]),
        ("ip2", "InnerProduct", [np.full((2, 4), 2, np.float32), np.zeros(2, np.float32)]),
    ])  # fmt: skip
    return tmp_path / "net.prototxt", weights


def test_copy_from_names_what_it_ignored_and_what_kept_its_fillers(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    net_file, weights = files
    net = caffec.Net(str(net_file), caffec.TEST)
    capsys.readouterr()
    net.copy_from(weights)
    err = capsys.readouterr().err
    assert re.search(r"^I.*\] Ignoring source layer conv9$", err, re.M)
    warning = next(line for line in err.splitlines() if line.startswith("W"))
    assert f"{weights} has no weights for layer conv1, which keeps its filler's values" in warning
    np.testing.assert_array_equal(net.params["conv1"][0].data, 0.5)  # the filler's
    np.testing.assert_array_equal(net.params["ip2"][0].data, 2)  # loaded
    with pytest.raises(UserError, match="no weights for layer conv1"):
        net.copy_from(weights, strict=True)
    with pytest.raises(UserError, match="no weights for layer conv1"):
        caffec.Net(str(net_file), caffec.TEST, weights=str(weights), strict_weights=True)


def test_a_second_file_covers_what_the_first_missed(files: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    net_file, weights = files
    rest = weights.parent / "rest.caffemodel"
    write_weights(rest, "small", [("conv1", "InnerProduct", [np.zeros((4, 3), np.float32),
                                                             np.zeros(4, np.float32)])])  # fmt: skip
    net = caffec.Net(str(net_file), caffec.TEST)
    capsys.readouterr()
    net.load_weights([weights, rest], strict=True)  # caffe train -weights a,b
    assert "no weights" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["test", "run", "compile", "time"])
def test_the_commands_warn_and_strict_weights_refuses(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    net_file, weights = files
    folder = net_file.parent
    if command == "run":
        assert main(["compile", str(net_file), "-o", str(folder / "a.caffec")]) == 0
        argv = ["run", str(folder / "a.caffec"), "--weights", str(weights)]
    elif command == "compile":
        argv = ["compile", str(net_file), "-o", str(folder / "b.caffec"), "--weights", str(weights)]
    else:
        argv = [command, "-model", str(net_file), "-weights", str(weights), "-iterations", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    assert "has no weights for layer conv1" in capsys.readouterr().err
    assert main([*argv, "--strict-weights"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "no weights for layer conv1" in err and "Traceback" not in err
