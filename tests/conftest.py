"""Shared fixtures: where the corpus is, and building layer graphs from text."""

from __future__ import annotations

from pathlib import Path

import pytest

from caffec.compiler.build import build_layer_graph
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


def graph_from_text(
    text: str, phase: str = "TEST", shapes: dict | None = None, after: str | None = None
) -> LayerGraph:
    """The layer graph of a net written in a test, after every pass (or ``after``)."""
    net, spans = parse_net(text, "net.prototxt")
    net, spans = select_phase(net, spans, phase)
    graph = build_layer_graph(net, spans, phase)
    return run_passes(graph, Options(phase=phase, shapes=shapes or {}), after)


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
