"""Cases for ArgMax, Tile, ShuffleChannel, Axpy, Parameter, Embed, BatchReindex and Im2col
(their numbers are checked in tests/runtime/test_layers_structure.py)."""

from __future__ import annotations

import numpy as np

from catalog import Case, layer


def ties(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Small integers, so that ranks tie."""
    return {"a": rng.integers(-2, 3, (2, 4, 3)).astype(float)}


IMAGE = {"a": (2, 4, 3, 3)}

CASES = [
    Case("ArgMax", layer("ArgMax", "argmax_param { top_k: 2 out_max_val: true }"),
         {"a": (2, 4, 3)}, feed=ties, backward=False),
    Case("ArgMax", layer("ArgMax", "argmax_param { axis: 1 top_k: 3 }"), {"a": (2, 4, 3)},
         feed=ties, backward=False, id="axis"),
    Case("Tile", layer("Tile", "tile_param { tiles: 3 }"), IMAGE),
    Case("Tile", layer("Tile", "tile_param { axis: -1 tiles: 2 }"), IMAGE, id="last axis"),
    Case("ShuffleChannel", layer("ShuffleChannel", "shuffle_channel_param { group: 2 }"), IMAGE),
    Case("Axpy", layer("Axpy", bottoms="s a b"),
         {"s": (2, 4, 1, 1), "a": (2, 4, 3, 3), "b": (2, 4, 3, 3)}),
    Case("Parameter", 'layer { name: "x" type: "Parameter" top: "y" '
         "parameter_param { shape { dim: 2 dim: 3 } } }", {}),
    Case("Embed", layer("Embed", "embed_param { num_output: 3 input_dim: 5 "
                        'weight_filler { type: "gaussian" } }'),
         {"a": (2, 3)}, feed=lambda rng: {"a": rng.integers(0, 5, (2, 3)).astype(float)},
         no_grad=("a",)),
    Case("BatchReindex", layer("BatchReindex", bottoms="a i"), {"a": (3, 2, 2), "i": (5,)},
         feed=lambda rng: {"i": np.array([2.0, 0.0, 2.0, 1.0, 2.0])}, no_grad=("i",)),
    Case("Im2col", layer("Im2col", "convolution_param { kernel_size: 2 stride: 1 pad: 1 }"),
         IMAGE),
]  # fmt: skip
