"""Caffe's convert_mnist_siamese_data: pairs of MNIST images for a siamese net.

Each record is a 2xHxW uint8 Datum, one image per channel, labelled 1 when the two
digits match and 0 otherwise, keyed ``%08d``; there are as many pairs as images. Caffe
picks both images of every pair uniformly at random with its own generator, seeded
differently on every run; caffec draws them from numpy's ``default_rng(seed)``, so the
same seed gives the same database (the pairs are not Caffe's).
"""

from __future__ import annotations

import os

import numpy as np

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.tools.convert import read_mnist
from caffec.tools.db_writer import DBWriter

PathLike = str | os.PathLike[str]


def convert_mnist_siamese(
    images: PathLike, labels: PathLike, out: PathLike, backend: str = "leveldb", seed: int = 0
) -> int:
    """Write one random pair per image of the IDX files into the database ``out``; the
    number of pairs written. LevelDB by default, as Caffe's tool writes."""
    pixels, classes = read_mnist(images, labels)
    count, rows, cols = pixels.shape
    if count == 0:
        raise UserError(f"{images} holds no images; there are no pairs to make")
    pairs = np.random.default_rng(int(seed) % (1 << 64)).integers(0, count, size=(count, 2))
    datum = caffe_pb2.Datum(channels=2, height=rows, width=cols)
    with DBWriter(out, backend) as db:
        for item, (i, j) in enumerate(pairs):
            datum.data = pixels[i].tobytes() + pixels[j].tobytes()
            datum.label = int(classes[i] == classes[j])
            db.put(b"%08d" % item, datum.SerializeToString())
        return db.count
