"""Reading binary Caffe files: .caffemodel, .binaryproto (one blob or a vector) and .solverstate
(writing them: :mod:`caffec.formats.binaryproto_writer`).

Weights are the bulk of these files, so the blob payloads never pass through
protobuf's Python objects (which would turn every float into a Python list
element). Instead this module walks the protobuf wire format itself down to
each BlobProto and turns its packed floats into numpy with one copy; every
other part of a message is spliced back together and handed to protobuf. The
file is memory-mapped, so loading costs about one copy of the weights.

Field numbers follow BVLC Caffe's ``caffe.proto``:

- NetParameter: ``layer`` = 100 (LayerParameter, ``blobs`` = 7), ``layers`` = 2
  (V1LayerParameter, ``blobs`` = 6, nested V0LayerParameter ``layer`` = 1 with
  ``blobs`` = 50).
- BlobProto: ``num``/``channels``/``height``/``width`` = 1-4 (legacy 4-D shape),
  ``data`` = 5, ``diff`` = 6, ``shape`` = 7 (BlobShape, ``dim`` = 1),
  ``double_data`` = 8, ``double_diff`` = 9.
- BlobProtoVector: ``blobs`` = 1. SolverState: ``iter`` = 1, ``learned_net`` = 2,
  ``history`` = 3, ``current_step`` = 4.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.protowire import (
    I32,
    I64,
    LEN,
    VARINT,
    WIRE_NAMES,
    Field,
    Malformed,
    Reader,
    expect,
    int64,
    key,
    varint_bytes,
)

__all__ = [
    "Blob",
    "CaffeModel",
    "file_kinds",
    "read_blobproto",
    "read_blobproto_vector",
    "read_caffemodel",
    "read_solverstate",
]

PathLike = str | os.PathLike[str]
T = TypeVar("T")

# The most bytes one numpy array may span.
_MAX_BYTES = np.iinfo(np.intp).max
# BlobProto element fields: field number -> (little-endian dtype, unpacked wire type).
_ELEMENT_FIELDS = {5: ("<f4", I32), 6: ("<f4", I32), 8: ("<f8", I64), 9: ("<f8", I64)}

# Top-level fields of each file kind with the wire types they may use and their names.
# Sniffing a file's kind and rejecting the wrong kind of file both rest on these.
_TOP_FIELDS: dict[str, dict[int, tuple[str, frozenset[int]]]] = {
    "caffemodel": {
        1: ("name", frozenset({LEN})),
        2: ("layers", frozenset({LEN})),
        3: ("input", frozenset({LEN})),
        4: ("input_dim", frozenset({VARINT, LEN})),
        5: ("force_backward", frozenset({VARINT})),
        6: ("state", frozenset({LEN})),
        7: ("debug_info", frozenset({VARINT})),
        8: ("input_shape", frozenset({LEN})),
        100: ("layer", frozenset({LEN})),
    },
    "binaryproto": {
        1: ("num", frozenset({VARINT})),
        2: ("channels", frozenset({VARINT})),
        3: ("height", frozenset({VARINT})),
        4: ("width", frozenset({VARINT})),
        5: ("data", frozenset({LEN, I32})),
        6: ("diff", frozenset({LEN, I32})),
        7: ("shape", frozenset({LEN})),
        8: ("double_data", frozenset({LEN, I64})),
        9: ("double_diff", frozenset({LEN, I64})),
    },
    "blobprotovector": {1: ("blobs", frozenset({LEN}))},
    "solverstate": {
        1: ("iter", frozenset({VARINT})),
        2: ("learned_net", frozenset({LEN})),
        3: ("history", frozenset({LEN})),
        4: ("current_step", frozenset({VARINT})),
    },
}
_BLOB_FIELD_NAMES = {number: name for number, (name, _) in _TOP_FIELDS["binaryproto"].items()}
_KIND_NAMES = {
    "caffemodel": "a .caffemodel (NetParameter with weights)",
    "binaryproto": "a .binaryproto (a single BlobProto, e.g. a mean file)",
    "blobprotovector": "a BlobProtoVector (a list of blobs)",
    "solverstate": "a .solverstate (SolverState snapshot)",
}
_MESSAGE_NAMES = {
    "caffemodel": "NetParameter",
    "binaryproto": "BlobProto",
    "blobprotovector": "BlobProtoVector",
    "solverstate": "SolverState",
}


@dataclass
class Blob:
    """One parameter blob as stored: its values and where its shape came from."""

    data: np.ndarray  # float32 or float64, shaped
    diff: np.ndarray | None  # same shape and dtype as data, when the file stores it
    legacy_shape: bool  # shape came from num/channels/height/width (always 4-D)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def matches(self, shape: Sequence[int]) -> bool:
        """Whether Caffe would load this blob into a parameter of ``shape``.

        Like Blob::ShapeEquals: a legacy 4-D blob fits any shape of at most four
        axes that equals it once padded with leading 1s (a 1x1x1xN bias fits N).
        """
        shape = tuple(shape)
        if self.legacy_shape:
            return len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == self.shape
        return shape == self.shape


@dataclass
class CaffeModel:
    """A .caffemodel split into the net description and its weights."""

    net: caffe_pb2.NetParameter  # every layer kept, with its ``blobs`` removed
    blobs: list[list[Blob]]  # parallel to net.layer (current) or net.layers (V1/V0)
    format: str  # "current", "V1" or "V0"

    def layer_names(self) -> list[str]:
        """Layer names parallel to :attr:`blobs`, whichever format the net is in."""
        if self.format == "current":
            return [layer.name for layer in self.net.layer]
        return [layer.name or layer.layer.name for layer in self.net.layers]

    def blobs_by_name(self) -> dict[str, list[Blob]]:
        """Blobs keyed by layer name, as Caffe matches trained layers to a net."""
        return dict(zip(self.layer_names(), self.blobs, strict=True))


# --------------------------------------------------------------------------- reading


class _CountMismatch(Exception):
    """A blob whose number of values disagrees with its shape."""


def _check_top_level(r: Reader, kind: str, limit: int | None = None) -> list[Field]:
    """The top-level fields, checked against what ``kind`` allows (wrong kinds fail here)."""
    spec = _TOP_FIELDS[kind]
    names = {number: name for number, (name, _) in spec.items()}
    message = _MESSAGE_NAMES[kind]
    found = []
    for field in r.fields(0, r.size, message, names):
        if field.number in spec and field.wire not in spec[field.number][1]:
            raise Malformed(
                f"not a {message}: {message}.{names[field.number]} at byte {field.start} "
                f"has wire type {field.wire} ({WIRE_NAMES[field.wire]})"
            )
        found.append(field)
        if limit is not None and len(found) >= limit:
            break
    return found


def _decode_shape(r: Reader, start: int, end: int, where: str) -> list[int]:
    """The dims of a BlobShape, packed or not."""
    dims: list[int] = []
    for field in r.fields(start, end, f"the shape of {where}", {1: "dim"}):
        if field.number != 1:
            continue
        if field.wire == VARINT:
            dims.append(int64(r.varint(field.vstart, field.vend, "a dim")[0]))
        elif field.wire == LEN:
            pos = field.vstart
            while pos < field.vend:
                value, pos = r.varint(pos, field.vend, f"a dim of {where}")
                dims.append(int64(value))
        else:
            expect(field, VARINT, f"BlobShape.dim of {where}")
    return dims


def _unpacked_run(r: Reader, pos: int, end: int, tag: int, dtype: str) -> tuple[np.ndarray, int]:
    """Values of consecutive unpacked elements of one field, read as a strided numpy view.

    Unpacked repeated floats are a single-byte tag followed by the value, over
    and over; viewing them as (tag, value) records avoids a Python loop per float.
    """
    record = np.dtype([("tag", "u1"), ("value", dtype)])
    count = (end - pos) // record.itemsize
    records = np.frombuffer(r.buf, dtype=record, count=count, offset=pos)
    others = np.flatnonzero(records["tag"] != tag)
    run = int(others[0]) if len(others) else count
    values = records["value"][:run].astype(dtype[1:])
    del records
    return values, pos + run * record.itemsize


def _assemble(r: Reader, pieces: list[tuple[int, int] | np.ndarray], dtype: str) -> np.ndarray:
    """Join a repeated field's packed chunks (offset, count) and unpacked runs into one array."""
    native = np.dtype(dtype[1:])
    if len(pieces) == 1 and isinstance(pieces[0], tuple):
        offset, count = pieces[0]
        return np.frombuffer(r.buf, dtype=dtype, count=count, offset=offset).astype(native)
    total = sum(p[1] if isinstance(p, tuple) else len(p) for p in pieces)
    out = np.empty(total, dtype=native)
    at = 0
    for piece in pieces:
        if isinstance(piece, tuple):
            offset, count = piece
            out[at : at + count] = np.frombuffer(r.buf, dtype=dtype, count=count, offset=offset)
        else:
            count = len(piece)
            out[at : at + count] = piece
        at += count
    return out


def _decode_blob(r: Reader, start: int, end: int, where: str) -> Blob:
    """Decode the BlobProto in ``buf[start:end]`` the way Caffe's Blob::FromProto reads it."""
    names = _BLOB_FIELD_NAMES
    legacy: dict[int, int] = {}
    dims: list[int] = []
    pieces: dict[int, list[tuple[int, int] | np.ndarray]] = {5: [], 6: [], 8: [], 9: []}
    pos = start
    while pos < end:
        field = r.field_at(pos, end, f"the BlobProto of {where}", names, start == 0)
        pos = field.vend
        label = f"BlobProto.{names.get(field.number)} of {where}"
        if field.number in (1, 2, 3, 4):
            expect(field, VARINT, label)
            legacy[field.number] = int64(r.varint(field.vstart, field.vend, label)[0])
        elif field.number == 7:
            expect(field, LEN, label)
            dims.extend(_decode_shape(r, field.vstart, field.vend, where))
        elif field.number in _ELEMENT_FIELDS:
            dtype, element_wire = _ELEMENT_FIELDS[field.number]
            itemsize = np.dtype(dtype).itemsize
            if field.wire == LEN:
                nbytes = field.vend - field.vstart
                if nbytes % itemsize:
                    raise Malformed(
                        f"corrupt data at byte {field.start}: {label} holds {nbytes} bytes, "
                        f"not a whole number of {itemsize}-byte values"
                    )
                pieces[field.number].append((field.vstart, nbytes // itemsize))
            else:
                expect(field, element_wire, label)
                values, pos = _unpacked_run(r, field.start, end, r.buf[field.start], dtype)
                pieces[field.number].append(values)

    # Caffe: any of num/channels/height/width present means a legacy 4-D shape.
    shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else tuple(dims)
    if any(d < 0 for d in shape):
        raise Malformed(f"{where} has a negative dimension in its shape {shape}")
    # numpy refuses to shape even an empty array wider than memory (8: the widest element)
    if math.prod(d for d in shape if d) * 8 > _MAX_BYTES:
        raise Malformed(f"{where} has the shape {shape_text(shape)}, larger than any array")
    count = math.prod(shape)
    # Caffe prefers double_data when present, else data (even when empty).
    data_field = 8 if pieces[8] else 5
    diff_field = 9 if pieces[9] else 6
    arrays = {}
    for kind, number in (("data", data_field), ("diff", diff_field)):
        if kind == "diff" and not pieces[number]:
            continue
        dtype = _ELEMENT_FIELDS[number][0]
        values = _assemble(r, pieces[number], dtype)
        if len(values) != count:
            raise _CountMismatch(
                f"{where}: its shape {shape_text(shape)} needs {count} values but the file "
                f"holds {len(values)} {np.dtype(dtype).name} {kind} values"
            )
        arrays[kind] = values.reshape(shape)
    return Blob(data=arrays["data"], diff=arrays.get("diff"), legacy_shape=bool(legacy))


def _split_blobs(
    r: Reader, start: int, end: int, message: str, blob_field: int, nested: int | None = None
) -> tuple[bytes, list[tuple[int, int]]]:
    """A layer message's bytes with its blobs field cut out, and where each blob lies.

    ``nested`` names a field holding a V0 layer whose own blobs (field 50) are
    cut out as well, so V0 nets come back with all their weights listed.
    """
    kept = bytearray()
    blobs: list[tuple[int, int]] = []
    names = {blob_field: "blobs", **({nested: "layer"} if nested is not None else {})}
    for field in r.fields(start, end, message, names):
        if field.number == blob_field:
            expect(field, LEN, f"{message}.blobs")
            blobs.append((field.vstart, field.vend))
        elif field.number == nested:
            expect(field, LEN, f"{message}.layer")
            inner, inner_blobs = _split_blobs(
                r, field.vstart, field.vend, "V0LayerParameter", blob_field=50
            )
            kept += key(nested, LEN) + varint_bytes(len(inner)) + inner
            blobs.extend(inner_blobs)
        else:
            kept += r.buf[field.start : field.vend]
    return bytes(kept), blobs


def _undecodable_string(message: Message) -> bytes | None:
    """The first string field of ``message`` that is not UTF-8: protobuf hands those back
    as bytes (and fails on the first copy into another message), proto2 parsing lets them
    through."""
    for field, value in message.ListFields():
        for item in value if field.is_repeated else [value]:
            if field.message_type is not None:
                found = _undecodable_string(item)
                if found is not None:
                    return found
            elif field.type == field.TYPE_STRING and isinstance(item, bytes):
                return item
    return None


def _merge(message: Message, data: bytes, start: int, label: str) -> None:
    """Fill a protobuf message from spliced bytes, reporting decode errors as corrupt."""
    try:
        message.MergeFromString(data)
    except DecodeError as e:
        raise Malformed(f"corrupt data in {label} starting at byte {start}: {e}") from None
    text = _undecodable_string(message)
    if text is not None:
        raise Malformed(
            f"corrupt data in {label} starting at byte {start}: the text {text[:60]!r} is not UTF-8"
        )


def _parse_caffemodel(r: Reader) -> CaffeModel:
    layer_fields: list[Field] = []
    v1_fields: list[Field] = []
    head = bytearray()
    for field in _check_top_level(r, "caffemodel"):
        if field.number == 100:
            layer_fields.append(field)
        elif field.number == 2:
            v1_fields.append(field)
        else:
            head += r.buf[field.start : field.vend]
    if layer_fields and v1_fields:
        raise Malformed(
            "the net has both 'layer' (current) and 'layers' (V1) entries, which Caffe "
            "refuses to load"
        )
    net = caffe_pb2.NetParameter()
    _merge(net, bytes(head), 0, "the net's header fields")

    blobs: list[list[Blob]] = []
    fmt = "current"
    if v1_fields:
        fmt = "V1"
        for i, field in enumerate(v1_fields):
            data, ranges = _split_blobs(r, field.vstart, field.vend, "V1LayerParameter", 6, 1)
            layer = net.layers.add()
            _merge(layer, data, field.start, f"layer #{i}")
            if layer.HasField("layer"):
                fmt = "V0"
            name = layer.name or layer.layer.name
            blobs.append(
                [
                    _decode_blob(r, a, b, f"layer '{name}' blob {j}")
                    for j, (a, b) in enumerate(ranges)
                ]
            )
    for i, field in enumerate(layer_fields):
        data, ranges = _split_blobs(r, field.vstart, field.vend, "LayerParameter", 7)
        layer = net.layer.add()
        _merge(layer, data, field.start, f"layer #{i}")
        blobs.append(
            [
                _decode_blob(r, a, b, f"layer '{layer.name}' blob {j}")
                for j, (a, b) in enumerate(ranges)
            ]
        )
    return CaffeModel(net=net, blobs=blobs, format=fmt)


def _parse_blobproto(r: Reader) -> Blob:
    return _decode_blob(r, 0, r.size, "the blob")


def _parse_blobproto_vector(r: Reader) -> list[Blob]:
    return [
        _decode_blob(r, f.vstart, f.vend, f"blob {i}")
        for i, f in enumerate(_check_top_level(r, "blobprotovector"))
        if f.number == 1
    ]


def _parse_solverstate(r: Reader) -> tuple[caffe_pb2.SolverState, list[Blob]]:
    head = bytearray()
    history = []
    for field in _check_top_level(r, "solverstate"):
        if field.number == 3:
            history.append(
                _decode_blob(r, field.vstart, field.vend, f"history blob {len(history)}")
            )
        else:
            head += r.buf[field.start : field.vend]
    state = caffe_pb2.SolverState()
    _merge(state, bytes(head), 0, "the solver state's fields")
    return state, history


_PROTOTXT_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\s*[:{]")


def _looks_like_text(r: Reader) -> bool:
    """True for a text file (a prototxt given where a binary file belongs).

    Binary Caffe files contain control bytes (small varints, lengths, floats)
    within their first few bytes, so a prefix that is all printable UTF-8 with
    a ``word:`` or ``word {`` in it is text.
    """
    sample = bytes(r.buf[:4096])
    if re.search(rb"[\x00-\x08\x0e-\x1f\x7f]", sample):
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # only a character cut at the sample's end is fine
            return False
    return _PROTOTXT_WORD.search(sample) is not None


def _sniff(r: Reader) -> list[str]:
    """The kinds of Caffe file whose top level this file's top level fits."""
    if _looks_like_text(r):
        return ["text"]
    fits = []
    for kind, spec in _TOP_FIELDS.items():
        try:
            fields = _check_top_level(r, kind, limit=1000)
        except Malformed:
            continue
        numbers = {f.number for f in fields}
        if not numbers <= spec.keys():
            continue
        if kind == "caffemodel" and not numbers & {2, 100}:
            continue
        fits.append(kind)
    return fits


@contextlib.contextmanager
def _open(path: PathLike) -> Iterator[Reader]:
    """Map the file read-only (falling back to reading it), with errors a user can act on."""
    name = os.fspath(path)
    try:
        f = open(name, "rb")
    except FileNotFoundError:
        raise UserError(f"{name}: no such file", hint="check the path") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, not a file", hint="give the file") from None
    except OSError as e:
        raise UserError(
            f"{name}: cannot read: {e.strerror}", hint="check its permissions"
        ) from None
    with f:
        try:
            try:
                buf: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # empty files and pipes cannot be mapped
                buf = f.read()
        except OSError as e:
            raise UserError(f"{name}: cannot read: {e.strerror}") from None
        try:
            if len(buf) == 0:
                raise UserError(
                    f"{name}: the file is empty (0 bytes)",
                    hint="the file was not written completely; write or download it again",
                )
            yield Reader(buf)
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()


def file_kinds(path: PathLike) -> list[str]:
    """The kinds of Caffe file (caffemodel, binaryproto, blobprotovector, solverstate; or
    ["text"] for a prototxt) whose top level the file at ``path`` fits."""
    with _open(path) as r:
        return _sniff(r)


def _read(path: PathLike, kind: str, parse: Callable[[Reader], T]) -> T:
    """Open ``path``, parse it as ``kind``, and turn any wire problem into a UserError."""
    name = os.fspath(path)
    with _open(path) as r:
        if _looks_like_text(r):
            raise UserError(
                f"{name}: this looks like a text prototxt, not {_KIND_NAMES[kind]}",
                hint=f"give the binary {_KIND_NAMES[kind].split()[1]} file",
            )
        try:
            return parse(r)
        except _CountMismatch as e:
            raise UserError(
                f"{name}: {e}",
                hint="the file is damaged or was written by a tool that breaks Caffe's "
                "BlobProto format; export it again",
            ) from None
        except Malformed as e:
            fits = [k for k in _sniff(r) if k != kind]
            if fits and not e.truncated:
                raise UserError(
                    f"{name}: this is not {_KIND_NAMES[kind]}; it looks like "
                    f"{_KIND_NAMES[fits[0]]}",
                    hint=f"give {_KIND_NAMES[kind]} here",
                ) from None
            hint = (
                "the file was cut short (an interrupted download or copy?); get it again"
                if e.truncated
                else f"the file is damaged or is not {_KIND_NAMES[kind]}"
            )
            raise UserError(f"{name}: {e.detail}", hint=hint) from None


def read_caffemodel(path: PathLike) -> CaffeModel:
    """Read a .caffemodel (current, V1 or V0 format) without copying its weights twice."""
    return _read(path, "caffemodel", _parse_caffemodel)


def read_blobproto(path: PathLike) -> Blob:
    """Read a .binaryproto holding one BlobProto (e.g. a mean image)."""
    return _read(path, "binaryproto", _parse_blobproto)


def read_blobproto_vector(path: PathLike) -> list[Blob]:
    """Read a BlobProtoVector file: a list of blobs."""
    return _read(path, "blobprotovector", _parse_blobproto_vector)


def read_solverstate(path: PathLike) -> tuple[caffe_pb2.SolverState, list[Blob]]:
    """Read a .solverstate: its fields (``history`` left empty) and its history blobs."""
    return _read(path, "solverstate", _parse_solverstate)
