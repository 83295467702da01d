"""Resuming training at batch k: each batch draws its crops, flips and sampled windows from a
generator of its own, keyed by (seed, layer, batch index), so the readers seek to batch k
without reading (or transforming) the batches before it, and still make the batches a run
from the start makes. Every item of a batch also says where it was read from."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from test_data import Image, images, raw_datum, spec, write_db

from caffec.formats.manifest import FeederEntry
from caffec.runtime import sources, window_data
from caffec.runtime.feeder import Feeder, make_feeder

CROP_AND_MIRROR = {"crop_size": 3, "mirror": True}


def database(folder: Path, records: int = 7) -> Path:
    """Records '00' .. of 1x4x5 images (distinct pixels, so a crop and a flip show) with
    labels 0 ..."""
    x = images(records, (1, 4, 5), seed=3)
    return write_db(folder / "db", [(b"%02d" % i, raw_datum(x[i], i)) for i in range(records)])


def image_list(folder: Path, count: int = 5) -> Path:
    """img0.png .. listed with labels 0 .. (3x4x5 colour images)."""
    for i, rgb in enumerate(images(count, (4, 5, 3), seed=4)):
        Image.fromarray(rgb).save(folder / f"img{i}.png")
    listed = folder / "list.txt"
    listed.write_text("".join(f"{folder / f'img{i}.png'} {i}\n" for i in range(count)))
    return listed


def window_file(folder: Path) -> Path:
    """One 12x10 image with two foreground windows and two background ones."""
    Image.fromarray(images(1, (10, 12, 3), seed=5)[0]).save(folder / "im.png")
    windows = folder / "windows.txt"
    windows.write_text(f"# 0\n{folder / 'im.png'}\n3\n10\n12\n4\n"
                       "1 0.9 0 0 11 9\n2 0.8 2 1 9 8\n0 0.1 0 0 5 4\n0 0.2 4 3 11 9\n")  # fmt: skip
    return windows


def random_sources(folder: Path) -> dict[str, tuple[FeederEntry, tuple[int, ...]]]:
    """Sources whose every batch draws random numbers: a feeders entry and its data shape."""
    return {
        "Data, crop and mirror": (
            spec("Data", ["data", "label"], transform_param=CROP_AND_MIRROR,
                 data_param={"source": str(database(folder)), "batch_size": 3,
                             "backend": "LMDB"}),
            (3, 1, 3, 3)),
        "ImageData, shuffled, crop and mirror": (
            spec("ImageData", ["data", "label"], transform_param=CROP_AND_MIRROR,
                 image_data_param={"source": str(image_list(folder)), "batch_size": 2,
                                   "shuffle": True}),
            (2, 3, 3, 3)),
        "WindowData, mirror": (
            spec("WindowData", ["data", "label"],
                 transform_param={"crop_size": 4, "mirror": True},
                 window_data_param={"source": str(window_file(folder)), "batch_size": 4,
                                    "fg_fraction": 0.5}),
            (4, 3, 4, 4)),
    }  # fmt: skip


def feeder(entry: FeederEntry, shape: tuple[int, ...], skip: int = 0) -> Feeder:
    shapes = {"data": shape, "label": (shape[0],)}
    return make_feeder(entry, shapes, "float32", "TRAIN", ".", 11, prefetch=0, skip=skip)


@pytest.mark.parametrize("skip", [1, 4, 13])
def test_a_resumed_run_makes_the_batches_a_run_from_the_start_makes(
    tmp_path: Path, skip: int
) -> None:
    for name, (entry, shape) in random_sources(tmp_path).items():
        with feeder(entry, shape) as fresh, feeder(entry, shape, skip) as resumed:
            for _ in range(skip):
                fresh.next()
            for _ in range(6):  # on past the end of the data (and a reshuffle)
                want, got = fresh.next(), resumed.next()
                for top in ("data", "label"):
                    np.testing.assert_array_equal(got[top], want[top], err_msg=name)
                assert got.origins == want.origins, name


def test_batches_differ_from_each_other_and_between_seeds(tmp_path: Path) -> None:
    """The key includes the batch index and the seed: batches of one image differ."""
    db = write_db(tmp_path / "db", [(b"0", raw_datum(images(1, (1, 6, 6), seed=6)[0], 0))])
    entry = spec("Data", ["data", "label"], transform_param=CROP_AND_MIRROR,
                 data_param={"source": str(db), "batch_size": 8, "backend": "LMDB"})  # fmt: skip
    shapes = {"data": (8, 1, 3, 3), "label": (8,)}

    def batches(seed: int) -> list[np.ndarray]:
        with make_feeder(entry, shapes, "float32", "TRAIN", ".", seed, prefetch=0) as f:
            return [f.next()["data"] for _ in range(3)]

    first = batches(1)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert not np.array_equal(first[0], batches(2)[0])
    np.testing.assert_array_equal(np.stack(first), np.stack(batches(1)))


def counted(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Count the calls of ``module.name`` (one entry per call)."""
    calls: list[int] = []
    original: Callable = getattr(module, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


READERS = {  # what each source calls once per item it reads
    "Data, crop and mirror": (sources, "parse_datum"),
    "ImageData, shuffled, crop and mirror": (sources, "read_image"),
    "WindowData, mirror": (window_data, "read_image"),
}


@pytest.mark.parametrize("name", list(READERS))
def test_skipping_reads_none_of_the_skipped_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    entry, shape = random_sources(tmp_path)[name]
    calls = counted(monkeypatch, *READERS[name])
    with feeder(entry, shape, skip=1_000_000) as resumed:
        opened = len(calls)  # Data and ImageData check their first item when opened
        assert opened <= 1
        resumed.next()
        assert len(calls) == opened + shape[0]


def test_resuming_at_a_late_batch_is_immediate_with_random_crops(tmp_path: Path) -> None:
    entry, shape = random_sources(tmp_path)["Data, crop and mirror"]
    start = time.perf_counter()
    with feeder(entry, shape, skip=2**31 - 1) as resumed:
        labels = resumed.next()["label"]
    assert time.perf_counter() - start < 2
    first = (2**31 - 1) * 3 % 7
    np.testing.assert_array_equal(labels, [(first + i) % 7 for i in range(3)])


def origins_of(entry: FeederEntry, shapes: dict, batches: int) -> Iterator[list[str]]:
    with make_feeder(entry, shapes, "float32", "TEST", ".", 0, prefetch=0) as f:
        for _ in range(batches):
            yield f.next().origins


def test_every_item_says_where_it_was_read_from(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed")
    sources_ = random_sources(tmp_path)
    entry, shape = sources_["Data, crop and mirror"]
    db = tmp_path / "db"
    assert list(origins_of(entry, {"data": shape, "label": (3,)}, 3)) == [
        [f"record '{i % 7:02d}' of {db}" for i in range(first, first + 3)] for first in (0, 3, 6)
    ]
    entry, shape = sources_["ImageData, shuffled, crop and mirror"]
    listed = tmp_path / "list.txt"
    (seen,) = origins_of(entry, {"data": shape, "label": (2,)}, 1)
    assert len(seen) == 2 and all(o.startswith(f"{listed}:") for o in seen)
    assert {int(o.rsplit(":", 1)[1]) for o in seen} <= set(range(1, 6))
    entry, shape = sources_["WindowData, mirror"]
    (seen,) = origins_of(entry, {"data": shape, "label": (4,)}, 1)
    assert set(seen) <= {f"{tmp_path / 'windows.txt'}:{line}" for line in (7, 8, 9, 10)}
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.arange(3, dtype=np.float32)
    (tmp_path / "h5.txt").write_text("a.h5\n")
    entry = spec("HDF5Data", ["x"], hdf5_data_param={"source": str(tmp_path / "h5.txt"),
                                                     "batch_size": 2})  # fmt: skip
    assert list(origins_of(entry, {"x": (2,)}, 2)) == [
        [f"row 0 of {tmp_path / 'a.h5'}", f"row 1 of {tmp_path / 'a.h5'}"],
        [f"row 2 of {tmp_path / 'a.h5'}", f"row 0 of {tmp_path / 'a.h5'}"],
    ]


def test_resumed_training_on_random_crops_continues_bit_for_bit(tmp_path: Path) -> None:
    """A solver resumed at iteration 10 of 20 ends with the weights of one that ran
    straight through, its Data layer cropping and flipping at random."""
    from caffec.solver import get_solver

    db = database(tmp_path)
    (tmp_path / "net.prototxt").write_text(f"""
layer {{ name: "d" type: "Data" top: "data" top: "label"
  data_param {{ source: "{db}" batch_size: 3 backend: LMDB }}
  transform_param {{ crop_size: 3 mirror: true scale: 0.01 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "y"
  inner_product_param {{ num_output: 7 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }}
""")
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1\nlr_policy: "fixed"\n'
                      f'max_iter: 20\nsnapshot: 10\nsnapshot_prefix: "{tmp_path / "run"}"\n'
                      "random_seed: 3\n")  # fmt: skip
    straight = get_solver(solver, log=lambda m: None)
    straight.solve()
    resumed = get_solver(solver, log=lambda m: None)
    resumed.solve(tmp_path / "run_iter_10.solverstate")
    for a, b in zip(straight.net.params["ip"], resumed.net.params["ip"], strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    straight.net.close()
    resumed.net.close()


def test_random_dummy_data_resumes_without_drawing_the_skipped_passes(tmp_path: Path) -> None:
    """A refilled DummyData's pass k comes from a generator of its own: a net that skips k
    passes makes pass k's values at once, equal to the k-th forward of a run from the start
    (and a constant fill is not redrawn)."""
    import caffec

    net_file = tmp_path / "dummy.prototxt"
    net_file.write_text(
        'layer { name: "d" type: "DummyData" top: "noise" top: "flat" dummy_data_param { '
        'shape { dim: 2 dim: 3 } shape { dim: 2 } data_filler { type: "gaussian" std: 1 } '
        'data_filler { type: "constant" value: 3 } } }\n'
    )
    straight = caffec.Net(str(net_file), caffec.TRAIN, seed=5)
    passes = [{k: v.copy() for k, v in straight.forward().items()} for _ in range(5)]
    assert not np.array_equal(passes[3]["noise"], passes[4]["noise"])
    resumed = caffec.Net(str(net_file), caffec.TRAIN, seed=5)
    started = time.perf_counter()
    resumed.skip_iterations(2**31 - 1)
    assert time.perf_counter() - started < 0.5
    resumed.skip_iterations(3)
    out = resumed.forward()
    np.testing.assert_array_equal(out["noise"], passes[3]["noise"])
    np.testing.assert_array_equal(out["flat"], np.full(2, 3.0, np.float32))
