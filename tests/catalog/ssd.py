"""Cases for the SSD fork's layers: Normalize, Permute, PriorBox, DetectionOutput (their own
tests, tests/runtime/test_layers_ssd.py, cover the fields)."""

from __future__ import annotations

import numpy as np

from catalog import Case, layer

PRIORS = 12
CLASSES = 3


def detection_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Small offsets, softmax scores, and priors with positive sizes (for CENTER_SIZE)."""
    logits = rng.standard_normal((2, PRIORS, CLASSES)) * 3
    scores = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    centre = rng.uniform(0.3, 0.7, (PRIORS, 2))
    half = rng.uniform(0.05, 0.3, (PRIORS, 2))
    corners = np.concatenate([centre - half, centre + half], axis=1).reshape(-1)
    return {"loc": rng.standard_normal((2, PRIORS * 4)) * 0.2,
            "conf": scores.reshape(2, -1),
            "priors": np.stack([corners, np.resize([0.1, 0.1, 0.2, 0.2], 4 * PRIORS)])[None]}  # fmt: skip


IMAGE = {"a": (2, 3, 5, 4)}
DETECTION = {"loc": (2, PRIORS * 4), "conf": (2, PRIORS * CLASSES), "priors": (1, 2, PRIORS * 4)}

CASES = [
    Case("Normalize", layer("Normalize"), IMAGE),
    Case("Normalize", layer("Normalize", "norm_param { across_spatial: false "
                            "channel_shared: false }"), IMAGE, id="per position and channel"),
    Case("Permute", layer("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }"),
         IMAGE),
    Case("PriorBox", layer("PriorBox", "prior_box_param { min_size: 4 max_size: 9 "
                           "aspect_ratio: 2 clip: true variance: 0.1 variance: 0.1 "
                           "variance: 0.2 variance: 0.2 }", bottoms="a d"),
         {"a": (2, 3, 3, 2), "d": (2, 3, 12, 8)}, backward=False, no_grad=("a", "d")),
    Case("DetectionOutput", layer("DetectionOutput", "detection_output_param { num_classes: "
                                  f"{CLASSES} code_type: CENTER_SIZE keep_top_k: 6 "
                                  "confidence_threshold: 0.1 nms_param { nms_threshold: 0.45 "
                                  "top_k: 8 } }", bottoms="loc conf priors"),
         DETECTION, feed=detection_inputs, backward=False, no_grad=("loc", "conf", "priors")),
]  # fmt: skip
