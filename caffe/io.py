"""pycaffe's ``caffe.io``: arrays to and from Caffe's protobufs, images read and resized, and
the Transformer that turns an image into a net's input and back.

The formulas are pycaffe's, so code written for it gets the same numbers. pycaffe resized
with scikit-image and SciPy; here the same sampling is done in numpy (see
:func:`resize_image`). Pillow (the ``data`` extra) is needed only to read image files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from caffe.proto import caffe_pb2
from caffec.errors import UserError, shape_text
from caffec.formats.datum import datum_array
from caffec.formats.images import pillow

# ------------------------------------------------------------------- protobufs and arrays

LEGACY_AXES = ("num", "channels", "height", "width")


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or its diff) as a float64 array of the blob's shape.

    Old Caffe wrote the shape as num/channels/height/width, newer Caffe as ``shape``; the
    legacy fields win where any is set, as in Caffe. ``double_data``/``double_diff`` are
    read where the float fields are empty.
    """
    what = "diff" if return_diff else "data"
    values = getattr(blob, what) or getattr(blob, f"double_{what}")
    if any(blob.HasField(axis) for axis in LEGACY_AXES):
        shape = tuple(getattr(blob, axis) for axis in LEGACY_AXES)
    else:
        shape = tuple(blob.shape.dim)
    array = np.array(values, dtype=np.float64)
    if array.size != int(np.prod(shape)):
        raise UserError(
            f"the BlobProto holds {array.size} {what} values but its shape "
            f"{shape_text(shape)} needs {int(np.prod(shape))}",
            hint="the blob is damaged, or has no diff (use return_diff=False)",
        )
    return array.reshape(shape)


def array_to_blobproto(arr: Any, diff: Any = None) -> caffe_pb2.BlobProto:
    """A BlobProto holding ``arr`` (and ``diff``, of the same shape), shape in ``shape.dim``."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(np.float64).ravel().tolist())
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise UserError(
                f"the diff has shape {shape_text(diff.shape)}, the data {shape_text(arr.shape)}",
                hint="give a diff of the data's shape",
            )
        blob.diff.extend(diff.astype(np.float64).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist: Iterable[Any]) -> bytes:
    """Arrays serialized as one BlobProtoVector (a ``.binaryproto`` of several blobs)."""
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vector.SerializeToString()


arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str  # pycaffe's spelling


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vector = caffe_pb2.BlobProtoVector()
    try:
        vector.ParseFromString(data)
    except DecodeError as err:
        raise UserError(f"the bytes are not a serialized BlobProtoVector ({err})") from None
    return [blobproto_to_array(blob) for blob in vector.blobs]


def array_to_datum(arr: Any, label: int | None = None) -> caffe_pb2.Datum:
    """A Datum holding a C×H×W array: uint8 as the ``data`` bytes, anything else as
    ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise UserError(
            f"a Datum holds one C×H×W image, not an array of shape {shape_text(arr.shape)}",
            hint="give one image at a time, channels first",
        )
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum's C×H×W image: uint8 from ``data``, float64 from ``float_data``.

    The label is not returned (it is ``datum.label``). An encoded Datum (JPEG/PNG bytes) is
    decoded as Caffe's data layers decode it: uint8, BGR.
    """
    array = datum_array(datum, "the Datum")
    return array if array.dtype == np.uint8 else array.astype(np.float64)


# ------------------------------------------------------------------------------- images

GRAY_MODES = ("1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
GRAY_ALPHA_MODES = ("LA", "La")
# scikit-image's rgb2gray weights, which pycaffe's load_image(color=False) applies
LUMA = np.array([0.2125, 0.7154, 0.0721])


def load_image(filename: str | os.PathLike[str], color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: H×W×3 RGB, or H×W×1 with ``color=False``.

    A gray file is repeated into three channels for ``color=True``; a colour file becomes
    luminance for ``color=False``; an alpha channel is dropped, not composited.
    """
    pixels = _read_pixels(filename)
    if pixels.ndim == 3 and not color:
        pixels = pixels @ LUMA
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
        if color:
            pixels = np.tile(pixels, (1, 1, 3))
    return pixels.astype(np.float32)


def _read_pixels(filename: str | os.PathLike[str]) -> np.ndarray:
    """The file's pixels scaled to [0, 1] by their integer type's range: H×W for a gray
    image, H×W×3 for any other."""
    try:
        with pillow().open(filename) as image:
            image.load()
            if image.mode in GRAY_ALPHA_MODES:
                image = image.getchannel(0)
            if image.mode in GRAY_MODES:
                pixels = np.asarray(image)
            else:
                pixels = np.asarray(image.convert("RGBA"))[:, :, :3]
    except FileNotFoundError:
        raise UserError(f"the image {os.fspath(filename)} does not exist") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"cannot read the image {os.fspath(filename)}: {err}") from None
    if pixels.dtype.kind in "iu":
        return pixels / np.iinfo(pixels.dtype).max
    return pixels.astype(np.float64)


def resize_image(im: Any, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """An H×W×K image resized to ``new_dims`` (height, width), as float32.

    ``interp_order`` is 0 (nearest) or 1 (bilinear). The sampling is pycaffe's: for 1 or 3
    channels, scikit-image's ``resize`` (pixel centres aligned, ``mode='constant'``, no
    anti-aliasing), where samples past the border read the image's minimum; for other
    channel counts, SciPy's ``zoom`` (corner pixels aligned). A constant image stays constant.
    Checked against scikit-image 0.26 (``mode='constant', anti_aliasing=False``) and SciPy
    1.17: equal within 2e-7 of the image's range.
    """
    im = np.asarray(im)
    if im.ndim != 3 or im.size == 0:
        raise UserError(
            f"resize_image takes an H×W×K image, not an array of shape {shape_text(im.shape)}",
            hint="add a channel axis: im[:, :, np.newaxis]",
        )
    if len(new_dims) != 2 or min(new_dims) <= 0:
        raise UserError(f"new_dims is a positive (height, width), not {tuple(new_dims)}")
    if interp_order not in (0, 1):
        raise UserError(
            f"interp_order {interp_order} is not supported",
            hint="use 0 (nearest) or 1 (bilinear); pycaffe's higher orders were splines",
        )
    height, width = (int(d) for d in new_dims)
    low, high = im.min(), im.max()
    if low == high:
        return np.full((height, width, im.shape[2]), low, dtype=np.float32)
    centres = im.shape[2] in (1, 3)
    padded = np.pad(im.astype(np.float64), ((1, 1), (1, 1), (0, 0)), constant_values=low)
    rows = _interpolate(padded, im.shape[0], height, interp_order, centres, axis=0)
    return _interpolate(rows, im.shape[1], width, interp_order, centres, axis=1).astype(np.float32)


def _interpolate(
    padded: np.ndarray, size: int, new_size: int, order: int, centres: bool, axis: int
) -> np.ndarray:
    """Resample ``axis`` of an image padded there by one pixel each side, from ``size``
    pixels to ``new_size``: each output pixel mixes the two input pixels around the point
    it samples (or takes the nearest one, for order 0)."""
    out = np.arange(new_size, dtype=np.float64)
    if centres:
        points = (out + 0.5) * (size / new_size) - 0.5
    else:
        points = out * ((size - 1) / (new_size - 1)) if new_size > 1 else out
    if order == 0:
        points = np.floor(points + 0.5)
    before = np.floor(points)
    weight = points - before
    index = before.astype(np.int64) + 1  # +1: the padding
    shape = [1] * padded.ndim
    shape[axis] = new_size
    weight = weight.reshape(shape)
    return np.take(padded, index, axis) * (1 - weight) + np.take(padded, index + 1, axis) * weight


def oversample(images: Iterable[Any], crop_dims: Sequence[int]) -> np.ndarray:
    """Ten crops of each H×W×K image, for averaging a classifier over them: the top-left,
    top-right, bottom-left and bottom-right corners and the centre, then those five mirrored
    left to right. Returns a (10·N)×h×w×K float32 array."""
    crop_h, crop_w = (int(d) for d in crop_dims)
    batches = []
    for im in images:
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[0] < crop_h or im.shape[1] < crop_w:
            raise UserError(
                f"cannot take {crop_h}x{crop_w} crops of an array of shape {shape_text(im.shape)}",
                hint="give H×W×K images at least as large as the crops",
            )
        bottom, right = im.shape[0] - crop_h, im.shape[1] - crop_w
        corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
        crops = np.stack([im[y : y + crop_h, x : x + crop_w] for y, x in corners])
        batches += [crops, crops[:, :, ::-1]]
    if not batches:
        raise UserError("oversample needs at least one image")
    return np.concatenate(batches).astype(np.float32)


# -------------------------------------------------------------------------- transformer


class Transformer:
    """Turns an H×W×K image (as :func:`load_image` gives) into a net input, and back.

    ``inputs`` maps each input's name to its blob shape (N×C×H×W). Per input, and only
    where set, :meth:`preprocess` resizes to the input's H×W, transposes, swaps channels,
    multiplies by ``raw_scale``, subtracts the mean and multiplies by ``input_scale``;
    :meth:`deprocess` undoes those steps in the reverse order.
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]]) -> None:
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _shape(self, in_: str) -> tuple[int, ...]:
        if in_ not in self.inputs:
            raise UserError(
                f"'{in_}' is not one of the Transformer's inputs",
                hint=f"inputs: {', '.join(self.inputs) or 'none'}",
            )
        return self.inputs[in_]

    def preprocess(self, in_: str, data: Any) -> np.ndarray:
        """One H×W×K image as the K×H×W float32 input ``in_`` takes (the caller's array is
        left as it was)."""
        size = self._shape(in_)[2:]
        image = np.array(data, dtype=np.float32)
        if image.ndim != 3:
            raise UserError(
                f"preprocess takes one H×W×K image, not an array of shape "
                f"{shape_text(image.shape)}",
                hint="preprocess a batch one image at a time and np.stack the results",
            )
        if image.shape[:2] != size:
            image = resize_image(image, size)
        if in_ in self.transpose:
            image = image.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            image = image[list(self.channel_swap[in_])]
        if in_ in self.raw_scale:
            image *= self.raw_scale[in_]
        if in_ in self.mean:
            image -= self.mean[in_]
        if in_ in self.input_scale:
            image *= self.input_scale[in_]
        return image

    def deprocess(self, in_: str, data: Any) -> np.ndarray:
        """A preprocessed input (K×H×W, or a batch of one) back as an H×W×K image; the
        resize is not undone."""
        self._shape(in_)
        data = np.asarray(data)
        image = np.array(data, dtype=np.result_type(data.dtype, np.float32))
        while image.ndim > 3 and image.shape[0] == 1:
            image = image[0]
        if in_ in self.input_scale:
            image /= self.input_scale[in_]
        if in_ in self.mean:
            image += self.mean[in_]
        if in_ in self.raw_scale:
            image /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            image = image[np.argsort(self.channel_swap[in_])]
        if in_ in self.transpose:
            image = image.transpose(np.argsort(self.transpose[in_]))
        return image

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """The axis order that takes an image to the input's layout: (2, 0, 1) for H×W×K
        images and K×H×W inputs."""
        axes = len(self._shape(in_)) - 1
        if sorted(order) != list(range(axes)):
            raise UserError(
                f"the transpose order {tuple(order)} for '{in_}' is not an order of its "
                f"{axes} image axes (the input is {shape_text(self.inputs[in_])})",
                hint="for H×W×K images and an N×C×H×W input use (2, 0, 1)",
            )
        self.transpose[in_] = tuple(int(a) for a in order)

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Which image channel each input channel takes, applied after the transpose:
        (2, 1, 0) turns RGB into BGR."""
        shape = self._shape(in_)
        if len(shape) < 2 or len(order) != shape[1]:
            raise UserError(
                f"the channel swap {tuple(order)} for '{in_}' names {len(order)} channels, "
                f"the input ({shape_text(shape)}) has {shape[1] if len(shape) > 1 else 0}",
                hint="give one source channel per input channel, e.g. (2, 1, 0)",
            )
        self.channel_swap[in_] = tuple(int(c) for c in order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """The factor applied before the mean: 255 for models trained on [0, 255] pixels,
        since :func:`load_image` gives [0, 1]."""
        self._shape(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: Any) -> None:
        """The mean subtracted after ``raw_scale``: one value per channel, or a whole C×H×W
        mean image of the input's size (H×W for one channel)."""
        shape = self._shape(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if len(shape) < 2 or mean.shape[0] != shape[1]:
                raise UserError(
                    f"the mean for '{in_}' has {mean.shape[0]} values, the input "
                    f"({shape_text(shape)}) has {shape[1] if len(shape) > 1 else 0} channels",
                    hint="give one mean value per channel, in the input's channel order",
                )
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if mean.ndim == 2:
                mean = mean[np.newaxis]
            if mean.shape != shape[1:]:
                raise UserError(
                    f"the mean for '{in_}' has shape {shape_text(mean.shape)}, the input's "
                    f"images are {shape_text(shape[1:])}",
                    hint="take a per-channel mean (mean.mean(1).mean(1)), or give a mean "
                    "image of the input's size (blobproto_to_array(blob)[0] for a "
                    ".binaryproto)",
                )
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """The factor applied last, after the mean is subtracted."""
        self._shape(in_)
        self.input_scale[in_] = scale
