"""Caffe's convert_cifar_data: CIFAR-10's binary batches into a training and a test database.

CIFAR-10's binary version holds records of one label byte and 3072 pixel bytes (a 32x32
image as its red, green and blue planes, in that order). Each record becomes a 3x32x32
uint8 Datum with its label, its planes kept in the file's RGB order as Caffe keeps them,
keyed ``%05d`` by its position: across ``data_batch_1.bin`` .. ``data_batch_5.bin`` for
``cifar10_train_<backend>``, in ``test_batch.bin`` for ``cifar10_test_<backend>``. Caffe
numbers a training record ``10000 * batch + item``, which is its position when every batch
holds CIFAR-10's 10000 records.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.tools.db_writer import DBWriter, backend_name

PathLike = str | os.PathLike[str]

SIZE = 32
RECORD_BYTES = 1 + 3 * SIZE * SIZE
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: its labels and its images, uint8 Nx3x32x32."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise UserError(
            f"{path} holds {raw.size} bytes, not a whole number of CIFAR-10 records of "
            f"{RECORD_BYTES} bytes (a label byte and 3072 pixel bytes)",
            hint="give the folder of CIFAR-10's binary version (cifar-10-binary.tar.gz, "
            "extracted); CIFAR-100's records have two label bytes and do not fit",
        )
    records = raw.reshape(-1, RECORD_BYTES)
    return records[:, 0], records[:, 1:].reshape(-1, 3, SIZE, SIZE)


def convert_cifar(
    input_folder: PathLike, output_folder: PathLike, backend: str = "lmdb"
) -> dict[Path, int]:
    """Write ``cifar10_train_<backend>`` and ``cifar10_test_<backend>`` into ``output_folder``
    from the batches in ``input_folder``; the number of records each database got.

    Every input is checked before anything is written; each database is written under a
    temporary name and renamed into place once both are complete.
    """
    backend = backend_name(backend)
    folder = Path(input_folder)
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{folder} has no {', '.join(missing)}",
            hint=f"give the folder that holds {', '.join(TRAIN_FILES)} and {TEST_FILE} "
            "(CIFAR-10's binary version, extracted)",
        )
    train = [_read_batch(folder / name) for name in TRAIN_FILES]
    test = _read_batch(folder / TEST_FILE)
    out = Path(output_folder)
    parts = {
        out / f"cifar10_train_{backend}": (
            np.concatenate([labels for labels, _ in train]),
            np.concatenate([images for _, images in train]),
        ),
        out / f"cifar10_test_{backend}": test,
    }
    with contextlib.ExitStack() as stack:
        writers = {path: stack.enter_context(DBWriter(path, backend)) for path in parts}
        datum = caffe_pb2.Datum(channels=3, height=SIZE, width=SIZE)
        for path, (labels, images) in parts.items():
            for i, (label, image) in enumerate(zip(labels, images, strict=True)):
                datum.label = int(label)
                datum.data = image.tobytes()
                writers[path].put(b"%05d" % i, datum.SerializeToString())
        return {path: writer.count for path, writer in writers.items()}
