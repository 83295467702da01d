"""Caffe's DataTransformer: mean subtraction, scaling, cropping and mirroring.

The order is Caffe's (``data_transformer.cpp``): every output element is
``(x - mean) * scale``, where ``mean`` is the mean file's value at the
element's position in the *uncropped* image or the channel's ``mean_value``;
the crop window is random in TRAIN and centred in TEST; a random horizontal
flip happens wherever ``mirror`` is set (Caffe flips in TEST too when a TEST
layer asks for it). Caffe draws the flip first, then the crop's row, then its
column; so does this module, from the numpy Generator of the image's batch
(:class:`caffec.runtime.random_seed.LayerRandom`).

Images reach the transformer as ``(channels, height, width)`` arrays (uint8
pixels or floats), colour in Caffe's BGR order (:mod:`caffec.formats.images`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats.binaryproto import read_blobproto

Shape = tuple[int, ...]


def load_mean_file(path: Path) -> np.ndarray:
    """The mean image of a .binaryproto, squeezed to (C, H, W)."""
    data = read_blobproto(path).data
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise UserError(
            f"the mean file {path} holds a blob of shape {shape_text(data.shape)}; "
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
        resolve: Callable[[str], Path | None],
        what: str,
    ) -> None:
        self.what = what
        self.phase = phase
        self.dtype = np.dtype(dtype)
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

    def out_shape(self, chw: Shape) -> Shape:
        """The shape an image of ``chw`` has after the transform (the crop)."""
        return (chw[0], self.crop, self.crop) if self.crop else tuple(chw)

    def check(self, chw: Shape, where: str) -> None:
        """Refuse an image the transform cannot apply to, as Caffe's CHECKs do."""
        c, h, w = chw
        if self.crop and (h < self.crop or w < self.crop):
            raise UserError(
                f"{where} is {shape_text(chw)}, smaller than crop_size {self.crop}",
                hint="lower transform_param.crop_size or use larger images",
            )
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise UserError(
                f"{where} is {shape_text(chw)}, but the mean file {self.mean_path} is "
                f"{shape_text(self.mean.shape)}",
                hint="the mean must have the images' shape before cropping; compute it from "
                "the same data (compute_mean)",
            )
        if len(self.mean_values) not in (0, 1, c):
            raise UserError(
                f"{where} has {c} channels, but transform_param gives "
                f"{len(self.mean_values)} mean_value entries",
                hint="give one mean_value, or one per channel",
            )

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Transform one (C, H, W) image into ``out`` (a new array when None), drawing its
        flip and crop from ``rng``."""
        c, h, w = image.shape
        do_mirror = self.mirror and bool(rng.integers(2))
        h_off = w_off = 0
        oh, ow = h, w
        if self.crop:
            oh = ow = self.crop
            if self.phase == "TRAIN":
                h_off = int(rng.integers(h - self.crop + 1))
                w_off = int(rng.integers(w - self.crop + 1))
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
