"""Writing binary Caffe files: .caffemodel, .binaryproto, BlobProtoVector and .solverstate,
the weights going out as views of the arrays' memory (never as Python lists), each file
written atomically (:mod:`caffec.formats.atomic`). Reading: :mod:`caffec.formats.binaryproto`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.atomic import write_atomically
from caffec.formats.binaryproto import Blob, PathLike
from caffec.formats.protowire import LEN, VARINT, Chunks, key, len_field, varint_bytes


def _as_array(value: np.ndarray | Blob, where: str) -> np.ndarray:
    array = np.asarray(value.data if isinstance(value, Blob) else value)
    if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):
        raise UserError(
            f"{where} has dtype {array.dtype}; Caffe files store float32 or float64 only",
            hint="convert it with .astype(np.float32) first",
        )
    return array


def _shape_fields(value: np.ndarray | Blob, array: np.ndarray, where: str) -> bytes:
    """A BlobShape (field 7), or for a :class:`Blob` read with a legacy shape the four
    num/channels/height/width fields (1-4) it came with, so that a file rewritten keeps the
    shape rule Caffe loads it by (a legacy 1x1x1xN bias fits an N-vector)."""
    if isinstance(value, Blob) and value.legacy_shape:
        if array.ndim != 4:
            raise UserError(f"{where} has a legacy shape but {array.ndim} axes, not 4")
        return b"".join(key(n, VARINT) + varint_bytes(d) for n, d in enumerate(array.shape, 1))
    dims = b"".join(varint_bytes(d) for d in array.shape)
    shape = key(1, LEN) + varint_bytes(len(dims)) + dims if dims else b""
    return key(7, LEN) + varint_bytes(len(shape)) + shape


def _encode_blob(value: np.ndarray | Blob, where: str) -> Chunks:
    """A BlobProto for ``value``: its shape, then ``data`` (f4) or ``double_data`` (f8), and
    a :class:`Blob`'s ``diff`` where it has one.

    The values go out as views of the arrays' memory, never as Python lists.
    """
    array = _as_array(value, where)
    diff = value.diff if isinstance(value, Blob) else None
    (data_field, diff_field), dtype = (
        ((5, 6), "<f4") if array.dtype.itemsize == 4 else ((8, 9), "<f8")
    )
    parts: list[bytes | memoryview] = [_shape_fields(value, array, where)]
    for field, values in ((data_field, array), (diff_field, diff)):
        if values is not None:
            raw = np.ascontiguousarray(values, dtype=dtype).reshape(-1).view(np.uint8)
            parts += [key(field, LEN) + varint_bytes(raw.nbytes), memoryview(raw)]
    return Chunks(parts, sum(len(p) for p in parts))


def _layer_blob_lists(
    net: caffe_pb2.NetParameter,
    blobs: Sequence[Sequence[np.ndarray | Blob]] | Mapping[str, Sequence[np.ndarray | Blob]],
) -> list[Sequence[np.ndarray | Blob]]:
    names = [layer.name for layer in net.layer]
    if isinstance(blobs, Mapping):
        unknown = sorted(set(blobs) - set(names))
        if unknown:
            raise UserError(
                f"weights given for {', '.join(repr(n) for n in unknown)}, which the net "
                f"'{net.name}' has no layer for",
                hint="name the layers as the net does",
            )
        return [blobs.get(n, ()) for n in names]
    if len(blobs) != len(names):
        raise UserError(
            f"{len(blobs)} lists of blobs given for a net of {len(names)} layers",
            hint="give one list per layer (empty for layers without weights) or a mapping by name",
        )
    return list(blobs)


def write_caffemodel(
    path: PathLike,
    net: caffe_pb2.NetParameter,
    blobs: Sequence[Sequence[np.ndarray | Blob]] | Mapping[str, Sequence[np.ndarray | Blob]],
) -> None:
    """Write a current-format .caffemodel: ``net``'s layers carrying ``blobs``.

    ``blobs`` is one list per layer of ``net.layer`` or a mapping from layer name;
    it is the only source of weights (blobs already inside ``net`` are dropped).
    """
    if len(net.layers):
        raise UserError(
            "the net uses the V1 'layers' format; caffec writes current-format caffemodels",
            hint="upgrade the net to 'layer' entries before writing it",
        )
    per_layer = _layer_blob_lists(net, blobs)
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net)
    header.ClearField("layer")
    head = header.SerializeToString()
    layers: list[Chunks] = []
    for layer, arrays in zip(net.layer, per_layer, strict=True):
        if len(layer.blobs):
            stripped = caffe_pb2.LayerParameter()
            stripped.CopyFrom(layer)
            stripped.ClearField("blobs")
            layer = stripped
        own = layer.SerializeToString()
        encoded = [
            len_field(7, _encode_blob(a, f"layer '{layer.name}' blob {j}"))
            for j, a in enumerate(arrays)
        ]
        body = Chunks(
            [own, *(p for c in encoded for p in c.parts)], len(own) + sum(c.size for c in encoded)
        )
        layers.append(len_field(100, body))
    write_atomically(path, [head, *(p for c in layers for p in c.parts)])


def write_blobproto(path: PathLike, array: np.ndarray | Blob) -> None:
    """Write one array as a .binaryproto: a BlobProto with an N-D shape, or with the legacy
    num/channels/height/width of a :class:`Blob` whose ``legacy_shape`` says so."""
    write_atomically(path, _encode_blob(array, "the blob").parts)


def write_blobproto_vector(path: PathLike, arrays: Sequence[np.ndarray | Blob]) -> None:
    """Write arrays as a BlobProtoVector."""
    encoded = [len_field(1, _encode_blob(a, f"blob {i}")) for i, a in enumerate(arrays)]
    write_atomically(path, [p for c in encoded for p in c.parts])


def write_solverstate(
    path: PathLike,
    iter: int,
    learned_net: str,
    history: Sequence[np.ndarray | Blob],
    current_step: int = 0,
) -> None:
    """Write a .solverstate as Caffe's SGD-family solvers snapshot it."""
    state = caffe_pb2.SolverState(iter=iter, learned_net=learned_net, current_step=current_step)
    encoded = [len_field(3, _encode_blob(a, f"history blob {i}")) for i, a in enumerate(history)]
    write_atomically(path, [state.SerializeToString(), *(p for c in encoded for p in c.parts)])
