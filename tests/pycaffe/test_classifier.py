"""caffe.Classifier and caffe.Detector on a tiny net (InnerProduct + Softmax), checked
against the same computation in numpy: crops by hand, preprocessing by hand, softmax."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import caffe
from caffe.classifier import Classifier
from caffe.detector import Detector
from caffe.io import resize_image
from caffec.errors import UserError

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "constant" value: 0.01 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""
MEAN = np.array([0.4, 0.5, 0.6])  # in the net's channel order (BGR)
RAW_SCALE, INPUT_SCALE, SWAP = 2.0, 0.5, (2, 1, 0)
RNG = np.random.default_rng(3)
WEIGHTS = RNG.normal(size=(5, 3 * 6 * 6))
BIAS = RNG.normal(size=5)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The prototxt, and a caffemodel holding WEIGHTS and BIAS."""
    folder = tmp_path_factory.mktemp("tiny")
    prototxt, weights = folder / "net.prototxt", folder / "net.caffemodel"
    prototxt.write_text(NET)
    net = caffe.Net(str(prototxt), caffe.TEST)
    net.params["ip"][0].data[...] = WEIGHTS
    net.params["ip"][1].data[...] = BIAS
    net.save(str(weights))
    return prototxt, weights


@pytest.fixture(scope="module")
def classifier(model: tuple[Path, Path]) -> Classifier:
    return Classifier(
        *model,
        image_dims=(8, 8),
        mean=MEAN,
        input_scale=INPUT_SCALE,
        raw_scale=RAW_SCALE,
        channel_swap=SWAP,
    )


def probabilities(crop: np.ndarray) -> np.ndarray:
    """The tiny net on one H×W×3 image crop of the input's size, preprocessed by hand."""
    x = crop.transpose(2, 0, 1)[list(SWAP)] * RAW_SCALE
    x = (x - MEAN[:, None, None]) * INPUT_SCALE
    logits = WEIGHTS @ x.astype(np.float32).ravel() + BIAS
    e = np.exp(logits - logits.max())
    return e / e.sum()


def images(count: int, size: int = 10) -> list[np.ndarray]:
    return [RNG.random((size, size + 2, 3)).astype(np.float32) for _ in range(count)]


# ----------------------------------------------------------------------------- Classifier


def test_centre_crop_prediction(classifier: Classifier) -> None:
    inputs = images(5)  # more than the batch of 4: two batches, the second padded
    got = classifier.predict(inputs, oversample=False)
    expected = [probabilities(resize_image(im, (8, 8))[1:7, 1:7]) for im in inputs]
    assert got.shape == (5, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_oversampled_prediction_averages_ten_crops(classifier: Classifier) -> None:
    inputs = images(2)
    got = classifier.predict(inputs)
    expected = []
    for im in inputs:
        resized = resize_image(im, (8, 8))
        crops = [resized[y : y + 6, x : x + 6] for y, x in [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]]
        crops += [crop[:, ::-1] for crop in crops]
        expected.append(np.mean([probabilities(crop) for crop in crops], axis=0))
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_defaults_take_the_input_size(model: tuple[Path, Path]) -> None:
    plain = Classifier(*model)
    np.testing.assert_array_equal(plain.image_dims, [6, 6])
    assert plain.transformer.transpose == {"data": (2, 0, 1)}
    assert not plain.transformer.mean and not plain.transformer.raw_scale


def test_classifier_errors(model: tuple[Path, Path], classifier: Classifier) -> None:
    with pytest.raises(
        UserError, match="image_dims 4x4 cannot be cropped to the net.s input size 6x6"
    ):
        Classifier(*model, image_dims=(4, 4))
    with pytest.raises(UserError, match="has 2 values, the input \\(4x3x6x6\\) has 3 channels"):
        Classifier(*model, mean=np.zeros(2))
    with pytest.raises(UserError, match="at least one image"):
        classifier.predict([])


# ------------------------------------------------------------------------------- Detector


@pytest.fixture(scope="module")
def detector(model: tuple[Path, Path]) -> Detector:
    return Detector(
        *model, mean=MEAN, input_scale=INPUT_SCALE, raw_scale=RAW_SCALE, channel_swap=SWAP
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Two PNG files, by name, with the float images load_image gives for them."""
    image_module = pytest.importorskip("PIL.Image")
    folder = tmp_path_factory.mktemp("photos")
    found = {}
    for name, shape in [("a.png", (12, 16, 3)), ("b.png", (9, 9, 3))]:
        pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
        image_module.fromarray(pixels).save(folder / name)
        found[str(folder / name)] = (pixels / 255.0).astype(np.float32)
    return found


def test_detect_windows(detector: Detector, photos: dict[str, np.ndarray]) -> None:
    (a, im_a), (b, im_b) = photos.items()
    windows_a = [np.array([0, 0, 6, 6]), np.array([2, 3, 12, 16]), np.array([5, 1, 8, 4])]
    windows_b = [np.array([1, 2, 9, 9])]
    detections = detector.detect_windows([(a, windows_a), (b, windows_b)])
    expected = [(a, im_a, w) for w in windows_a] + [(b, im_b, w) for w in windows_b]
    assert len(detections) == 4
    for found, (filename, im, window) in zip(detections, expected, strict=True):
        assert found["filename"] == filename and found["window"] is window
        y0, x0, y1, x1 = window
        crop = resize_image(im[y0:y1, x0:x1], (6, 6))
        np.testing.assert_allclose(found["prediction"], probabilities(crop), rtol=1e-4, atol=1e-6)
    assert detector.detect_windows([(a, [])]) == []


def test_context_crops(model: tuple[Path, Path]) -> None:
    """pycaffe's R-CNN crop for a 6x6 input and context_pad 1 (a widening of 6/4): window
    (4, 4, 7, 7) is 4 pixels inclusive about centre 6, widened to box (3, 3, 9, 9), whose 6
    pixels (exclusive end) fill the input; window (0, 0, 3, 3) widens to (-1, -1, 5, 5),
    whose overhang takes round(6/7) = 1 input pixel, the mean, and whose 5 pixels inside the
    image fill the next round(6 * 6/7) = 5."""
    padded = Detector(*model, mean=MEAN, raw_scale=RAW_SCALE, channel_swap=SWAP, context_pad=1)
    np.testing.assert_array_equal(padded.crop_dims, [6, 6, 3])
    raw_mean = MEAN[np.argsort(SWAP)] / RAW_SCALE  # the mean in the image's RGB and scale
    np.testing.assert_allclose(padded.crop_mean.reshape(3), raw_mean)
    im = RNG.random((12, 12, 3)).astype(np.float32)

    np.testing.assert_array_equal(padded.crop(im, np.array([4, 4, 7, 7])), im[3:9, 3:9])

    corner = padded.crop(im, np.array([0, 0, 3, 3]))
    assert corner.shape == (6, 6, 3)
    np.testing.assert_array_equal(corner[1:, 1:], im[0:5, 0:5])
    np.testing.assert_allclose(corner[0], np.tile(raw_mean, (6, 1)), rtol=1e-6)
    np.testing.assert_allclose(corner[:, 0], np.tile(raw_mean, (6, 1)), rtol=1e-6)
    # so after preprocessing, the net sees zeros where the box left the image
    net_input = padded.transformer.preprocess("data", corner)
    np.testing.assert_allclose(net_input[:, 0, :], 0, atol=1e-6)


def test_context_crop_without_mean_pads_with_zeros(model: tuple[Path, Path]) -> None:
    padded = Detector(*model, context_pad=1)
    corner = padded.crop(np.ones((12, 12, 3), np.float32), [0, 0, 3, 3])
    assert corner[0].max() == 0 and corner[1:, 1:].min() == 1


def test_detector_errors(detector: Detector, model: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match="covers no pixel of the 4x4 image"):
        detector.crop(np.zeros((4, 4, 3)), [5, 5, 8, 8])
    padded = Detector(*model, context_pad=1)
    with pytest.raises(UserError, match="covers no pixel of the 4x4 image"):
        padded.crop(np.zeros((4, 4, 3)), [-30, 0, -20, 2])
    with pytest.raises(UserError, match="is \\(ymin, xmin, ymax, xmax\\), not \\[1, 2\\]"):
        detector.crop(np.zeros((4, 4, 3)), [1, 2])
    with pytest.raises(UserError, match="context_pad 3 leaves no room"):
        Detector(*model, context_pad=3)


def test_selective_search(
    detector: Detector, photos: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="needs the module selective_search_ijcv_with_python"):
        detector.detect_selective_search(list(photos))

    asked = []

    def get_windows(filenames: list[str], cmd: str) -> list[np.ndarray]:
        asked.append((filenames, cmd))
        # MATLAB's boxes arrive as floats
        return [np.array([[0.0, 0, 6, 6], [1, 1, 5, 7]]), np.array([[2.0, 2, 9, 9]])]

    fake = types.ModuleType("selective_search_ijcv_with_python")
    fake.get_windows = get_windows
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", fake)
    monkeypatch.chdir(Path(next(iter(photos))).parent)
    found = detector.detect_selective_search(["a.png", "b.png"])
    assert asked == [
        ([str(Path.cwd() / "a.png"), str(Path.cwd() / "b.png")], "selective_search_rcnn")
    ]
    assert [d["filename"] for d in found] == [
        str(Path.cwd() / n) for n in ("a.png", "a.png", "b.png")
    ]
    assert [list(d["window"]) for d in found] == [[0, 0, 6, 6], [1, 1, 5, 7], [2, 2, 9, 9]]
