"""Cases for the elementwise layers Exp, Log, BNLL, Clip, Swish, Threshold and ReLU6 (a
fork layer) and for MVN; ``tests/runtime/test_layers_activations.py`` checks their numbers."""

from __future__ import annotations

from catalog import Case, layer

IMAGE = {"a": (2, 3, 4, 5)}

CASES = [
    Case("Exp", layer("Exp"), IMAGE),
    Case("Exp", layer("Exp", "exp_param { base: 2 scale: 0.5 shift: -1 }", tops="a"), IMAGE,
         id="base 2 in place"),
    Case("Log", layer("Log", "log_param { base: 10 scale: 2 shift: 0.5 }"), IMAGE,
         feed=lambda rng: {"a": rng.uniform(0.25, 3.0, IMAGE["a"])}),
    Case("BNLL", layer("BNLL"), IMAGE),
    Case("Clip", layer("Clip", "clip_param { min: -0.5 max: 0.75 }"), IMAGE),
    Case("Swish", layer("Swish", "swish_param { beta: 1.5 }"), IMAGE),
    Case("Threshold", layer("Threshold", "threshold_param { threshold: 0.25 }"), IMAGE,
         backward=False),
    Case("ReLU6", layer("ReLU6", tops="a"), IMAGE,
         feed=lambda rng: {"a": rng.uniform(-3.0, 9.0, IMAGE["a"])}, id="in place"),
    Case("MVN", layer("MVN"), IMAGE),
    Case("MVN", layer("MVN", "mvn_param { across_channels: true }", tops="a"), IMAGE,
         id="across channels in place"),
    Case("MVN", layer("MVN", "mvn_param { normalize_variance: false }"), {"a": (3, 4, 5)},
         id="mean only"),
]  # fmt: skip
