"""The writing half of Caffe's extract_features: blobs' values, item by item, as Datums.

The net that computes the blobs runs above this package (``caffec extract-features``
drives it); here each forward's blobs become records: one database per blob, one
record per item of the batch, keyed by the item's running index as Caffe formats it
(ten digits, zero-padded). A record is a float Datum whose channels, height and width
are the blob's legacy shape past the batch axis (an inner product's N x D blob gives
D x 1 x 1), as Caffe's tool sets them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.tools.db_writer import DBWriter

PathLike = str | os.PathLike[str]


def _legacy_item_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Channels, height and width of one item of a blob, as Caffe's legacy accessors give
    them (missing axes are 1; more than four axes have no legacy shape)."""
    if not 1 <= len(shape) <= 4:
        raise UserError(
            f"the blob '{name}' is {shape_text(shape)}; a feature blob has a batch axis and "
            "at most three more (a Datum's channels, height and width)",
            hint="extract a blob of at most four axes, e.g. after a Flatten or InnerProduct",
        )
    channels, height, width = (*shape[1:], 1, 1, 1)[:3]
    return channels, height, width


def write_features(
    batches: Iterable[Sequence[np.ndarray]],
    blob_names: Sequence[str],
    dbs: Sequence[PathLike],
    backend: str,
) -> list[int]:
    """Write each batch's blobs (one array per name, batch axis first) into the database of
    the same position; the number of records each database got. The databases are new
    and appear only when every batch is written."""
    if len(blob_names) != len(dbs):
        raise UserError(
            f"{len(blob_names)} blob names ({','.join(blob_names)}) for {len(dbs)} databases",
            hint="give one database per blob, in the same order, separated by commas",
        )
    if len({os.path.abspath(db) for db in dbs}) != len(dbs):
        raise UserError(
            f"a database is named twice in {','.join(map(os.fspath, dbs))}",
            hint="give each blob a database of its own",
        )
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(DBWriter(db, backend)) for db in dbs]
        for blobs in batches:
            for name, values, db in zip(blob_names, blobs, writers, strict=True):
                channels, height, width = _legacy_item_shape(name, values.shape)
                datum = caffe_pb2.Datum(channels=channels, height=height, width=width)
                for item in values.reshape(len(values), -1):
                    datum.float_data[:] = item
                    db.put(b"%010d" % db.count, datum.SerializeToString())
        return [writer.count for writer in writers]
