"""pycaffe's ``caffe.Classifier``: a net that classifies images, averaging over ten crops or
taking the centre one; and what it shares with ``caffe.Detector``: the image input's
Transformer, and running many images through a net of a fixed batch size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caffe.io import Transformer, resize_image
from caffe.io import oversample as ten_crops
from caffec.errors import UserError, shape_text
from caffec.net import Net
from caffec.runtime.compiled_net import TEST


def image_transformer(
    net: Net,
    mean: Any = None,
    input_scale: float | None = None,
    raw_scale: float | None = None,
    channel_swap: Sequence[int] | None = None,
) -> Transformer:
    """A Transformer from H×W×K images to the net's first input (N×C×H×W), with the
    preprocessing options Classifier and Detector take."""
    if not net.inputs or not net.outputs:
        raise UserError(
            "an image classifier or detector needs a net with an input and an output",
            hint="declare the image input with an Input layer (or input/input_shape)",
        )
    in_ = net.inputs[0]
    transformer = Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


def forward_images(net: Net, transformer: Transformer, images: Sequence[np.ndarray]) -> np.ndarray:
    """The net's first output for each image, preprocessed for its first input.

    The images go through in batches of the input blob's batch size, the last batch padded
    with zeros, as pycaffe's ``forward_all`` runs them, so the net is never rebuilt.
    """
    in_, out = net.inputs[0], net.outputs[0]
    batch = np.stack([transformer.preprocess(in_, image) for image in images])
    size = net.blobs[in_].data.shape[0]
    results = []
    for start in range(0, len(batch), size):
        part = batch[start : start + size]
        padded = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
        padded[: len(part)] = part
        results.append(net.forward(**{in_: padded})[out][: len(part)].copy())
    return np.concatenate(results)


class Classifier(Net):
    """pycaffe's ``caffe.Classifier``: a TEST-phase net that predicts class probabilities
    for H×W×K images (as ``caffe.io.load_image`` gives).

    Images are resized to ``image_dims`` (the net's input size by default), then cropped to
    the input size; ``mean``, ``input_scale``, ``raw_scale`` and ``channel_swap`` configure
    ``self.transformer`` as the ``caffe.io.Transformer`` setters of those names do.
    """

    def __init__(
        self,
        model_file: str | Path,
        pretrained_file: str | Path | None,
        image_dims: Sequence[int] | None = None,
        mean: Any = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
    ) -> None:
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = image_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None else np.array(image_dims)
        if self.image_dims.shape != (2,) or np.any(self.image_dims < self.crop_dims):
            raise UserError(
                f"image_dims {shape_text(self.image_dims.tolist())} cannot be cropped to the "
                f"net's input size {shape_text(self.crop_dims)}",
                hint="give image_dims as (height, width), at least the input's size",
            )

    def predict(self, inputs: Sequence[Any], oversample: bool = True) -> np.ndarray:
        """Class probabilities, one row per image: averaged over the ten crops of
        ``caffe.io.oversample`` (True), or from the centre crop alone (False)."""
        if len(inputs) == 0:
            raise UserError("predict needs at least one image")
        resized = [resize_image(image, self.image_dims) for image in inputs]
        if not oversample:
            top, left = (self.image_dims - self.crop_dims) // 2
            height, width = self.crop_dims
            crops = [image[top : top + height, left : left + width] for image in resized]
            return forward_images(self, self.transformer, crops)
        predictions = forward_images(self, self.transformer, ten_crops(resized, self.crop_dims))
        return predictions.reshape(len(resized), 10, -1).mean(1)
