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
