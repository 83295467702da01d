"""The protobuf text format (.prototxt): reading it into typed messages (writing it back:
:mod:`caffec.formats.text_writer`).

caffec parses the text itself, with the lark grammar in ``prototxt.lark``,
instead of using protobuf's ``text_format``, because every later stage needs
to know where each field was written (a :class:`SourceMap`) and because a
user's mistake must come back as a :class:`UserError` that points at the
exact line and column and says how to fix it. Field names, types and enum
values all come from the message's descriptor, so this module works for any
proto2 (or proto3) message, not only Caffe's.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from lark import Lark, Token, Tree

from caffec.errors import Span, UserError, did_you_mean
from caffec.formats.cycle_collection import cycle_collection_paused
from caffec.formats.source_map import Path as FieldPath
from caffec.formats.source_map import SourceMap
from caffec.formats.text_writer import is_map
from caffec.frontend.syntax_errors import describe_token, shorten, syntax_tree

M = TypeVar("M", bound=Message)

# protobuf's own parsers stop at this depth; it also keeps the recursive
# converter far from Python's recursion limit.
_MAX_DEPTH = 100

_FD = FieldDescriptor


@functools.cache
def _parser() -> Lark:
    """The LALR parser, built once: building it costs far more than a parse."""
    grammar = Path(__file__).with_name("prototxt.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse_text(
    text: str, message_class: type[M], filename: str = "<string>"
) -> tuple[M, SourceMap]:
    """Parse protobuf text into a new ``message_class``, with the span of every field."""
    if text.startswith("\ufeff"):
        text = text[1:]
    with cycle_collection_paused():  # a syntax tree is millions of objects, no cycles
        tree = syntax_tree(_parser(), text, filename)
        message = message_class()
        source_map = SourceMap()
        source_map[()] = Span(filename, 1, 1)
        _Converter(filename, source_map).fill(message, tree.children, (), 0)
    return message, source_map


def read_text_file(path: str | os.PathLike[str], message_class: type[M]) -> tuple[M, SourceMap]:
    """Read and parse a .prototxt file; any failure is a UserError naming the path."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"no such file: '{name}'", hint="check the path and the current directory"
        ) from None
    except IsADirectoryError:
        raise UserError(
            f"'{name}' is a directory, not a text file", hint="name the .prototxt file inside it"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read '{name}': {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        col = len(data[line_start : err.start].decode("utf-8", errors="replace")) + 1
        raise UserError(
            f"'{name}' is not UTF-8 text (byte 0x{data[err.start]:02x})",
            span=Span(name, data.count(b"\n", 0, err.start) + 1, col),
            hint="save it as UTF-8; binary files such as .caffemodel are read by another reader",
        ) from None
    return parse_text(text, message_class, filename=name)


# --- conversion through the descriptor -----------------------------------------------------

_TYPE_WORDS = {
    _FD.TYPE_DOUBLE: "double",
    _FD.TYPE_FLOAT: "float",
    _FD.TYPE_INT64: "int64",
    _FD.TYPE_UINT64: "uint64",
    _FD.TYPE_INT32: "int32",
    _FD.TYPE_FIXED64: "fixed64",
    _FD.TYPE_FIXED32: "fixed32",
    _FD.TYPE_BOOL: "bool",
    _FD.TYPE_STRING: "string",
    _FD.TYPE_BYTES: "bytes",
    _FD.TYPE_UINT32: "uint32",
    _FD.TYPE_SFIXED32: "sfixed32",
    _FD.TYPE_SFIXED64: "sfixed64",
    _FD.TYPE_SINT32: "sint32",
    _FD.TYPE_SINT64: "sint64",
}
_INT_RANGES = {
    _FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.CPPTYPE_UINT32: (0, 2**32 - 1),
    _FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.CPPTYPE_UINT64: (0, 2**64 - 1),
}
# the smallest magnitude each floating type rounds to infinity: a number written that
# large is out of range for the field (inf is written as inf)
_FLOAT_OVERFLOW = {_FD.CPPTYPE_FLOAT: 2.0**128 - 2.0**103, _FD.CPPTYPE_DOUBLE: math.inf}
_FLOAT_MAX = {_FD.CPPTYPE_FLOAT: "3.4028235e+38", _FD.CPPTYPE_DOUBLE: "1.7976931348623157e+308"}
# more significant digits than any number in range of any numeric type (the largest double
# has 309): such a number is not converted (Python refuses decimal text beyond 4300 digits,
# and the time grows with the square of the length)
_MAX_DIGITS = 400
_FLOAT_NAMES = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}
_BOOL_NAMES = {"true": True, "True": True, "t": True, "false": False, "False": False, "f": False}
_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))"
)
_SIMPLE_ESCAPES = {
    "n": 10,
    "t": 9,
    "r": 13,
    "a": 7,
    "b": 8,
    "f": 12,
    "v": 11,
    "\\": 92,
    "'": 39,
    '"': 34,
    "?": 63,
}


def _type_word(field: FieldDescriptor) -> str:
    if field.cpp_type == _FD.CPPTYPE_ENUM:
        return f"enum {field.enum_type.name}"
    if field.cpp_type == _FD.CPPTYPE_MESSAGE:
        return f"message {field.message_type.name}"
    return _TYPE_WORDS[field.type]


def _first_token(node: Tree | Token) -> Token:
    """The token a value starts at: its sign, opening bracket or first string."""
    return node if isinstance(node, Token) else node.children[0]


def _is_message(node: Tree | Token) -> bool:
    return isinstance(node, Tree) and node.data == "message"


def _is_list(node: Tree | Token) -> bool:
    return isinstance(node, Tree) and node.data == "list"


def _written(node: Tree | Token) -> str:
    """A number or name value as the user wrote it, sign included."""
    return node.value if isinstance(node, Token) else "-" + node.children[1].value


def _shown(node: Tree | Token, value: int | None = None) -> str:
    """A number for a message: its value where known and short, else as written (cut short,
    with its length, where it is long)."""
    if value is not None and len(str(value)) <= 40:
        return str(value)
    text = _written(node)
    return text if len(text) <= 40 else f"{shorten(text)} ({len(text)} characters)"


def _describe(node: Tree | Token) -> str:
    """How a value appears in an error message: 'string "3"', 'number 3.5', 'a message'."""
    if isinstance(node, Token):
        return describe_token(node)
    if node.data == "negative":
        number = node.children[1]
        return f"'{_written(node)}'" if number.type == "NAME" else f"number {_written(node)}"
    if node.data == "string":
        return f"string {shorten(' '.join(part.value for part in node.children))}"
    return "a message" if node.data == "message" else "a list"


class _Converter:
    """Fills messages from the syntax tree, recording spans and checking every value."""

    def __init__(self, filename: str, source_map: SourceMap) -> None:
        self.filename = filename
        self.source_map = source_map

    def span(self, node: Tree | Token) -> Span:
        token = _first_token(node)
        return Span(self.filename, token.line, token.column)

    def error(self, message: str, node: Tree | Token, hint: str | None = None) -> UserError:
        return UserError(message, span=self.span(node), hint=hint)

    def fill(self, message: Message, items: list, path: FieldPath, depth: int) -> None:
        """Set the fields written in ``items`` (a message body) on ``message``."""
        descriptor = message.DESCRIPTOR
        seen: dict[str, Span] = {}
        oneofs: dict[str, tuple[str, Span]] = {}
        counts: dict[str, int] = {}  # elements so far of each repeated field
        for item in items:
            if isinstance(item, Token):  # the braces around the body
                continue
            name, value = item.children[0], item.children[-1]
            field = self.lookup(descriptor, name)
            span = self.span(name)
            field_path = (*path, field.name)
            if field.is_repeated:
                if field.name not in counts:
                    counts[field.name] = 0
                    self.source_map[field_path] = span
                elements = value.children[1:-1] if _is_list(value) else [value]
                for element in elements:
                    index = counts[field.name]
                    counts[field.name] = index + 1
                    element_path = (*field_path, index)
                    self.source_map[element_path] = span if element is value else self.span(element)
                    self.add(message, field, element, element_path, depth)
                continue
            if _is_list(value):
                raise self.error(
                    f"field '{field.name}' is not repeated, so it cannot take a list",
                    value,
                    hint=f"write a single value: '{field.name}: value'",
                )
            if field.name in seen:
                first = seen[field.name]
                raise UserError(
                    f"field '{field.name}' is given twice (first at {first.line}:{first.col})",
                    span=span,
                    hint=f"'{field.name}' is not repeated; keep only one of them",
                )
            oneof = field.containing_oneof
            if oneof is not None and oneof.name in oneofs:
                other, first = oneofs[oneof.name]
                raise UserError(
                    f"fields '{other}' (at {first.line}:{first.col}) and '{field.name}' "
                    f"belong to the same oneof '{oneof.name}'; only one may be given",
                    span=span,
                    hint=f"keep either '{other}' or '{field.name}'",
                )
            seen[field.name] = span
            if oneof is not None:
                oneofs[oneof.name] = (field.name, span)
            self.source_map[field_path] = span
            if field.cpp_type == _FD.CPPTYPE_MESSAGE:
                sub = getattr(message, field.name)
                sub.SetInParent()
                self.submessage(sub, field, value, field_path, depth)
            else:
                setattr(message, field.name, self.scalar(field, value))
        missing = [
            f.name for f in descriptor.fields if f.is_required and not message.HasField(f.name)
        ]
        if missing:
            fields = "fields" if len(missing) > 1 else "field"
            listed = "' and '".join(missing)
            raise UserError(
                f"{descriptor.name} is missing required {fields} '{listed}'",
                span=self.source_map.get(path),
                hint="add " + " and ".join(f"'{name}: ...'" for name in missing),
            )

    def lookup(self, descriptor: Descriptor, name: Token) -> FieldDescriptor:
        field = descriptor.fields_by_name.get(name.value)
        if field is not None:
            return field
        names = [f.name for f in descriptor.fields]
        hint = did_you_mean(name.value, names)
        if hint is None:
            listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            hint = f"{descriptor.name} has these fields: {listed}" if names else None
        raise self.error(f"{descriptor.name} has no field named '{name.value}'", name, hint=hint)

    def add(
        self,
        message: Message,
        field: FieldDescriptor,
        node: Tree | Token,
        path: FieldPath,
        depth: int,
    ) -> None:
        """Append one element to a repeated field (or one entry to a map)."""
        container = getattr(message, field.name)
        if is_map(field):
            entry = message_factory.GetMessageClass(field.message_type)()
            self.submessage(entry, field, node, path, depth)
            if field.message_type.fields_by_name["value"].cpp_type == _FD.CPPTYPE_MESSAGE:
                container[entry.key].CopyFrom(entry.value)
            else:
                container[entry.key] = entry.value
        elif field.cpp_type == _FD.CPPTYPE_MESSAGE:
            self.submessage(container.add(), field, node, path, depth)
        else:
            container.append(self.scalar(field, node))

    def submessage(
        self,
        message: Message,
        field: FieldDescriptor,
        node: Tree | Token,
        path: FieldPath,
        depth: int,
    ) -> None:
        if not _is_message(node):
            raise self.error(
                f"field '{field.name}' ({_type_word(field)}) expects a message, "
                f"found {_describe(node)}",
                node,
                hint=f"write '{field.name} {{ ... }}' with the message's fields inside",
            )
        if depth >= _MAX_DEPTH:
            raise self.error(
                f"messages are nested more than {_MAX_DEPTH} deep", node, hint="is a '}' missing?"
            )
        self.fill(message, node.children, path, depth + 1)

    def scalar(self, field: FieldDescriptor, node: Tree | Token) -> object:
        """The Python value of ``node`` for a non-message field, checked against its type."""
        kind = field.cpp_type
        if _is_message(node):
            raise self.error(
                f"field '{field.name}' is a {_type_word(field)}, not a message",
                node,
                hint=f"write '{field.name}: value'",
            )
        if kind == _FD.CPPTYPE_STRING:
            return self.string(field, node)
        negative = isinstance(node, Tree) and node.data == "negative"
        token = node.children[1] if negative else node
        if not isinstance(token, Token):  # a string where a number, bool or enum is expected
            raise self.mismatch(field, node, hint="remove the quotes")
        if kind in _INT_RANGES:
            if token.type != "INT":
                raise self.mismatch(field, node, hint="write a whole number such as 3")
            value = self.integer(token)
            if value is not None and negative:
                value = -value
            low, high = _INT_RANGES[kind]
            if value is None or not low <= value <= high:
                raise self.error(
                    f"{_shown(node, value)} is out of range for field '{field.name}' "
                    f"({_type_word(field)}: {low} to {high})",
                    node,
                    hint=f"use a value from {low} to {high}",
                )
            return value
        if kind in (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE):
            if token.type == "NAME" and token.value.lower() in _FLOAT_NAMES:
                number = _FLOAT_NAMES[token.value.lower()]
            elif token.type == "NAME":
                raise self.mismatch(field, node, hint="write a number such as 0.5, 1e-4 or inf")
            else:
                number = self.real(field, node, token)
            return -number if negative else number
        if kind == _FD.CPPTYPE_BOOL:
            if not negative and token.type == "NAME" and token.value in _BOOL_NAMES:
                return _BOOL_NAMES[token.value]
            if not negative and token.type == "INT" and self.integer(token) in (0, 1):
                return self.integer(token) == 1
            raise self.mismatch(field, node, hint="write true or false (or 1 or 0)")
        return self.enum(field, node, token, negative)

    def enum(self, field: FieldDescriptor, node: Tree | Token, token: Token, negative: bool) -> int:
        enum_type = field.enum_type
        names = [value.name for value in enum_type.values]
        listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        if token.type == "NAME" and not negative:
            value = enum_type.values_by_name.get(token.value)
            if value is not None:
                return value.number
            raise self.error(
                f"'{token.value}' is not a value of enum {enum_type.name} (field '{field.name}')",
                node,
                hint=did_you_mean(token.value, names) or f"valid values: {listed}",
            )
        if token.type != "INT":
            raise self.mismatch(field, node, hint=f"valid values: {listed}")
        number = self.integer(token)
        if number is not None:
            number = -number if negative else number
            in_range = -(2**31) <= number < 2**31  # protobuf wraps larger numbers round
            if in_range and (number in enum_type.values_by_number
                             or not getattr(enum_type, "is_closed", True)):  # fmt: skip
                return number
        raise self.error(
            f"{_shown(node, number)} is not a value of enum {enum_type.name} "
            f"(field '{field.name}')",
            node,
            hint=f"valid values: {listed}",
        )

    def real(self, field: FieldDescriptor, node: Tree | Token, token: Token) -> float:
        """The magnitude of a number token for a float or double field; one the type cannot
        hold (it would round to infinity) is out of range."""
        value = self.integer(token) if token.type == "INT" else None
        try:
            if token.type != "INT":
                number = float(token.value.rstrip("fF"))  # 1e400 is inf
            else:
                number = math.inf if value is None else float(value)
        except OverflowError:  # an integer beyond the largest double
            number = math.inf
        if number >= _FLOAT_OVERFLOW[field.cpp_type]:
            raise self.error(
                f"{_shown(node, value)} is out of range for field '{field.name}' "
                f"({_type_word(field)}: at most {_FLOAT_MAX[field.cpp_type]} in magnitude)",
                node,
                hint="write a smaller number, or inf for an infinite one",
            )
        return number

    def mismatch(
        self, field: FieldDescriptor, node: Tree | Token, hint: str | None = None
    ) -> UserError:
        """A value of the wrong kind for the field: say what was expected and what was found."""
        kind = field.cpp_type
        if kind in _INT_RANGES:
            wanted = "an integer"
        elif kind in (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE):
            wanted = "a number"
        elif kind == _FD.CPPTYPE_BOOL:
            wanted = "true or false"
        elif kind == _FD.CPPTYPE_ENUM:
            wanted = "one of its value names"
        else:
            wanted = "a string in quotes"
        return self.error(
            f"field '{field.name}' ({_type_word(field)}) expects {wanted}, found {_describe(node)}",
            node,
            hint=hint,
        )

    def integer(self, token: Token) -> int | None:
        """An INT token's value; None where it has more digits than any numeric type holds
        (see ``_MAX_DIGITS``): out of range for every field."""
        text = token.value
        if len(text.lstrip("0xX")) > _MAX_DIGITS:
            return None
        if text[:2] in ("0x", "0X"):
            return int(text, 16)
        if len(text) > 1 and text[0] == "0":
            if "8" in text or "9" in text:
                raise self.error(
                    f"invalid octal number '{text}'",
                    token,
                    hint="a number with a leading 0 is octal; remove the 0 to write it in decimal",
                )
            return int(text, 8)
        return int(text)

    def string(self, field: FieldDescriptor, node: Tree | Token) -> str | bytes:
        if not (isinstance(node, Tree) and node.data == "string"):
            raise self.mismatch(
                field, node, hint=f'put it in quotes: {field.name}: "{_written(node)}"'
            )
        data = b"".join(self.unescape(part) for part in node.children)
        if field.type == _FD.TYPE_BYTES:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(
                f"the string for field '{field.name}' is not valid UTF-8",
                node,
                hint="string fields hold UTF-8 text; escapes such as \\xff make raw bytes, "
                "which only bytes fields accept",
            ) from None

    def unescape(self, token: Token) -> bytes:
        """The bytes a quoted string stands for, with its C escapes decoded."""
        body = token.value[1:-1]
        out = bytearray()
        done = 0
        high_surrogate = None  # a \uD800-\uDBFF waiting for its low half
        for match in _ESCAPE.finditer(body):
            literal = body[done : match.start()]
            done = match.end()
            column = token.column + 1 + match.start()
            octal, hex2, hex4, hex8, other = match.groups()
            code = None
            if high_surrogate is not None and (literal or hex4 is None):
                raise self.bad_unicode(token, high_surrogate[1], high_surrogate[0])
            out += literal.encode("utf-8", errors="surrogatepass")
            if octal is not None:
                if int(octal, 8) > 0xFF:
                    raise UserError(
                        f"octal escape '\\{octal}' is above \\377",
                        span=Span(self.filename, token.line, column),
                        hint="an octal escape is one byte, \\0 to \\377",
                    )
                out.append(int(octal, 8))
            elif hex2 is not None:
                out.append(int(hex2, 16))
            elif other is not None:
                if other not in _SIMPLE_ESCAPES:
                    raise UserError(
                        f"invalid escape '\\{other}' in a string",
                        span=Span(self.filename, token.line, column),
                        hint="write a backslash as \\\\; escapes are \\n \\t \\r \\\" \\' "
                        "\\\\ \\ooo \\xHH \\uXXXX \\UXXXXXXXX",
                    )
                out.append(_SIMPLE_ESCAPES[other])
            else:
                code = int(hex4 or hex8, 16)
            if code is None:
                continue
            if high_surrogate is not None:
                if not 0xDC00 <= code <= 0xDFFF:
                    raise self.bad_unicode(token, high_surrogate[1], high_surrogate[0])
                code = 0x10000 + ((high_surrogate[0] - 0xD800) << 10) + (code - 0xDC00)
                high_surrogate = None
            elif 0xD800 <= code <= 0xDBFF:
                high_surrogate = (code, column)
                continue
            if 0xDC00 <= code <= 0xDFFF or code > 0x10FFFF:
                raise self.bad_unicode(token, column, code)
            out += chr(code).encode("utf-8")
        if high_surrogate is not None:
            raise self.bad_unicode(token, high_surrogate[1], high_surrogate[0])
        out += body[done:].encode("utf-8", errors="surrogatepass")
        return bytes(out)

    def bad_unicode(self, token: Token, column: int, code: int) -> UserError:
        return UserError(
            f"invalid Unicode escape for code point U+{code:04X}",
            span=Span(self.filename, token.line, column),
            hint="a surrogate \\uD800-\\uDBFF must be followed by \\uDC00-\\uDFFF; "
            "code points end at \\U0010FFFF",
        )
