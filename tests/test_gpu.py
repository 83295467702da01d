"""`caffec device-query` and pycaffe's mode switches.

Without a GPU (CI) CuPy is replaced by a stand-in with CuPy's runtime calls
(getDeviceCount, getDeviceProperties, CUDARuntimeError; ``cuda_emulator.fake_cupy``),
so the listing and every error path run here; the `gpu` test asks a real device.
"""

from __future__ import annotations

import sys

import pytest
from cuda_emulator import CUDARuntimeError, fake_cupy

import caffec
from caffec.cli import main
from caffec.errors import UserError


def query(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["device-query", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_device_query_lists_every_device_as_caffe_does(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(2))
    status, out, _ = query(capsys)
    assert status == 0
    blocks = out.split("\n\n")
    assert len(blocks) == 2 and "Device id:" in blocks[1] and "Card 1" in blocks[1]
    assert "Compute capability:        9.0" in blocks[0]
    assert "Total global memory:       80.0 GiB" in blocks[0]
    status, out, _ = query(capsys, "-gpu", "1")
    assert status == 0 and "Card 1" in out and "Card 0" not in out


@pytest.mark.parametrize(
    ("count", "argv", "message", "hint"),
    [
        (2, ["-gpu", "2"], "there is no device 2 (2 found)", "from 0 to 1"),
        (2, ["-gpu", "0,x"], "'x' is not a device id", "-gpu all"),
        (0, [], "no CUDA device found", "drop -gpu"),
        (CUDARuntimeError("cudaErrorNoDevice"), [], "cudaErrorNoDevice", "NVIDIA GPU"),
        (None, [], "needs CuPy, which is not installed", "pip install 'caffec[cuda]'"),
    ],
)
def test_device_query_says_what_is_missing(capsys, monkeypatch, count, argv, message, hint) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None if count is None else fake_cupy(count))
    status, out, err = query(capsys, *argv)
    assert status == 2 and out == ""
    assert message in err and hint in err and "Traceback" not in err


def test_pycaffe_mode_switches(monkeypatch) -> None:
    caffec.set_mode_cpu()
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(UserError, match="needs CuPy"):
        caffec.set_mode_gpu()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(1))
    caffec.set_device(0)
    with pytest.raises(UserError, match="no device 3"):
        caffec.set_device(3)
    from caffec.runtime import gpu

    try:
        caffec.set_mode_gpu()
        assert gpu.gpu_mode() and gpu.current_device() == 0
    finally:
        caffec.set_mode_cpu()
    assert not gpu.gpu_mode()


@pytest.mark.gpu
def test_device_query_on_this_machines_gpu(capsys) -> None:
    status, out, _ = query(capsys, "-gpu", "0")
    assert status == 0 and "Device id:" in out and "Multiprocessor count:" in out
