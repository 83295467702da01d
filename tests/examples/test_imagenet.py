"""examples/imagenet and models/: the CaffeNet pipeline end to end on a tiny image tree written
here (three classes of generated JPEGs): create_imagenet.sh (resized, shuffled LMDBs),
make_imagenet_mean.sh, train_caffenet.sh and resume_training.sh, on copies of CaffeNet's
prototxts shrunk to 72x72 images, 67x67 crops, batches of 4 and narrower fc6/fc7; and the
shipped CaffeNet, AlexNet and GoogLeNet prototxts shape-inferred at their real sizes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from example_tools import (  # noqa: F401 - the fixtures this module's tests use
    REPO,
    caffec_bin_fixture,
    check_ok,
    run_script_fixture,
    sandbox_fixture,
    set_fields,
)

from caffec.cli import main
from caffec.formats import caffe_pb2
from caffec.formats.databases import iter_db
from caffec.frontend.loader import read_solver

pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow (the `data` extra) is not installed")

MODEL = "models/bvlc_reference_caffenet"


def write_images(folder: Path, lists: Path, per_class: int = 4) -> None:
    """train/ and val/ trees of JPEGs of several sizes, three classes, and their lists."""
    rng = np.random.default_rng(5)
    lists.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        lines = []
        for label, name in enumerate(["n01440764", "n01443537", "n01484850"]):
            (folder / split / name).mkdir(parents=True)
            for i in range(per_class):
                h, w = rng.integers(40, 90, size=2)
                pixels = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
                pixels[:, :, label] = 255  # a class's colour, learnable in a few steps
                path = f"{name}/{name}_{i}.JPEG"
                Image.fromarray(pixels).save(folder / split / path, format="JPEG")
                lines.append(f"{path} {label}\n")
        (lists / f"{split}.txt").write_text("".join(lines))


def test_caffenet_pipeline_end_to_end(sandbox, run_script, tmp_path) -> None:
    root = sandbox("examples/imagenet", MODEL)
    write_images(tmp_path / "imagenet", tmp_path / "lists")
    env = {"DATA": str(tmp_path / "lists"), "RESIZE_HEIGHT": "72", "RESIZE_WIDTH": "72"}
    out = check_ok(run_script(root, "examples/imagenet/create_imagenet.sh",
                              tmp_path / "imagenet/train", tmp_path / "imagenet/val", env=env))  # fmt: skip
    assert "wrote 12 records" in out
    train = [caffe_pb2.Datum.FromString(v)
             for _, v in iter_db(root / "examples/imagenet/ilsvrc12_train_lmdb", "LMDB")]  # fmt: skip
    assert {(d.channels, d.height, d.width) for d in train} == {(3, 72, 72)}
    keys = [k for k, _ in iter_db(root / "examples/imagenet/ilsvrc12_train_lmdb", "LMDB")]
    listed = [f"{i:08d}_{line.split()[0]}".encode() for i, line in enumerate(
        (tmp_path / "lists/train.txt").read_text().splitlines())]  # fmt: skip
    assert sorted(k.split(b"_", 1)[1] for k in keys) == sorted(k.split(b"_", 1)[1] for k in listed)
    assert keys != sorted(listed)  # shuffled
    check_ok(run_script(root, "examples/imagenet/make_imagenet_mean.sh"))
    assert (root / "data/ilsvrc12/imagenet_mean.binaryproto").is_file()

    net = root / MODEL / "train_val.prototxt"
    set_fields(net, crop_size=67, batch_size=4)
    net.write_text(net.read_text().replace("num_output: 4096", "num_output: 64"))
    set_fields(root / MODEL / "solver.prototxt", max_iter=4, snapshot=2, test_iter=1,
               test_interval=2, display=1)  # fmt: skip
    out = check_ok(run_script(root, "examples/imagenet/train_caffenet.sh"))
    assert "Iteration 4, Testing net (#0)" in out and "Optimization Done." in out
    first = re.search(r"Iteration 3 \(.*\), loss = (\S+)", out)[1]
    for n in (2, 4):
        assert (root / MODEL / f"caffenet_train_iter_{n}.caffemodel").is_file()

    # resume from the snapshot at 2 (named), then from the newest one (found)
    out = check_ok(run_script(root, "examples/imagenet/resume_training.sh",
                              f"{MODEL}/caffenet_train_iter_2.solverstate"))  # fmt: skip
    assert f"Restoring previous solver status from {MODEL}/caffenet_train_iter_2.solverstate" in out
    assert re.search(r"Iteration 3 \(.*\), loss = (\S+)", out)[1] == first  # resumed exactly
    set_fields(root / MODEL / "solver.prototxt", max_iter=5)
    out = check_ok(run_script(root, "examples/imagenet/resume_training.sh"))
    assert f"from {MODEL}/caffenet_train_iter_4.solverstate" in out and "Iteration 5" in out
    log = (root / "examples/imagenet/caffenet_train.log").read_text()
    assert log.count("Optimization Done.") == 3


def test_imagenet_scripts_say_what_is_missing(sandbox, run_script, tmp_path) -> None:
    root = sandbox("examples/imagenet", MODEL)
    result = run_script(root, "examples/imagenet/create_imagenet.sh")
    assert result.returncode == 2 and "usage:" in result.stdout
    (tmp_path / "train").mkdir()
    result = run_script(root, "examples/imagenet/create_imagenet.sh", tmp_path / "train",
                        tmp_path / "train", env={"DATA": str(tmp_path)})  # fmt: skip
    assert result.returncode == 2 and "train.txt of 'path label' lines" in result.stdout
    for script in ("make_imagenet_mean.sh", "train_caffenet.sh", "resume_training.sh"):
        result = run_script(root, f"examples/imagenet/{script}")
        assert result.returncode == 2 and "first" in result.stdout, script


NETS = [
    # (net, phase, shapes): the data layers' sources are not here, so their shapes are given
    ("models/bvlc_reference_caffenet/deploy.prototxt", "TEST", [], "prob", (10, 1000)),
    (
        "models/bvlc_reference_caffenet/train_val.prototxt",
        "TRAIN",
        ["data=256,3,227,227"],
        "loss",
        (),
    ),
    (
        "models/bvlc_reference_caffenet/train_val.prototxt",
        "TEST",
        ["data=50,3,227,227"],
        "accuracy",
        (),
    ),
    ("models/bvlc_alexnet/deploy.prototxt", "TEST", [], "prob", (10, 1000)),
    ("models/bvlc_alexnet/train_val.prototxt", "TRAIN", ["data=256,3,227,227"], "loss", ()),
    ("models/bvlc_googlenet/deploy.prototxt", "TEST", [], "prob", (10, 1000)),
    ("models/bvlc_googlenet/train_val.prototxt", "TRAIN", ["data=32,3,224,224"], "loss3/loss3", ()),
    ("models/bvlc_googlenet/train_val.prototxt", "TEST", ["data=50,3,224,224"], "loss3/top-5", ()),
    ("models/finetune_flickr_style/deploy.prototxt", "TEST", [], "prob", (10, 20)),
]


@pytest.mark.parametrize(("net", "phase", "shapes", "output", "shape"), NETS,
                         ids=[f"{n.split('/')[1]}-{n.split('/')[2][:-9]}-{p}" for n, p, *_ in NETS])  # fmt: skip
def test_shipped_models_shape_infer_at_their_real_sizes(
    capsys, net: str, phase: str, shapes: list[str], output: str, shape: tuple[int, ...]
) -> None:
    argv = ["dump", str(REPO / net), "--phase", phase, "--format", "json"]
    for given in shapes:
        argv += ["--shape", given]
    assert main(argv) == 0
    import json

    graph = json.loads(capsys.readouterr().out)
    text = json.dumps(graph)
    assert output in text
    if shape:
        assert list(shape) in [v.get("shape") for v in _values(graph)], output


def _values(graph: object) -> list[dict]:
    """Every dict in the dumped JSON that has a ``shape``."""
    found = []
    stack = [graph]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "shape" in item:
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


@pytest.mark.parametrize("solver", sorted(str(p.relative_to(REPO))
                                          for p in REPO.glob("models/*/*solver.prototxt")))  # fmt: skip
def test_shipped_solvers_read_and_name_their_net(solver: str) -> None:
    param, _ = read_solver(REPO / solver)
    assert (REPO / param.net).is_file() and param.max_iter > 0
    assert param.snapshot_prefix.startswith(str(Path(solver).parent) + "/")
