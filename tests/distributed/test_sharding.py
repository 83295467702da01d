"""Data-parallel ranks read their own records of a database: Caffe's DataLayer::Skip."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from caffec.cli import main
from caffec.formats.manifest import FeederEntry
from caffec.runtime import distributed
from caffec.runtime.feeder import make_feeder


@pytest.fixture
def ranks() -> Iterator[None]:
    yield
    distributed.set_solver_rank(0)
    distributed.set_solver_count(1)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LMDB of 10 4x4 images, the label of each its index."""
    folder = tmp_path_factory.mktemp("shard")
    for name, array in (("images", np.zeros((10, 4, 4), np.uint8)),
                        ("labels", np.arange(10, dtype=np.uint8))):  # fmt: skip
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (folder / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    db = folder / "db"
    assert (
        main(["convert-mnist", str(folder / "images.gz"), str(folder / "labels.gz"), str(db)]) == 0
    )
    return db


def labels(db: Path, batch: int, batches: int, phase: str = "TRAIN", skip: int = 0) -> list[int]:
    spec = FeederEntry(layer="data", type="Data", tops=["data", "label"],
                       param={"name": "data", "type": "Data",
                              "dataParam": {"source": str(db), "batchSize": batch,
                                            "backend": "LMDB"}})  # fmt: skip
    shapes = {"data": (batch, 1, 4, 4), "label": (batch,)}
    with make_feeder(spec, shapes, np.float32, phase, db.parent, 0, prefetch=0, skip=skip) as f:
        return [int(x) for _ in range(batches) for x in f.next()["label"]]


def test_ranks_together_read_what_one_process_reads(database: Path, ranks: None) -> None:
    one = labels(database, 6, 4)  # 24 records: round the database more than twice
    distributed.set_solver_count(3)
    shards = []
    for rank in range(3):
        distributed.set_solver_rank(rank)
        shards.append(labels(database, 2, 4))
    for b in range(4):  # batch b of each rank: the records of one process's batch b
        assert sorted(x for s in shards for x in s[2 * b : 2 * b + 2]) == sorted(
            one[6 * b : 6 * b + 6]
        )
    assert shards[1][:4] == [1, 4, 7, 0]  # every third record from the second on
    # an epoch of 10 records: no two ranks read the same one
    distributed.set_solver_count(2)
    epoch = []
    for rank in range(2):
        distributed.set_solver_rank(rank)
        epoch += labels(database, 5, 1)
    assert sorted(epoch) == list(range(10))


def test_a_resumed_rank_stands_where_it_would_have(database: Path, ranks: None) -> None:
    distributed.set_solver_count(2)
    distributed.set_solver_rank(1)
    assert labels(database, 3, 5)[9:] == labels(database, 3, 2, skip=3)


def test_every_rank_tests_on_every_record(database: Path, ranks: None) -> None:
    distributed.set_solver_count(2)
    distributed.set_solver_rank(1)
    assert labels(database, 5, 2, phase="TEST") == list(range(10))
