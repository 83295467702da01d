"""One or more small nets per layer type, for the tests that every layer must pass.

Each module of this package (one per layer family) defines ``CASES``, a list of `Case`;
``tests/test_layer_catalog.py`` runs every case through the corners Caffe allows (a
repeated backward, a backward from each output, partial runs, each ``-O`` level), the
CUDA target (emulated) against the C target, and checks that every registered layer type
has a case. A family's own test module checks its numbers against numpy references.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Feed = Callable[[np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Case:
    """``net`` is the layer text after one Input layer per bottom (the layer under test
    named "x"); ``feed`` gives the bottoms' values (default: standard normal, for bottoms
    it leaves out too). ``backward``: whether the layer has a gradient to its first bottom
    (labels, indices and other integer bottoms are never differentiated). ``no_grad``
    names the bottoms without a gradient and the tops backward ignores (a MAX pooling's
    argmax mask)."""

    type: str
    net: str
    bottoms: dict[str, tuple[int, ...]]
    feed: Feed | None = None
    phase: str = "TEST"
    backward: bool = True
    id: str = ""
    no_grad: tuple[str, ...] = field(default=())

    def inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        given = self.feed(rng) if self.feed else {}
        return {n: given[n] if n in given else rng.standard_normal(s)
                for n, s in self.bottoms.items()}  # fmt: skip


def all_cases() -> list[Case]:
    """Every family module's cases, in module order."""
    cases: list[Case] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        cases += importlib.import_module(f"{__name__}.{info.name}").CASES
    return cases


def layer(type_: str, params: str = "", bottoms: str = "a", tops: str = "y") -> str:
    """The layer under test, "x", of ``type_`` from ``bottoms`` to ``tops`` (names separated
    by spaces) with the parameter text ``params``."""
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    top = " ".join(f'top: "{t}"' for t in tops.split())
    return f'layer {{ name: "x" type: "{type_}" {bottom} {top} {params} }}'
