"""The protobuf wire format, walked by hand: Caffe's weights are read and written as numpy
views of the file's bytes instead of through protobuf's Python objects (which would make a
Python float of every weight). See :mod:`caffec.formats.binaryproto`.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping
from typing import NamedTuple

# Wire types.
VARINT, I64, LEN, I32 = 0, 1, 2, 5
WIRE_NAMES = {
    0: "varint",
    1: "64-bit",
    2: "length-delimited",
    3: "start-group",
    4: "end-group",
    5: "32-bit",
}


class Malformed(Exception):
    """Bad wire data at a byte offset; turned into a UserError naming the file."""

    def __init__(self, detail: str, *, truncated: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.truncated = truncated


class Field(NamedTuple):
    """One field of a message: its number, wire type and where its key and value lie."""

    number: int
    wire: int
    start: int  # first byte of the field's key
    vstart: int  # first byte of its value (for LEN: of the payload)
    vend: int  # one past its last byte


class Reader:
    """Walks protobuf wire data in ``buf`` (bytes or mmap) without copying payloads."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)

    def _cut(self, pos: int, end: int, what: str, need: int | None, root: bool) -> Malformed:
        """Data ran out: in the root message the file is truncated; in a nested message,
        whose length its parent declared, the data is corrupt."""
        have = end - pos
        needs = f"needs {need} bytes but only {have} remain" if need is not None else "is cut off"
        if root:
            return Malformed(
                f"truncated at byte {pos} of {self.size}: {what} starting there {needs}",
                truncated=True,
            )
        return Malformed(
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
                raise Malformed(f"corrupt data at byte {start}: bad varint in {what}")

    def field_at(
        self, pos: int, end: int, message: str, names: Mapping[int, str], root: bool
    ) -> Field:
        """Decode the field whose key starts at ``pos``; ``end`` closes its message, which
        is the file's ``root`` message or one nested in it."""
        key, vstart = self.varint(pos, end, f"a field key in {message}", root)
        number, wire = key >> 3, key & 7
        label = f"{message}.{names[number]}" if number in names else f"field {number} of {message}"
        if number == 0:
            raise Malformed(f"corrupt data at byte {pos}: field number 0 in {message}")
        if wire == VARINT:
            _, vend = self.varint(vstart, end, label, root)
            return Field(number, wire, pos, vstart, vend)
        if wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if vstart + size > end:
                raise self._cut(pos, end, label, vstart + size - pos, root)
            return Field(number, wire, pos, vstart, vstart + size)
        if wire == LEN:
            length, vstart = self.varint(vstart, end, f"the length of {label}", root)
            if vstart + length > end:
                raise self._cut(pos, end, label, vstart + length - pos, root)
            return Field(number, wire, pos, vstart, vstart + length)
        raise Malformed(
            f"corrupt data at byte {pos}: {label} has wire type {wire} "
            f"({WIRE_NAMES.get(wire, 'invalid')}), which Caffe files never use"
        )

    def fields(
        self, start: int, end: int, message: str, names: Mapping[int, str] | None = None
    ) -> Iterator[Field]:
        """Every field of the message occupying ``buf[start:end]``, in file order."""
        pos, root = start, start == 0  # nested messages start after their key
        while pos < end:
            field = self.field_at(pos, end, message, names or {}, root)
            yield field
            pos = field.vend


def expect(field: Field, wire: int, label: str) -> None:
    """Refuse a field of another wire type than ``wire`` (``label`` names it)."""
    if field.wire != wire:
        raise Malformed(
            f"corrupt data at byte {field.start}: {label} has wire type {field.wire} "
            f"({WIRE_NAMES.get(field.wire, 'invalid')}), expected {wire} ({WIRE_NAMES[wire]})"
        )


def int64(value: int) -> int:
    """Reinterpret a decoded 64-bit varint as the signed int64 protobuf stores."""
    return value - (1 << 64) if value >= 1 << 63 else value


def varint_bytes(value: int) -> bytes:
    """``value`` as a varint (an int64 below zero takes ten bytes, as in protobuf)."""
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values take ten bytes, as in protobuf
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire: int) -> bytes:
    """A field's key: its number and wire type, as a varint."""
    return varint_bytes(number << 3 | wire)


class Chunks(NamedTuple):
    """Pieces of an encoded message, written in order, and their total size."""

    parts: list[bytes | memoryview]
    size: int


def len_field(number: int, body: Chunks) -> Chunks:
    """``body`` as the length-delimited field ``number``."""
    head = key(number, LEN) + varint_bytes(body.size)
    return Chunks([head, *body.parts], len(head) + body.size)
