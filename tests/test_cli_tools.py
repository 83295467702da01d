"""Caffe's tools on caffec's command line: device_query's spelling, -stage and -level, time
-weights, compute-mean's log, binary upgrades, extract-features, convert-cifar and
convert-mnist-siamese; each on small files written here, bad input exiting 2."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from caffec.cli import _parser, main
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import read_blobproto
from caffec.formats.databases import iter_db
from caffec.formats.snapshots import write_weights

pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def records(path: Path, backend: str = "lmdb") -> list[tuple[bytes, caffe_pb2.Datum]]:
    return [(k, caffe_pb2.Datum.FromString(v)) for k, v in iter_db(path, backend.upper())]


def leftovers(folder: Path) -> list[str]:
    """The temporary names a failed write would leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def write_idx(path: Path, array: np.ndarray) -> Path:
    """A uint8 IDX file, as MNIST's."""
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(head + array.astype(np.uint8).tobytes())
    return path


# --------------------------------------------------------------------------- caffe's flags


def test_device_query_is_also_spelt_as_caffe_spells_it(capsys) -> None:
    assert run(capsys, "device_query", "-gpu", "999") == run(capsys, "device-query", "-gpu", "999")


@pytest.mark.parametrize(
    ("argv", "stages"),
    [
        (["test", "-model", "m", "-stage", "a,b", "-stage", "c"], ["a", "b", "c"]),
        (["time", "-model", "m", "-stage", "deploy"], ["deploy"]),
        (["dump", "m", "--stage", "a,,b"], ["a", "b"]),
        (["compile", "m"], []),
    ],
)
def test_stage_splits_on_commas(argv: list[str], stages: list[str]) -> None:
    assert _parser().parse_args(argv).stage == stages


def test_dump_keeps_the_layers_of_every_comma_separated_stage(capsys, tmp_path: Path) -> None:
    net = tmp_path / "staged.prototxt"
    net.write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { stage: "a" } }\n'
        'layer { name: "b" type: "ReLU" bottom: "x" top: "b" include { stage: "b" } }\n'
    )
    status, out, _ = run(capsys, "dump", net, "--stage", "a,b", "--after", "build")
    assert status == 0 and "3 layers" in out and "outputs: a[?], b[?]" in out


STAGED_NET = """name: "staged"
layer { name: "data" type: "DummyData" top: "x" top: "label"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 }
                           data_filler { type: "constant" value: 1 } } }
layer { name: "in_b" type: "Power" bottom: "x" top: "x" include { stage: "b" } }
layer { name: "from_2" type: "Power" bottom: "x" top: "x" include { min_level: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize(
    ("flags", "layers"),
    [([], set()), (["-level", "2", "-stage", "a,b"], {"in_b", "from_2"}),
     (["-stage", "b"], {"in_b"})],
)  # fmt: skip
def test_train_takes_level_and_stages(capsys, tmp_path: Path, flags: list[str],
                                      layers: set[str]) -> None:  # fmt: skip
    (tmp_path / "net.prototxt").write_text(STAGED_NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.01\nmax_iter: 1\n'
                      'lr_policy: "fixed"\nsnapshot_after_train: false\n')  # fmt: skip
    status, _, err = run(capsys, "train", "-solver", solver, *flags)
    assert status == 0, err
    created = {line.split("Creating Layer ")[1] for line in err.splitlines()
               if "Creating Layer " in line}  # fmt: skip
    assert created & {"in_b", "from_2"} == layers


TINY_NET = """name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%(db)s" batch_size: 4 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A net reading ten 1x4x4 MNIST-like records, and weights for it: (net, weights, db)."""
    rng = np.random.default_rng(7)
    images = write_idx(tmp_path / "images", rng.integers(0, 256, (10, 4, 4)))
    labels = write_idx(tmp_path / "labels", rng.integers(0, 3, 10))
    db = tmp_path / "mnist_lmdb"
    assert main(["convert-mnist", str(images), str(labels), str(db)]) == 0
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY_NET % {"db": db})
    weights = tmp_path / "tiny.caffemodel"
    w = rng.standard_normal((3, 16)).astype(np.float32) * 0.01
    write_weights(weights, "tiny", [("ip", "InnerProduct", [w, np.arange(3, dtype=np.float32)])])
    return net, weights, db


def test_time_loads_the_weights_it_is_given(capsys, monkeypatch, tiny) -> None:
    import caffec.runtime.timing

    net_file, weights, _ = tiny
    timed = []

    def benchmark(net, *_, **__) -> dict[str, float]:  # the net it was given, no time taken
        timed.append(net)
        return {"forward": 0.0, "backward": 0.0, "forward_backward": 0.0}

    monkeypatch.setattr(caffec.runtime.timing, "benchmark", benchmark)
    status, _, err = run(capsys, "time", "-model", net_file, "-weights", weights, "-iterations", 1)
    assert status == 0, err
    np.testing.assert_array_equal(timed[0].params["ip"][1].data, [0, 1, 2])
    status, _, err = run(capsys, "time", "-model", net_file, "-weights", weights.with_name("no"))
    assert status == 2 and "no such weights file" in err


# --------------------------------------------------------------------------- compute-mean


def test_compute_mean_logs_channel_means_and_writes_only_when_asked(
    capsys, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GLOG_minloglevel", raising=False)
    pixels = np.random.default_rng(3).integers(0, 256, (5, 3, 4))
    images = write_idx(tmp_path / "images", pixels)
    assert main(["convert-mnist", str(images), str(write_idx(tmp_path / "l", np.zeros(5))),
                 str(tmp_path / "db")]) == 0  # fmt: skip
    capsys.readouterr()
    status, out, err = run(capsys, "compute-mean", tmp_path / "db")
    assert status == 0 and out == "" and list(tmp_path.glob("*.binaryproto")) == []
    lines = [line.split("] ", 1)[1] for line in err.splitlines()]
    assert lines == ["Number of channels: 1", f"mean_value channel [0]: {pixels.mean():g}"]
    assert "cli.py:" in err  # the line that logged it

    status, out, err = run(capsys, "compute-mean", tmp_path / "db", tmp_path / "mean.binaryproto")
    assert status == 0 and f"Write to {tmp_path / 'mean.binaryproto'}" in err
    proto = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 1, 3, 4)
    assert not proto.HasField("shape")
    np.testing.assert_allclose(proto.data, pixels.mean(axis=0).ravel(), rtol=1e-6)
    assert read_blobproto(tmp_path / "mean.binaryproto").legacy_shape


# --------------------------------------------------------------------------- upgrade


def _legacy_blob(rng: np.random.Generator, *shape: int, diff: bool = False) -> caffe_pb2.BlobProto:
    n, c, h, w = shape
    blob = caffe_pb2.BlobProto(num=n, channels=c, height=h, width=w)
    blob.data.extend(rng.standard_normal(n * c * h * w).astype(np.float32))
    if diff:
        blob.diff.extend(rng.standard_normal(n * c * h * w).astype(np.float32))
    return blob


def test_upgrade_of_v1_and_v0_caffemodels_keeps_every_blob(capsys, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    V1 = caffe_pb2.V1LayerParameter
    v1 = caffe_pb2.NetParameter(name="old")
    conv = v1.layers.add(name="conv", type=V1.CONVOLUTION, bottom=["data"], top=["conv"])
    conv.blobs.extend([_legacy_blob(rng, 4, 1, 3, 3, diff=True), _legacy_blob(rng, 1, 1, 1, 4)])
    conv.blobs_lr.extend([1, 2])
    v1.layers.add(name="relu", type=V1.RELU, bottom=["conv"], top=["conv"])
    v0 = caffe_pb2.NetParameter(name="older")
    old = v0.layers.add()
    old.layer.name, old.layer.type, old.layer.num_output = "ip", "innerproduct", 2
    old.layer.blobs.extend([_legacy_blob(rng, 1, 1, 2, 5), _legacy_blob(rng, 1, 1, 1, 2)])
    for net, blobs in ((v1, [list(conv.blobs), []]), (v0, [list(old.layer.blobs)])):
        path = tmp_path / f"{net.name}.caffemodel"
        path.write_bytes(net.SerializeToString())
        status, out, err = run(capsys, "upgrade", path, "-o", tmp_path / "new.caffemodel")
        assert status == 0, err
        assert f"{len(blobs)} layers" in out
        new = caffe_pb2.NetParameter.FromString((tmp_path / "new.caffemodel").read_bytes())
        assert len(new.layers) == 0 and [list(layer.blobs) for layer in new.layer] == blobs
    assert [layer.type for layer in new.layer] == ["InnerProduct"]

    status, _, err = run(capsys, "upgrade", tmp_path / "old.caffemodel")
    assert status == 2 and "-o" in err
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes((tmp_path / "old.caffemodel").read_bytes()[:-9])
    status, _, err = run(capsys, "upgrade", cut, "-o", tmp_path / "cut_new.caffemodel")
    assert status == 2 and str(cut) in err and "Traceback" not in err
    assert not (tmp_path / "cut_new.caffemodel").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- extract-features


def test_extract_features_writes_each_items_blobs_as_the_net_computes_them(
    capsys, tmp_path: Path, tiny
) -> None:
    from caffec.net import TEST, Net

    net_file, weights, _ = tiny
    dbs = f"{tmp_path / 'ip_lmdb'},{tmp_path / 'data_lmdb'}"
    status, out, err = run(capsys, "extract-features", weights, net_file, "ip,data", dbs, 3, "lmdb")
    assert status == 0, err
    assert "wrote the features of 12 items of 'ip'" in out
    net = Net(str(net_file), TEST, weights=str(weights))
    want: dict[str, list[np.ndarray]] = {"ip": [], "data": []}
    for _ in range(3):  # ten records in batches of four: the third batch wraps around
        net.forward()
        for name, items in want.items():
            items.extend(net.blobs[name].data.copy())
    for name, shape in (("ip", (3, 1, 1)), ("data", (1, 4, 4))):
        got = records(tmp_path / f"{name}_lmdb")
        assert [key for key, _ in got] == [b"%010d" % i for i in range(12)]
        for (_, datum), item in zip(got, want[name], strict=True):
            assert (datum.channels, datum.height, datum.width) == shape
            assert not datum.data and not datum.HasField("label")
            np.testing.assert_array_equal(np.asarray(datum.float_data, np.float32), item.ravel())


def test_extract_features_errors_exit_2_and_leave_nothing(capsys, tmp_path: Path, tiny) -> None:
    net_file, weights, _ = tiny
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    a, b = out_dir / "a", out_dir / "b"
    cases = [
        (["ip,nope", f"{a},{b}", 1, "lmdb"], "has no blob 'nope'"),
        (["ip", f"{a},{b}", 1, "lmdb"], "1 blob names (ip) for 2 databases"),
        (["ip,data", f"{a},{a}", 1, "lmdb"], "named twice"),
        (["ip", a, 0, "lmdb"], "at least 1"),
    ]
    for argv, message in cases:
        status, _, err = run(capsys, "extract-features", weights, net_file, *argv)
        assert status == 2 and message in err and "Traceback" not in err, err
        assert list(out_dir.iterdir()) == []
    a.mkdir()
    status, _, err = run(capsys, "extract-features", weights, net_file, "ip", a, 1, "lmdb")
    assert status == 2 and f"{a} already exists" in err
    with pytest.raises(SystemExit) as exit_:
        main(["extract-features", str(weights), str(net_file), "ip", str(b), "1", "hdf5"])
    assert exit_.value.code == 2 and "invalid choice: 'hdf5'" in capsys.readouterr().err


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_batch(path: Path, rng: np.random.Generator, count: int) -> np.ndarray:
    records = rng.integers(0, 256, (count, 3073)).astype(np.uint8)
    records[:, 0] %= 10
    path.write_bytes(records.tobytes())
    return records


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_cifar_writes_caffes_two_databases(capsys, tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(2)
    src, out = tmp_path / "cifar-10-batches-bin", tmp_path / "out"
    src.mkdir(), out.mkdir()
    train = np.concatenate([_cifar_batch(src / f"data_batch_{i}.bin", rng, 2) for i in range(1, 6)])
    test = _cifar_batch(src / "test_batch.bin", rng, 3)
    given = [backend] if backend != "lmdb" else []  # lmdb: the default
    status, out_text, err = run(capsys, "convert-cifar", src, out, *given)
    assert status == 0, err
    assert f"wrote 10 records to {out / f'cifar10_train_{backend}'}" in out_text
    for name, want in (("train", train), ("test", test)):
        got = records(out / f"cifar10_{name}_{backend}", backend)
        assert [key for key, _ in got] == [b"%05d" % i for i in range(len(want))]
        for (_, datum), record in zip(got, want, strict=True):
            assert (datum.channels, datum.height, datum.width) == (3, 32, 32)
            assert datum.label == record[0] and datum.data == record[1:].tobytes()


def test_convert_cifar_errors_exit_2_and_write_nothing(capsys, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(), out.mkdir()
    for i in range(1, 6):
        _cifar_batch(src / f"data_batch_{i}.bin", rng, 1)
    status, _, err = run(capsys, "convert-cifar", src, out)
    assert status == 2 and "has no test_batch.bin" in err
    (src / "test_batch.bin").write_bytes(bytes(3074 * 2))  # CIFAR-100's record size
    status, _, err = run(capsys, "convert-cifar", src, out)
    assert status == 2 and f"{src / 'test_batch.bin'} holds 6148 bytes" in err
    _cifar_batch(src / "test_batch.bin", rng, 1)
    (out / "cifar10_test_lmdb").mkdir()
    status, _, err = run(capsys, "convert-cifar", src, out)
    assert status == 2 and "cifar10_test_lmdb already exists" in err
    assert sorted(p.name for p in out.iterdir()) == ["cifar10_test_lmdb"]
    status, _, err = run(capsys, "convert-cifar", src, tmp_path / "nowhere")
    assert status == 2 and "does not exist" in err
    with pytest.raises(SystemExit):
        main(["convert-cifar", str(src), str(out), "hdf5"])


# --------------------------------------------------------------------------- siamese pairs


def test_convert_mnist_siamese_pairs_images_by_seed(capsys, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (6, 3, 2)).astype(np.uint8)
    labels = np.array([0, 1, 0, 1, 2, 0])
    images = write_idx(tmp_path / "images", pixels)
    label_file = write_idx(tmp_path / "labels", labels)
    status, out, err = run(capsys, "convert-mnist-siamese", images, label_file,
                           tmp_path / "pairs", "-seed", 5)  # fmt: skip
    assert status == 0 and "wrote 6 pairs" in out, err
    pairs = np.random.default_rng(5).integers(0, 6, size=(6, 2))
    got = records(tmp_path / "pairs", "leveldb")
    assert [key for key, _ in got] == [b"%08d" % i for i in range(6)]
    for (_, datum), (i, j) in zip(got, pairs, strict=True):
        assert (datum.channels, datum.height, datum.width) == (2, 3, 2)
        assert datum.data == pixels[i].tobytes() + pixels[j].tobytes()
        assert datum.label == int(labels[i] == labels[j])
    status, _, _ = run(capsys, "convert-mnist-siamese", images, label_file,
                       tmp_path / "again", "-seed", 5, "-backend", "lmdb")  # fmt: skip
    assert status == 0 and records(tmp_path / "again") == got

    status, _, err = run(capsys, "convert-mnist-siamese", images,
                         write_idx(tmp_path / "few", labels[:4]), tmp_path / "bad")  # fmt: skip
    assert status == 2 and "holds 6 images but" in err and not (tmp_path / "bad").exists()


def test_train_logs_what_it_finetunes_from(capsys, tmp_path: Path) -> None:
    import caffec

    (tmp_path / "net.prototxt").write_text(STAGED_NET)
    net = caffec.Net(str(tmp_path / "net.prototxt"), caffec.TRAIN)
    net.params["ip"][0].data[...] = 0.25
    net.save(tmp_path / "start.caffemodel")
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0\nmax_iter: 1\n'
                      f'lr_policy: "fixed"\nsnapshot_after_train: true\n'
                      f'snapshot_prefix: "{tmp_path / "tuned"}"\n')  # fmt: skip
    status, _, err = run(capsys, "train", "-solver", solver, "-weights",
                         tmp_path / "start.caffemodel")  # fmt: skip
    assert status == 0, err
    assert f"Finetuning from {tmp_path / 'start.caffemodel'}" in err
    tuned = caffec.Net(str(tmp_path / "net.prototxt"), caffec.TRAIN,
                       weights=str(tmp_path / "tuned_iter_1.caffemodel"))  # fmt: skip
    np.testing.assert_array_equal(tuned.params["ip"][0].data, 0.25)  # base_lr 0: unchanged
