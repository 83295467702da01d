"""From a prototxt path to the net caffec compiles: parse, upgrade, filter by NetState."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from caffec.formats import caffe_pb2
from caffec.formats.source_map import SourceMap
from caffec.formats.upgrade import upgrade_net, upgrade_solver
from caffec.frontend.netstate import filter_net, make_state
from caffec.frontend.textformat import parse_text, read_text_file


def read_net(path: str | Path) -> tuple[caffe_pb2.NetParameter, SourceMap]:
    """A net file in any Caffe format, upgraded to the current one (all phases kept)."""
    net, spans = read_text_file(path, caffe_pb2.NetParameter)
    return upgrade_net(net, spans)


def parse_net(text: str, filename: str = "<string>") -> tuple[caffe_pb2.NetParameter, SourceMap]:
    """Like :func:`read_net`, from text in memory (tests, inline nets)."""
    net, spans = parse_text(text, caffe_pb2.NetParameter, filename)
    return upgrade_net(net, spans)


def select_phase(
    net: caffe_pb2.NetParameter,
    spans: SourceMap,
    phase: str = "TEST",
    stages: Sequence[str] = (),
    level: int = 0,
) -> tuple[caffe_pb2.NetParameter, SourceMap]:
    """The layers that run in ``phase`` with ``stages`` and ``level`` (Caffe's FilterNet)."""
    state = make_state(net, caffe_pb2.Phase.Value(phase), level, stages)
    return filter_net(net, state, spans)


def read_solver(path: str | Path) -> tuple[caffe_pb2.SolverParameter, SourceMap]:
    """A solver file, upgraded (``solver_type`` enum to ``type`` string)."""
    solver, spans = read_text_file(path, caffe_pb2.SolverParameter)
    return upgrade_solver(solver, spans)
