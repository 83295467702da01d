"""Writing Caffe's messages as protobuf text (.prototxt), in Caffe's style: what
``caffec upgrade`` prints; :func:`caffec.frontend.textformat.parse_text` reads it back to an
equal message."""

from __future__ import annotations

import math
import re
import struct

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_FD = FieldDescriptor


def is_map(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a protobuf map (written as repeated key/value entries)."""
    return field.message_type is not None and field.message_type.GetOptions().map_entry


_BYTE_ESCAPES = [
    chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03o}" for b in range(256)
]
_BYTE_ESCAPES[ord("\n")] = "\\n"
_BYTE_ESCAPES[ord("\r")] = "\\r"
_BYTE_ESCAPES[ord("\t")] = "\\t"
_BYTE_ESCAPES[ord('"')] = '\\"'
_BYTE_ESCAPES[ord("\\")] = "\\\\"
_NEEDS_ESCAPE = re.compile(r'["\\]|[^\x20-\x7e]')


def format_text(message: Message) -> str:
    """``message`` in Caffe's text style."""
    lines: list[str] = []
    _write_fields(message, "", lines)
    return "".join(lines)


def _write_fields(message: Message, indent: str, lines: list[str]) -> None:
    for field, value in message.ListFields():
        if is_map(field):
            entry_class = message_factory.GetMessageClass(field.message_type)
            for key in sorted(value):
                entry = entry_class(key=key)
                if isinstance(value[key], Message):
                    entry.value.CopyFrom(value[key])
                else:
                    entry.value = value[key]
                _write_field(field, entry, indent, lines)
        elif field.is_repeated:
            for element in value:
                _write_field(field, element, indent, lines)
        else:
            _write_field(field, value, indent, lines)


def _write_field(field: FieldDescriptor, value: object, indent: str, lines: list[str]) -> None:
    if field.cpp_type == _FD.CPPTYPE_MESSAGE:
        lines.append(f"{indent}{field.name} {{\n")
        _write_fields(value, indent + "  ", lines)
        lines.append(f"{indent}}}\n")
    else:
        lines.append(f"{indent}{field.name}: {_format_scalar(field, value)}\n")


def _format_scalar(field: FieldDescriptor, value: object) -> str:
    kind = field.cpp_type
    if kind == _FD.CPPTYPE_STRING:
        if field.type == _FD.TYPE_BYTES:
            return '"' + "".join(_BYTE_ESCAPES[b] for b in value) + '"'
        return '"' + _NEEDS_ESCAPE.sub(_escape_char, value) + '"'
    if kind == _FD.CPPTYPE_BOOL:
        return "true" if value else "false"
    if kind == _FD.CPPTYPE_ENUM:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else str(value)
    if kind == _FD.CPPTYPE_FLOAT:
        return _format_float32(value)
    if kind == _FD.CPPTYPE_DOUBLE:
        return repr(value)
    return str(value)


def _escape_char(match: re.Match[str]) -> str:
    """Printable non-ASCII text stays readable; everything ambiguous becomes an escape."""
    char = match.group()
    code = ord(char)
    if code < 0x80:
        return _BYTE_ESCAPES[code]
    if char.isprintable():
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _to_float32(number: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", number))[0]
    except OverflowError:
        return math.copysign(math.inf, number)


def _format_float32(value: float) -> str:
    """The shortest decimal that reads back to the same float32 (0.1f prints as 0.1)."""
    if not math.isfinite(value):
        return repr(value)
    for digits in range(1, 10):  # nine significant digits always identify a float32
        shortest = float(f"{value:.{digits}g}")
        if _to_float32(shortest) == value:
            break
    text = repr(shortest)  # repr, not %g, so that 100 prints as 100 rather than 1e+02
    return text[:-2] if text.endswith(".0") else text
