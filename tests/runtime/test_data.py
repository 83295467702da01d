"""Data layer feeders: databases, image lists, HDF5 files, window files, the transformer,
the prefetch thread and the errors a user meets. Every fixture is built here, except
Caffe's own HDF5 test files and example image from ../shared/corpus."""

from __future__ import annotations

import gc
import io
import threading
from pathlib import Path

import numpy as np
import pytest

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto_writer import write_blobproto
from caffec.formats.images import resize_bilinear
from caffec.formats.manifest import FeederEntry
from caffec.runtime.feeder import make_feeder

Image = pytest.importorskip("PIL.Image", reason="Pillow (the `data` extra) is not installed")


def _plyvel_or_skip() -> None:
    pytest.importorskip("plyvel", reason="plyvel is not installed (LevelDB support)")


# --------------------------------------------------------------------------- helpers


def write_db(path: Path, records: list[tuple[bytes, bytes]], backend: str = "LMDB") -> Path:
    """A database written directly with lmdb / plyvel (not with caffec's tools)."""
    if backend == "LMDB":
        lmdb = pytest.importorskip("lmdb", reason="lmdb is not installed")
        with lmdb.open(str(path), map_size=64 << 20) as env, env.begin(write=True) as txn:
            for key, value in records:
                txn.put(key, value)
    else:
        plyvel = pytest.importorskip("plyvel", reason="plyvel is not installed (LevelDB)")
        db = plyvel.DB(str(path), create_if_missing=True)
        for key, value in records:
            db.put(key, value)
        db.close()
    return path


def raw_datum(image: np.ndarray, label: int) -> bytes:
    c, h, w = image.shape
    return caffe_pb2.Datum(
        channels=c, height=h, width=w, data=image.astype(np.uint8).tobytes(), label=label
    ).SerializeToString()


def encoded(image_hwc: np.ndarray, form: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format=form)
    return buffer.getvalue()


def spec(kind: str, tops: list[str], **param: dict) -> FeederEntry:
    """A manifest ``feeders`` entry."""
    return FeederEntry("data", kind, tops, {"name": "data", "type": kind, "top": tops, **param})


def data_spec(source: Path, backend: str = "LMDB", transform: dict | None = None, **extra):
    p = {"data_param": {"source": str(source), "batch_size": 4, "backend": backend, **extra}}
    if transform:
        p["transform_param"] = transform
    return spec("Data", ["data", "label"], **p)


def feed(s: FeederEntry, shape: tuple, phase: str = "TEST", seed: int = 0, n: int = 1, **kw):
    """``n`` batches from a feeder (closed afterwards)."""
    shapes = {"data": shape, "label": (shape[0],)}
    shapes.update(kw.pop("shapes", {}))
    with make_feeder(
        s, shapes, kw.pop("dtype", "float32"), phase, kw.pop("net_dir", "."), seed, **kw
    ) as f:
        return [f.next() for _ in range(n)]


def images(n: int, shape: tuple = (3, 5, 6), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def ref_transform(x, mean=None, mean_values=(), scale=1.0, crop=0, h_off=0, w_off=0, mirror=False):
    """Caffe's DataTransformer::Transform written as its loops over output elements."""
    c, h, w = x.shape
    oh, ow = (crop, crop) if crop else (h, w)
    out = np.zeros((c, oh, ow), dtype=np.float32)
    mv = list(mean_values) * c if len(mean_values) == 1 else list(mean_values)
    for ci in range(c):
        for hi in range(oh):
            for wi in range(ow):
                top_w = ow - 1 - wi if mirror else wi
                value = np.float32(x[ci, h_off + hi, w_off + wi])
                if mean is not None:
                    value = (value - np.float32(mean[ci, h_off + hi, w_off + wi])) * np.float32(
                        scale
                    )
                elif mv:
                    value = (value - np.float32(mv[ci])) * np.float32(scale)
                else:
                    value = value * np.float32(scale)
                out[ci, hi, top_w] = value
    return out


# --------------------------------------------------------------------------- Data


@pytest.mark.parametrize("backend", ["LMDB", "LEVELDB"])
def test_raw_datums_come_in_key_order_and_wrap_around(tmp_path: Path, backend: str) -> None:
    if backend == "LEVELDB":
        _plyvel_or_skip()
    x = images(10)
    order = np.random.default_rng(1).permutation(10)  # written out of order
    db = write_db(
        tmp_path / "db", [(b"%08d" % i, raw_datum(x[i], i + 100)) for i in order], backend
    )
    batches = feed(data_spec(db, backend), (4, 3, 5, 6), n=4)
    expected = [list(range(0, 4)), list(range(4, 8)), [8, 9, 0, 1], list(range(2, 6))]
    for batch, rows in zip(batches, expected, strict=True):
        assert batch["data"].dtype == np.float32 and batch["data"].shape == (4, 3, 5, 6)
        np.testing.assert_array_equal(batch["data"], x[rows].astype(np.float32))
        np.testing.assert_array_equal(batch["label"], np.array(rows) + 100)


@pytest.mark.parametrize("backend", ["LMDB", "LEVELDB"])
def test_two_readers_of_one_database_in_one_process(tmp_path: Path, backend: str) -> None:
    """A TRAIN and a TEST net on the same data: py-lmdb cannot open an environment twice
    and LevelDB locks a database, so the readers share one handle."""
    if backend == "LEVELDB":
        _plyvel_or_skip()
    from caffec.formats.databases import _HANDLES, first_record

    x = images(6)
    db = write_db(tmp_path / "db", [(b"%d" % i, raw_datum(x[i], i)) for i in range(6)], backend)
    shapes = {"data": (4, 3, 5, 6), "label": (4,)}
    with make_feeder(data_spec(db, backend), shapes, "float32", "TRAIN", ".", 0) as a:
        with make_feeder(data_spec(db, backend), shapes, "float32", "TEST", ".", 0) as b:
            np.testing.assert_array_equal(a.next()["label"], [0, 1, 2, 3])
            np.testing.assert_array_equal(b.next()["label"], [0, 1, 2, 3])
            np.testing.assert_array_equal(a.next()["label"], [4, 5, 0, 1])
            assert first_record(db, backend)[0] == b"0"
        np.testing.assert_array_equal(a.next()["label"], [2, 3, 4, 5])
    assert not [key for key in _HANDLES if key[1] == str(db.resolve())]  # the last reader closed it


def test_float_data_datums_and_float64(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((3, 2, 3, 3)).astype(np.float32)
    records = [
        (
            b"%d" % i,
            caffe_pb2.Datum(
                channels=2, height=3, width=3, float_data=x[i].ravel(), label=i
            ).SerializeToString(),
        )
        for i in range(3)
    ]
    db = write_db(tmp_path / "db", records)
    s = data_spec(db, transform={"scale": 2.0})
    (batch,) = feed(s, (3, 2, 3, 3), dtype="float64")
    assert batch["data"].dtype == np.float64
    np.testing.assert_allclose(batch["data"], x.astype(np.float64) * 2, rtol=1e-7)


def test_single_top_data_layer(tmp_path: Path) -> None:
    x = images(2)
    db = write_db(tmp_path / "db", [(b"%d" % i, raw_datum(x[i], 0)) for i in range(2)])
    s = data_spec(db)
    s.tops = ["data"]
    with make_feeder(s, {"data": (2, 3, 5, 6)}, "float32", "TEST", ".", 0) as f:
        assert set(f.next()) == {"data"}


def test_encoded_datums_decode_to_bgr_and_honour_force_color_and_gray(tmp_path: Path) -> None:
    rgb = images(2, (4, 5, 3), seed=3)  # H, W, RGB
    gray = images(1, (4, 5), seed=4)[0]
    records = [
        (b"0", caffe_pb2.Datum(data=encoded(rgb[0]), encoded=True, label=1).SerializeToString()),
        (b"1", caffe_pb2.Datum(data=encoded(rgb[1]), encoded=True, label=2).SerializeToString()),
    ]
    db = write_db(tmp_path / "color", records)
    (batch,) = feed(data_spec(db), (2, 3, 4, 5))
    np.testing.assert_array_equal(batch["data"], rgb[..., ::-1].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(batch["label"], [1, 2])
    # force_gray: OpenCV's luma of the colour image
    (batch,) = feed(data_spec(db, transform={"force_gray": True}), (2, 1, 4, 5))
    luma = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])[:, None]
    np.testing.assert_array_equal(batch["data"], luma)
    # a gray PNG stays one channel, or becomes three equal ones with force_color
    gdb = write_db(
        tmp_path / "gray",
        [(b"0", caffe_pb2.Datum(data=encoded(gray), encoded=True).SerializeToString())],
    )
    s = data_spec(gdb)
    s.param["data_param"]["batch_size"] = 1
    (batch,) = feed(s, (1, 1, 4, 5))
    np.testing.assert_array_equal(batch["data"][0, 0], gray)
    (batch,) = feed(data_spec(gdb, transform={"force_color": True}), (1, 3, 4, 5))
    for c in range(3):
        np.testing.assert_array_equal(batch["data"][0, c], gray)
    (batch,) = feed(data_spec(gdb, force_encoded_color=True), (1, 3, 4, 5))
    assert batch["data"].shape == (1, 3, 4, 5)


def test_encoded_jpeg_datum_of_the_caffe_cat(tmp_path: Path, corpus: Path) -> None:
    cat = corpus / "bvlc/examples/images/cat.jpg"
    datum = caffe_pb2.Datum(data=cat.read_bytes(), encoded=True, label=281)
    db = write_db(tmp_path / "db", [(b"cat", datum.SerializeToString())])
    s = data_spec(db, transform={"crop_size": 227, "mean_value": [104, 117, 123]})
    (batch,) = feed(s, (1, 3, 227, 227))
    bgr = np.asarray(Image.open(cat).convert("RGB"))[..., ::-1].transpose(2, 0, 1)
    h_off, w_off = (360 - 227) // 2, (480 - 227) // 2
    want = (
        bgr[:, h_off : h_off + 227, w_off : w_off + 227] - np.array([104, 117, 123])[:, None, None]
    )
    np.testing.assert_array_equal(batch["data"][0], want.astype(np.float32))
    assert batch["label"][0] == 281


# --------------------------------------------------------------------------- the transformer


def test_mean_file_scale_and_center_crop_in_test(tmp_path: Path) -> None:
    x = images(4, (3, 6, 7), seed=5)
    mean = np.random.default_rng(6).uniform(0, 255, (1, 3, 6, 7)).astype(np.float32)
    write_blobproto(tmp_path / "mean.binaryproto", mean)
    db = write_db(tmp_path / "db", [(b"%d" % i, raw_datum(x[i], i)) for i in range(4)])
    t = {"mean_file": "mean.binaryproto", "scale": 0.25, "crop_size": 4}
    # the mean file is found beside the prototxt (net_dir) when not in the working directory
    (batch,) = feed(data_spec(db, transform=t), (4, 3, 4, 4), net_dir=str(tmp_path))
    for i in range(4):
        want = ref_transform(x[i], mean=mean[0], scale=0.25, crop=4, h_off=1, w_off=1)
        np.testing.assert_array_equal(batch["data"][i], want)


@pytest.mark.parametrize("values", [[100.0], [10.0, 20.0, 30.0]])
def test_mean_values_and_scale(tmp_path: Path, values: list[float]) -> None:
    x = images(4, (3, 5, 5), seed=7)
    db = write_db(tmp_path / "db", [(b"%d" % i, raw_datum(x[i], i)) for i in range(4)])
    (batch,) = feed(data_spec(db, transform={"mean_value": values, "scale": 0.5}), (4, 3, 5, 5))
    for i in range(4):
        np.testing.assert_array_equal(
            batch["data"][i], ref_transform(x[i], mean_values=values, scale=0.5)
        )


def _positions(tmp_path: Path, phase: str, transform: dict, n_batches: int = 100, seed: int = 0):
    """Crop offsets and flips seen over many batches of one 1x5x6 image whose pixels are
    their own positions."""
    pos = np.arange(30, dtype=np.uint8).reshape(1, 5, 6)
    db = write_db(tmp_path / f"db{phase}{seed}", [(b"0", raw_datum(pos, 0))])
    s = data_spec(db, transform=transform)
    s.param["data_param"]["batch_size"] = 8
    seen = []
    for batch in feed(s, (8, 1, 3, 3), phase=phase, seed=seed, n=n_batches):
        for item in batch["data"][:, 0]:
            mirrored = item[0, 0] > item[0, 1]
            first = int(item[0, 2] if mirrored else item[0, 0])
            h_off, w_off = divmod(first, 6)
            want = ref_transform(pos, crop=3, h_off=h_off, w_off=w_off, mirror=mirrored)
            np.testing.assert_array_equal(item, want[0])
            seen.append((h_off, w_off, bool(mirrored)))
    return seen


def test_random_crop_and_mirror_in_train_are_uniform(tmp_path: Path) -> None:
    seen = _positions(tmp_path, "TRAIN", {"crop_size": 3, "mirror": True})
    n = len(seen)
    offsets = {(h, w) for h, w, _ in seen}
    assert offsets == {(h, w) for h in range(3) for w in range(4)}  # every crop position
    for h in range(3):
        for w in range(4):
            share = sum(1 for s in seen if s[:2] == (h, w)) / n
            assert abs(share - 1 / 12) < 0.03
    flips = sum(1 for s in seen if s[2]) / n
    assert abs(flips - 0.5) < 0.06
    # the same seed gives the same crops; another seed others
    assert _positions(tmp_path, "TRAIN", {"crop_size": 3, "mirror": True}, 5) == seen[:40]
    assert _positions(tmp_path, "TRAIN", {"crop_size": 3, "mirror": True}, 5, seed=1) != seen[:40]


def test_test_phase_crops_the_centre_and_mirrors_at_random_as_caffe(tmp_path: Path) -> None:
    seen = _positions(tmp_path, "TEST", {"crop_size": 3}, 5)
    assert set(seen) == {(1, 1, False)}
    seen = _positions(tmp_path, "TEST", {"crop_size": 3, "mirror": True}, 20)
    assert {s[:2] for s in seen} == {(1, 1)}
    assert {s[2] for s in seen} == {True, False}  # Caffe flips wherever mirror is set


# --------------------------------------------------------------------------- ImageData


def write_images(folder: Path, n: int, size=(6, 8), seed: int = 0) -> list[np.ndarray]:
    """n RGB PNGs img{i}.png of HxW ``size``; their RGB arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = list(images(n, (*size, 3), seed=seed))
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"img{i}.png")
    return arrays


def image_spec(list_file: Path, **param) -> dict:
    transform = param.pop("transform", None)
    p = {"image_data_param": {"source": str(list_file), "batch_size": 3, **param}}
    if transform:
        p["transform_param"] = transform
    return spec("ImageData", ["data", "label"], **p)


def bgr(a: np.ndarray) -> np.ndarray:
    return a[..., ::-1].transpose(2, 0, 1).astype(np.float32)


def test_image_list_with_root_folder_wraps_around(tmp_path: Path) -> None:
    arrays = write_images(tmp_path / "imgs", 4)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"img{i}.png {10 + i}\n" for i in range(4)) + "\n")
    s = image_spec(listing, root_folder=str(tmp_path / "imgs") + "/")
    b1, b2 = feed(s, (3, 3, 6, 8), n=2)
    np.testing.assert_array_equal(b1["data"], np.stack([bgr(a) for a in arrays[:3]]))
    np.testing.assert_array_equal(b1["label"], [10, 11, 12])
    np.testing.assert_array_equal(b2["label"], [13, 10, 11])


def test_image_data_shapes_come_from_an_image_beside_its_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without new_height/new_width the first image gives the shape: found where the reader
    finds it, beside the list file too (the working directory elsewhere)."""
    import caffec

    data = tmp_path / "data"
    arrays = write_images(data, 2, size=(5, 7))
    (data / "list.txt").write_text("img0.png 0\nimg1.png 1\n")
    net = tmp_path / "net.prototxt"
    net.write_text(
        'layer { name: "d" type: "ImageData" top: "data" top: "label" '
        f'image_data_param {{ source: "{data / "list.txt"}" batch_size: 2 }} }}\n'
    )
    monkeypatch.chdir(tmp_path.parent)
    built = caffec.Net(str(net), caffec.TEST)
    out = built.forward()
    np.testing.assert_array_equal(out["data"], np.stack([bgr(a) for a in arrays]))
    built.close()  # its reader's thread, which later tests count


def test_image_data_reads_the_caffe_cat_in_colour_and_gray(tmp_path: Path, corpus: Path) -> None:
    cat = corpus / "bvlc/examples/images/cat.jpg"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{cat} 281\n")
    s = image_spec(listing, batch_size=1)
    (batch,) = feed(s, (1, 3, 360, 480))
    np.testing.assert_array_equal(batch["data"][0], bgr(np.asarray(Image.open(cat).convert("RGB"))))
    (batch,) = feed(image_spec(listing, is_color=False), (3, 1, 360, 480))
    gray = np.asarray(Image.open(cat).convert("L"))
    assert np.abs(batch["data"][0, 0] - gray).max() <= 1  # libjpeg's or Pillow's luma
    (batch,) = feed(image_spec(listing, new_height=32, new_width=48), (3, 3, 32, 48))
    assert batch["data"].shape == (3, 3, 32, 48)


def test_resize_is_opencv_bilinear(tmp_path: Path) -> None:
    x = images(1, (3, 8, 10), seed=9)[0]
    # halving: OpenCV's bilinear samples between pixel pairs, the 2x2 block mean
    half = resize_bilinear(x, 4, 5)
    blocks = x.reshape(3, 4, 2, 5, 2).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(half.astype(np.float64) - blocks).max() <= 0.5
    # enlarging: the triangle filter Pillow also uses when it enlarges
    big = resize_bilinear(x, 13, 17)
    rgb = Image.fromarray(x[::-1].transpose(1, 2, 0)).resize((17, 13), Image.BILINEAR)
    pillow = np.asarray(rgb)[..., ::-1].transpose(2, 0, 1).astype(int)
    assert np.abs(big.astype(int) - pillow).max() <= 1
    # through ImageData: new_height x new_width
    arrays = write_images(tmp_path, 3, size=(8, 10))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path}/img{i}.png {i}\n" for i in range(3)))
    (batch,) = feed(image_spec(listing, new_height=4, new_width=5), (3, 3, 4, 5))
    for i, a in enumerate(arrays):
        want = resize_bilinear(np.ascontiguousarray(a[..., ::-1].transpose(2, 0, 1)), 4, 5)
        np.testing.assert_array_equal(batch["data"][i], want)


def test_image_shuffle_is_seeded_and_reshuffles_every_pass(tmp_path: Path) -> None:
    n = 9
    write_images(tmp_path, n)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path}/img{i}.png {i}\n" for i in range(n)))
    s = image_spec(listing, shuffle=True)

    def labels(seed: int) -> list[int]:
        return [int(v) for b in feed(s, (3, 3, 6, 8), seed=seed, n=9) for v in b["label"]]

    first = labels(0)
    assert first == labels(0)
    assert first != labels(1)
    passes = [first[i : i + n] for i in range(0, len(first), n)]
    for p in passes:
        assert sorted(p) == list(range(n))  # each pass shows every image once
    assert len({tuple(p) for p in passes}) > 1
    assert passes[0] != list(range(n))


# --------------------------------------------------------------------------- HDF5Data


@pytest.fixture
def caffe_h5(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caffe's HDF5 test list, from the folder its paths are relative to."""
    pytest.importorskip("h5py", reason="h5py is not installed")
    root = corpus / "bvlc"
    if not (root / "src/caffe/test/test_data/sample_data_list.txt").exists():
        pytest.skip("Caffe's HDF5 test data is not in the corpus")
    monkeypatch.chdir(root)
    return root / "src/caffe/test/test_data/sample_data_list.txt"


def hdf5_spec(source: Path | str, tops=("data", "label", "label2"), **param) -> dict:
    p = {"hdf5_data_param": {"source": str(source), "batch_size": 5, **param}}
    return spec("HDF5Data", list(tops), **p)


HDF5_SHAPES = {"data": (5, 8, 6, 5), "label": (5, 1), "label2": (5, 1)}


def test_caffe_hdf5_test_files_with_three_tops(caffe_h5: Path) -> None:
    s = hdf5_spec("src/caffe/test/test_data/sample_data_list.txt")
    with make_feeder(s, HDF5_SHAPES, "float32", "TRAIN", ".", 0) as f:
        for iteration in range(10):  # 20 rows over the two files (one gzipped), then again
            batch = f.next()
            rows = [(iteration * 5 + i) % 20 for i in range(5)]
            # Caffe's files number their data 0, 1, 2, ... across both files, labels 1..10
            want = np.stack([np.arange(r * 240, (r + 1) * 240).reshape(8, 6, 5) for r in rows])
            np.testing.assert_array_equal(batch["data"], want)
            np.testing.assert_array_equal(batch["label"][:, 0], [r % 10 + 1 for r in rows])
            np.testing.assert_array_equal(batch["label2"][:, 0], [r % 10 + 2 for r in rows])


def test_hdf5_shuffle_covers_every_row_each_pass(caffe_h5: Path) -> None:
    s = hdf5_spec("src/caffe/test/test_data/sample_data_list.txt", shuffle=True)

    def rows(seed: int) -> list[int]:
        with make_feeder(s, HDF5_SHAPES, "float32", "TRAIN", ".", seed) as f:
            return [int(v) // 240 for _ in range(8) for v in f.next()["data"][:, 0, 0, 0]]

    first = rows(0)
    assert first == rows(0) and first != rows(1)
    for p in (first[:20], first[20:]):
        assert sorted(p) == list(range(20))
    # rows come file by file: one file's ten rows, then the other's
    assert {r // 10 for r in first[:10]} in ({0}, {1})
    assert first[:20] != list(range(20))


def test_hdf5_one_top_and_paths_beside_the_list(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed")
    values = np.arange(7, dtype=np.int16)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = values
    (tmp_path / "list.txt").write_text("a.h5\n")
    s = hdf5_spec(tmp_path / "list.txt", tops=["x"])
    with make_feeder(s, {"x": (5,)}, "float32", "TEST", ".", 0) as f:
        np.testing.assert_array_equal(f.next()["x"], [0, 1, 2, 3, 4])
        np.testing.assert_array_equal(f.next()["x"], [5, 6, 0, 1, 2])


# --------------------------------------------------------------------------- WindowData


def test_window_data_samples_and_warps_windows(tmp_path: Path) -> None:
    rgb = images(1, (10, 12, 3), seed=11)[0]
    Image.fromarray(rgb).save(tmp_path / "im.png")
    windows = tmp_path / "windows.txt"
    # one foreground window covering the whole image, one background window
    windows.write_text(f"# 0\n{tmp_path}/im.png\n3\n10\n12\n2\n3 0.9 0 0 11 9\n5 0.1 0 0 5 4\n")
    s = spec(
        "WindowData",
        ["data", "label"],
        window_data_param={"source": str(windows), "batch_size": 8, "fg_fraction": 0.25},
        transform_param={"crop_size": 8, "mean_value": [1, 2, 3], "scale": 0.5},
    )
    (batch,) = feed(s, (8, 3, 8, 8), phase="TRAIN")
    np.testing.assert_array_equal(batch["label"], [0] * 6 + [3] * 2)
    image = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1))
    mean = np.array([1, 2, 3], dtype=np.float32)[:, None, None]
    fg = (resize_bilinear(image, 8, 8).astype(np.float32) - mean) * 0.5
    bg = (resize_bilinear(image[:, 0:5, 0:6], 8, 8).astype(np.float32) - mean) * 0.5
    for i in range(6):
        np.testing.assert_array_equal(batch["data"][i], bg)
    for i in range(6, 8):
        np.testing.assert_array_equal(batch["data"][i], fg)


def test_window_data_context_pad_pads_with_zeros_beyond_the_image(tmp_path: Path) -> None:
    rgb = images(1, (20, 24, 3), seed=12)[0]
    Image.fromarray(rgb).save(tmp_path / "im.png")
    windows = tmp_path / "windows.txt"
    windows.write_text(f"# 0\n{tmp_path}/im.png\n3 20 24\n1\n1 0.9 0 0 9 9\n")
    s = spec(
        "WindowData",
        ["data", "label"],
        window_data_param={
            "source": str(windows),
            "batch_size": 2,
            "fg_fraction": 1.0,
            "context_pad": 2,
        },
        transform_param={"crop_size": 8, "mean_value": [7]},
    )
    (batch,) = feed(s, (2, 3, 8, 8), phase="TRAIN")
    # the 10x10 window doubled about its centre (5, 5) spans -5..15: 5 pixels of it lie
    # beyond the top and left edges, 2 of the 8 output pixels once scaled by 8/21
    image = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1))
    want = np.zeros((3, 8, 8), np.float32)
    want[:, 2:, 2:] = resize_bilinear(image[:, 0:16, 0:16], 6, 6).astype(np.float32) - 7
    np.testing.assert_array_equal(batch["data"][0], want)
    np.testing.assert_array_equal(batch["label"], [1, 1])


# --------------------------------------------------------------------------- errors


def test_missing_database(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="the database '.*nowhere_lmdb' does not exist"):
        feed(data_spec(tmp_path / "nowhere_lmdb"), (4, 3, 5, 6))


def test_empty_database(tmp_path: Path) -> None:
    db = write_db(tmp_path / "db", [])
    with pytest.raises(UserError, match="is empty"):
        feed(data_spec(db), (4, 3, 5, 6))


def test_backend_mismatch_says_which_backend(tmp_path: Path) -> None:
    db = write_db(tmp_path / "db", [(b"0", raw_datum(images(1)[0], 0))])
    with pytest.raises(UserError, match="LMDB database") as info:
        feed(data_spec(db, backend="LEVELDB"), (4, 3, 5, 6))
    assert "backend: LMDB" in info.value.hint


def test_corrupt_datum_names_its_key(tmp_path: Path) -> None:
    db = write_db(tmp_path / "db", [(b"00000000", b"\xff\xff\xff garbage")])
    with pytest.raises(UserError, match="record '00000000' .* is not a Caffe Datum"):
        feed(data_spec(db), (4, 3, 5, 6))
    short = caffe_pb2.Datum(channels=3, height=5, width=6, data=b"\0" * 10).SerializeToString()
    db = write_db(tmp_path / "db2", [(b"k7", short)])
    with pytest.raises(UserError, match="record 'k7'.*holds 10 bytes"):
        feed(data_spec(db), (4, 3, 5, 6))


def test_datum_of_another_shape_names_both_shapes_and_the_flag(tmp_path: Path) -> None:
    db = write_db(tmp_path / "db", [(b"00000000", raw_datum(images(1)[0], 0))])
    with pytest.raises(UserError) as info:
        feed(data_spec(db), (4, 1, 28, 28))
    err = info.value
    assert "record '00000000'" in err.message and "3x5x6" in err.message
    assert "4x1x28x28" in err.message
    assert "--shape data=4,3,5,6" in err.hint and "change the data" in err.hint


def test_an_error_on_the_thread_is_raised_by_next_as_it_was(tmp_path: Path) -> None:
    x = images(6)
    records = [(b"%08d" % i, raw_datum(x[i], i)) for i in range(6)]
    records[5] = (b"00000005", b"\x0a\xff")  # a bad record that setup does not see
    db = write_db(tmp_path / "db", records)
    with make_feeder(
        data_spec(db), {"data": (4, 3, 5, 6), "label": (4,)}, "float32", "TEST", ".", 0
    ) as f:
        f.next()
        for _ in range(2):  # and again on the next call
            with pytest.raises(UserError, match="record '00000005'"):
                f.next()


def test_missing_list_image_and_bad_lines(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="image list '.*nope.txt' does not exist"):
        feed(image_spec(tmp_path / "nope.txt"), (3, 3, 6, 8))
    write_images(tmp_path, 1)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path}/img0.png 0\n\n{tmp_path}/missing.png 1\n")
    with pytest.raises(UserError, match="line 3 of .*list.txt names '.*missing.png'"):
        feed(image_spec(listing), (3, 3, 6, 8), prefetch=0)
    listing.write_text(f"{tmp_path}/img0.png zero\n")
    with pytest.raises(UserError, match="line 1 of .*'path label'"):
        feed(image_spec(listing), (3, 3, 6, 8))
    listing.write_text(f"{tmp_path}/img0.png 0\n")
    with pytest.raises(UserError, match="6x8 images|3x6x8") as info:
        feed(image_spec(listing), (3, 3, 7, 7))
    assert "new_height" in info.value.hint
    listing.write_text("\n")
    with pytest.raises(UserError, match="names no images"):
        feed(image_spec(listing), (3, 3, 6, 8))


def test_hdf5_errors(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.zeros((4, 2), dtype=np.float32)
    (tmp_path / "list.txt").write_text(f"{tmp_path}/a.h5\n")
    with pytest.raises(UserError, match="has no dataset 'label'") as info:
        with make_feeder(
            hdf5_spec(tmp_path / "list.txt", tops=["data", "label"]),
            {"data": (5, 2), "label": (5,)},
            "float32",
            "TEST",
            ".",
            0,
        ):
            pass
    assert "data" in info.value.hint
    (tmp_path / "list.txt").write_text("b.h5\n")
    with pytest.raises(UserError, match="line 1 of .* names 'b.h5'"):
        make_feeder(
            hdf5_spec(tmp_path / "list.txt", tops=["data"]),
            {"data": (5, 2)},
            "float32",
            "TEST",
            ".",
            0,
        )


def test_transform_errors(tmp_path: Path) -> None:
    db = write_db(tmp_path / "db", [(b"0", raw_datum(images(1)[0], 0))])
    with pytest.raises(UserError, match="mean file 'm.binaryproto' does not exist"):
        feed(data_spec(db, transform={"mean_file": "m.binaryproto"}), (4, 3, 5, 6))
    write_blobproto(tmp_path / "m.binaryproto", np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(UserError, match="mean file .* is 3x4x4"):
        feed(data_spec(db, transform={"mean_file": str(tmp_path / "m.binaryproto")}), (4, 3, 5, 6))
    with pytest.raises(UserError, match="2 mean_value"):
        feed(data_spec(db, transform={"mean_value": [1, 2]}), (4, 3, 5, 6))
    with pytest.raises(UserError, match="smaller than crop_size 9"):
        feed(data_spec(db, transform={"crop_size": 9}), (4, 3, 9, 9))


def test_unsupported_type() -> None:
    with pytest.raises(UserError, match="cannot read the sources of Input"):
        make_feeder(spec("Input", ["x"]), {"x": (1,)}, "float32", "TEST", ".", 0)


# --------------------------------------------------------------------------- the thread


def _feeder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("caffec-data-")]


def test_prefetch_thread_stops_on_close_and_when_dropped(tmp_path: Path) -> None:
    x = images(5)
    db = write_db(tmp_path / "db", [(b"%d" % i, raw_datum(x[i], i)) for i in range(5)])
    s = data_spec(db, prefetch=2)
    shapes = {"data": (4, 3, 5, 6), "label": (4,)}
    f = make_feeder(s, shapes, "float32", "TRAIN", ".", 0)
    assert f.prefetching and len(_feeder_threads()) == 1
    for _ in range(5):
        f.next()
    f.close()
    f.close()  # twice is fine
    assert not f.prefetching and not _feeder_threads()
    with pytest.raises(UserError, match="closed"):
        f.next()
    f = make_feeder(s, shapes, "float32", "TRAIN", ".", 0)
    thread = _feeder_threads()[0]
    del f
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    # without a thread, batches are made in next()
    with make_feeder(s, shapes, "float32", "TRAIN", ".", 0, prefetch=0) as f:
        assert not f.prefetching and not _feeder_threads()
        np.testing.assert_array_equal(f.next()["label"], [0, 1, 2, 3])
