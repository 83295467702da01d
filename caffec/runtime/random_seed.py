"""pycaffe's ``set_random_seed``: the seed of the nets and solvers made after the call.

Caffe keeps one random generator per process; caffec seeds each net's own
(its fillers, dropout masks and data layers' random choices) from this value
unless the net is given a seed, or its solver a ``random_seed``.
"""

_seed = {"value": 0}


def set_random_seed(seed: int) -> None:
    """Seed the nets and solvers made from now on."""
    _seed["value"] = int(seed)


def current() -> int:
    """The seed :func:`set_random_seed` set (0 unless called)."""
    return _seed["value"]
