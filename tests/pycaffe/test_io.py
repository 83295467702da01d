"""caffe.io against pycaffe's documented formulas: protobuf round trips, the Transformer step
by step, resizing, load_image and oversample."""

from __future__ import annotations

import io as bytes_io

import numpy as np
import pytest

from caffe import io as cio
from caffe.proto import caffe_pb2
from caffec.errors import UserError

RNG = np.random.default_rng(7)
INPUT = (1, 3, 4, 5)  # N×C×H×W of the input 'data'


def image(height: int = 4, width: int = 5, channels: int = 3) -> np.ndarray:
    return RNG.random((height, width, channels)).astype(np.float32)


# ------------------------------------------------------------------------------ protobufs


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (2, 3), (1, 2, 1, 3, 2)])
def test_blobproto_round_trip(shape: tuple[int, ...]) -> None:
    data, diff = RNG.random(shape), RNG.random(shape)
    blob = cio.array_to_blobproto(data, diff)
    assert tuple(blob.shape.dim) == shape
    got = cio.blobproto_to_array(blob)
    assert got.dtype == np.float64 and got.shape == shape
    np.testing.assert_allclose(got, data.astype(np.float32))
    np.testing.assert_allclose(
        cio.blobproto_to_array(blob, return_diff=True), diff.astype(np.float32)
    )


def test_blobproto_legacy_shape_and_double_data() -> None:
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, double_data=range(6))
    np.testing.assert_array_equal(cio.blobproto_to_array(blob), np.arange(6.0).reshape(1, 2, 1, 3))


def test_blobproto_errors() -> None:
    with pytest.raises(UserError, match="holds 0 diff values but its shape 2x2 needs 4"):
        cio.blobproto_to_array(cio.array_to_blobproto(np.ones((2, 2))), return_diff=True)
    with pytest.raises(UserError, match="the diff has shape 3, the data 2"):
        cio.array_to_blobproto(np.ones(2), np.ones(3))


def test_blobprotovector_round_trip() -> None:
    arrays = [RNG.random((1, 2, 3, 3)), RNG.random((4,))]
    text = cio.arraylist_to_blobprotovector_str(arrays)
    assert cio.arraylist_to_blobprotovecor_str is cio.arraylist_to_blobprotovector_str
    got = cio.blobprotovector_str_to_arraylist(text)
    assert [a.shape for a in got] == [a.shape for a in arrays]
    for a, b in zip(got, arrays, strict=True):
        np.testing.assert_allclose(a, b.astype(np.float32))
    with pytest.raises(UserError, match="not a serialized BlobProtoVector"):
        cio.blobprotovector_str_to_arraylist(b"\xff\xff\xff")


def test_datum_round_trip() -> None:
    pixels = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = cio.array_to_datum(pixels, label=7)
    assert datum.data == pixels.tobytes() and not datum.float_data and datum.label == 7
    got = cio.datum_to_array(datum)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, pixels)

    values = RNG.random((2, 3, 1))
    datum = cio.array_to_datum(values)
    assert not datum.data and len(datum.float_data) == 6 and not datum.HasField("label")
    got = cio.datum_to_array(datum)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, values.astype(np.float32))

    with pytest.raises(UserError, match="one C×H×W image, not an array of shape 4x5"):
        cio.array_to_datum(np.zeros((4, 5)))


def test_encoded_datum_is_decoded_as_caffe_does() -> None:
    image_module = pytest.importorskip("PIL.Image")
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    png = bytes_io.BytesIO()
    image_module.fromarray(rgb).save(png, format="PNG")
    datum = caffe_pb2.Datum(data=png.getvalue(), encoded=True)
    np.testing.assert_array_equal(cio.datum_to_array(datum), rgb[:, :, ::-1].transpose(2, 0, 1))


# ---------------------------------------------------------------------------- Transformer


def configured() -> cio.Transformer:
    t = cio.Transformer({"data": INPUT})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_is_pycaffes_steps_in_order() -> None:
    im = image()
    by_hand = im.transpose(2, 0, 1)  # H×W×K -> K×H×W
    by_hand = by_hand[[2, 1, 0]]  # RGB -> BGR
    by_hand = by_hand * 255.0  # raw_scale
    by_hand = by_hand - np.array([104.0, 117.0, 123.0])[:, None, None]  # mean
    by_hand = by_hand * 0.5  # input_scale
    got = configured().preprocess("data", im)
    assert got.dtype == np.float32 and got.shape == (3, 4, 5)
    np.testing.assert_allclose(got, by_hand, rtol=1e-6, atol=1e-4)


def test_preprocess_resizes_first_and_leaves_the_callers_array() -> None:
    im = image(7, 9)
    before = im.copy()
    t = cio.Transformer({"data": INPUT})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 2.0)
    got = t.preprocess("data", im)
    np.testing.assert_array_equal(got, cio.resize_image(im, (4, 5)).transpose(2, 0, 1) * 2.0)
    np.testing.assert_array_equal(im, before)


def test_mean_image_is_subtracted_elementwise() -> None:
    mean = RNG.random((3, 4, 5)) * 100
    t = cio.Transformer({"data": INPUT})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", mean)
    im = image()
    np.testing.assert_allclose(t.preprocess("data", im), im.transpose(2, 0, 1) - mean, rtol=1e-6)


def test_two_dimensional_mean_for_one_channel() -> None:
    t = cio.Transformer({"gray": (1, 1, 4, 5)})
    t.set_transpose("gray", (2, 0, 1))
    mean = RNG.random((4, 5))
    t.set_mean("gray", mean)
    im = image(channels=1)
    np.testing.assert_allclose(t.preprocess("gray", im), im.transpose(2, 0, 1) - mean, rtol=1e-6)
    np.testing.assert_allclose(t.deprocess("gray", t.preprocess("gray", im)), im, atol=1e-6)


@pytest.mark.parametrize("batch_of_one", [False, True])
def test_deprocess_undoes_preprocess(batch_of_one: bool) -> None:
    t = configured()
    im = image()
    net_input = t.preprocess("data", im)
    if batch_of_one:
        net_input = net_input[np.newaxis]
    back = t.deprocess("data", net_input)
    assert back.shape == im.shape
    np.testing.assert_allclose(back, im, atol=1e-6)


def test_transformer_errors() -> None:
    t = cio.Transformer({"data": INPUT})
    with pytest.raises(UserError, match="'label' is not one of the Transformer's inputs") as err:
        t.set_raw_scale("label", 255)
    assert err.value.hint == "inputs: data"
    with pytest.raises(UserError, match="has 4 values, the input \\(1x3x4x5\\) has 3 channels"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(UserError, match="has shape 3x256x256, the input's images are 3x4x5") as err:
        t.set_mean("data", np.zeros((3, 256, 256)))
    assert "mean.mean(1).mean(1)" in err.value.hint
    with pytest.raises(UserError, match="has shape 1x3x4x5"):
        t.set_mean("data", np.zeros(INPUT))
    with pytest.raises(UserError, match="names 2 channels, the input \\(1x3x4x5\\) has 3"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(UserError, match="not an order of its 3 image axes"):
        t.set_transpose("data", (2, 0))
    with pytest.raises(UserError, match="one H×W×K image, not an array of shape 1x4x5x3"):
        t.preprocess("data", np.zeros((1, 4, 5, 3)))


# ------------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_constant_image_stays_constant(channels: int) -> None:
    got = cio.resize_image(np.full((3, 4, channels), 0.25), (7, 2))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((7, 2, channels), 0.25, dtype=np.float32))


def linear_at(values: np.ndarray, points: np.ndarray, outside: float) -> np.ndarray:
    """Linear interpolation of ``values`` at ``points``, reading ``outside`` past the ends."""
    extended = np.concatenate([[outside], values, [outside]])
    return np.interp(points + 1, np.arange(len(extended)), extended)


def test_bilinear_2x_upscale_of_a_ramp() -> None:
    """Pixel centres aligned; past the border, samples read the image's minimum (pycaffe
    scales the image to [0, 1] and resizes with scikit-image's mode='constant', cval 0)."""
    ramp = np.arange(1.0, 5.0)  # 4 pixels
    points = (np.arange(8) + 0.5) / 2 - 0.5
    expected = linear_at(ramp, points, outside=ramp.min())
    np.testing.assert_allclose(expected, [1, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 3.25])
    im = np.stack([ramp, 2 * ramp, ramp[::-1]], axis=-1)[np.newaxis]  # 1×4×3
    got = cio.resize_image(im, (1, 8))
    for c in range(3):
        np.testing.assert_allclose(got[0, :, c], linear_at(im[0, :, c], points, 1.0), rtol=1e-6)


def test_bilinear_matches_scikit_image() -> None:
    # scikit-image 0.26: resize(im01, (3, 5), order=1, mode='constant', anti_aliasing=False)
    # on the image scaled to [0, 1], scaled back, as pycaffe calls it
    im = np.array([[0.0, 3.0, 1.0], [2.0, 5.0, 4.0]])[:, :, np.newaxis]
    expected = [
        [0.0, 1.0, 2.5, 1.5, 2 / 3],
        [0.8, 2.2, 4.0, 3.1, 2.0],
        [4 / 3, 8 / 3, 4.1666666667, 11 / 3, 8 / 3],
    ]
    np.testing.assert_allclose(cio.resize_image(im, (3, 5))[:, :, 0], expected, rtol=1e-6)


def test_other_channel_counts_align_corners() -> None:
    """pycaffe resizes channel counts other than 1 and 3 with SciPy's zoom: the corner pixels
    stay where they are."""
    ramp = np.array([0.0, 1.0, 2.0])
    im = np.stack([ramp, 10 * ramp], axis=-1)[np.newaxis]  # 1×3×2
    got = cio.resize_image(im, (1, 5))
    np.testing.assert_allclose(got[0, :, 0], [0, 0.5, 1, 1.5, 2])
    np.testing.assert_allclose(got[0, :, 1], [0, 5, 10, 15, 20])


def test_nearest_neighbour_picks() -> None:
    im = np.array([1.0, 2.0, 3.0, 4.0])[np.newaxis, :, np.newaxis]
    np.testing.assert_array_equal(
        cio.resize_image(im, (1, 8), 0)[0, :, 0], np.repeat(im[0, :, 0], 2)
    )
    # downscaling 4 to 2 samples at 0.5 and 2.5, which round up
    np.testing.assert_array_equal(cio.resize_image(im, (1, 2), 0)[0, :, 0], [2, 4])
    np.testing.assert_array_equal(cio.resize_image(im, (2, 4), 0)[:, :, 0], [[1, 2, 3, 4]] * 2)


def test_resize_errors() -> None:
    with pytest.raises(UserError, match="interp_order 3 is not supported"):
        cio.resize_image(image(), (2, 2), interp_order=3)
    with pytest.raises(UserError, match="takes an H×W×K image, not an array of shape 4x5"):
        cio.resize_image(np.zeros((4, 5)), (2, 2))
    with pytest.raises(UserError, match="new_dims is a positive"):
        cio.resize_image(image(), (0, 2))


# ---------------------------------------------------------------------------- load_image


@pytest.fixture
def pil() -> object:
    return pytest.importorskip("PIL.Image")


def test_load_rgb_gray_and_rgba(pil, tmp_path) -> None:
    rgb = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    pil.fromarray(rgb).save(tmp_path / "rgb.png")
    pil.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    pil.fromarray(np.dstack([rgb, np.full((5, 6), 9, np.uint8)])).save(tmp_path / "rgba.png")

    for name in ("rgb.png", "rgba.png"):  # the alpha channel is dropped, not composited
        got = cio.load_image(tmp_path / name)
        assert got.dtype == np.float32 and got.shape == (5, 6, 3)
        np.testing.assert_allclose(got, rgb / 255.0, rtol=1e-6)
        luma = rgb / 255.0 @ [0.2125, 0.7154, 0.0721]  # scikit-image's rgb2gray
        np.testing.assert_allclose(
            cio.load_image(tmp_path / name, color=False)[:, :, 0], luma, rtol=1e-6
        )

    gray = rgb[:, :, :1] / 255.0
    np.testing.assert_allclose(cio.load_image(tmp_path / "gray.png", color=False), gray, rtol=1e-6)
    np.testing.assert_allclose(
        cio.load_image(tmp_path / "gray.png"), np.tile(gray, (1, 1, 3)), rtol=1e-6
    )


def test_load_16_bit_and_jpeg(pil, tmp_path) -> None:
    deep = RNG.integers(0, 65536, (3, 4)).astype(np.uint16)
    pil.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(
        cio.load_image(tmp_path / "deep.png", color=False)[:, :, 0], deep / 65535.0, rtol=1e-6
    )

    pil.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    decoded = np.asarray(pil.open(tmp_path / "x.jpg").convert("RGB")) / 255.0
    np.testing.assert_allclose(cio.load_image(tmp_path / "x.jpg"), decoded, rtol=1e-6)


def test_load_image_errors(pil, tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        cio.load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="cannot read the image"):
        cio.load_image(tmp_path / "text.png")


# ---------------------------------------------------------------------------- oversample


def test_oversample_corners_centre_then_mirrors() -> None:
    first = np.arange(5 * 6 * 2, dtype=np.float64).reshape(5, 6, 2)
    crops = cio.oversample([first, -first], (3, 4))
    assert crops.shape == (20, 3, 4, 2) and crops.dtype == np.float32
    # corners (top-left, top-right, bottom-left, bottom-right), then the centre: pycaffe's
    # centre starts at floor(size / 2 - crop / 2)
    starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for n, im in enumerate([first, -first]):
        for i, (y, x) in enumerate(starts):
            window = im[y : y + 3, x : x + 4]
            np.testing.assert_array_equal(crops[10 * n + i], window)
            np.testing.assert_array_equal(crops[10 * n + 5 + i], window[:, ::-1])


def test_oversample_errors() -> None:
    with pytest.raises(UserError, match="cannot take 6x6 crops of an array of shape 5x6x2"):
        cio.oversample([np.zeros((5, 6, 2))], (6, 6))
    with pytest.raises(UserError, match="at least one image"):
        cio.oversample([], (1, 1))
