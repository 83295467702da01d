"""pycaffe's ``caffe.draw``: a ``caffe_pb2.NetParameter`` drawn with Graphviz.

The drawing is caffec's (:mod:`caffec.tools.draw`, also behind ``caffec draw``); these are
pycaffe's names and signatures for it. ``phase`` is ``caffe.TRAIN``, ``caffe.TEST`` or None
(every layer).
"""

from __future__ import annotations

from typing import Any

from caffec.formats import caffe_pb2
from caffec.tools.draw import draw_to_file, net_graph, render


def get_pydot_graph(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    label_edges: bool = True,
    phase: int | None = None,
    display_lrm: bool = False,
) -> Any:
    """The ``pydot.Dot`` graph of ``caffe_net``."""
    return net_graph(caffe_net, rankdir, label_edges, phase, display_lrm)


def draw_net(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    ext: str = "png",
    phase: int | None = None,
    display_lrm: bool = False,
) -> bytes:
    """The drawing as the bytes of an ``ext`` file (png, svg, pdf, dot, ...)."""
    return render(get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm), ext)


def draw_net_to_file(
    caffe_net: caffe_pb2.NetParameter,
    filename: str,
    rankdir: str = "LR",
    phase: int | None = None,
    display_lrm: bool = False,
) -> None:
    """Draw into ``filename``, in the format its suffix names."""
    draw_to_file(caffe_net, filename, rankdir, phase, display_lrm)
