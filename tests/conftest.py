"""Shared fixtures: where the corpus is, building layer graphs from text, an emulated GPU."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cuda_emulator import EmulatedDevice, fake_cupy

from caffec.compiler.graph_builder import build_layer_graph
from caffec.compiler.ir import LayerGraph
from caffec.compiler.pipeline import Options, run_passes
from caffec.frontend.loader import parse_net, select_phase

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not beside the checkout")
    return CORPUS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        help="run each fuzz test (tests/fuzz) with its long-mode number of cases",
    )


@pytest.fixture
def fuzz(request: pytest.FixtureRequest) -> Callable[[int, int], Any]:
    """``fuzz(ci, long)``: seeded hypothesis settings for ``ci`` cases, or ``long`` of them
    with ``--fuzz-long`` (docs/reliability.md). Same cases on every run (derandomized, no
    example database)."""
    from hypothesis import settings

    long_mode = request.config.getoption("--fuzz-long", default=False)

    def make(ci: int, long: int = 10_000) -> Any:
        return settings(
            max_examples=long if long_mode else ci, derandomize=True, database=None,
            deadline=None, print_blob=False,
        )  # fmt: skip

    return make


def graph_from_text(
    text: str, phase: str = "TEST", shapes: dict | None = None, after: str | None = None
) -> LayerGraph:
    """The layer graph of a net written in a test, after every pass (or ``after``)."""
    net, spans = parse_net(text, "net.prototxt")
    net, spans = select_phase(net, spans, phase)
    graph = build_layer_graph(net, spans, phase)
    return run_passes(graph, Options(phase=phase, shapes=shapes or {}), after)


@pytest.fixture
def emulated_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatedDevice]:
    """GPU mode on one emulated device: caffec sees one GPU (a stand-in CuPy), builds CUDA
    artifacts with nvcc as for a real one, and runs them on the CPU (``cuda_emulator``)."""
    if shutil.which("nvcc") is None or shutil.which("g++") is None:
        pytest.skip("needs nvcc (to build CUDA artifacts) and g++ (to emulate them)")
    from caffec.runtime import cuda_device, gpu

    device = EmulatedDevice(tmp_path_factory.mktemp("emulated"))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(1))
    monkeypatch.setattr(cuda_device, "open_device", lambda device_id: device)
    monkeypatch.setattr(gpu, "_mode", {"gpu": False, "device": 0})
    gpu.set_mode_gpu()
    yield device


@pytest.fixture
def real_gpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """GPU mode on this machine's GPU 0 (for tests marked ``gpu``); its device object."""
    from caffec.runtime import cuda_device, gpu

    monkeypatch.setattr(gpu, "_mode", {"gpu": False, "device": 0})
    gpu.set_mode_gpu()
    return cuda_device.open_device(0)


@pytest.fixture(params=["emulated", pytest.param("gpu", marks=pytest.mark.gpu)])
def any_gpu(request: pytest.FixtureRequest) -> Any:
    """GPU mode on the emulated device, and (marked ``gpu``) on a real one."""
    return request.getfixturevalue("emulated_gpu" if request.param == "emulated" else "real_gpu")


def _gpu_missing() -> str | None:
    """Why the `gpu` tests cannot run here (None: they can)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
        return "no CUDA device"
    except Exception as error:  # no CuPy, no driver, no device: all mean skip
        return f"needs CuPy and an NVIDIA GPU ({type(error).__name__})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    reason = _gpu_missing() if gpu_tests else None
    for item in gpu_tests if reason else []:
        item.add_marker(pytest.mark.skip(reason=reason))
