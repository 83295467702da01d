"""pycaffe's ``caffe.Detector``: classify windows of images, each cropped (with R-CNN's
context padding if asked) and warped to the net's input size."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caffe.classifier import forward_images, image_transformer
from caffe.io import load_image, resize_image
from caffec.errors import UserError, shape_text
from caffec.net import Net
from caffec.runtime.compiled_net import TEST

Window = Sequence[int]  # (ymin, xmin, ymax, xmax) in pixels, the maxima exclusive


class Detector(Net):
    """pycaffe's ``caffe.Detector``: a TEST-phase net that scores windows of images.

    ``mean``, ``input_scale``, ``raw_scale`` and ``channel_swap`` configure
    ``self.transformer`` as in ``caffe.Classifier``; ``context_pad`` is the border, in input
    pixels, that shows the window's surroundings (see :meth:`crop`).
    """

    def __init__(
        self,
        model_file: str | Path,
        pretrained_file: str | Path | None,
        mean: Any = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
        context_pad: int | None = None,
    ) -> None:
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = image_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(
        self, images_windows: Iterable[tuple[str | os.PathLike[str], Iterable[Window]]]
    ) -> list[dict[str, Any]]:
        """Score each window of each image file: a list, in the order given, of
        ``{"window": ..., "prediction": the net's first output, "filename": ...}``."""
        images_windows = [(filename, list(windows)) for filename, windows in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = load_image(filename)
            crops += [self.crop(image, window) for window in windows]
        if not crops:
            return []
        predictions = forward_images(self, self.transformer, crops)
        found = [(filename, window) for filename, windows in images_windows for window in windows]
        return [
            {"window": window, "prediction": prediction, "filename": filename}
            for (filename, window), prediction in zip(found, predictions, strict=True)
        ]

    def detect_selective_search(
        self, image_fnames: Iterable[str | os.PathLike[str]]
    ) -> list[dict[str, Any]]:
        """Score the windows that Selective Search proposes for each image file.

        As in pycaffe, the proposals come from the ``selective_search_ijcv_with_python``
        module, which runs the Selective Search MATLAB code; it is not part of caffec.
        """
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise UserError(
                "detect_selective_search needs the module selective_search_ijcv_with_python "
                "(and MATLAB, which it runs)",
                hint="install it from the sergeyk/selective_search_ijcv_with_python "
                "repository, or find windows another way and call "
                "detect_windows([(filename, windows), ...])",
            ) from None
        filenames = [os.path.abspath(f) for f in image_fnames]  # MATLAB runs elsewhere
        proposals = selective_search.get_windows(filenames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(filenames, proposals, strict=True))

    def crop(self, im: np.ndarray, window: Window) -> np.ndarray:
        """The part of an H×W×K image that ``window`` covers.

        With a ``context_pad``, the box is widened about its centre so that, once warped to
        the input size, a ``context_pad``-pixel border shows what surrounds the window (as in
        R-CNN); where the widened box leaves the image, the crop holds the mean, so the net
        sees zeros there after preprocessing. The crop then has the input's size.
        """
        im = np.asarray(im)
        window = np.asarray(window)
        if window.shape != (4,) or window.dtype.kind not in "iuf":
            raise UserError(f"a window is (ymin, xmin, ymax, xmax), not {window.tolist()}")
        window = window.astype(np.int64)  # as old numpy sliced with float coordinates
        if not self.context_pad:
            crop = im[window[0] : window[2], window[1] : window[3]]
            if crop.size == 0:
                raise outside(window, im)
            return crop
        size = self.crop_dims[:2]
        half = (window[2:] - window[:2] + 1) / 2.0
        centre = window[:2] + half
        widen = size / (size - 2.0 * self.context_pad)
        box = np.round(np.concatenate([centre - widen * half, centre + widen * half]))
        # input pixels per image pixel, and the input pixels the box's overhang above and to
        # the left of the image takes
        ratio = size / (box[2:] - box[:2] + 1)
        pad = np.round(np.maximum(0, -box[:2]) * ratio).astype(int)
        box = np.clip(box, 0, im.shape[:2] * 2).astype(int)
        inside = np.minimum(np.round((box[2:] - box[:2] + 1) * ratio).astype(int), size - pad)
        context = im[box[0] : box[2], box[1] : box[3]]
        if context.size == 0 or inside.min() <= 0:
            raise outside(window, im)
        crop = np.empty(self.crop_dims, dtype=np.float32)
        crop[...] = self.crop_mean
        crop[pad[0] : pad[0] + inside[0], pad[1] : pad[1] + inside[1]] = resize_image(
            context, inside
        )
        return crop

    def configure_crop(self, context_pad: int | None) -> None:
        """Set ``crop_dims`` (the input's H×W×K) and the context pad; with a pad, also
        ``crop_mean``, the mean in the image's layout and scale, which fills the padding."""
        in_ = self.inputs[0]
        to_image = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[to_image]
        self.context_pad = context_pad
        if not context_pad:
            return
        if 2 * context_pad >= min(self.crop_dims[:2]):
            raise UserError(
                f"context_pad {context_pad} leaves no room for the window in the "
                f"{shape_text(self.crop_dims[:2])} input",
                hint="use a pad under half the input's size (R-CNN uses 16 for 227)",
            )
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float64).transpose(to_image)
        if in_ in self.transformer.channel_swap:
            crop_mean = crop_mean[:, :, np.argsort(self.transformer.channel_swap[in_])]
        if in_ in self.transformer.raw_scale:
            crop_mean /= self.transformer.raw_scale[in_]
        self.crop_mean = crop_mean


def outside(window: np.ndarray, im: np.ndarray) -> UserError:
    """The error for a window that leaves nothing of the image to crop."""
    return UserError(
        f"the window {window.tolist()} covers no pixel of the {shape_text(im.shape[:2])} image",
        hint="windows are (ymin, xmin, ymax, xmax), inside the image, min < max",
    )
