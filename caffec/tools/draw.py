"""A net drawn as pycaffe's draw_net draws it: layers as boxes with their type and window,
blobs as octagons, an in-place layer as a green box on an edge out of and back into its blob.

pydot (the ``draw`` extra) builds the graph and Graphviz's ``dot`` lays it out; both are
looked for only when a drawing is asked for, so the rest of caffec runs without them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.atomic import PathLike, write_atomically
from caffec.formats.upgrade import upgrade_net

RANKDIRS = ("LR", "TB", "BT", "RL")
WINDOW_LAYERS = ("Convolution", "Deconvolution", "Pooling")
LEARNING_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")
# pycaffe's colours: a few types stand out, in-place layers are green, blobs grey
COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
           "InnerProduct": "#CC33FF"}  # fmt: skip
LAYER_COLOUR, IN_PLACE_COLOUR, BLOB_COLOUR = "#6495ED", "#90EE90", "#E0E0E0"
TEXT_FORMATS = ("dot", "gv")  # written from the graph itself, without running Graphviz


def _pydot() -> ModuleType:
    try:
        import pydot
    except ImportError as err:
        raise UserError(
            "drawing a net needs the Python package 'pydot'", hint="pip install 'caffec[draw]'"
        ) from err
    return pydot


def in_phase(layer: caffe_pb2.LayerParameter, phase: int | None) -> bool:
    """Whether ``layer`` runs in ``phase`` (None: every layer), judged by phases alone as
    pycaffe's drawing does: stages and levels are not known here, so a rule that names no
    phase keeps the layer in the drawing."""
    if phase is None:
        return True
    if layer.include and layer.exclude:
        raise UserError("a layer has both include and exclude rules", layer=layer.name,
                        hint="Caffe takes one or the other")  # fmt: skip
    if layer.include:
        return any(not r.HasField("phase") or r.phase == phase for r in layer.include)
    return not any(r.HasField("phase") and r.phase == phase for r in layer.exclude)


def _escape(name: str) -> str:
    """A name as label text: Graphviz reads a backslash as the start of an escape."""
    return name.replace("\\", "\\\\")


def _sizes(values: Any, *pair: int) -> str:
    """A window's size as written: ``3``, ``3x5`` (one per axis), or from ``_h``/``_w``."""
    numbers = list(pair) if any(pair) else list(values)
    return "x".join(str(n) for n in numbers)


def _window(layer: caffe_pb2.LayerParameter) -> list[str]:
    if layer.type == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            return ["global"]
        kernel = _sizes([p.kernel_size], p.kernel_h, p.kernel_w)
        stride = _sizes([p.stride], p.stride_h, p.stride_w)
        pad = _sizes([p.pad], p.pad_h, p.pad_w)
    else:
        c = layer.convolution_param
        kernel = _sizes(c.kernel_size, c.kernel_h, c.kernel_w)
        stride = _sizes(c.stride or [1], c.stride_h, c.stride_w)
        pad = _sizes(c.pad or [0], c.pad_h, c.pad_w)
    return [f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]


def layer_label(layer: caffe_pb2.LayerParameter, separator: str, display_lrm: bool) -> str:
    """Name, (type), the window of a convolution or pooling, and optionally the learning-rate
    multipliers of weights and bias (the first two ``param`` entries, 1 where not given)."""
    kind = layer.type
    if kind == "Pooling":
        kind += " " + caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
    parts = [_escape(layer.name), f"({kind})"]
    if layer.type in WINDOW_LAYERS:
        parts += _window(layer)
    if display_lrm and layer.type in LEARNING_LAYERS:
        mults = [p.lr_mult for p in layer.param[:2]] + [1.0] * (2 - len(layer.param[:2]))
        if any(mults):
            parts.append(f"lr mult: {mults[0]:.1f}, {mults[1]:.1f}")
    return separator.join(parts)


def edge_label(layer: caffe_pb2.LayerParameter) -> str | None:
    """What a layer's top edges say: the batch of a Data layer, the outputs of a learning
    layer."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return None


def net_graph(
    net: caffe_pb2.NetParameter,
    rankdir: str = "LR",
    label_edges: bool = True,
    phase: int | None = None,
    display_lrm: bool = False,
) -> Any:
    """The ``pydot.Dot`` drawing of ``net`` (any Caffe format version), laid out towards
    ``rankdir``, with the layers of ``phase`` (``caffe_pb2.TRAIN``/``TEST``; None: all)."""
    pydot = _pydot()
    if rankdir not in RANKDIRS:
        raise UserError(f"rankdir is one of {', '.join(RANKDIRS)}, not {rankdir!r}")
    net, _ = upgrade_net(net)
    # vertical drawings have room across, horizontal ones have room down
    separator = " " if rankdir in ("TB", "BT") else "\n"
    graph = pydot.Dot(net.name or "Net", graph_type="digraph", rankdir=rankdir)
    blobs: dict[str, str] = {}

    def blob(name: str) -> str:
        if name not in blobs:
            blobs[name] = f"blob{len(blobs)}"
            graph.add_node(pydot.Node(blobs[name], label=_escape(name), shape="octagon",
                                      style="filled", fillcolor=BLOB_COLOUR))  # fmt: skip
        return blobs[name]

    for i, layer in enumerate(layer for layer in net.layer if in_phase(layer, phase)):
        node = f"layer{i}"
        in_place = len(layer.bottom) == len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        colour = IN_PLACE_COLOUR if in_place else COLOURS.get(layer.type, LAYER_COLOUR)
        graph.add_node(pydot.Node(node, label=layer_label(layer, separator, display_lrm),
                                  shape="box", style="filled", fillcolor=colour))  # fmt: skip
        for bottom in layer.bottom:
            graph.add_edge(pydot.Edge(blob(bottom), node))
        label = edge_label(layer) if label_edges else None
        for top in layer.top:
            graph.add_edge(pydot.Edge(node, blob(top), **({"label": label} if label else {})))
    return graph


def render(graph: Any, fmt: str) -> bytes:
    """``graph`` as a ``fmt`` file (svg, png, pdf, ...: any Graphviz writes; dot or gv: the
    graph's own text, which needs no Graphviz)."""
    text = graph.to_string().encode("utf-8")
    if fmt in TEXT_FORMATS:
        return text
    dot = shutil.which("dot")
    if dot is None:
        raise UserError(
            f"drawing a .{fmt} file needs Graphviz's 'dot' program, which is not on the PATH",
            hint="apt-get install graphviz (or your system's graphviz package); "
            "a .dot file needs no Graphviz",
        )
    result = subprocess.run([dot, f"-T{fmt}"], input=text, capture_output=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").split(". Use one of")[0].strip()
        raise UserError(f"Graphviz cannot write a .{fmt} file: {reason}",
                        hint="name the output .svg, .png, .pdf or .dot")  # fmt: skip
    return result.stdout


def draw_to_file(
    net: caffe_pb2.NetParameter,
    path: PathLike,
    rankdir: str = "LR",
    phase: int | None = None,
    display_lrm: bool = False,
) -> None:
    """Draw ``net`` into ``path`` in the format its suffix names, written whole or not at
    all."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if not fmt:
        raise UserError(f"{path}: the file's suffix names the format",
                        hint="name it .svg, .png, .pdf or .dot")  # fmt: skip
    image = render(net_graph(net, rankdir, phase=phase, display_lrm=display_lrm), fmt)
    write_atomically(path, [image])
