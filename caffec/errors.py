"""Errors that caffec shows to people.

Two kinds: :class:`UserError` is something wrong in the user's input (a
prototxt, a caffemodel, a flag) and ends the CLI with status 2;
:class:`InternalError` is a caffec bug and ends it with status 1. Both carry
where the problem is (a :class:`Span`), the layer it concerns, and a hint
that says what would fix it, so the message is useful without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Span:
    """A position in a source file: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str | None:
        """The text of the line this span points into, if the file is readable."""
        try:
            lines = Path(self.file).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return None
        if 1 <= self.line <= len(lines):
            return lines[self.line - 1]
        return None


class CaffecError(Exception):
    """Base of every error caffec raises on purpose."""

    exit_status = 1

    def __init__(
        self,
        message: str,
        *,
        span: Span | None = None,
        layer: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.layer = layer
        self.hint = hint

    def __str__(self) -> str:
        where = f"{self.span}: " if self.span else ""
        layer = f"layer '{self.layer}': " if self.layer else ""
        text = f"{where}error: {layer}{self.message}"
        if self.span is not None:
            line = self.span.source_line()
            if line is not None:
                line, col = _around(line, self.span.col)
                text += f"\n    {line}\n    {' ' * (col - 1)}^"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def _around(line: str, col: int, width: int = 160) -> tuple[str, int]:
    """At most ``width`` characters of ``line`` around column ``col`` (a line of a million
    digits is shown in part), and where ``col`` is in them."""
    if len(line) <= width:
        return line, col
    start = max(0, min(col - 1 - width // 2, len(line) - width))
    head = "..." if start else ""
    tail = "..." if start + width < len(line) else ""
    return head + line[start : start + width] + tail, col - start + len(head)


class UserError(CaffecError):
    """Bad input: a file, a flag or a net that caffec cannot accept (exit 2)."""

    exit_status = 2


class InternalError(CaffecError):
    """A caffec bug: the message says so and asks for a report (exit 1)."""

    exit_status = 1


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it interrupted and what it left behind, for the CLI to print
    (exit 130); still a KeyboardInterrupt to everyone else."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean 'x'?" hint when one candidate is close to ``word``."""
    candidates = list(candidates)
    by_case = [c for c in candidates if c.lower() == word.lower()]
    close = by_case or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def shape_text(shape: Sequence[int]) -> str:
    """A shape as messages write it: ``64x1x28x28``, or ``scalar``."""
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"
