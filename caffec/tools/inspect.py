"""``caffec inspect``: what a binary Caffe file holds (a caffemodel's layers and blobs, a mean
file's statistics, a solver state's iteration and history)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import (
    Blob,
    CaffeModel,
    PathLike,
    file_kinds,
    read_blobproto,
    read_blobproto_vector,
    read_caffemodel,
    read_solverstate,
)

_EXTENSION_KINDS = {
    ".caffemodel": "caffemodel",
    ".binaryproto": "binaryproto",
    ".solverstate": "solverstate",
}


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _blob_summary(blob: Blob) -> str:
    legacy = " (legacy num/channels/height/width)" if blob.legacy_shape else ""
    text = (
        f"shape {shape_text(blob.shape)}{legacy}, {blob.data.dtype.name}, {blob.data.size} values"
    )
    if blob.data.size:
        text += (
            f", min {blob.data.min():.6g}, max {blob.data.max():.6g}, "
            f"mean {blob.data.mean(dtype=np.float64):.6g}"
        )
    return text


def _describe_caffemodel(name: str, model: CaffeModel) -> str:
    if model.format == "current":
        types = [layer.type for layer in model.net.layer]
    else:
        enum = caffe_pb2.V1LayerParameter.LayerType
        types = [
            layer.layer.type
            if layer.HasField("layer")
            else (enum.Name(layer.type) if layer.type in enum.values() else str(layer.type))
            for layer in model.net.layers
        ]
    rows = [["layer", "type", "blob", "shape", "dtype", "count"]]
    for layer, kind, blobs in zip(model.layer_names(), types, model.blobs, strict=True):
        if not blobs:
            rows.append([layer, kind, "-", "", "", ""])
        for j, blob in enumerate(blobs):
            shape = shape_text(blob.shape) + (" (legacy)" if blob.legacy_shape else "")
            first = j == 0
            rows.append(
                [
                    layer if first else "",
                    kind if first else "",
                    str(j),
                    shape,
                    blob.data.dtype.name,
                    str(blob.data.size),
                ]
            )
    every = [b for blobs in model.blobs for b in blobs]
    params = sum(b.data.size for b in every)
    nbytes = sum(b.data.nbytes for b in every)
    title = f"'{model.net.name}'" if model.net.name else "(unnamed)"
    lines = [
        f"{name}: Caffe model, {model.format} format, net {title}, "
        f"{len(model.blobs)} layers, {len(every)} blobs",
        *_table(rows),
        f"total: {params} parameters, {nbytes} bytes",
    ]
    return "\n".join(lines)


def describe_file(path: PathLike) -> str:
    """A human-readable summary of a binary Caffe file, for ``caffec inspect``.

    The kind is told from the content where it is unambiguous, else from the
    file's extension.
    """
    name = os.fspath(path)
    fits = file_kinds(path)
    if fits == ["text"]:
        raise UserError(
            f"{name}: this looks like a text prototxt; inspect reads binary Caffe files",
            hint="give a .caffemodel, .binaryproto or .solverstate",
        )
    by_extension = _EXTENSION_KINDS.get(Path(name).suffix.lower())
    if len(fits) == 1:
        kind = fits[0]
    elif by_extension is not None and (not fits or by_extension in fits):
        kind = by_extension
    elif fits:
        kind = fits[0]
    else:
        raise UserError(
            f"{name}: not a Caffe binary file this tool recognises",
            hint="give a .caffemodel, .binaryproto or .solverstate",
        )
    if kind == "caffemodel":
        return _describe_caffemodel(name, read_caffemodel(path))
    if kind == "binaryproto":
        return f"{name}: Caffe blob (BlobProto): {_blob_summary(read_blobproto(path))}"
    if kind == "blobprotovector":
        blobs = read_blobproto_vector(path)
        lines = [f"{name}: Caffe BlobProtoVector, {len(blobs)} blobs"]
        lines += [f"  blob {i}: {_blob_summary(b)}" for i, b in enumerate(blobs)]
        return "\n".join(lines)
    state, history = read_solverstate(path)
    lines = [
        f"{name}: Caffe solver state (SolverState)",
        f"  iter: {state.iter}",
        f"  current_step: {state.current_step}",
        f"  learned_net: {state.learned_net or '(none)'}",
        f"  history: {len(history)} blobs",
    ]
    lines += [
        f"    {i}: {shape_text(b.shape)} {b.data.dtype.name} ({b.data.size})"
        for i, b in enumerate(history)
    ]
    return "\n".join(lines)
