"""Labels a loss or accuracy cannot use are an error naming the layer, the item and the value
(counted by the generated code, reported by the runtime): never a NaN loss, nor an accuracy
that counts them correct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_data import Image, raw_datum, write_db

import caffec
from caffec.cli import main
from caffec.errors import UserError

NET = """
name: "labels"
layer { name: "x" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 10 } shape { dim: 4 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }
"""


@pytest.fixture(scope="module")
def net_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "net.prototxt"
    path.write_text(NET)
    return path


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("bad", [10, -1, 255, 2**31 - 1, 2.5])
def test_a_bad_label_is_named(net_file: Path, opt_level: int, bad: float) -> None:
    net = caffec.Net(str(net_file), caffec.TEST, opt_level=opt_level)
    x = np.random.default_rng(0).standard_normal((4, 10))
    good = net.forward(x=x, label=[0, 1, 9, 2])
    assert np.isfinite(good["loss"])
    with pytest.raises(UserError) as info:
        net.forward(x=x, label=[0, bad, 9, 3])
    assert info.value.layer == "loss"
    assert f"label {np.float32(bad):.10g} of item 1 of the batch" in info.value.message
    assert "[0, 10)" in info.value.message and "ignore_label" in info.value.hint


def test_accuracy_checks_its_labels_too(tmp_path: Path) -> None:
    """All-10 labels in a 10-class net gave accuracy 1.0."""
    path = tmp_path / "acc.prototxt"
    path.write_text(NET.replace('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" '
                                'bottom: "label" top: "loss" }\n', ""))  # fmt: skip
    net = caffec.Net(str(path), caffec.TEST)
    with pytest.raises(UserError, match="label 10 of item 0") as info:
        net.forward(x=np.ones((4, 10)), label=[10, 10, 10, 10])
    assert info.value.layer == "acc" and "(4 such labels" in info.value.message


def test_ignore_label_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "ignore.prototxt"
    path.write_text(NET.replace('top: "loss" }', 'top: "loss" loss_param { ignore_label: 255 } }')
                    .replace('top: "acc" }', 'top: "acc" accuracy_param { ignore_label: 255 } }'))  # fmt: skip
    net = caffec.Net(str(path), caffec.TEST)
    out = net.forward(x=np.zeros((4, 10)), label=[255, 1, 255, 3])
    assert out["loss"] == pytest.approx(np.log(10), rel=1e-6)


IP_AND_LOSS = """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def train(folder: Path, data_layer: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Train a net of ``data_layer`` and an InnerProduct scoring 10 classes for 4 iterations;
    what it wrote to stderr (it must stop with exit status 2)."""
    (folder / "net.prototxt").write_text(data_layer + IP_AND_LOSS)
    (folder / "solver.prototxt").write_text(
        f'net: "{folder / "net.prototxt"}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 4\n'
        'snapshot_after_train: false\n')  # fmt: skip
    status = main(["train", "-solver", str(folder / "solver.prototxt")])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    return err


def test_a_bad_label_in_a_database_names_its_record(tmp_path: Path, capsys) -> None:
    x = np.random.default_rng(1).integers(0, 256, (8, 1, 2, 2))
    records = [(b"%02d" % i, raw_datum(x[i], 10 if i == 5 else i % 3)) for i in range(8)]
    db = write_db(tmp_path / "db", records)
    err = train(
        tmp_path,
        f"""
layer {{ name: "data" type: "Data" top: "data" top: "label"
        data_param {{ source: "{db}" batch_size: 4 backend: LMDB }} }}""",
        capsys,
    )
    assert f"layer 'loss': label 10 of item 1 of the batch (record '05' of {db}) is not" in err


def test_a_bad_label_in_an_image_list_names_its_line(tmp_path: Path, capsys) -> None:
    """Line 7 of the list (the third item of the second batch) has label 12."""
    for i in range(8):
        Image.fromarray(np.full((2, 2), i * 30, np.uint8)).save(tmp_path / f"{i}.png")
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{tmp_path / f'{i}.png'} {12 if i == 6 else i}\n" for i in range(8)))
    err = train(
        tmp_path,
        f"""
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
        image_data_param {{ source: "{listed}" batch_size: 4 is_color: false }} }}""",
        capsys,
    )
    assert f"label 12 of item 2 of the batch ({listed}:7) is not a class index" in err


def test_labels_the_caller_gives_name_no_record(tmp_path: Path) -> None:
    """The data layer read the last batch, but forward was given other labels."""
    x = np.random.default_rng(1).integers(0, 256, (4, 1, 2, 2))
    db = write_db(tmp_path / "db", [(b"%02d" % i, raw_datum(x[i], 1)) for i in range(4)])
    path = tmp_path / "net.prototxt"
    path.write_text(
        f"""
layer {{ name: "data" type: "Data" top: "data" top: "label"
        data_param {{ source: "{db}" batch_size: 4 backend: LMDB }} }}"""
        + IP_AND_LOSS
    )
    net = caffec.Net(str(path), caffec.TEST)
    net.forward()
    with pytest.raises(UserError) as info:
        net.forward(label=[0, 11, 0, 0])
    assert "label 11 of item 1 of the batch is not" in info.value.message
    net.close()
