"""Caffe's WindowData layer (R-CNN fine-tuning): foreground and background windows sampled
at random from a window file, warped to ``crop_size`` with ``context_pad``, as Caffe's
``window_data_layer.cpp`` does. Each batch samples its windows (and their flips) from its
own generator, so that a resume at batch k makes batch k straight away."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.images import decode_image, read_image, resize_bilinear
from caffec.formats.lists import read_lines
from caffec.runtime.sources import LOOKUP_HINT, Batch, Source, effective_transform, resolver
from caffec.runtime.transform import Transformer


def _c_round(x: float) -> int:
    """C's round(): halves away from zero."""
    return int(np.floor(x + 0.5)) if x >= 0 else -int(np.floor(-x + 0.5))


class WindowDataSource(Source):
    """Caffe's WindowData layer (R-CNN fine-tuning): sampled windows, warped."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, **kw: Any):
        super().__init__(**kw)
        wp = p.window_data_param
        self.check_label_top()
        found = self.find(resolve, wp.source, "the window file", "window_data_param.source")
        self.window_file = found
        t = effective_transform(p, wp)
        self.what = f"layer '{self.layer}'"
        self.crop = int(t.crop_size)
        if self.crop <= 0:
            raise UserError(f"{self.what}: WindowData needs transform_param.crop_size")
        if 2 * wp.context_pad >= self.crop:
            raise UserError(
                f"{self.what}: context_pad {wp.context_pad} leaves nothing of a "
                f"{self.crop}-pixel crop",
                hint="context_pad must be less than half of crop_size",
            )
        # The mean, scale and checks are the transformer's; the warping is the layer's own.
        self.transform = Transformer(t, self.phase, self.dtype, resolve, self.what)
        self.context_pad = int(wp.context_pad)
        self.square = wp.crop_mode == "square"
        if wp.crop_mode not in ("warp", "square"):
            raise UserError(
                f"{self.what}: crop_mode '{wp.crop_mode}' is not 'warp' or 'square'",
            )
        self.fg_fraction = float(wp.fg_fraction)
        self.images: dict[int, Path] = {}
        self.cache: dict[int, bytes] | None = {} if wp.cache_images else None
        # (image, label, x1, y1, x2, y2, the line of the window file that gives the window)
        self.fg: list[tuple[int, ...]] = []
        self.bg: list[tuple[int, ...]] = []
        self._parse(found, wp, resolver(self.net_dir, found.parent))
        want = self.shapes[self.tops[0]][1:]
        if want != (3, self.crop, self.crop):
            raise UserError(
                f"{self.what}: WindowData makes 3x{self.crop}x{self.crop} windows, but the "
                f"net's top '{self.tops[0]}' was compiled as "
                f"{shape_text(self.shapes[self.tops[0]])}",
                hint=f"compile with --shape {self.tops[0]}={self.batch_size},3,{self.crop},"
                f"{self.crop}",
            )
        values = len(self.transform.mean_values)
        if values not in (0, 1, 3):
            raise UserError(
                f"{self.what}: WindowData makes 3-channel windows, but transform_param gives "
                f"{values} mean_value entries",
                hint="give one mean_value, or one per channel",
            )
        mean = self.transform.mean
        if mean is not None and (
            mean.shape[0] != 3 or mean.shape[1] < self.crop or mean.shape[2] < self.crop
        ):
            raise UserError(
                f"{self.what}: the mean file is {shape_text(mean.shape)}; WindowData needs a "
                f"3-channel mean of at least the {self.crop}x{self.crop} crop (its centre is used)",
            )
        num_fg = self._num_fg()
        for kind, windows, count in (
            ("background", self.bg, self.batch_size - num_fg),
            ("foreground", self.fg, num_fg),
        ):
            if count and not windows:
                raise UserError(
                    f"{self.what}: the window file {found} has no {kind} windows to sample",
                    hint="check fg_threshold, bg_threshold and fg_fraction",
                )

    def _num_fg(self) -> int:
        return int(np.float32(self.batch_size) * np.float32(self.fg_fraction))

    def _parse(self, path: Path, wp: Any, resolve: Callable[[str], Path | None]) -> None:
        tokens: list[tuple[str, int]] = []
        for number, line in enumerate(read_lines(path, self.layer, "window file"), 1):
            tokens += [(token, number) for token in line.split()]
        if not tokens:
            raise UserError(f"{self.what}: the window file {path} is empty")
        position = 0

        def take(kind: type, what: str) -> Any:
            nonlocal position
            if position >= len(tokens):
                raise UserError(f"{self.what}: {path} ends where {what} should be")
            token, number = tokens[position]
            position += 1
            try:
                return kind(token)
            except ValueError:
                raise UserError(
                    f"{self.what}: line {number} of {path}: expected {what}, found '{token}'",
                    hint="window files hold '# index', the image path, channels, height, "
                    "width, the number of windows, then 'label overlap x1 y1 x2 y2' lines",
                ) from None

        while position < len(tokens):
            token, number = tokens[position]
            if token != "#":
                raise UserError(
                    f"{self.what}: line {number} of {path}: expected '#' starting an image, "
                    f"found '{token}'",
                )
            position += 1
            index = take(int, "an image index")
            name = wp.root_folder + take(str, "an image path")
            image_path = resolve(name)
            if image_path is None:
                raise UserError(
                    f"{self.what}: line {number} of {path}: the image '{name}' does not exist",
                    hint=f"check the window file and root_folder; {LOOKUP_HINT}",
                )
            self.images[index] = image_path
            if self.cache is not None:
                self.cache[index] = image_path.read_bytes()
            for what in ("the channels", "the height", "the width"):
                take(int, what)
            for _ in range(take(int, "the number of windows")):
                label = take(int, "a window's label")
                line = tokens[position - 1][1]  # the label's line
                overlap = take(float, "a window's overlap")
                box = [take(int, f"a window's {c}") for c in ("x1", "y1", "x2", "y2")]
                if overlap >= wp.fg_threshold:
                    if label <= 0:
                        raise UserError(
                            f"{self.what}: {path}: a foreground window of image {index} has "
                            f"label {label}; labels of objects start at 1 (0 is background)",
                        )
                    self.fg.append((index, label, *box, line))
                elif overlap < wp.bg_threshold:
                    self.bg.append((index, 0, *box, line))

    def _load(self, index: int, where: str) -> np.ndarray:
        if self.cache is not None:
            return decode_image(self.cache[index], "color", where)
        return read_image(self.images[index], "color", where)

    def _window(self, window: tuple[int, ...], out: np.ndarray, rng: np.random.Generator) -> None:
        index, _, x1, y1, x2, y2, _ = window
        where = f"{self.what}: image {index} of {self.window_file}"
        do_mirror = self.transform.mirror and bool(rng.integers(2))
        image = self._load(index, where)
        _, rows, cols = image.shape
        crop = self.crop
        f = np.float32
        out_h = out_w = crop
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.square:
            context_scale = f(crop) / f(crop - 2 * self.context_pad)
            half_h, half_w = f(y2 - y1 + 1) / f(2), f(x2 - x1 + 1) / f(2)
            center_x, center_y = f(x1) + half_w, f(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1 = _c_round(center_x - half_w * context_scale)
            x2 = _c_round(center_x + half_w * context_scale)
            y1 = _c_round(center_y - half_h * context_scale)
            y2 = _c_round(center_y + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = f(crop) / f(unclipped_w), f(crop) / f(unclipped_h)
            out_w = _c_round(f(x2 - x1 + 1) * scale_x)
            out_h = _c_round(f(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _c_round(f(pad_x1) * scale_x), _c_round(f(pad_x2) * scale_x)
            pad_h = _c_round(f(pad_y1) * scale_y)
            pad_w = pad_x2 if do_mirror else pad_x1
            out_h = min(out_h, crop - pad_h)
            out_w = min(out_w, crop - pad_w)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows) or out_h <= 0 or out_w <= 0:
            raise UserError(
                f"{where}: the window ({x1}, {y1}, {x2}, {y2}) lies outside the "
                f"{cols}x{rows} image",
                hint="window corners are 0-based pixel coordinates inside the image",
            )
        warped = resize_bilinear(image[:, y1 : y2 + 1, x1 : x2 + 1], out_h, out_w)
        if do_mirror:
            warped = warped[:, :, ::-1]
        t = self.transform
        x = warped.astype(self.dtype)
        if t.mean is not None:
            off = (t.mean.shape[2] - crop) // 2
            x -= t.mean[:, off + pad_h : off + pad_h + out_h, off + pad_w : off + pad_w + out_w]
        elif len(t.mean_values) == 1:
            x -= t.mean_values[0]
        elif len(t.mean_values):
            x -= t.mean_values[:, None, None]
        out[...] = 0
        out[:, pad_h : pad_h + out_h, pad_w : pad_w + out_w] = x * t.scale

    def seek(self, items: int) -> None:
        """Nothing to move: windows are sampled at random, from each batch's generator."""

    def make(self, rng: np.random.Generator) -> Batch:
        out = self.new_batch()
        data = out[self.tops[0]]
        labels = np.empty(self.batch_size, dtype=self.dtype)
        num_fg = self._num_fg()
        item = 0
        for windows, count in ((self.bg, self.batch_size - num_fg), (self.fg, num_fg)):
            for _ in range(count):
                window = windows[int(rng.integers(len(windows)))]
                self._window(window, data[item], rng)
                labels[item] = window[1]
                out.origins.append(f"{self.window_file}:{window[6]}")
                item += 1
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.reshape(self.shapes[self.tops[1]])
        return out
