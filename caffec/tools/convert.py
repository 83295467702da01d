"""Caffe's data tools: databases of Datum records and mean images.

- :func:`convert_mnist` is ``convert_mnist_data``: IDX images and labels
  (plain or gzipped) into an LMDB or LevelDB of Datums keyed ``%08d``.
- :func:`convert_imageset` is ``convert_imageset``: a ``path label`` list of
  images into Datums keyed ``%08d_<path>``, raw BGR pixels or encoded.
- :func:`compute_mean` is ``compute_image_mean``: the per-pixel mean of a
  database as a 1xCxHxW ``.binaryproto`` for ``transform_param.mean_file``.

Databases are written through :class:`~caffec.tools.db_writer.DBWriter`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import Blob
from caffec.formats.binaryproto_writer import write_blobproto
from caffec.formats.databases import iter_db
from caffec.formats.datum import datum_array, parse_datum
from caffec.formats.idx import read_idx
from caffec.formats.images import pillow, read_image, resize_bilinear
from caffec.formats.lists import parse_image_list
from caffec.tools.db_writer import DBWriter, backend_name

__all__ = ["compute_mean", "convert_imageset", "convert_mnist"]

PathLike = str | os.PathLike[str]

_FORMATS = {  # encode_type -> Pillow format
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "ppm": "PPM",
    "pgm": "PPM",
    "pbm": "PPM",
    "webp": "WEBP",
}


# --------------------------------------------------------------------------- MNIST


def read_mnist(images: PathLike, labels: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's images (uint8 NxHxW) and their labels from IDX files, plain or gzipped,
    checked to be the pair they should be (the files swapped or mismatched say so)."""
    pixels = read_idx(images)
    classes = read_idx(labels)
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise UserError(
            f"{images} holds {pixels.dtype.name} {shape_text(pixels.shape)}; MNIST images "
            "are uint8 NxHxW (an idx3-ubyte file)",
            hint="give the images file first and the labels file second",
        )
    if classes.ndim != 1 or classes.dtype.kind not in "iu":
        raise UserError(
            f"{labels} holds {classes.dtype.name} {shape_text(classes.shape)}; MNIST labels "
            "are one integer per image (an idx1-ubyte file)",
            hint="give the images file first and the labels file second",
        )
    if len(pixels) != len(classes):
        raise UserError(
            f"{images} holds {len(pixels)} images but {labels} holds {len(classes)} labels",
            hint="give the labels file that belongs to the images file",
        )
    return pixels, classes


def convert_mnist(images: PathLike, labels: PathLike, out: PathLike, backend: str = "lmdb") -> int:
    """Caffe's convert_mnist_data: IDX files into a database of Datums; the count written.

    Each record is a 1xHxW uint8 Datum with its label, keyed ``%08d`` by its
    position in the files. Gzipped IDX files are read as they are.
    """
    pixels, classes = read_mnist(images, labels)
    _, rows, cols = pixels.shape
    datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
    with DBWriter(out, backend) as db:
        for i in range(len(pixels)):
            datum.data = pixels[i].tobytes()
            datum.label = int(classes[i])
            db.put(b"%08d" % i, datum.SerializeToString())
        return db.count


# --------------------------------------------------------------------------- image sets


def _match_ext(name: str, encoding: str) -> bool:
    """Caffe's matchExt: the file's extension is the encoding (jpeg counts as jpg)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else name.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def _encode(image: np.ndarray, encoding: str, where: str) -> bytes:
    """A (C, H, W) BGR or gray uint8 image as an encoded file (OpenCV's imencode)."""

    form = _FORMATS.get(encoding)
    if form is None:
        raise UserError(
            f"{where}: cannot encode images as '{encoding}'",
            hint=f"use one of: {', '.join(sorted(_FORMATS))}",
        )
    if image.shape[0] == 1:
        picture = pillow().fromarray(image[0], mode="L")
    else:
        picture = pillow().fromarray(np.ascontiguousarray(image[::-1].transpose(1, 2, 0)), "RGB")
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": 95} if form == "JPEG" else {}
    try:
        picture.save(buffer, format=form, **options)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{where}: cannot encode the image as {encoding}: {err}") from None
    return buffer.getvalue()


def convert_imageset(
    root: PathLike,
    list_file: PathLike,
    out: PathLike,
    resize_height: int = 0,
    resize_width: int = 0,
    gray: bool = False,
    shuffle: bool = False,
    encoded: bool = False,
    encode_type: str = "",
    backend: str = "lmdb",
    seed: int = 0,
    check_size: bool = False,
) -> int:
    """Caffe's convert_imageset: the images of a ``path label`` list into a database.

    Paths are relative to ``root``. Images are read in colour (BGR, as
    OpenCV reads them) or ``gray``, resized to ``resize_height`` x
    ``resize_width`` when both are set, and stored as raw pixels, or
    ``encoded`` (``encode_type`` such as jpg or png, else each file's own
    format; a file already in that format and not resized is stored as its
    bytes). ``shuffle`` shuffles the list first, seeded by ``seed``. Keys
    are ``%08d_<path>``. ``check_size`` refuses images of different sizes.
    Returns the number of records written.
    """
    list_path = Path(list_file)
    if not list_path.is_file():
        raise UserError(f"the image list {list_path} does not exist")
    lines = parse_image_list(list_path, "convert_imageset")
    if shuffle:
        order = np.random.default_rng(int(seed) % (1 << 64)).permutation(len(lines))
        lines = [lines[i] for i in order]
    resize_height, resize_width = max(0, int(resize_height)), max(0, int(resize_width))
    if (resize_height > 0) != (resize_width > 0):
        raise UserError(
            "give both resize_height and resize_width, or neither",
            hint="Caffe resizes only when both are set",
        )
    encoded = encoded or bool(encode_type)
    mode = "gray" if gray else "color"
    first_shape: tuple[int, ...] | None = None
    with DBWriter(out, backend) as db:
        for line_id, (name, label, number) in enumerate(lines):
            where = f"line {number} of {list_path}"
            path = Path(os.path.join(os.fspath(root), name))
            if not path.exists():
                raise UserError(
                    f"{where} names '{name}', which is not in {root} ({path} does not exist)",
                    hint="check the list and the root folder",
                )
            image = read_image(path, mode, where)
            if resize_height:
                image = resize_bilinear(image, resize_height, resize_width)
            if check_size:
                if first_shape is None:
                    first_shape = image.shape
                elif image.shape != first_shape:
                    raise UserError(
                        f"{where}: the image {path} is {shape_text(image.shape)}, the first one "
                        f"was {shape_text(first_shape)}",
                        hint="resize the images (resize_height, resize_width), or leave "
                        "check_size off",
                    )
            datum = caffe_pb2.Datum(label=label)
            if encoded:
                encoding = encode_type.lower() or (
                    name.rsplit(".", 1)[-1].lower() if "." in name else ""
                )
                if not resize_height and _match_ext(name, encoding):
                    datum.data = path.read_bytes()
                else:
                    datum.data = _encode(image, encoding, where)
                datum.encoded = True
            else:
                datum.channels, datum.height, datum.width = image.shape
                datum.data = image.tobytes()
            key = f"{line_id:08d}_{name}".encode("utf-8", errors="surrogateescape")
            db.put(key, datum.SerializeToString())
        return db.count


# --------------------------------------------------------------------------- mean images


def compute_mean(db: PathLike, out: PathLike | None = None, backend: str = "lmdb") -> np.ndarray:
    """Caffe's compute_image_mean: the per-pixel mean of a database's images.

    Returns it as a 1xCxHxW float32 array and, given ``out``, writes it there as a
    ``.binaryproto`` with the legacy num/channels/height/width shape, as Caffe's tool
    writes it. Encoded records are decoded with their own channels. The sum is kept in
    float64 (Caffe's float32 sum loses precision past 2**24).
    """
    path = Path(db)
    name = backend_name(backend).upper()
    total: np.ndarray | None = None
    count = 0
    for key, value in iter_db(path, name):
        where = f"record '{key.decode('utf-8', errors='backslashreplace')}' of {path}"
        image = datum_array(parse_datum(value, where), where)
        if total is None:
            total = np.zeros(image.shape, dtype=np.float64)
        elif image.shape != total.shape:
            raise UserError(
                f"{where} is {shape_text(image.shape)}, the records before it are "
                f"{shape_text(total.shape)}",
                hint="a mean image needs images of one size; resize them when converting",
            )
        total += image
        count += 1
    if total is None:
        raise UserError(f"the database {path} is empty; there is no mean to compute")
    mean = (total / count).astype(np.float32)[None]
    if out is not None:
        write_blobproto(out, Blob(data=mean, diff=None, legacy_shape=True))
    return mean
