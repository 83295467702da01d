"""Caffe's data tools: convert_mnist, convert_imageset and compute_mean, read back with
lmdb / plyvel directly and checked against numpy."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import read_blobproto
from caffec.formats.idx import read_idx
from caffec.formats.manifest import FeederEntry
from caffec.runtime.feeder import make_feeder
from caffec.tools import compute_mean, convert_imageset, convert_mnist

lmdb = pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")

FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_db(path: Path, backend: str = "lmdb") -> list[tuple[bytes, caffe_pb2.Datum]]:
    """Every record, with lmdb / plyvel themselves."""
    if backend == "lmdb":
        with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
            items = list(txn.cursor())
    else:
        plyvel = pytest.importorskip("plyvel", reason="plyvel is not installed (LevelDB)")
        db = plyvel.DB(str(path), create_if_missing=False)
        items = list(db.iterator())
        db.close()
    return [(k, caffe_pb2.Datum.FromString(v)) for k, v in items]


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08}
    head = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    data = head + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_mnist_writes_keyed_datums(tmp_path: Path, gz: bool, backend: str) -> None:
    if backend == "leveldb":
        pytest.importorskip("plyvel", reason="plyvel is not installed (LevelDB)")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).astype(np.uint8)
    suffix = ".gz" if gz else ""
    images = write_idx(tmp_path / f"img{suffix}", pixels, gz)
    classes = write_idx(tmp_path / f"lab{suffix}", labels, gz)
    assert convert_mnist(images, classes, tmp_path / "db", backend=backend) == 12
    records = read_db(tmp_path / "db", backend)
    assert [k for k, _ in records] == [b"%08d" % i for i in range(12)]
    for i, (_, datum) in enumerate(records):
        assert (datum.channels, datum.height, datum.width) == (1, 5, 4)
        assert datum.label == labels[i] and not datum.encoded
        np.testing.assert_array_equal(np.frombuffer(datum.data, np.uint8).reshape(5, 4), pixels[i])
    assert leftovers(tmp_path) == []


def test_convert_mnist_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    pixels = np.zeros((3, 2, 2), np.uint8)
    images = write_idx(tmp_path / "img", pixels)
    labels = write_idx(tmp_path / "lab", np.zeros(3, np.uint8))
    (tmp_path / "db").mkdir()
    with pytest.raises(UserError, match="already exists"):
        convert_mnist(images, labels, tmp_path / "db")
    bad = write_idx(tmp_path / "lab2", np.zeros(4, np.uint8))
    with pytest.raises(UserError, match="3 images but .* 4 labels"):
        convert_mnist(images, bad, tmp_path / "db2")
    with pytest.raises(UserError, match="images file first"):
        convert_mnist(labels, images, tmp_path / "db3")
    with pytest.raises(UserError, match="unknown database backend"):
        convert_mnist(images, labels, tmp_path / "db4", backend="rocksdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "img", "lab", "lab2"]


def test_convert_mnist_on_fashion_mnist(tmp_path: Path) -> None:
    images, labels = FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        pytest.skip(
            "Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)"
        )
    assert convert_mnist(images, labels, tmp_path / "fashion_lmdb") == 10000
    pixels, classes = read_idx(images), read_idx(labels)
    with lmdb.open(str(tmp_path / "fashion_lmdb"), readonly=True, lock=False) as env:
        assert env.stat()["entries"] == 10000
        with env.begin() as txn:
            for i in [*range(20), 9999]:
                datum = caffe_pb2.Datum.FromString(txn.get(b"%08d" % i))
                assert datum.label == classes[i]
                np.testing.assert_array_equal(
                    np.frombuffer(datum.data, np.uint8).reshape(28, 28), pixels[i]
                )
    # and the Data layer reads it as LeNet's train net would (scale 1/256)
    s = FeederEntry("mnist", "Data", ["data", "label"], {
        "transform_param": {"scale": 0.00390625},
        "data_param": {"source": "fashion_lmdb", "batch_size": 64, "backend": "LMDB"},
    })  # fmt: skip
    with make_feeder(
        s, {"data": (64, 1, 28, 28), "label": (64,)}, "float32", "TRAIN", str(tmp_path), 0
    ) as f:
        batch = f.next()
    np.testing.assert_array_equal(
        batch["data"][:, 0], pixels[:64].astype(np.float32) * np.float32(0.00390625)
    )
    np.testing.assert_array_equal(batch["label"], classes[:64])


# --------------------------------------------------------------------------- convert_imageset


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    """Five RGB PNGs (one in a subfolder, one with a space in its name) and their list."""
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = ["a.png", "sub/b.png", "c d.png", "e.png", "f.png"]
    arrays = [rng.integers(0, 256, (6, 7, 3), dtype=np.uint8) for _ in names]
    for name, a in zip(names, arrays, strict=True):
        Image.fromarray(a).save(root / name)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    return root, listing, arrays


def test_convert_imageset_raw_bgr(image_folder, tmp_path: Path) -> None:
    root, listing, arrays = image_folder
    assert convert_imageset(root, listing, tmp_path / "db") == 5
    records = read_db(tmp_path / "db")
    assert [k for k, _ in records] == [
        b"00000000_a.png",
        b"00000001_sub/b.png",
        b"00000002_c d.png",
        b"00000003_e.png",
        b"00000004_f.png",
    ]
    for i, (_, d) in enumerate(records):
        assert (d.channels, d.height, d.width, d.label) == (3, 6, 7, i)
        want = arrays[i][..., ::-1].transpose(2, 0, 1)
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 6, 7), want)


def test_convert_imageset_gray_resize_and_shuffle(image_folder, tmp_path: Path) -> None:
    from PIL import Image

    root, listing, arrays = image_folder
    convert_imageset(root, listing, tmp_path / "g", gray=True, resize_height=3, resize_width=4)
    for i, (_, d) in enumerate(read_db(tmp_path / "g")):
        assert (d.channels, d.height, d.width) == (1, 3, 4)
        gray = np.asarray(Image.fromarray(arrays[i]).convert("L")).astype(float)
        # an OpenCV bilinear 6x7 -> 3x4 samples inside the image: values stay in range
        pixels = np.frombuffer(d.data, np.uint8)
        assert gray.min() - 1 <= pixels.min() and pixels.max() <= gray.max() + 1
    convert_imageset(root, listing, tmp_path / "s1", shuffle=True, seed=3)
    convert_imageset(root, listing, tmp_path / "s2", shuffle=True, seed=3)
    shuffled = [(k, d.label) for k, d in read_db(tmp_path / "s1")]
    assert shuffled == [(k, d.label) for k, d in read_db(tmp_path / "s2")]
    labels = [label for _, label in shuffled]
    assert sorted(labels) == list(range(5)) and labels != list(range(5))
    names = ["a.png", "sub/b.png", "c d.png", "e.png", "f.png"]
    assert [k for k, _ in shuffled] == [
        f"{i:08d}_{names[label]}".encode() for i, label in enumerate(labels)
    ]


def test_convert_imageset_encoded(image_folder, tmp_path: Path) -> None:
    from PIL import Image

    root, listing, arrays = image_folder
    convert_imageset(root, listing, tmp_path / "png", encoded=True)
    for i, (_, d) in enumerate(read_db(tmp_path / "png")):
        assert d.encoded and d.label == i
        name = ["a.png", "sub/b.png", "c d.png", "e.png", "f.png"][i]
        assert d.data == (root / name).read_bytes()  # the file itself, as Caffe stores it
    convert_imageset(
        root, listing, tmp_path / "jpg", encode_type="jpg", resize_height=12, resize_width=14
    )
    for _, d in read_db(tmp_path / "jpg"):
        assert d.encoded and d.data[:2] == b"\xff\xd8"
        assert Image.open(io.BytesIO(d.data)).size == (14, 12)
    # and the Data layer decodes them back to BGR
    s = FeederEntry(
        "d",
        "Data",
        ["data", "label"],
        {"data_param": {"source": str(tmp_path / "png"), "batch_size": 5, "backend": "LMDB"}},
    )
    with make_feeder(s, {"data": (5, 3, 6, 7), "label": (5,)}, "float32", "TEST", ".", 0) as f:
        batch = f.next()
    np.testing.assert_array_equal(
        batch["data"], np.stack([a[..., ::-1].transpose(2, 0, 1) for a in arrays])
    )


def test_convert_imageset_errors_leave_nothing(image_folder, tmp_path: Path) -> None:
    root, listing, _ = image_folder
    listing.write_text("a.png 0\nmissing.png 1\n")
    with pytest.raises(UserError, match="line 2 of .* names 'missing.png'"):
        convert_imageset(root, listing, tmp_path / "db")
    assert not (tmp_path / "db").exists() and leftovers(tmp_path) == []
    listing.write_text("a.png 0\n")
    with pytest.raises(UserError, match="both resize_height and resize_width"):
        convert_imageset(root, listing, tmp_path / "db", resize_height=4)
    with pytest.raises(UserError, match="does not exist"):
        convert_imageset(root, tmp_path / "none.txt", tmp_path / "db")


# --------------------------------------------------------------------------- compute_mean


def test_compute_mean_against_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (37, 6, 5), dtype=np.uint8)
    convert_mnist(
        write_idx(tmp_path / "i", pixels),
        write_idx(tmp_path / "l", np.zeros(37, np.uint8)),
        tmp_path / "db",
    )
    mean = compute_mean(tmp_path / "db", tmp_path / "mean.binaryproto")
    want = pixels.astype(np.float64).mean(axis=0)[None, None]
    assert mean.shape == (1, 1, 6, 5) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, want, rtol=1e-6)
    stored = read_blobproto(tmp_path / "mean.binaryproto")
    np.testing.assert_array_equal(stored.data, mean)
    # used as a mean file, it is subtracted pixel by pixel
    s = FeederEntry(
        "d",
        "Data",
        ["data", "label"],
        {
            "transform_param": {"mean_file": str(tmp_path / "mean.binaryproto")},
            "data_param": {"source": str(tmp_path / "db"), "batch_size": 4, "backend": "LMDB"},
        },
    )
    with make_feeder(s, {"data": (4, 1, 6, 5), "label": (4,)}, "float32", "TEST", ".", 0) as f:
        batch = f.next()
    np.testing.assert_array_equal(batch["data"][:, 0], pixels[:4].astype(np.float32) - mean[0, 0])


def test_compute_mean_of_leveldb_float_and_colour_records(tmp_path: Path) -> None:
    plyvel = pytest.importorskip("plyvel", reason="plyvel is not installed (LevelDB)")
    x = np.random.default_rng(5).standard_normal((4, 3, 2, 2)).astype(np.float32)
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    for i in range(4):
        db.put(
            b"%d" % i,
            caffe_pb2.Datum(
                channels=3, height=2, width=2, float_data=x[i].ravel()
            ).SerializeToString(),
        )
    db.close()
    mean = compute_mean(tmp_path / "db", tmp_path / "m.binaryproto", backend="leveldb")
    np.testing.assert_allclose(mean[0], x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)


def test_compute_mean_errors(tmp_path: Path) -> None:
    with lmdb.open(str(tmp_path / "empty"), map_size=1 << 20):
        pass
    with pytest.raises(UserError, match="is empty"):
        compute_mean(tmp_path / "empty", tmp_path / "m.binaryproto")
    with lmdb.open(str(tmp_path / "mixed"), map_size=1 << 20) as env, env.begin(write=True) as txn:
        txn.put(
            b"a", caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\0" * 4).SerializeToString()
        )
        txn.put(
            b"b", caffe_pb2.Datum(channels=1, height=3, width=2, data=b"\0" * 6).SerializeToString()
        )
    with pytest.raises(UserError, match="record 'b' .* is 1x3x2, the records before it are 1x2x2"):
        compute_mean(tmp_path / "mixed", tmp_path / "m.binaryproto")
    with pytest.raises(UserError, match="does not exist"):
        compute_mean(tmp_path / "nowhere", tmp_path / "m.binaryproto")
    assert not (tmp_path / "m.binaryproto").exists()
