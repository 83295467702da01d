"""Caffe's log: glog's line format on stderr, and the lines Caffe writes as it builds a net.

Caffe logs through glog, which writes to stderr: ``caffe train ... 2> log``
and ``tools/extra/parse_log.py`` rely on that, and on the prefix of each line
(``I1206 22:37:12.123456  4242 file.cpp:123]``). caffec writes the same lines,
with its own source file and line where Caffe names its C++ file, and keeps
glog's ``GLOG_minloglevel`` (1: no INFO lines, 2: no WARNING lines either).
"""

from __future__ import annotations

import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from caffec.formats.manifest import Manifest

# functions that only pass a line on: the line's source is whoever called them
_PASSING_ON = {"caffe_log", "log", "<lambda>"}


def _caller() -> str:
    frame = sys._getframe(2)
    while frame.f_back is not None and frame.f_code.co_name in _PASSING_ON:
        frame = frame.f_back
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"


LEVELS = {"I": 0, "W": 1, "E": 2}  # glog's INFO, WARNING and ERROR


def caffe_log(
    message: str, stream: Any = None, source: str | None = None, level: str = "I"
) -> None:
    """One line in glog's format on stderr (or ``stream``): INFO, or WARNING (``level="W"``)
    or ERROR (``"E"``)."""
    if int(os.environ.get("GLOG_minloglevel", "0") or 0) > LEVELS[level]:
        return
    now = datetime.now()
    where = source or _caller()
    prefix = f"{level}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {os.getpid():5d} {where}]"
    print(f"{prefix} {message}", file=stream or sys.stderr, flush=True)


def net_setup_lines(manifest: Manifest) -> list[str]:
    """What Caffe's Net::Init logs of a net: each layer's blobs and top shapes, the memory its
    data takes (as Caffe counts it: every top, in-place ones again), and the end."""
    itemsize = 8 if manifest.dtype == "float64" else 4
    loss = dict(manifest.loss_tops)
    lines, memory = [], 0
    for layer in manifest.layers:
        lines.append(f"Creating Layer {layer.name}")
        lines += [f"{layer.name} <- {bottom}" for bottom in layer.bottoms]
        lines += [f"{layer.name} -> {top}" + (" (in-place)" if top in layer.bottoms else "")
                  for top in layer.tops]  # fmt: skip
        lines.append(f"Setting up {layer.name}")
        for top in layer.tops:
            shape = manifest.blob_shape(top)
            count = math.prod(shape)
            dims = "".join(f"{d} " for d in shape)  # a scalar shows its count alone
            lines.append(f"Top shape: {dims}({count})")
            if loss.get(top):
                lines.append(f"    with loss weight {loss[top]:g}")
            memory += count * itemsize
        lines.append(f"Memory required for data: {memory}")
    lines.append("Network initialization done.")
    return lines
