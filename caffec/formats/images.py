"""Images as Caffe reads them through OpenCV: decoded to (C, H, W) uint8 in BGR order, and
OpenCV's bilinear resize. Pillow (the ``data`` extra) is imported on first use."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError
from caffec.formats.optional import optional_module


def pillow() -> Any:
    """The PIL.Image module, or a UserError saying how to install it."""
    return optional_module("PIL.Image", "Pillow")


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


def _decoding_errors(image_module: Any) -> tuple[type[Exception], ...]:
    """What Pillow raises for bytes that are not an image it can decode: a damaged header
    claiming billions of pixels is a DecompressionBombError, which is none of the others."""
    return (OSError, ValueError, SyntaxError, image_module.DecompressionBombError)


def decode_image(data: bytes, mode: str | None, what: str) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) held in memory; see :func:`image_to_chw`."""
    image_module = pillow()
    try:
        with image_module.open(io.BytesIO(data)) as image:
            image.load()
            return image_to_chw(image, mode)
    except _decoding_errors(image_module) as err:
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
    except _decoding_errors(image_module) as err:
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
