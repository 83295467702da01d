"""Binary Caffe files: .caffemodel, .binaryproto (one blob or a vector) and .solverstate.

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
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from caffec.errors import UserError
from caffec.frontend import caffe_pb2

__all__ = [
    "Blob",
    "CaffeModel",
    "describe_file",
    "read_blobproto",
    "read_blobproto_vector",
    "read_caffemodel",
    "read_solverstate",
    "write_blobproto",
    "write_blobproto_vector",
    "write_caffemodel",
    "write_solverstate",
]

PathLike = str | os.PathLike[str]
T = TypeVar("T")

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_NAMES = {
    0: "varint",
    1: "64-bit",
    2: "length-delimited",
    3: "start-group",
    4: "end-group",
    5: "32-bit",
}

# BlobProto element fields: field number -> (little-endian dtype, unpacked wire type).
_ELEMENT_FIELDS = {5: ("<f4", _I32), 6: ("<f4", _I32), 8: ("<f8", _I64), 9: ("<f8", _I64)}

# Top-level fields of each file kind with the wire types they may use and their names.
# Sniffing a file's kind and rejecting the wrong kind of file both rest on these.
_TOP_FIELDS: dict[str, dict[int, tuple[str, frozenset[int]]]] = {
    "caffemodel": {
        1: ("name", frozenset({_LEN})),
        2: ("layers", frozenset({_LEN})),
        3: ("input", frozenset({_LEN})),
        4: ("input_dim", frozenset({_VARINT, _LEN})),
        5: ("force_backward", frozenset({_VARINT})),
        6: ("state", frozenset({_LEN})),
        7: ("debug_info", frozenset({_VARINT})),
        8: ("input_shape", frozenset({_LEN})),
        100: ("layer", frozenset({_LEN})),
    },
    "binaryproto": {
        1: ("num", frozenset({_VARINT})),
        2: ("channels", frozenset({_VARINT})),
        3: ("height", frozenset({_VARINT})),
        4: ("width", frozenset({_VARINT})),
        5: ("data", frozenset({_LEN, _I32})),
        6: ("diff", frozenset({_LEN, _I32})),
        7: ("shape", frozenset({_LEN})),
        8: ("double_data", frozenset({_LEN, _I64})),
        9: ("double_diff", frozenset({_LEN, _I64})),
    },
    "blobprotovector": {1: ("blobs", frozenset({_LEN}))},
    "solverstate": {
        1: ("iter", frozenset({_VARINT})),
        2: ("learned_net", frozenset({_LEN})),
        3: ("history", frozenset({_LEN})),
        4: ("current_step", frozenset({_VARINT})),
    },
}
_BLOB_FIELD_NAMES = {number: name for number, (name, _) in _TOP_FIELDS["binaryproto"].items()}
_KIND_NAMES = {
    "caffemodel": "a .caffemodel (NetParameter with weights)",
    "binaryproto": "a .binaryproto (a single BlobProto, e.g. a mean file)",
    "blobprotovector": "a BlobProtoVector (a list of blobs)",
    "solverstate": "a .solverstate (SolverState snapshot)",
}
_EXTENSION_KINDS = {
    ".caffemodel": "caffemodel",
    ".binaryproto": "binaryproto",
    ".solverstate": "solverstate",
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


class _Malformed(Exception):
    """Bad wire data at a byte offset; turned into a UserError naming the file."""

    def __init__(self, detail: str, *, truncated: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.truncated = truncated


class _CountMismatch(Exception):
    """A blob whose number of values disagrees with its shape."""


class _Field(NamedTuple):
    number: int
    wire: int
    start: int  # first byte of the field's key
    vstart: int  # first byte of its value (for _LEN: of the payload)
    vend: int  # one past its last byte


class _Reader:
    """Walks protobuf wire data in ``buf`` (bytes or mmap) without copying payloads."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)

    def _cut(self, pos: int, end: int, what: str, need: int | None, root: bool) -> _Malformed:
        """Data ran out: in the root message the file is truncated; in a nested message,
        whose length its parent declared, the data is corrupt."""
        have = end - pos
        needs = f"needs {need} bytes but only {have} remain" if need is not None else "is cut off"
        if root:
            return _Malformed(
                f"truncated at byte {pos} of {self.size}: {what} starting there {needs}",
                truncated=True,
            )
        return _Malformed(
            f"corrupt data at byte {pos}: {what} runs past the end of its enclosing "
            f"message at byte {end}"
        )

    def varint(self, pos: int, end: int, what: str, root: bool = False) -> tuple[int, int]:
        """The unsigned varint at ``pos`` and the position after it."""
        buf, start, result, shift = self.buf, pos, 0, 0
        while True:
            if pos >= end:
                raise self._cut(start, end, what, None, root)
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result & 0xFFFFFFFFFFFFFFFF, pos
            shift += 7
            if shift >= 70:
                raise _Malformed(f"corrupt data at byte {start}: bad varint in {what}")

    def field_at(
        self, pos: int, end: int, message: str, names: Mapping[int, str], root: bool
    ) -> _Field:
        """Decode the field whose key starts at ``pos``; ``end`` closes its message, which
        is the file's ``root`` message or one nested in it."""
        key, vstart = self.varint(pos, end, f"a field key in {message}", root)
        number, wire = key >> 3, key & 7
        label = f"{message}.{names[number]}" if number in names else f"field {number} of {message}"
        if number == 0:
            raise _Malformed(f"corrupt data at byte {pos}: field number 0 in {message}")
        if wire == _VARINT:
            _, vend = self.varint(vstart, end, label, root)
            return _Field(number, wire, pos, vstart, vend)
        if wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if vstart + size > end:
                raise self._cut(pos, end, label, vstart + size - pos, root)
            return _Field(number, wire, pos, vstart, vstart + size)
        if wire == _LEN:
            length, vstart = self.varint(vstart, end, f"the length of {label}", root)
            if vstart + length > end:
                raise self._cut(pos, end, label, vstart + length - pos, root)
            return _Field(number, wire, pos, vstart, vstart + length)
        raise _Malformed(
            f"corrupt data at byte {pos}: {label} has wire type {wire} "
            f"({_WIRE_NAMES.get(wire, 'invalid')}), which Caffe files never use"
        )

    def fields(
        self, start: int, end: int, message: str, names: Mapping[int, str] | None = None
    ) -> Iterator[_Field]:
        """Every field of the message occupying ``buf[start:end]``, in file order."""
        pos, root = start, start == 0  # nested messages start after their key
        while pos < end:
            field = self.field_at(pos, end, message, names or {}, root)
            yield field
            pos = field.vend

    def check_top_level(self, kind: str, limit: int | None = None) -> list[_Field]:
        """The top-level fields, checked against what ``kind`` allows (wrong kinds fail here)."""
        spec = _TOP_FIELDS[kind]
        names = {number: name for number, (name, _) in spec.items()}
        message = _MESSAGE_NAMES[kind]
        found = []
        for field in self.fields(0, self.size, message, names):
            if field.number in spec and field.wire not in spec[field.number][1]:
                raise _Malformed(
                    f"not a {message}: {message}.{names[field.number]} at byte {field.start} "
                    f"has wire type {field.wire} ({_WIRE_NAMES[field.wire]})"
                )
            found.append(field)
            if limit is not None and len(found) >= limit:
                break
        return found


def _expect(field: _Field, wire: int, label: str) -> None:
    if field.wire != wire:
        raise _Malformed(
            f"corrupt data at byte {field.start}: {label} has wire type {field.wire} "
            f"({_WIRE_NAMES.get(field.wire, 'invalid')}), expected {wire} ({_WIRE_NAMES[wire]})"
        )


def _int64(value: int) -> int:
    """Reinterpret a decoded 64-bit varint as the signed int64 protobuf stores."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _decode_shape(r: _Reader, start: int, end: int, where: str) -> list[int]:
    """The dims of a BlobShape, packed or not."""
    dims: list[int] = []
    for field in r.fields(start, end, f"the shape of {where}", {1: "dim"}):
        if field.number != 1:
            continue
        if field.wire == _VARINT:
            dims.append(_int64(r.varint(field.vstart, field.vend, "a dim")[0]))
        elif field.wire == _LEN:
            pos = field.vstart
            while pos < field.vend:
                value, pos = r.varint(pos, field.vend, f"a dim of {where}")
                dims.append(_int64(value))
        else:
            _expect(field, _VARINT, f"BlobShape.dim of {where}")
    return dims


def _unpacked_run(r: _Reader, pos: int, end: int, tag: int, dtype: str) -> tuple[np.ndarray, int]:
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


def _assemble(r: _Reader, pieces: list[tuple[int, int] | np.ndarray], dtype: str) -> np.ndarray:
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


def _decode_blob(r: _Reader, start: int, end: int, where: str) -> Blob:
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
            _expect(field, _VARINT, label)
            legacy[field.number] = _int64(r.varint(field.vstart, field.vend, label)[0])
        elif field.number == 7:
            _expect(field, _LEN, label)
            dims.extend(_decode_shape(r, field.vstart, field.vend, where))
        elif field.number in _ELEMENT_FIELDS:
            dtype, element_wire = _ELEMENT_FIELDS[field.number]
            itemsize = np.dtype(dtype).itemsize
            if field.wire == _LEN:
                nbytes = field.vend - field.vstart
                if nbytes % itemsize:
                    raise _Malformed(
                        f"corrupt data at byte {field.start}: {label} holds {nbytes} bytes, "
                        f"not a whole number of {itemsize}-byte values"
                    )
                pieces[field.number].append((field.vstart, nbytes // itemsize))
            else:
                _expect(field, element_wire, label)
                values, pos = _unpacked_run(r, field.start, end, r.buf[field.start], dtype)
                pieces[field.number].append(values)

    # Caffe: any of num/channels/height/width present means a legacy 4-D shape.
    shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else tuple(dims)
    if any(d < 0 for d in shape):
        raise _Malformed(f"{where} has a negative dimension in its shape {shape}")
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
                f"{where}: its shape {_shape_text(shape)} needs {count} values but the file "
                f"holds {len(values)} {np.dtype(dtype).name} {kind} values"
            )
        arrays[kind] = values.reshape(shape)
    return Blob(data=arrays["data"], diff=arrays.get("diff"), legacy_shape=bool(legacy))


def _split_blobs(
    r: _Reader, start: int, end: int, message: str, blob_field: int, nested: int | None = None
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
            _expect(field, _LEN, f"{message}.blobs")
            blobs.append((field.vstart, field.vend))
        elif field.number == nested:
            _expect(field, _LEN, f"{message}.layer")
            inner, inner_blobs = _split_blobs(
                r, field.vstart, field.vend, "V0LayerParameter", blob_field=50
            )
            kept += _key(nested, _LEN) + _varint_bytes(len(inner)) + inner
            blobs.extend(inner_blobs)
        else:
            kept += r.buf[field.start : field.vend]
    return bytes(kept), blobs


def _merge(message: Message, data: bytes, start: int, label: str) -> None:
    """Fill a protobuf message from spliced bytes, reporting decode errors as corrupt."""
    try:
        message.MergeFromString(data)
    except DecodeError as e:
        raise _Malformed(f"corrupt data in {label} starting at byte {start}: {e}") from None


def _parse_caffemodel(r: _Reader) -> CaffeModel:
    layer_fields: list[_Field] = []
    v1_fields: list[_Field] = []
    head = bytearray()
    for field in r.check_top_level("caffemodel"):
        if field.number == 100:
            layer_fields.append(field)
        elif field.number == 2:
            v1_fields.append(field)
        else:
            head += r.buf[field.start : field.vend]
    if layer_fields and v1_fields:
        raise _Malformed(
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


def _parse_blobproto(r: _Reader) -> Blob:
    return _decode_blob(r, 0, r.size, "the blob")


def _parse_blobproto_vector(r: _Reader) -> list[Blob]:
    return [
        _decode_blob(r, f.vstart, f.vend, f"blob {i}")
        for i, f in enumerate(r.check_top_level("blobprotovector"))
        if f.number == 1
    ]


def _parse_solverstate(r: _Reader) -> tuple[caffe_pb2.SolverState, list[Blob]]:
    head = bytearray()
    history = []
    for field in r.check_top_level("solverstate"):
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


def _looks_like_text(r: _Reader) -> bool:
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


def _sniff(r: _Reader) -> list[str]:
    """The kinds of Caffe file whose top level this file's top level fits."""
    if _looks_like_text(r):
        return ["text"]
    fits = []
    for kind, spec in _TOP_FIELDS.items():
        try:
            fields = r.check_top_level(kind, limit=1000)
        except _Malformed:
            continue
        numbers = {f.number for f in fields}
        if not numbers <= spec.keys():
            continue
        if kind == "caffemodel" and not numbers & {2, 100}:
            continue
        fits.append(kind)
    return fits


@contextlib.contextmanager
def _open(path: PathLike) -> Iterator[_Reader]:
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
            yield _Reader(buf)
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()


def _read(path: PathLike, kind: str, parse: Callable[[_Reader], T]) -> T:
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
        except _Malformed as e:
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


# --------------------------------------------------------------------------- writing


def _varint_bytes(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values take ten bytes, as in protobuf
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint_bytes(number << 3 | wire)


class _Chunks(NamedTuple):
    """Pieces of an encoded message, written in order, and their total size."""

    parts: list[bytes | memoryview]
    size: int


def _len_field(number: int, body: _Chunks) -> _Chunks:
    head = _key(number, _LEN) + _varint_bytes(body.size)
    return _Chunks([head, *body.parts], len(head) + body.size)


def _as_array(value: np.ndarray | Blob, where: str) -> np.ndarray:
    array = np.asarray(value.data if isinstance(value, Blob) else value)
    if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):
        raise UserError(
            f"{where} has dtype {array.dtype}; Caffe files store float32 or float64 only",
            hint="convert it with .astype(np.float32) first",
        )
    return array


def _encode_blob(value: np.ndarray | Blob, where: str) -> _Chunks:
    """A BlobProto for ``value``: a BlobShape, then ``data`` (f4) or ``double_data`` (f8).

    The values go out as a view of the array's memory, never as a Python list.
    """
    array = _as_array(value, where)
    dims = b"".join(_varint_bytes(d) for d in array.shape)
    shape = _key(1, _LEN) + _varint_bytes(len(dims)) + dims if dims else b""
    field, dtype = (5, "<f4") if array.dtype.itemsize == 4 else (8, "<f8")
    values = np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8)
    head = (
        _key(7, _LEN)
        + _varint_bytes(len(shape))
        + shape
        + _key(field, _LEN)
        + _varint_bytes(values.nbytes)
    )
    return _Chunks([head, memoryview(values)], len(head) + values.nbytes)


def _atomic_write(path: PathLike, parts: Iterable[bytes | memoryview]) -> None:
    """Write to a temporary file beside ``path`` and rename it over, so readers never
    see a half-written file."""
    name = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(name))
    tmp = os.path.join(directory, f".{os.path.basename(name)}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise UserError(
            f"{name}: cannot write: {e.strerror}",
            hint="check that the folder exists and is writable",
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise UserError(f"{name}: cannot write: {e.strerror}") from None
        raise


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
    layers: list[_Chunks] = []
    for layer, arrays in zip(net.layer, per_layer, strict=True):
        if len(layer.blobs):
            stripped = caffe_pb2.LayerParameter()
            stripped.CopyFrom(layer)
            stripped.ClearField("blobs")
            layer = stripped
        own = layer.SerializeToString()
        encoded = [
            _len_field(7, _encode_blob(a, f"layer '{layer.name}' blob {j}"))
            for j, a in enumerate(arrays)
        ]
        body = _Chunks(
            [own, *(p for c in encoded for p in c.parts)], len(own) + sum(c.size for c in encoded)
        )
        layers.append(_len_field(100, body))
    _atomic_write(path, [head, *(p for c in layers for p in c.parts)])


def write_blobproto(path: PathLike, array: np.ndarray | Blob) -> None:
    """Write one array as a .binaryproto (a BlobProto with an N-D shape)."""
    _atomic_write(path, _encode_blob(array, "the blob").parts)


def write_blobproto_vector(path: PathLike, arrays: Sequence[np.ndarray | Blob]) -> None:
    """Write arrays as a BlobProtoVector."""
    encoded = [_len_field(1, _encode_blob(a, f"blob {i}")) for i, a in enumerate(arrays)]
    _atomic_write(path, [p for c in encoded for p in c.parts])


def write_solverstate(
    path: PathLike,
    iter: int,
    learned_net: str,
    history: Sequence[np.ndarray | Blob],
    current_step: int = 0,
) -> None:
    """Write a .solverstate as Caffe's SGD-family solvers snapshot it."""
    state = caffe_pb2.SolverState(iter=iter, learned_net=learned_net, current_step=current_step)
    encoded = [_len_field(3, _encode_blob(a, f"history blob {i}")) for i, a in enumerate(history)]
    _atomic_write(path, [state.SerializeToString(), *(p for c in encoded for p in c.parts)])


# --------------------------------------------------------------------------- inspect


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _blob_summary(blob: Blob) -> str:
    legacy = " (legacy num/channels/height/width)" if blob.legacy_shape else ""
    text = (
        f"shape {_shape_text(blob.shape)}{legacy}, {blob.data.dtype.name}, {blob.data.size} values"
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
            shape = _shape_text(blob.shape) + (" (legacy)" if blob.legacy_shape else "")
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
    with _open(path) as r:
        fits = _sniff(r)
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
        f"    {i}: {_shape_text(b.shape)} {b.data.dtype.name} ({b.data.size})"
        for i, b in enumerate(history)
    ]
    return "\n".join(lines)
