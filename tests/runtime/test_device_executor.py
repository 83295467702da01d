"""The GPU runtime on an emulated device: nets, solvers and the CLI in GPU mode.

``emulated_gpu`` (conftest) makes caffec see one GPU, build CUDA artifacts with
nvcc, and run them through the runtime's device executor on the CPU emulation
of the generated CUDA (``tests/cuda_emulator.py``), whose "device memory" is
apart from the host copies. So what is checked here is the runtime's part:
which copies it makes and when, graphs, parameters shared on the device, and
the flags; the same nets in CPU mode are the reference.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_emulator import EmulatedDevice, fake_cupy
from test_solver import NET, SCORED_NET

import caffec
from caffec.cli import main
from caffec.runtime import gpu
from caffec.solver import get_solver


def _net(tmp_path: Path, seed: int = 4) -> caffec.Net:
    (tmp_path / "net.prototxt").write_text(NET)
    return caffec.Net(str(tmp_path / "net.prototxt"), caffec.TRAIN, seed=seed)


def _feed(net: caffec.Net) -> None:
    rng = np.random.default_rng(0)
    net.blobs["x"].data[...] = rng.standard_normal((4, 3))
    net.blobs["label"].data[...] = [0, 2, 1, 2]


def test_a_net_on_the_device_copies_what_it_must(tmp_path: Path, emulated_gpu) -> None:
    device: EmulatedDevice = emulated_gpu
    on_gpu = _net(tmp_path)
    assert on_gpu.artifact.manifest.target.name == "cuda"
    gpu.set_mode_cpu()
    on_cpu = _net(tmp_path)
    assert on_cpu.artifact.manifest.target.name == "c"
    for net in (on_cpu, on_gpu):
        _feed(net)
        net.forward()
        net.backward()
    np.testing.assert_allclose(on_gpu.blobs["loss"].data, on_cpu.blobs["loss"].data, rtol=1e-5)
    np.testing.assert_allclose(on_gpu.blobs["x"].diff, on_cpu.blobs["x"].diff, rtol=1e-4)

    # a value read twice crosses once; a value the host wrote goes back before the next run
    downloads = device.downloads
    first = on_gpu.blobs["sum"].data.copy()
    np.testing.assert_array_equal(on_gpu.blobs["sum"].data, first)
    assert device.downloads == downloads + 1
    for net in (on_cpu, on_gpu):
        net.params["frozen"][0].data[...] *= -2
        net.forward()
    np.testing.assert_allclose(on_gpu.blobs["c"].data, on_cpu.blobs["c"].data, rtol=1e-5)

    # gradients accumulate on the device, and clearing them is done there
    for net in (on_cpu, on_gpu):
        net.backward()
    np.testing.assert_allclose(on_gpu.params["a"][0].diff, on_cpu.params["a"][0].diff, rtol=1e-4)
    on_gpu.clear_param_diffs()
    assert not on_gpu.params["a"][0].diff.any()

    # a batch given to forward is written, not fetched first: what comes back is the loss,
    # the count of bad labels (one number) and the iteration counter (dropout's), read to
    # count one up
    downloads, uploads, ahead = device.downloads, device.uploads, device.uploads_ahead
    batch = {"x": np.ones((4, 3)), "label": np.zeros(4)}
    for net in (on_cpu, on_gpu):
        net.forward(**batch)
    assert device.downloads == downloads + 3
    # the batch goes up on the copy stream, ahead; the counter, written back, in order
    assert (device.uploads_ahead, device.uploads) == (ahead + 2, uploads + 1)
    np.testing.assert_allclose(on_gpu.blobs["loss"].data, on_cpu.blobs["loss"].data, rtol=1e-5)

    # whole passes are graphs, captured once and replayed; a partial run is a graph of its
    # own steps, captured the first time it runs
    assert device.captures == 2 and device.replays == 5
    partial = on_gpu.forward(start="b", end="relu")
    assert device.captures == 3 and device.replays == 6 and set(partial) == {"loss"}
    on_gpu.forward(start="b", end="relu")
    assert device.captures == 3 and device.replays == 7
    np.testing.assert_allclose(on_gpu.blobs["sum"].data, on_cpu.blobs["sum"].data, rtol=1e-5)

    # a reshape rebuilds the net around the same parameter buffers on the device
    weights = on_gpu.params["a"][0].data.copy()
    shared = on_gpu.param_buffers()[("a", 0)]
    for net in (on_cpu, on_gpu):
        net.blobs["x"].reshape(2, 3)
        net.blobs["label"].reshape(2)
        net.reshape()
    assert on_gpu.param_buffers()[("a", 0)] is shared
    np.testing.assert_array_equal(on_gpu.params["a"][0].data, weights)
    half = {"x": np.full((2, 3), 0.5), "label": np.array([1.0, 0.0])}
    for net in (on_cpu, on_gpu):
        net.forward(**half)
    np.testing.assert_allclose(on_gpu.blobs["loss"].data, on_cpu.blobs["loss"].data, rtol=1e-5)


def _solver(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "net.prototxt").write_text(SCORED_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(
        f'net: "{tmp_path / "net.prototxt"}"\ntest_iter: 2\ntest_interval: 5\nbase_lr: 0.05\n'
        'momentum: 0.9\nweight_decay: 0.001\nlr_policy: "step" gamma: 0.5 stepsize: 7\n'
        f'max_iter: 12\nsnapshot: 6\nsnapshot_prefix: "{tmp_path / "run"}"\nrandom_seed: 5\n'
        "display: 1\n" + extra
    )
    return path


def _train(path: Path, resume: Path | None = None) -> tuple[list[str], object]:
    lines: list[str] = []
    solver = get_solver(path, log=lines.append)
    solver.solve(resume)
    return lines, solver


def test_training_on_the_device_follows_the_c_target(tmp_path: Path, emulated_gpu) -> None:
    path = _solver(tmp_path)
    on_gpu, gpu_solver = _train(path)
    assert gpu_solver.net.artifact.manifest.target.name == "cuda"
    resumed_lines, resumed = _train(path, tmp_path / "run_iter_6.solverstate")
    gpu.set_mode_cpu()
    on_cpu, cpu_solver = _train(path)

    def numbers(lines: list[str]) -> list[float]:
        return [float(x) for line in lines for x in re.findall(r"= ([-\d.e]+)", line)]

    # the losses, learning rates and the test net's outputs (on the train net's parameters,
    # shared on the device) as the C target logs them
    assert len(on_gpu) == len(on_cpu)
    np.testing.assert_allclose(numbers(on_gpu), numbers(on_cpu), rtol=1e-4, atol=1e-6)
    for name, blobs in cpu_solver.net.params.items():
        for a, b, c in zip(blobs, gpu_solver.net.params[name], resumed.net.params[name],
                           strict=True):  # fmt: skip
            np.testing.assert_allclose(b.data, a.data, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(c.data, b.data, rtol=1e-5, atol=1e-7)
    assert emulated_gpu.captures > 0 and resumed_lines


def test_the_cli_runs_on_the_device(tmp_path: Path, emulated_gpu, capsys, monkeypatch) -> None:
    (tmp_path / "net.prototxt").write_text(NET)
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(2).standard_normal((4, 3)),
             label=np.array([0.0, 1.0, 2.0, 1.0]))  # fmt: skip
    outputs = {}
    for target in ("c", "cuda"):
        artifact = str(tmp_path / f"{target}.caffec")
        assert main(["compile", str(tmp_path / "net.prototxt"), "--target", target,
                     "-o", artifact]) == 0  # fmt: skip
        gpu_flag = ["-gpu", "0"] if target == "cuda" else []
        out = tmp_path / f"{target}.npz"
        assert main(["run", artifact, *gpu_flag, "--input", str(tmp_path / "in.npz"),
                     "--output", str(out)]) == 0  # fmt: skip
        outputs[target] = dict(np.load(out))
    np.testing.assert_allclose(outputs["cuda"]["loss"], outputs["c"]["loss"], rtol=1e-5)

    capsys.readouterr()
    assert main(["run", str(tmp_path / "cuda.caffec")]) == 2
    assert "built for the CUDA target" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "c.caffec"), "-gpu", "0"]) == 2
    assert "--target cuda" in capsys.readouterr().err

    assert main(["time", "-model", str(tmp_path / "net.prototxt"), "-gpu", "0",
                 "-iterations", "1"]) == 0  # fmt: skip
    assert "Average Forward-Backward" in capsys.readouterr().err

    # solver_mode: GPU trains on the solver's device_id; -cpu keeps it on the CPU
    path = _solver(tmp_path, "solver_mode: GPU\ndevice_id: 0\n")
    gpu.set_mode_cpu()
    captures = emulated_gpu.captures
    assert main(["train", "-solver", str(path)]) == 0
    assert emulated_gpu.captures > captures and gpu.gpu_mode()
    gpu.set_mode_cpu()
    captures = emulated_gpu.captures
    assert main(["train", "-solver", str(path), "-cpu"]) == 0
    assert emulated_gpu.captures == captures and not gpu.gpu_mode()

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(2))
    capsys.readouterr()
    assert main(["train", "-solver", str(path), "-gpu", "all"]) == 2  # NCCL, which it lacks
    assert "needs CuPy's NCCL" in capsys.readouterr().err
    path.write_text(path.read_text().replace("device_id: 0", "device_id: 5"))
    assert main(["train", "-solver", str(path)]) == 2
    err = capsys.readouterr().err
    assert "asks for solver_mode: GPU on device 5" in err and "-cpu" in err


def test_time_waits_for_the_warm_up_before_timing(tmp_path: Path, emulated_gpu,
                                                 monkeypatch) -> None:  # fmt: skip
    """On a GPU the passes run asynchronously: the warm-up backward must be waited for, else
    the first step timed (the data layer's) waits for it (seen on an H200: 56 ms)."""
    from caffec.runtime.device_executor import DeviceExecutor

    calls = []
    run, synchronize = DeviceExecutor.run, DeviceExecutor.synchronize

    def recorded_run(self, direction: str, begin: int, end: int) -> None:
        calls.append((direction, begin, end))
        run(self, direction, begin, end)

    def recorded_synchronize(self) -> None:
        calls.append("synchronize")
        synchronize(self)

    monkeypatch.setattr(DeviceExecutor, "run", recorded_run)
    monkeypatch.setattr(DeviceExecutor, "synchronize", recorded_synchronize)
    (tmp_path / "net.prototxt").write_text(NET)
    assert main(["time", "-model", str(tmp_path / "net.prototxt"), "-gpu", "0",
                 "-iterations", "1"]) == 0  # fmt: skip
    first_timed = calls.index(("forward", 0, 1))
    warm_up = max(i for i, c in enumerate(calls[:first_timed]) if c != "synchronize")
    assert calls[warm_up][0] == "backward" and "synchronize" in calls[warm_up:first_timed]


def test_time_times_every_kernel_on_the_gpu(tmp_path: Path, emulated_gpu, capsys) -> None:
    """``--kernels`` on a GPU: a row per kernel, each with its time (the CUDA target has no
    kernels that launch nothing, such as the C target's weight packing)."""
    (tmp_path / "net.prototxt").write_text(CONV_NET)
    assert main(["time", "-model", str(tmp_path / "net.prototxt"), "-gpu", "0",
                 "-iterations", "1", "--kernels"]) == 0  # fmt: skip
    rows = [line for line in capsys.readouterr().err.splitlines() if "_convolution_" in line]
    assert rows and all(re.search(r": [\d.e-]+ ms\.$", r) for r in rows)
    assert not any("_pack" in r for r in rows)


CONV_NET = """
name: "packed"
layer { name: "in" type: "Input" top: "wide" top: "label"
        input_param { shape { dim: 2 dim: 128 dim: 5 dim: 5 } shape { dim: 2 } } }
layer { name: "wide_conv" type: "Convolution" bottom: "wide" top: "wide_conv"
        convolution_param { num_output: 5 kernel_size: 3 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "wide_conv" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("flag", [["-gpu", "0"], []])
def test_no_gpu_is_a_clear_error(tmp_path: Path, capsys, monkeypatch, flag) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(0))
    path = _solver(tmp_path, "" if flag else "solver_mode: GPU\n")
    assert main(["train", "-solver", str(path), *flag]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device found" in err and "Traceback" not in err
    assert ("drop -gpu" if flag else "pass -cpu") in err
