"""Where each part of a parsed message came from.

Protobuf messages cannot carry source positions, so the text parser records
them beside the message, keyed by the *path* of each field: a tuple of field
names and, for elements of repeated fields, their index, for example
``("layer", 3, "convolution_param", "kernel_size", 0)``. Passes that rewrite a
net (upgrades, phase filtering) move the entries with :meth:`SourceMap.move`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from caffec.errors import Span

Path = tuple[str | int, ...]


class SourceMap:
    """A mapping from field paths to the :class:`Span` where they were written."""

    def __init__(self, spans: dict[Path, Span] | None = None) -> None:
        self._spans: dict[Path, Span] = dict(spans or {})

    def __setitem__(self, path: Path, span: Span) -> None:
        self._spans[path] = span

    def __iter__(self) -> Iterator[Path]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def get(self, path: Path) -> Span | None:
        """The span of ``path``, or of its nearest recorded ancestor."""
        for end in range(len(path), -1, -1):
            span = self._spans.get(path[:end])
            if span is not None:
                return span
        return None

    def move(self, rename: Callable[[Path], Path | None]) -> SourceMap:
        """A new map with every path passed through ``rename`` (None drops it)."""
        moved: dict[Path, Span] = {}
        for path, span in self._spans.items():
            new_path = rename(path)
            if new_path is not None:
                moved[new_path] = span
        return SourceMap(moved)
