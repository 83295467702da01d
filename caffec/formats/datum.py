"""Caffe's ``Datum``: one image (raw pixels, floats, or an encoded file) and its label."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.images import decode_image


def parse_datum(value: bytes, where: str) -> caffe_pb2.Datum:
    """A Datum from a database record, or a UserError naming the record."""
    try:
        return caffe_pb2.Datum.FromString(value)
    except DecodeError as err:
        raise UserError(
            f"{where} is not a Caffe Datum (corrupt record: {err})",
            hint="the database is damaged or was not written by Caffe's tools; convert it again",
        ) from None


def datum_array(datum: caffe_pb2.Datum, where: str, mode: str | None = None) -> np.ndarray:
    """A Datum's image as a (C, H, W) array: uint8 for ``data``, float32 for ``float_data``.

    Encoded Datums are decoded (``mode``: "color", "gray" or None for the
    image's own channels).
    """
    if datum.encoded:
        return decode_image(datum.data, mode, where)
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if min(shape) <= 0:
        raise UserError(
            f"{where}: the Datum's shape {shape_text(shape)} is not a valid image shape",
            hint="the database is damaged or was not written by Caffe's tools",
        )
    if len(datum.data):
        values, what = np.frombuffer(datum.data, dtype=np.uint8), "bytes of data"
    else:
        values, what = np.asarray(datum.float_data, dtype=np.float32), "float_data values"
    if values.size != count:
        raise UserError(
            f"{where}: the Datum says {shape_text(shape)} ({count} values) but holds "
            f"{values.size} {what}",
            hint="the database is damaged; convert it again",
        )
    return values.reshape(shape)
