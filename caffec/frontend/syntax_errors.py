"""Syntax errors in protobuf text, said plainly: what was found, what was expected, where
the unclosed brace was opened, and how a field or a value is written."""

from __future__ import annotations

import re

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedToken

from caffec.errors import Span, UserError

_CLOSERS = {"LBRACE": "RBRACE", "LANGLE": "RANGLE", "LSQB": "RSQB"}
_OPENERS = {"RBRACE": "'{'", "RANGLE": "'<'", "RSQB": "'['"}
_WORDS = {
    "NAME": "a field name",
    "COLON": "':'",
    "LBRACE": "'{'",
    "LANGLE": "'<'",
    "LSQB": "'['",
    "COMMA": "','",
    "RSQB": "']'",
    "RBRACE": "'}'",
    "RANGLE": "'>'",
    "$END": "end of file",
}
_FIELD_HINT = "a field is written 'name: value' or 'name { ... }'"
_VALUE_HINT = (
    "a value is a number, a string in quotes, a name (an enum value, true or false), "
    "a message in { } or a list in [ ]"
)


def syntax_tree(parser: Lark, text: str, filename: str) -> Tree:
    """Parse ``text`` with the grammar, turning lark's exceptions into plain-worded errors."""
    try:
        return parser.parse(text)
    except UnexpectedCharacters as err:
        raise _bad_character(text, err, filename) from None
    except UnexpectedToken as err:
        raise _bad_token(err, filename) from None


def _bad_character(text: str, err: UnexpectedCharacters, filename: str) -> UserError:
    span = Span(filename, err.line, err.column)
    char = err.char
    if char in "\"'":
        return UserError(
            "unterminated string: a string must end on the line where it starts",
            span=span,
            hint=f"close it with {char}; write a line break inside a string as \\n",
        )
    if char.isdigit() or char == ".":
        word = re.match(r"(?:[eE][+-]|[\w.])+", text[err.pos_in_stream :])
        return UserError(
            f"invalid number '{word.group() if word else char}'",
            span=span,
            hint="numbers are written like 42, -7, 0x1F, 017, 0.5, 1e-4 or 1.0f",
        )
    return UserError(f"unexpected character {char!r}", span=span, hint=_FIELD_HINT)


def _bad_token(err: UnexpectedToken, filename: str) -> UserError:
    token = err.token
    stack = err.state.value_stack if err.state is not None else []
    closer, opened = _innermost_open(stack)
    # err.accepts replays the parser on each terminal: unlike err.expected, which LALR's merged
    # states make too wide, it is exactly what could come next here.
    expected = set(err.accepts)
    if "NAME" in expected:
        expected.discard("COMMA")  # a separator between fields is optional: not worth listing
    close_words = f"{_WORDS[closer]} to close {opened}" if closer in expected else ""
    if token.type == "$END":
        # lark places the end token on the last real token; point just after it.
        span = Span(filename, token.end_line or 1, token.end_column or 1)
        found = "end of file"
    else:
        span = Span(filename, token.line, token.column)
        found = describe_token(token)

    if token.type in _OPENERS and closer is None and "INT" not in expected:
        return UserError(
            f"unexpected {found}: there is no open {_OPENERS[token.type]} to close",
            span=span,
            hint="remove it, or look above for a missing opening bracket",
        )
    if token.type == "$END" and close_words:
        return UserError(
            f"unexpected end of file: expected {close_words}",
            span=span,
            hint=f"add {_WORDS[closer]} where it should end",
        )
    hint = _FIELD_HINT
    if {"INT", "STRING"} <= expected:
        words = ["a value"] + ([close_words] if close_words else [])
        hint = _VALUE_HINT
    elif "INT" in expected:
        words = ["a number or inf/nan after '-'"]
        hint = _VALUE_HINT
    else:
        words = [
            close_words if name == closer else _WORDS[name] for name in _WORDS if name in expected
        ]
    after = ""
    if "COLON" in expected and stack and isinstance(stack[-1], Token):
        after = f" after '{stack[-1]}'"
    listed = ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]
    return UserError(f"expected {listed}{after}, found {found}", span=span, hint=hint)


def _innermost_open(stack: list) -> tuple[str | None, str]:
    """The closer the innermost open bracket needs, and words for where it was opened."""
    for index in range(len(stack) - 1, -1, -1):
        item = stack[index]
        if isinstance(item, Token) and item.type in _CLOSERS:
            before = index - 1
            if before >= 0 and isinstance(stack[before], Token) and stack[before].type == "COLON":
                before -= 1
            if before >= 0 and isinstance(stack[before], Token) and stack[before].type == "NAME":
                owner = stack[before]
                return _CLOSERS[item.type], f"'{owner}' opened at {owner.line}:{owner.column}"
            what = "the list" if item.type == "LSQB" else "the message"
            return _CLOSERS[item.type], f"{what} opened at {item.line}:{item.column}"
    return None, ""


def describe_token(token: Token) -> str:
    """A token as an error message names it: 'string "3"', 'number 3.5', '{'."""
    if token.type == "STRING":
        return f"string {shorten(token.value)}"
    if token.type in ("INT", "FLOAT"):
        return f"number {shorten(token.value)}"
    return f"'{token.value}'"


def shorten(text: str) -> str:
    """``text``, cut to 40 characters for a message."""
    return text if len(text) <= 40 else text[:37] + "..."
