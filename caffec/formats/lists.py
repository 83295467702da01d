"""Caffe's list files: lines of ``path label`` (ImageData, convert_imageset), or of paths
(HDF5Data)."""

from __future__ import annotations

import re
from pathlib import Path

from caffec.errors import UserError

_IMAGE_LINE = re.compile(r"^(?P<path>.*\S)\s+(?P<label>[+-]?\d+)\s*$")


def read_lines(path: Path, layer: str, what: str) -> list[str]:
    """The lines of a list file read by ``layer``; ``what`` names the file in errors."""
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as err:
        raise UserError(f"layer '{layer}': cannot read the {what} {path}: {err.strerror}") from None


def parse_image_list(path: Path, what: str) -> list[tuple[str, int, int]]:
    """The ``path label`` lines of an image list: (path, label, line number) each.

    As in Caffe, the label is the last field, so paths may hold spaces; blank
    lines are skipped. ``what`` starts error messages (e.g. the layer).
    """
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise UserError(f"{what}: cannot read the image list {path}: {err.strerror}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _IMAGE_LINE.match(line)
        if match is None:
            raise UserError(
                f"{what}: line {number} of {path} is {line.strip()!r}; an image list holds "
                "'path label' lines with an integer label",
            )
        lines.append((match["path"].strip(), int(match["label"]), number))
    if not lines:
        raise UserError(f"{what}: the image list {path} names no images")
    return lines
