"""Cases for pooling's fork and Caffe 1.0 corners (ceil_mode, STOCHASTIC, SPP) and the fork's
resizing layers (Upsample, Interp); tests/runtime/test_layers_vision.py checks their numbers."""

from __future__ import annotations

from catalog import Case, layer


def positive(name: str, shape: tuple[int, ...]):  # noqa: ANN201 - a Feed
    """STOCHASTIC pooling assumes non-negative inputs (as after a ReLU); values away from 0 keep
    finite differences away from the sampling's thresholds."""
    return lambda rng: {name: rng.uniform(0.5, 1.5, shape)}


IMAGE = {"a": (2, 3, 5, 4)}
POSITIVE = positive("a", IMAGE["a"])

CASES = [
    Case("Pooling", layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 "
                          "ceil_mode: false }"), IMAGE, id="ceil_mode false"),
    Case("Pooling", layer("Pooling", "pooling_param { pool: AVE kernel_size: 2 stride: 2 "
                          "round_mode: FLOOR ceil_mode: false }"), IMAGE, id="floor both ways"),
    Case("Pooling", layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 "
                          "stride: 1 }"), IMAGE, feed=POSITIVE, id="stochastic test"),
    Case("Pooling", layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 "
                          "stride: 2 }"), IMAGE, feed=POSITIVE, phase="TRAIN",
         id="stochastic train"),
    Case("SPP", layer("SPP", "spp_param { pyramid_height: 3 }"), {"a": (2, 3, 8, 7)}),
    Case("SPP", layer("SPP", "spp_param { pyramid_height: 2 pool: AVE }"), IMAGE, id="ave"),
    Case("SPP", layer("SPP", "spp_param { pyramid_height: 1 pool: STOCHASTIC }"), IMAGE,
         feed=POSITIVE, phase="TRAIN", id="stochastic one level"),
    Case("SPP", layer("SPP", "spp_param { pyramid_height: 2 pool: STOCHASTIC }"),
         {"a": (2, 3, 4, 4)}, feed=positive("a", (2, 3, 4, 4)), id="stochastic test"),
    Case("SPP", layer("SPP", "spp_param { pyramid_height: 2 pool: STOCHASTIC }"),
         {"a": (2, 3, 4, 4)}, feed=positive("a", (2, 3, 4, 4)), phase="TRAIN",
         id="stochastic train"),
    Case("Upsample", layer("Upsample", "upsample_param { scale: 2 }"), IMAGE),
    Case("Interp", layer("Interp", "interp_param { zoom_factor: 3 }"), IMAGE),
    Case("Interp", layer("Interp", "interp_param { height: 3 width: 6 pad_beg: -1 }"), IMAGE,
         id="size and crop"),
]  # fmt: skip
