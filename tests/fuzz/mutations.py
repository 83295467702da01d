"""Hypothesis strategies that damage valid files: bytes flipped, cut, inserted, repeated or
overwritten with long varints, and a prototxt's tokens deleted, duplicated, swapped or
replaced by huge numbers, unicode and deep nesting. Each case starts from a file caffec
accepts, so it gets past the first check and into the code behind it."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from hypothesis import strategies as st

Mutation = Callable[[st.DrawFn, bytes], bytes]

# A prototxt token: a quoted string, a comment, a punctuation mark, or a run of anything else.
_TOKEN = re.compile(
    rb'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}\[\]<>:,;]|[^\s{}\[\]<>:,;"\'#]+'
)
# Numbers at and past the edges of protobuf's integer and float types, and the words for them.
_EDGE_NUMBERS = [
    "2147483647", "2147483648", "-2147483649", "4294967296", "9223372036854775807",
    "-9223372036854775809", "18446744073709551616", "99999999999999999999999999999999",
    "1e39", "-1e39", "1e999", "1e-999", "inf", "-inf", "nan", "-nan", "infinity", "0x",
    "0xffffffffffffffffff", "0777777777777777777777777", "-0", "00", "1e", ".", "-", "+1",
    "1.5f", "0.", ".5", "-.", "1__0",
]  # fmt: skip
_NUMBERS = st.one_of(
    st.sampled_from(_EDGE_NUMBERS),
    st.integers(-(2**80), 2**80).map(str),
    st.floats().map(repr),
).map(str.encode)
# Varints at protobuf's limits: the largest int64, -1, 2**64, eleven bytes, an unfinished one.
_VARINTS = st.sampled_from(
    [b"\xff" * 8 + b"\x7f", b"\xff" * 9 + b"\x01", b"\x80" * 9 + b"\x02", b"\xff" * 11, b"\x80"]
)
_NESTINGS = st.sampled_from(
    [(b"x { ", b"} "), (b"layer { ", b"} "), (b"a: [", b"] "), (b"b < ", b"> "), (b"{", b"")]
)


def _index(draw: st.DrawFn, items: Sequence[object]) -> int:
    return draw(st.integers(0, len(items) - 1))


def _tokens(data: bytes) -> list[tuple[int, int]]:
    """Where each token of a prototxt lies (start, end)."""
    return [m.span() for m in _TOKEN.finditer(data)]


def _values(data: bytes) -> list[tuple[int, int]]:
    """Where each value written after a colon lies."""
    spans = _tokens(data)
    return [b for a, b in zip(spans, spans[1:], strict=False) if data[a[0] : a[1]] == b":"]


def _names(data: bytes) -> list[tuple[int, int]]:
    """Where each field name lies (a word before a colon or a brace)."""
    spans = _tokens(data)
    return [a for a, b in zip(spans, spans[1:], strict=False) if data[b[0] : b[1]] in (b":", b"{")]


# --------------------------------------------------------------------------- bytes


def replace_byte(draw: st.DrawFn, data: bytes) -> bytes:
    if not data:
        return data
    at = _index(draw, data)
    return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]


def cut(draw: st.DrawFn, data: bytes) -> bytes:
    """The file cut short, as an interrupted copy leaves it."""
    return data[: draw(st.integers(0, max(len(data) - 1, 0)))]


def insert_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]


def repeat_range(draw: st.DrawFn, data: bytes) -> bytes:
    """A stretch of the file written twice (or, with a start after the end, dropped)."""
    a, b = sorted(draw(st.integers(0, len(data))) for _ in range(2))
    return data[:b] + data[a:b] + data[b:] if draw(st.booleans()) else data[:a] + data[b:]


def long_varint(draw: st.DrawFn, data: bytes) -> bytes:
    """One byte (a length, a dimension, a count) replaced by a varint at protobuf's limits."""
    if not data:
        return data
    at = _index(draw, data)
    return data[:at] + draw(_VARINTS) + data[at + 1 :]


BYTE_MUTATIONS: list[Mutation] = [replace_byte, cut, insert_bytes, repeat_range, long_varint]

# --------------------------------------------------------------------------- prototxt tokens


def _edit_token(
    draw: st.DrawFn, data: bytes, edit: Callable[[bytes], bytes], spans: list[tuple[int, int]]
) -> bytes:
    if not spans:
        return data
    start, end = spans[_index(draw, spans)]
    return data[:start] + edit(data[start:end]) + data[end:]


def delete_token(draw: st.DrawFn, data: bytes) -> bytes:
    return _edit_token(draw, data, lambda token: b"", _tokens(data))


def duplicate_token(draw: st.DrawFn, data: bytes) -> bytes:
    return _edit_token(draw, data, lambda token: token + b" " + token, _tokens(data))


def swap_tokens(draw: st.DrawFn, data: bytes) -> bytes:
    spans = _tokens(data)
    if len(spans) < 2:
        return data
    (a, b), (c, d) = sorted(spans[_index(draw, spans)] for _ in range(2))
    if b > c:  # the same token twice
        return data
    return data[:a] + data[c:d] + data[b:c] + data[a:b] + data[d:]


def huge_number(draw: st.DrawFn, data: bytes) -> bytes:
    """A number replaced by one past a limit (or a word for one)."""
    number = draw(_NUMBERS)
    numbers = [(a, b) for a, b in _values(data) if data[a : a + 1] in b"-.0123456789"]
    return _edit_token(draw, data, lambda token: number, numbers)


def other_value(draw: st.DrawFn, data: bytes) -> bytes:
    """A value replaced by another of the file's values: a string for a number, an enum
    value of another field, a name the net uses elsewhere."""
    values = _values(data)
    return _edit_token(draw, data, lambda token: data[slice(*draw(st.sampled_from(values)))],
                       values)  # fmt: skip


def other_name(draw: st.DrawFn, data: bytes) -> bytes:
    """A field name replaced by another of the file's: a field moved into another message,
    a message written as a value, a value as a message."""
    names = _names(data)
    return _edit_token(draw, data, lambda token: data[slice(*draw(st.sampled_from(names)))],
                       names)  # fmt: skip


def unicode_text(draw: st.DrawFn, data: bytes) -> bytes:
    """Unicode inserted anywhere: in names, in strings, between fields."""
    at = draw(st.integers(0, len(data)))
    text = draw(st.text(min_size=1, max_size=8)).encode("utf-8")
    return data[:at] + (b'"' + text + b'"' if draw(st.booleans()) else text) + data[at:]


def deep_nesting(draw: st.DrawFn, data: bytes) -> bytes:
    """Messages or lists nested thousands deep before a token, closed or left open."""
    spans = _tokens(data) or [(0, 0)]
    at = spans[_index(draw, spans)][0]
    opening, closing = draw(_NESTINGS)
    depth = draw(st.integers(1, 5000))
    closed = closing * depth if draw(st.booleans()) else b""
    return data[:at] + opening * depth + closed + data[at:]


# The mutations that keep the syntax whole, so that a case gets past the parser.
VALUE_MUTATIONS: list[Mutation] = [huge_number, other_value, other_name]
# All of them, the ones above twice over.
TEXT_MUTATIONS: list[Mutation] = [
    replace_byte, cut, repeat_range, delete_token, duplicate_token, swap_tokens, unicode_text,
    deep_nesting, *VALUE_MUTATIONS * 2,
]  # fmt: skip


@st.composite
def mutated(
    draw: st.DrawFn, seeds: Sequence[bytes], mutations: Sequence[Mutation], most: int = 4
) -> tuple[int, bytes]:
    """One of ``seeds`` (its index) after one to ``most`` of ``mutations``."""
    index = _index(draw, seeds)
    data = seeds[index]
    for _ in range(draw(st.integers(1, most))):
        data = draw(st.sampled_from(mutations))(draw, data)
    return index, data
