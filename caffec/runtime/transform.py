"""Caffe's DataTransformer: mean subtraction, scaling, cropping and mirroring.

The order is Caffe's (``data_transformer.cpp``): every output element is
``(x - mean) * scale``, where ``mean`` is the mean file's value at the
element's position in the *uncropped* image or the channel's ``mean_value``;
the crop window is random in TRAIN and centred in TEST; a random horizontal
flip happens wherever ``mirror`` is set (Caffe flips in TEST too when a TEST
layer asks for it). Caffe draws the flip first, then the crop's row, then its
column; so does this module, from a seeded numpy Generator.

Images reach the transformer as ``(channels, height, width)`` arrays (uint8
pixels or floats), colour in Caffe's BGR order. This module also holds the
image helpers the data layers share: decoding an encoded image as OpenCV
would hand it to Caffe, and OpenCV's bilinear resize.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError

Shape = tuple[int, ...]


def fmt(shape: Shape) -> str:
    """``1x28x28``: how caffec writes shapes in messages."""
    return "x".join(str(d) for d in shape) if shape else "scalar"


# --------------------------------------------------------------------------- images


def pillow() -> Any:
    """The PIL.Image module, or a UserError saying how to install it."""
    try:
        from PIL import Image
    except ImportError as err:
        raise UserError(
            "reading images needs the Python package 'Pillow'",
            hint="pip install 'caffec[data]'",
        ) from err
    return Image


def image_to_chw(image: Any, mode: str | None) -> np.ndarray:
    """A decoded Pillow image as a uint8 (C, H, W) array in OpenCV's channel order.

    ``mode`` is ``"color"`` (3 channels, BGR), ``"gray"`` (1 channel) or None
    for the file's own channels (OpenCV's IMREAD_UNCHANGED: gray stays 1
    channel, an alpha channel makes 4, BGRA).
    """
    if mode is None:
        if image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
            mode = "gray"
        elif image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            image.mode == "P" and "transparency" in image.info
        ):
            array = np.asarray(image.convert("RGBA"))
            return np.ascontiguousarray(array[:, :, [2, 1, 0, 3]].transpose(2, 0, 1))
        else:
            mode = "color"
    if mode == "gray":
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            array = np.asarray(image, dtype=np.float64)
            return np.clip(array, 0, 255).astype(np.uint8)[None]
        return np.asarray(image.convert("L"))[None].copy()
    array = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(array[:, :, ::-1].transpose(2, 0, 1))


def decode_image(data: bytes, mode: str | None, what: str) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) held in memory; see :func:`image_to_chw`."""
    image_module = pillow()
    try:
        with image_module.open(io.BytesIO(data)) as image:
            image.load()
            return image_to_chw(image, mode)
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{what}: cannot decode the encoded image: {err}") from None


def read_image(path: Path, mode: str | None, what: str) -> np.ndarray:
    """Read an image file as OpenCV's imread does for Caffe; see :func:`image_to_chw`."""
    image_module = pillow()
    try:
        with image_module.open(path) as image:
            image.load()
            return image_to_chw(image, mode)
    except FileNotFoundError:
        raise UserError(f"{what}: the image {path} does not exist") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{what}: cannot read the image {path}: {err}") from None


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR sampling along one axis: left index, right index, right weight."""
    scale = src / dst
    f = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    left = np.floor(f).astype(np.int64)
    weight = f - left
    low = left < 0
    left[low], weight[low] = 0, 0.0
    high = left >= src - 1
    left[high], weight[high] = src - 1, 0.0
    right = np.minimum(left + 1, src - 1)
    return left, right, weight


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (C, H, W) image as ``cv::resize(..., INTER_LINEAR)`` does.

    The sampling grid is OpenCV's (pixel centres aligned, edges clamped); the
    arithmetic is floating point rounded to the nearest integer, where OpenCV
    uses 11-bit fixed point, so a pixel may differ from OpenCV's by one.
    """
    _, h, w = image.shape
    if (h, w) == (height, width):
        return image
    x = image.astype(np.float32)
    y0, y1, wy = _linear_taps(h, height)
    x0, x1, wx = _linear_taps(w, width)
    wy = wy.astype(np.float32)[None, :, None]
    wx = wx.astype(np.float32)[None, None, :]
    rows = x[:, y0, :] * (1 - wy) + x[:, y1, :] * wy
    out = rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the transformer


def load_mean_file(path: Path) -> np.ndarray:
    """The mean image of a .binaryproto, squeezed to (C, H, W)."""
    from caffec.frontend.binaryproto import read_blobproto

    data = read_blobproto(path).data
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise UserError(
            f"the mean file {path} holds a blob of shape {fmt(data.shape)}; "
            "a mean image is 1xCxHxW",
        )
    return data


class Transformer:
    """One layer's TransformationParameter, applied to one image at a time.

    ``param`` is a ``caffe_pb2.TransformationParameter``; ``resolve`` finds
    the mean file (Caffe looks in the working directory; the data layers
    also look beside the prototxt).
    """

    def __init__(
        self,
        param: Any,
        phase: str,
        dtype: np.dtype,
        rng: np.random.Generator,
        resolve: Callable[[str], Path | None],
        what: str,
    ) -> None:
        self.what = what
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.rng = rng
        self.scale = self.dtype.type(param.scale)
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        if param.force_color and param.force_gray:
            raise UserError(
                f"{what}: transform_param sets both force_color and force_gray",
                hint="keep one of them",
            )
        self.force = "color" if param.force_color else "gray" if param.force_gray else None
        self.mean_values = np.asarray(list(param.mean_value), dtype=self.dtype)
        self.mean: np.ndarray | None = None
        self.mean_path: Path | None = None
        if param.mean_file:
            if len(self.mean_values):
                raise UserError(
                    f"{what}: transform_param gives both mean_file and mean_value",
                    hint="Caffe accepts one or the other; remove one",
                )
            found = resolve(param.mean_file)
            if found is None:
                raise UserError(
                    f"{what}: the mean file '{param.mean_file}' does not exist",
                    hint="check transform_param.mean_file; relative paths are looked up from "
                    "the working directory, then from the prototxt's folder",
                )
            self.mean_path = found
            self.mean = load_mean_file(found).astype(self.dtype)

    @property
    def random(self) -> bool:
        """Whether the transform draws random numbers (flips, or crops in TRAIN)."""
        return self.mirror or (self.crop > 0 and self.phase == "TRAIN")

    def out_shape(self, chw: Shape) -> Shape:
        """The shape an image of ``chw`` has after the transform (the crop)."""
        return (chw[0], self.crop, self.crop) if self.crop else tuple(chw)

    def check(self, chw: Shape, where: str) -> None:
        """Refuse an image the transform cannot apply to, as Caffe's CHECKs do."""
        c, h, w = chw
        if self.crop and (h < self.crop or w < self.crop):
            raise UserError(
                f"{where} is {fmt(chw)}, smaller than crop_size {self.crop}",
                hint="lower transform_param.crop_size or use larger images",
            )
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise UserError(
                f"{where} is {fmt(chw)}, but the mean file {self.mean_path} is "
                f"{fmt(self.mean.shape)}",
                hint="the mean must have the images' shape before cropping; compute it from "
                "the same data (compute_mean)",
            )
        if len(self.mean_values) not in (0, 1, c):
            raise UserError(
                f"{where} has {c} channels, but transform_param gives "
                f"{len(self.mean_values)} mean_value entries",
                hint="give one mean_value, or one per channel",
            )

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Transform one (C, H, W) image into ``out`` (a new array when None)."""
        c, h, w = image.shape
        do_mirror = self.mirror and bool(self.rng.integers(2))
        h_off = w_off = 0
        oh, ow = h, w
        if self.crop:
            oh = ow = self.crop
            if self.phase == "TRAIN":
                h_off = int(self.rng.integers(h - self.crop + 1))
                w_off = int(self.rng.integers(w - self.crop + 1))
            else:
                h_off, w_off = (h - self.crop) // 2, (w - self.crop) // 2
        window = (slice(None), slice(h_off, h_off + oh), slice(w_off, w_off + ow))
        x = image[window].astype(self.dtype)
        if self.mean is not None:
            x -= self.mean[window]
        elif len(self.mean_values) == 1:
            x -= self.mean_values[0]
        elif len(self.mean_values):
            x -= self.mean_values[:, None, None]
        if self.scale != 1:
            x *= self.scale
        if do_mirror:
            x = x[:, :, ::-1]
        if out is None:
            return np.ascontiguousarray(x)
        out[...] = x
        return out
