"""Cases for Filter (its numbers, other counts of kept items and the rebuilds they need are
checked in tests/runtime/test_filter.py).

A case's net is also run as an artifact alone (the CUDA target's check), which cannot
compile itself again for another count: the selectors here keep every item, with values
of either sign, so that only nonzero counts.
"""

from __future__ import annotations

import numpy as np

from catalog import Case

CASES = [
    Case("Filter", 'layer { name: "x" type: "Filter" bottom: "a" bottom: "s" top: "y" }',
         {"a": (4, 3), "s": (4,)}, feed=lambda rng: {"s": np.array([1.0, -2.0, 0.5, 3.0])},
         no_grad=("s",)),
    Case("Filter", 'layer { name: "x" type: "Filter" bottom: "a" bottom: "b" bottom: "s" '
         'top: "y" top: "z" }', {"a": (3, 2, 2), "b": (3, 5), "s": (3, 1)},
         feed=lambda rng: {"s": np.array([[2.0], [1.0], [-1.0]])}, no_grad=("s",),
         id="two data bottoms"),
]  # fmt: skip
