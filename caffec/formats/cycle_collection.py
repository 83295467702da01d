"""Python's cycle collector paused while a large structure without cycles is built.

A full collection walks every live object, and Python runs one each time the heap has
grown by a quarter; building the syntax tree and the graphs of a 20,000-layer net (millions
of objects, none in a cycle) then took more than linear time in collections alone. The
few cycles made meanwhile (networkx views) are collected once it resumes.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """No cycle collection inside the block (where it was on, it is on again after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
