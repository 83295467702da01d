"""pycaffe's ``set_random_seed``: the seed of the nets and solvers made after the call; and
the data layers' random numbers, keyed by batch so that resuming can jump ahead.

Caffe keeps one random generator per process; caffec seeds each net's own
(its fillers, dropout masks and data layers' random choices) from this value
unless the net is given a seed, or its solver a ``random_seed``.
"""

import zlib

import numpy as np

_seed = {"value": 0}


def set_random_seed(seed: int) -> None:
    """Seed the nets and solvers made from now on."""
    _seed["value"] = int(seed)


def current() -> int:
    """The seed :func:`set_random_seed` set (0 unless called)."""
    return _seed["value"]


class LayerRandom:
    """One data layer's random numbers, from the net's seed and the layer's name (so that
    two data layers differ).

    ``order`` is drawn in sequence (rand_skip, the shuffles of each pass: a resume draws
    them again, which is cheap). Everything drawn per item (crops, flips, sampled windows)
    comes from :meth:`batch`, a generator of batch ``k``'s own, keyed by ``(seed, layer,
    k)``: a resume at batch ``k`` makes it without reading or drawing batches ``0 .. k-1``.
    """

    def __init__(self, seed: int, layer: str) -> None:
        self._entropy = [int(seed) % (1 << 64), zlib.crc32(layer.encode("utf-8"))]
        self.order = np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(0,)))

    def batch(self, index: int) -> np.random.Generator:
        """The generator of batch ``index`` (0 for the first batch a run reads)."""
        return np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(1, index)))
