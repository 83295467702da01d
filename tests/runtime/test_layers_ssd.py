"""The SSD fork's layers (Normalize, Permute, PriorBox, DetectionOutput): forward against
numpy transcriptions of the fork (weiliu89/caffe, branch ssd), backward by finite
differences, the errors for bad settings, and a MobileNet-SSD-shaped net end to end.

The references here are written from the fork's C++ loop by loop (per box, per class), not
from caffec's code: the detection head's reference works on single boxes in Python floats.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gradcheck import check_gradients, one_layer_net, run_case

import caffec
from caffec.errors import UserError

F32 = np.float32

# ----------------------------------------------------------------------------- Normalize


def normalize_ref(x: np.ndarray, scale: np.ndarray, across: bool, shared: bool,
                  eps: float) -> np.ndarray:  # fmt: skip
    """Per image: divide by sqrt(sum of squares + eps) (over everything, or over channels
    at each position), then multiply by the scale (one value, or per channel)."""
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        item = x[n].reshape(x.shape[1], -1)
        if across:
            norm = math.sqrt(float(np.sum(item * item)) + eps)
        else:
            norm = np.sqrt(np.sum(item * item, axis=0, keepdims=True) + eps)
        factor = scale.reshape(()) if shared else scale.reshape(-1, 1)
        y[n] = (item / norm * factor).reshape(x.shape[1:])
    return y


NORMALIZE_CASES = [
    ("", (2, 3, 4, 5), True, True),
    ("across_spatial: false", (2, 4, 3, 3), False, True),
    ("channel_shared: false", (3, 3, 2, 4), True, False),
    ("across_spatial: false channel_shared: false eps: 0.25", (2, 5, 3, 2), False, False),
    ("across_spatial: false channel_shared: false", (4, 6), False, False),
    ("across_spatial: false", (2, 3, 5), False, True),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "across", "shared"), NORMALIZE_CASES)
def test_normalize(tmp_path: Path, param: str, shape: tuple, across: bool, shared: bool) -> None:
    layer = f'layer {{ name: "x" type: "Normalize" bottom: "a" top: "y" norm_param {{ {param} }} }}'
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    scale = np.array(net.params["x"][0].data)
    assert scale.shape == (() if shared else (shape[1],))
    eps = float(F32(0.25 if "eps" in param else 1e-10))
    expected = normalize_ref(feed["a"], scale, across, shared, eps)
    np.testing.assert_allclose(out["y"], expected, rtol=1e-12, atol=1e-14)
    check_gradients(net, feed, ["y"], rng)


def test_normalize_fills_its_scale(tmp_path: Path) -> None:
    """One learned scale by default, filled with 1 unless scale_filler says otherwise."""
    plain = one_layer_net(tmp_path, 'layer { name: "x" type: "Normalize" bottom: "a" top: "y" }',
                          {"a": (1, 3, 2, 2)})  # fmt: skip
    assert float(plain.params["x"][0].data) == 1.0
    filled = one_layer_net(
        tmp_path,
        'layer { name: "x" type: "Normalize" bottom: "a" top: "y" norm_param { '
        'channel_shared: false scale_filler { type: "constant" value: 20 } } }',
        {"a": (1, 3, 2, 2)},
        name="filled",
    )
    np.testing.assert_array_equal(filled.params["x"][0].data, [20, 20, 20])


def test_normalize_needs_channels(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least 2 axes") as info:
        one_layer_net(tmp_path, 'layer { name: "x" type: "Normalize" bottom: "a" top: "y" }',
                      {"a": (6,)})  # fmt: skip
    assert info.value.layer == "x"


# ----------------------------------------------------------------------------- Permute

PERMUTE_CASES = [
    ("order: 0 order: 2 order: 3 order: 1", (2, 3, 4, 5), (0, 2, 3, 1)),
    ("order: 3 order: 1", (2, 3, 4, 5), (3, 1, 0, 2)),  # the missing axes follow in order
    ("", (2, 3, 4), (0, 1, 2)),
    ("order: 1 order: 0", (3, 5), (1, 0)),
    ("order: 2 order: 0 order: 1", (2, 3, 4), (2, 0, 1)),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "axes"), PERMUTE_CASES)
def test_permute(tmp_path: Path, param: str, shape: tuple, axes: tuple) -> None:
    layer = (
        f'layer {{ name: "x" type: "Permute" bottom: "a" top: "y" permute_param {{ {param} }} }}'
    )
    net, feed, out, rng = run_case(tmp_path, layer, {"a": shape}, ["y"])
    np.testing.assert_array_equal(out["y"], np.transpose(feed["a"], axes))
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(("param", "message"), [
    ("order: 0 order: 4", "order 4 is out of range for a 4-D bottom"),
    ("order: 0 order: 2 order: 2", "names axis 2 more than once"),
])  # fmt: skip
def test_permute_refuses_bad_orders(tmp_path: Path, param: str, message: str) -> None:
    layer = (
        f'layer {{ name: "x" type: "Permute" bottom: "a" top: "y" permute_param {{ {param} }} }}'
    )
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, layer, {"a": (2, 3, 4, 5)})
    assert info.value.layer == "x" and info.value.span is not None


# ----------------------------------------------------------------------------- PriorBox


def prior_box_ref(feature: tuple[int, int], image: tuple[int, int], min_sizes: list[float],
                  max_sizes: list[float] = (), ratios: list[float] = (), flip: bool = True,
                  clip: bool = False, variance: list[float] = (), img: tuple = (0, 0),
                  step: tuple = (0, 0), offset: float = 0.5) -> np.ndarray:  # fmt: skip
    """The fork's Forward_cpu, loop for loop: the sizes read as ints, the flipped ratios, the
    steps and the boxes' sides kept as floats (as the fork keeps them), the rest in double."""
    height, width = feature
    img_h, img_w = img if img[0] and img[1] else image
    step_h, step_w = step if step[0] and step[1] else (float(F32(img_h) / F32(height)),
                                                       float(F32(img_w) / F32(width)))  # fmt: skip
    all_ratios = [1.0]
    for r in ratios:
        if not any(abs(r - known) < 1e-6 for known in all_ratios):
            all_ratios += [r, float(F32(1 / r))] if flip else [r]
    boxes = []
    for h in range(height):
        for w in range(width):
            cx, cy = (w + offset) * step_w, (h + offset) * step_h
            for s, size in enumerate(min_sizes):
                sides = [(int(size), int(size))]
                if max_sizes:
                    side = math.sqrt(int(size) * int(max_sizes[s]))
                    sides.append((side, side))
                sides += [(int(size) * math.sqrt(r), int(size) / math.sqrt(r))
                          for r in all_ratios if abs(r - 1) >= 1e-6]  # fmt: skip
                for bw, bh in (map(float, F32(side)) for side in sides):
                    boxes += [(cx - bw / 2) / img_w, (cy - bh / 2) / img_h,
                              (cx + bw / 2) / img_w, (cy + bh / 2) / img_h]  # fmt: skip
    boxes = np.array(boxes)
    if clip:
        boxes = np.clip(boxes, 0, 1)
    variances = np.resize(np.array(list(variance) or [0.1], dtype=F32).astype(float), boxes.size)
    return np.stack([boxes, variances])[None]


PRIOR_BOX_CASES = [
    ("min_size: 10", (3, 4), (30, 40), {"min_sizes": [10]}),
    ("min_size: 10.5 max_size: 21 aspect_ratio: 2 aspect_ratio: 3 clip: true "
     "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2", (2, 3), (17, 25),
     {"min_sizes": [10.5], "max_sizes": [21], "ratios": [2, 3], "clip": True,
      "variance": [0.1, 0.1, 0.2, 0.2]}),
    ("min_size: 8 min_size: 16 max_size: 12 max_size: 30 aspect_ratio: 2 aspect_ratio: 0.5 "
     "aspect_ratio: 2 flip: false step: 7.5 offset: 0.25 variance: 0.3", (3, 2), (20, 20),
     {"min_sizes": [8, 16], "max_sizes": [12, 30], "ratios": [2, 0.5, 2], "flip": False,
      "step": (7.5, 7.5), "offset": 0.25, "variance": [0.3]}),
    ("min_size: 60 aspect_ratio: 2 aspect_ratio: 0.5 img_h: 300 img_w: 200 step_h: 30 "
     "step_w: 20", (4, 5), (7, 9),
     {"min_sizes": [60], "ratios": [2, 0.5], "img": (300, 200), "step": (30, 20)}),
    ("min_size: 30 max_size: 60 aspect_ratio: 3 img_size: 100 clip: true", (2, 2), (9, 9),
     {"min_sizes": [30], "max_sizes": [60], "ratios": [3], "img": (100, 100), "clip": True}),
]  # fmt: skip


@pytest.mark.parametrize(("param", "feature", "image", "kw"), PRIOR_BOX_CASES)
def test_prior_box(tmp_path: Path, param: str, feature: tuple, image: tuple, kw: dict) -> None:
    layer = ('layer { name: "x" type: "PriorBox" bottom: "f" bottom: "d" top: "y" '
             f"prior_box_param {{ {param} }} }}")  # fmt: skip
    bottoms = {"f": (2, 3, *feature), "d": (2, 3, *image)}
    for dtype, rtol in (("float64", 1e-12), ("float32", 2e-6)):
        net = one_layer_net(tmp_path, layer, bottoms, dtype=dtype, name=dtype)
        got = net.forward()["y"]
        expected = prior_box_ref(feature, image, **kw)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize(("param", "message"), [
    ("", "needs a min_size"),
    ("min_size: -2", "min_size must be positive"),
    ("min_size: 10 max_size: 5", "max_size must be greater than min_size"),
    ("min_size: 10 min_size: 20 max_size: 30", "1 max_size values for 2 min_size values"),
    ("min_size: 10 variance: 0.1 variance: 0.2", "2 variance values"),
    ("min_size: 10 variance: 0", "variance values must be positive"),
    ("min_size: 10 img_size: 30 img_h: 30", "either img_size or img_h/img_w"),
    ("min_size: 10 img_h: 30", "img_h and img_w must both be positive"),
    ("min_size: 10 step: 0", "step must be positive"),
    ("min_size: 10 step: 8 step_w: 8 step_h: 8", "either step or step_h/step_w"),
])  # fmt: skip
def test_prior_box_refuses_bad_settings(tmp_path: Path, param: str, message: str) -> None:
    layer = ('layer { name: "x" type: "PriorBox" bottom: "f" bottom: "d" top: "y" '
             f"prior_box_param {{ {param} }} }}")  # fmt: skip
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, layer, {"f": (1, 3, 2, 2), "d": (1, 3, 8, 8)})
    assert info.value.layer == "x"


# ----------------------------------------------------------------------------- DetectionOutput


def decode_one(prior: list[float], var: list[float], pred: list[float], code: str,
               encoded: bool) -> list[float]:  # fmt: skip
    """The fork's DecodeBBox for one box."""
    if encoded:
        var = [1.0] * 4
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    if code == "CORNER":
        return [prior[k] + var[k] * pred[k] for k in range(4)]
    if code == "CORNER_SIZE":
        return [prior[k] + var[k] * pred[k] * (pw if k % 2 == 0 else ph) for k in range(4)]
    cx = var[0] * pred[0] * pw + (prior[0] + prior[2]) / 2
    cy = var[1] * pred[1] * ph + (prior[1] + prior[3]) / 2
    w, h = math.exp(var[2] * pred[2]) * pw, math.exp(var[3] * pred[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def jaccard(a: list[float], b: list[float]) -> float:
    """The fork's JaccardOverlap (normalized boxes)."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0

    def size(box: list[float]) -> float:
        if box[2] < box[0] or box[3] < box[1]:
            return 0.0
        return (box[2] - box[0]) * (box[3] - box[1])

    return iw * ih / (size(a) + size(b) - iw * ih)


def nms_fast(boxes: list, scores: list, threshold: float, nms: float, eta: float,
             top_k: int) -> list[int]:  # fmt: skip
    """The fork's ApplyNMSFast."""
    ranked = sorted([(s, i) for i, s in enumerate(scores) if s > threshold],
                    key=lambda pair: -pair[0])  # fmt: skip
    if top_k > -1:
        ranked = ranked[:top_k]
    kept: list[int] = []
    adaptive = nms
    for _, i in ranked:
        keep = all(jaccard(boxes[i], boxes[k]) <= adaptive for k in kept)
        if keep:
            kept.append(i)
            if eta < 1 and adaptive > 0.5:
                adaptive *= eta
    return kept


def detection_ref(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, classes: int,
                  share: bool = True, background: int = 0, code: str = "CORNER",
                  encoded: bool = False, keep_top_k: int = -1, threshold: float = -3.4e38,
                  nms: float = 0.3, top_k: int = -1, eta: float = 1.0) -> np.ndarray:  # fmt: skip
    """The fork's Forward_cpu: decode, NMS per class, keep_top_k per image, the rows."""
    num, count = loc.shape[0], priors.shape[2] // 4
    prior = priors[0, 0].reshape(count, 4).tolist()
    var = priors[0, 1].reshape(count, 4).tolist()
    loc_classes = 1 if share else classes
    rows = []
    for n in range(num):
        preds = loc[n].reshape(count, loc_classes, 4)
        scores = conf[n].reshape(count, classes)
        decoded = {}
        for c in range(loc_classes):
            label = -1 if share else c
            decoded[label] = [decode_one(prior[p], var[p], preds[p, c].tolist(), code, encoded)
                              for p in range(count)]  # fmt: skip
        indices = {}
        for c in range(classes):
            if c != background:
                boxes = decoded[-1 if share else c]
                indices[c] = nms_fast(boxes, scores[:, c].tolist(), threshold, nms, eta, top_k)
        total = sum(len(v) for v in indices.values())
        if keep_top_k > -1 and total > keep_top_k:
            pairs = sorted(((scores[i, c], c, i) for c in sorted(indices) for i in indices[c]),
                           key=lambda t: -t[0])[:keep_top_k]  # fmt: skip
            indices = {}
            for _, c, i in pairs:
                indices.setdefault(c, []).append(i)
        for c in sorted(indices):
            for i in indices[c]:
                rows.append([n, c, scores[i, c], *decoded[-1 if share else c][i]])
    if not rows:
        rows = [[n, -1, -1, -1, -1, -1, -1] for n in range(num)]
    return np.array(rows).reshape(1, 1, -1, 7)


def random_priors(rng: np.random.Generator, count: int, variance: list[float]) -> np.ndarray:
    """Priors with positive sizes in the unit square, and their variances."""
    centre = rng.uniform(0.2, 0.8, (count, 2))
    half = rng.uniform(0.05, 0.3, (count, 2))
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    return np.stack([boxes.reshape(-1), np.resize(variance, 4 * count)])[None]


def softmax_scores(rng: np.random.Generator, num: int, count: int, classes: int,
                   sharpness: float = 3.0) -> np.ndarray:  # fmt: skip
    logits = rng.standard_normal((num, count, classes)) * sharpness
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)).reshape(num, -1)


DETECTION_CASES = [
    # (param text, images, priors, classes, reference keywords)
    ("num_classes: 4 nms_param { nms_threshold: 0.45 } confidence_threshold: 0.2", 2, 30, 4,
     {"nms": 0.45, "threshold": 0.2}),
    ("num_classes: 3 code_type: CENTER_SIZE keep_top_k: 7 nms_param { nms_threshold: 0.3 "
     "top_k: 12 } confidence_threshold: 0.1", 2, 40, 3,
     {"code": "CENTER_SIZE", "keep_top_k": 7, "top_k": 12, "threshold": 0.1}),
    ("num_classes: 3 share_location: false background_label_id: 2 code_type: CORNER_SIZE "
     "nms_param { nms_threshold: 0.5 eta: 0.9 } confidence_threshold: 0.15", 1, 25, 3,
     {"share": False, "background": 2, "code": "CORNER_SIZE", "nms": 0.5, "eta": 0.9,
      "threshold": 0.15}),
    ("num_classes: 2 background_label_id: -1 variance_encoded_in_target: true "
     "code_type: CENTER_SIZE keep_top_k: 3", 1, 10, 2,
     {"background": -1, "encoded": True, "code": "CENTER_SIZE", "keep_top_k": 3}),
    ("num_classes: 3 nms_param { nms_threshold: 0.2 top_k: 5 } keep_top_k: 8", 3, 20, 3,
     {"nms": 0.2, "top_k": 5, "keep_top_k": 8}),
    # nothing kept: a row [image, -1, ...] per image
    ("num_classes: 3 confidence_threshold: 0.999", 2, 15, 3, {"threshold": 0.999}),
    ("num_classes: 3 keep_top_k: 0", 3, 15, 3, {"keep_top_k": 0}),
]  # fmt: skip


@pytest.mark.parametrize(("param", "num", "count", "classes", "kw"), DETECTION_CASES)
def test_detection_output(tmp_path: Path, param: str, num: int, count: int, classes: int,
                          kw: dict) -> None:  # fmt: skip
    rng = np.random.default_rng(3)
    loc_classes = 1 if kw.get("share", True) else classes
    loc = rng.standard_normal((num, count * loc_classes * 4)) * 0.2
    conf = softmax_scores(rng, num, count, classes)
    priors = random_priors(rng, count, [0.1, 0.1, 0.2, 0.2])
    layer = ('layer { name: "x" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
             f'bottom: "priors" top: "y" detection_output_param {{ {param} }} }}')  # fmt: skip
    bottoms = {"loc": loc.shape, "conf": conf.shape, "priors": priors.shape}
    for key in ("nms", "threshold", "eta"):  # the prototxt's numbers are float32
        if key in kw:
            kw[key] = float(F32(kw[key]))
    expected = detection_ref(loc, conf, priors, classes, **kw)
    for dtype, rtol in (("float64", 1e-12), ("float32", 1e-5)):
        net = one_layer_net(tmp_path, layer, bottoms, dtype=dtype, name=dtype)
        out = net.forward(loc=loc, conf=conf, priors=priors)["y"]
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol)
        np.testing.assert_array_equal(net.blobs["y"].data, out)
    if "0.999" in param or "keep_top_k: 0" in param:
        np.testing.assert_array_equal(expected[0, 0], [[n] + [-1] * 6 for n in range(num)])
    else:
        assert expected.shape[2] > 1, "the case keeps detections"


def test_detection_output_rows_follow_each_forward(tmp_path: Path) -> None:
    """The top shows the rows of the last forward: more, then fewer, then none."""
    rng = np.random.default_rng(5)
    layer = ('layer { name: "x" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
             'bottom: "priors" top: "y" detection_output_param { num_classes: 2 '
             "confidence_threshold: 0.5 } }")  # fmt: skip
    priors = random_priors(rng, 12, [0.1])
    loc = rng.standard_normal((1, 48)) * 0.1
    bottoms = {"loc": loc.shape, "conf": (1, 24), "priors": priors.shape}
    net = one_layer_net(tmp_path, layer, bottoms)
    assert net.blobs["y"].data.shape == (1, 1, 1, 7)  # the fork's shape before a forward
    seen = []
    for confident in (12, 3, 0):
        scores = np.full((12, 2), [0.9, 0.1])
        scores[:confident] = [0.2, 0.8]
        out = net.forward(loc=loc, conf=scores.reshape(1, -1), priors=priors)["y"]
        np.testing.assert_allclose(out, detection_ref(loc, scores.reshape(1, -1), priors, 2,
                                                      threshold=float(F32(0.5))))  # fmt: skip
        seen.append(out.shape[2])
    assert seen[0] > seen[1] > 0 and seen[2] == 1


@pytest.mark.parametrize(("param", "bottoms", "message"), [
    ("", {"loc": (1, 8), "conf": (1, 4), "priors": (1, 2, 8)}, "needs num_classes"),
    ("num_classes: 2", {"loc": (1, 12), "conf": (1, 4), "priors": (1, 2, 8)},
     r"location predictions \(bottom 0\) are 1x12"),
    ("num_classes: 3", {"loc": (1, 8), "conf": (1, 4), "priors": (1, 2, 8)},
     r"confidences \(bottom 1\) are 1x4"),
    ("num_classes: 2 share_location: false", {"loc": (1, 8), "conf": (1, 4),
                                              "priors": (1, 2, 8)}, "2 priors need"),
    ("num_classes: 2", {"loc": (1, 8), "conf": (1, 4), "priors": (1, 1, 8)}, "the priors"),
    ("num_classes: 2", {"loc": (2, 8), "conf": (1, 4), "priors": (1, 2, 8)}, "2 images"),
    ("num_classes: 2 nms_param { eta: 0 }", {"loc": (1, 8), "conf": (1, 4),
                                             "priors": (1, 2, 8)}, "eta is 0"),
    ("num_classes: 2 nms_param { nms_threshold: -0.5 }", {"loc": (1, 8), "conf": (1, 4),
                                                          "priors": (1, 2, 8)}, "negative"),
])  # fmt: skip
def test_detection_output_refuses_bad_inputs(tmp_path: Path, param: str, bottoms: dict,
                                             message: str) -> None:  # fmt: skip
    layer = ('layer { name: "x" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
             f'bottom: "priors" top: "y" detection_output_param {{ {param} }} }}')  # fmt: skip
    with pytest.raises(UserError, match=message) as info:
        one_layer_net(tmp_path, layer, bottoms)
    assert info.value.layer == "x"


def test_detection_output_refuses_empty_priors_for_size_codes(tmp_path: Path) -> None:
    layer = ('layer { name: "x" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
             'bottom: "priors" top: "y" detection_output_param { num_classes: 2 '
             "code_type: CENTER_SIZE } }")  # fmt: skip
    net = one_layer_net(tmp_path, layer, {"loc": (1, 8), "conf": (1, 4), "priors": (1, 2, 8)})
    priors = np.zeros((1, 2, 8))
    with pytest.raises(UserError, match="prior 0 has no width or height") as info:
        net.forward(loc=np.zeros((1, 8)), conf=np.full((1, 4), 0.5), priors=priors)
    assert info.value.layer == "x"


def test_detection_output_has_no_backward(tmp_path: Path) -> None:
    layer = (
        'layer { name: "x" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
        'bottom: "priors" top: "y" detection_output_param { num_classes: 2 } }'
    )
    path = tmp_path / "train.prototxt"
    path.write_text(
        'layer { name: "in" type: "Input" top: "a" top: "conf" top: "priors" input_param { '
        "shape { dim: 1 dim: 8 } shape { dim: 1 dim: 4 } shape { dim: 1 dim: 2 dim: 8 } } }\n"
        'layer { name: "ip" type: "InnerProduct" bottom: "a" top: "loc" '
        "inner_product_param { num_output: 8 } }\n"
        + layer
        + '\nlayer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "y" top: "l" }'
    )
    with pytest.raises(UserError, match="DetectionOutput layers have no backward pass"):
        caffec.Net(str(path), caffec.TRAIN).backward()


# ----------------------------------------------------------------------------- a whole net


def conv(name: str, bottom: str, out: int, kernel: int = 1, stride: int = 1,
         group: int = 1, relu: bool = True) -> str:  # fmt: skip
    """A convolution (depthwise where ``group`` is the channel count), and its ReLU."""
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f"convolution_param {{ num_output: {out} kernel_size: {kernel} stride: {stride} "
            f"pad: {kernel // 2} group: {group} }} }}\n")  # fmt: skip
    if relu:
        text += f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
    return text


def head(source: str, priors: int, classes: int, prior_box: str) -> str:
    """A feature map's location and confidence convolutions, each permuted to
    (num, height, width, channels) and flattened, and its PriorBox."""
    text = ""
    for what, out in (("loc", priors * 4), ("conf", priors * classes)):
        name = f"{source}_mbox_{what}"
        text += conv(name, source, out, relu=False)
        text += (f'layer {{ name: "{name}_perm" type: "Permute" bottom: "{name}" '
                 f'top: "{name}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                 f'layer {{ name: "{name}_flat" type: "Flatten" bottom: "{name}_perm" '
                 f'top: "{name}_flat" flatten_param {{ axis: 1 }} }}\n')  # fmt: skip
    return text + (f'layer {{ name: "{source}_mbox_priorbox" type: "PriorBox" bottom: "{source}" '
                   f'bottom: "data" top: "{source}_mbox_priorbox" prior_box_param {{ '
                   f"{prior_box} variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
                   "offset: 0.5 } }\n")  # fmt: skip


CLASSES = 5
MAPS = [  # (feature map, priors per position, PriorBox settings)
    ("conv2", 3, "min_size: 6 aspect_ratio: 2 flip: true clip: false"),
    ("conv3", 6, "min_size: 12 max_size: 20 aspect_ratio: 2 aspect_ratio: 3 flip: true"),
    ("conv4_2", 6, "min_size: 20 max_size: 28 aspect_ratio: 2 aspect_ratio: 3 flip: true"),
]
SETTINGS = ("num_classes: 5 share_location: true background_label_id: 0 "
            "nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE "
            "keep_top_k: 40 confidence_threshold: 0.25")  # fmt: skip


def joined(top: str, part: str, axis: int) -> str:
    """A Concat of every map's ``part``."""
    bottoms = " ".join(f'bottom: "{m}_{part}"' for m, _, _ in MAPS)
    return (f'layer {{ name: "{top}" type: "Concat" {bottoms} top: "{top}" '
            f"concat_param {{ axis: {axis} }} }}\n")  # fmt: skip


MOBILENET_SSD = (
    'name: "MobileNet-SSD-small"\n'
    'layer { name: "input" type: "Input" top: "data" '
    "input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } } }\n"
    + conv("conv0", "data", 8, 3, 2)
    + conv("conv1/dw", "conv0", 8, 3, 1, group=8)
    + conv("conv1", "conv1/dw", 16)
    + conv("conv2/dw", "conv1", 16, 3, 2, group=16)
    + conv("conv2", "conv2/dw", 32)
    + conv("conv3/dw", "conv2", 32, 3, 2, group=32)
    + conv("conv3", "conv3/dw", 32)
    + conv("conv4_1", "conv3", 16)
    + conv("conv4_2", "conv4_1", 32, 3, 2)
    + "".join(head(m, priors, CLASSES, box) for m, priors, box in MAPS)
    + joined("mbox_loc", "mbox_loc_flat", 1)
    + joined("mbox_conf", "mbox_conf_flat", 1)
    + joined("mbox_priorbox", "mbox_priorbox", 2)
    + 'layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" '
    f'top: "mbox_conf_reshape" reshape_param {{ shape {{ dim: 0 dim: -1 dim: {CLASSES} }} }} }}\n'
    'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" '
    'top: "mbox_conf_softmax" softmax_param { axis: 2 } }\n'
    'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" '
    'top: "mbox_conf_flatten" flatten_param { axis: 1 } }\n'
    'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" '
    'bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out" '
    f"detection_output_param {{ {SETTINGS} }} }}\n"
)


def mobilenet_ssd(path: Path) -> caffec.Net:
    """The net with random weights scaled by their fan-in (so activations stay moderate)."""
    path.write_text(MOBILENET_SSD)
    net = caffec.Net(str(path), caffec.TEST, seed=1)
    rng = np.random.default_rng(11)
    for blobs in net.params.values():
        weight, bias = blobs
        fan_in = int(np.prod(weight.shape[1:]))
        weight.data[...] = rng.standard_normal(weight.shape) * (1.5 / math.sqrt(fan_in))
        bias.data[...] = rng.standard_normal(bias.shape) * 0.1
    return net


def test_mobilenet_ssd_end_to_end(tmp_path: Path) -> None:
    check_mobilenet_ssd(mobilenet_ssd(tmp_path / "ssd.prototxt"))


def test_mobilenet_ssd_on_the_emulated_gpu(tmp_path: Path, emulated_gpu: object) -> None:
    """The same on the device: the host step reads the device's blobs and writes its top."""
    net = mobilenet_ssd(tmp_path / "ssd.prototxt")
    assert net.artifact.manifest.target.name == "cuda"
    check_mobilenet_ssd(net)


def check_mobilenet_ssd(net: caffec.Net) -> None:
    """A MobileNet-SSD-shaped deploy net: its heads, priors and softmax checked on the net's
    own blobs, and its detections against the reference of the detection head."""
    image = np.random.default_rng(12).uniform(-1, 1, (2, 3, 32, 32)).astype(F32)
    blobs = ["mbox_loc", "mbox_conf", "mbox_conf_flatten", "mbox_priorbox"]
    blobs += [f"{m}_mbox_{what}" for m, _, _ in MAPS for what in ("loc", "conf")]
    out = {name: np.array(value, dtype=float)
           for name, value in net.forward(blobs=blobs, data=image).items()}  # fmt: skip
    for kind in ("loc", "conf"):
        heads = [out[f"{m}_mbox_{kind}"].transpose(0, 2, 3, 1).reshape(2, -1) for m, _, _ in MAPS]
        np.testing.assert_array_equal(out[f"mbox_{kind}"], np.concatenate(heads, axis=1))
    logits = out["mbox_conf"].reshape(2, -1, CLASSES)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    np.testing.assert_allclose(out["mbox_conf_flatten"], softmax.reshape(2, -1), rtol=2e-5)
    sizes = {"conv2": (8, 8), "conv3": (4, 4), "conv4_2": (2, 2)}
    priors = [prior_box_ref(sizes["conv2"], (32, 32), [6], ratios=[2]),
              prior_box_ref(sizes["conv3"], (32, 32), [12], [20], [2, 3]),
              prior_box_ref(sizes["conv4_2"], (32, 32), [20], [28], [2, 3])]  # fmt: skip
    for prior in priors:
        prior[0, 1] = np.resize([F32(0.1), F32(0.1), F32(0.2), F32(0.2)], prior.shape[2])
    np.testing.assert_allclose(out["mbox_priorbox"], np.concatenate(priors, axis=2), rtol=1e-6,
                               atol=1e-7)  # fmt: skip
    expected = detection_ref(out["mbox_loc"], out["mbox_conf_flatten"], out["mbox_priorbox"],
                             CLASSES, code="CENTER_SIZE", keep_top_k=40, top_k=100,
                             nms=float(F32(0.45)), threshold=float(F32(0.25)))  # fmt: skip
    got = out["detection_out"]
    assert got.shape == expected.shape and got.shape[2] > 10
    assert set(got[0, 0, :, 0]) == {0, 1}, "both images have detections"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_detection_output_takes_the_image_as_a_fourth_bottom(tmp_path: Path) -> None:
    """The fork's visualize reads the image as a fourth bottom; caffec accepts and ignores it."""
    rng = np.random.default_rng(8)
    loc, conf = rng.standard_normal((1, 40)) * 0.2, softmax_scores(rng, 1, 10, 2)
    priors = random_priors(rng, 10, [0.1])
    layer = (
        'layer { name: "x" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
        'bottom: "priors" bottom: "image" top: "y" detection_output_param { num_classes: 2 '
        "confidence_threshold: 0.3 } }"
    )
    bottoms = {"loc": loc.shape, "conf": conf.shape, "priors": priors.shape, "image": (1, 3, 4, 4)}
    net = one_layer_net(tmp_path, layer, bottoms)
    out = net.forward(loc=loc, conf=conf, priors=priors, image=np.zeros((1, 3, 4, 4)))["y"]
    expected = detection_ref(loc, conf, priors, 2, threshold=float(F32(0.3)))
    assert expected.shape[2] > 1
    np.testing.assert_allclose(out, expected, rtol=1e-12)
