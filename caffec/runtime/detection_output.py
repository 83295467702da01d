"""SSD's DetectionOutput at run time: decoding, per-class non-maximum suppression, and the
rows of kept detections, computed on the host between compiled steps.

The compiler (:mod:`caffec.compiler.layers.ssd`) emits one host call to
:class:`DetectionOutput`, which the runtime runs as it runs Python layers; the layer's
settings travel as JSON in ``param_str``. The arithmetic is in the net's dtype; the order
of the rows and of equal scores is the fork's (``bbox_util.cpp``: ``ApplyNMSFast``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from caffec.errors import UserError


def decode(pred: np.ndarray, prior: np.ndarray, variance: np.ndarray, code_type: str,
           encoded: bool) -> np.ndarray:  # fmt: skip
    """Boxes (priors, 4) from predicted offsets against the priors' corners; ``encoded``:
    the variances are already in the offsets."""
    scale = np.ones_like(variance) if encoded else variance
    if code_type == "CORNER":
        return prior + scale * pred
    size = prior[:, 2:] - prior[:, :2]
    if np.any(size <= 0):
        bad = int(np.flatnonzero(np.any(size <= 0, axis=1))[0])
        raise UserError(f"prior {bad} has no width or height, which {code_type} decoding "
                        "divides by", hint="check the PriorBox layers' sizes and clip")  # fmt: skip
    if code_type == "CORNER_SIZE":
        return prior + scale * pred * np.concatenate([size, size], axis=1)
    centre = (prior[:, :2] + prior[:, 2:]) / 2 + scale[:, :2] * pred[:, :2] * size
    half = np.exp(scale[:, 2:] * pred[:, 2:]) * size / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def overlaps(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of ``box`` with each of ``others``; 0 where they do not
    overlap with positive width and height. An inverted box has size 0."""
    width = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    height = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.where((width > 0) & (height > 0), width * height, 0)

    def size(b: np.ndarray) -> np.ndarray:
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        return np.where((w < 0) | (h < 0), 0, w * h)

    union = size(box) + size(others) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def suppress(boxes: np.ndarray, scores: np.ndarray, settings: dict[str, Any]) -> list[int]:
    """The fork's ApplyNMSFast: the scores above the threshold, best first (equal scores by
    index), at most ``top_k`` of them; each kept unless it overlaps a kept box by more than
    the threshold, which shrinks by ``eta`` after each kept box while above 0.5."""
    candidates = np.flatnonzero(scores > settings["confidence_threshold"])
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if settings["top_k"] > -1:
        order = order[: settings["top_k"]]
    limit, eta = settings["nms_threshold"], settings["eta"]
    kept: list[int] = []
    for index in order:
        if kept and np.any(overlaps(boxes[index], boxes[kept]) > limit):
            continue
        kept.append(int(index))
        if eta < 1 and limit > 0.5:
            limit *= eta
    return kept


def detections(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray,
               settings: dict[str, Any]) -> np.ndarray:  # fmt: skip
    """The fork's rows [image, label, score, xmin, ymin, xmax, ymax]: per image, labels in
    increasing order, each label's boxes best first; one row [image, -1, ...] per image when
    nothing is kept."""
    num, classes = loc.shape[0], settings["num_classes"]
    count = priors.shape[2] // 4
    corners, variances = priors[0, 0].reshape(count, 4), priors[0, 1].reshape(count, 4)
    shared = settings["share_location"]
    loc = loc.reshape(num, count, 1 if shared else classes, 4)
    conf = conf.reshape(num, count, classes)
    labels = [c for c in range(classes) if c != settings["background_label_id"]]
    rows = []
    for image in range(num):
        decoded = [decode(loc[image, :, c], corners, variances, settings["code_type"],
                          settings["variance_encoded_in_target"])
                   for c in range(loc.shape[2])]  # fmt: skip
        boxes = {c: decoded[0 if shared else c] for c in labels}
        kept = {c: suppress(boxes[c], conf[image, :, c], settings) for c in labels}
        keep = settings["keep_top_k"]
        if keep > -1 and sum(map(len, kept.values())) > keep:
            ranked = sorted(((c, i) for c in kept for i in kept[c]),
                            key=lambda pick: -conf[image, pick[1], pick[0]])[:keep]  # fmt: skip
            kept = {c: [i for label, i in ranked if label == c] for c in labels}
        for c in labels:
            for i in kept[c]:
                rows.append([image, c, conf[image, i, c], *boxes[c][i]])
    if not rows:
        return np.array([[image] + [-1] * 6 for image in range(num)], dtype=loc.dtype)
    return np.array(rows, dtype=loc.dtype)


class DetectionOutput:
    """The host step, with a Python layer's methods (the runtime calls ``setup`` and
    ``forward``); ``shown_top`` gives the rows of the last forward out of the compiled
    top, which has room for the most the settings allow."""

    type = "DetectionOutput"
    param_str = ""
    kept = 1  # before a forward: the fork's top is (1, 1, 1, 7)

    def setup(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        self.settings = json.loads(self.param_str)

    def reshape(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        """The shapes were checked when the net was compiled."""

    def forward(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        rows = detections(bottom[0].data, bottom[1].data, bottom[2].data, self.settings)
        out = top[0].data
        out[...] = -1
        out[0, 0, : len(rows)] = rows
        self.kept = len(rows)

    def shown_top(self, index: int, array: np.ndarray) -> np.ndarray:
        return array[:, :, : self.kept]
