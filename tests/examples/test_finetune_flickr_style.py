"""examples/finetune_flickr_style end to end on generated images: create_flickr_style.sh's
ImageData lists from a folder per style, then finetune_flickr_style.sh starting from a
CaffeNet caffemodel made here (-weights), on copies of the nets shrunk to 72x72 images, 67x67
crops, batches of 4 and narrower fc6/fc7: every layer but the renamed fc8_flickr starts from
the caffemodel, fc8 is ignored, and fc8_flickr learns with its lr_mult of 10 and 20."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from example_tools import (  # noqa: F401 - the fixtures this module's tests use
    caffec_bin_fixture,
    check_ok,
    run_script_fixture,
    sandbox_fixture,
    set_fields,
)

from caffec.formats import caffe_pb2

pytest.importorskip("lmdb", reason="the `data` extra is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow (the `data` extra) is not installed")

EXAMPLE = "examples/finetune_flickr_style"
MODEL = "models/finetune_flickr_style"
STYLES = {"Detailed": 0, "Pastel": 1, "Long_Exposure": 6}


def shrink_caffenet(path: Path) -> None:
    if "ImageData" in path.read_text():
        set_fields(path, crop_size=67, batch_size=4, new_height=72, new_width=72)
    path.write_text(path.read_text().replace("num_output: 4096", "num_output: 64"))


def make_caffenet_weights(root: Path, out: Path) -> dict[str, np.ndarray]:
    """A 'trained' CaffeNet (random values) for the shrunk net; its blobs by layer."""
    import caffe

    deploy = root / "models/bvlc_reference_caffenet/deploy.prototxt"
    deploy.write_text(deploy.read_text().replace("dim: 10 dim: 3 dim: 227 dim: 227",
                                                 "dim: 1 dim: 3 dim: 67 dim: 67"))  # fmt: skip
    shrink_caffenet(deploy)
    net = caffe.Net(str(deploy), caffe.TEST)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(0, 0.01, blob.data.shape)
    net.save(str(out))
    return {name: blobs[0].data.copy() for name, blobs in net.params.items()}


def test_finetune_flickr_style_end_to_end(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE, MODEL, "models/bvlc_reference_caffenet")
    rng = np.random.default_rng(2)
    for style in STYLES:
        (tmp_path / "images" / style).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (int(rng.integers(60, 100)), 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / style / f"{i}.jpg")
    out = check_ok(run_script(root, f"{EXAMPLE}/create_flickr_style.sh", tmp_path / "images"))
    assert "wrote 12 training and 3 test images" in out
    lines = (root / "data/flickr_style/train.txt").read_text().splitlines()
    for line in lines:
        path, label = line.rsplit(" ", 1)
        assert Path(path).is_file() and int(label) == STYLES[Path(path).parent.name]

    mean = caffe_pb2.BlobProto(num=1, channels=3, height=72, width=72)
    mean.data.extend(np.full(3 * 72 * 72, 100, np.float32).tolist())
    (root / "data/ilsvrc12").mkdir(parents=True)
    (root / "data/ilsvrc12/imagenet_mean.binaryproto").write_bytes(mean.SerializeToString())
    shrink_caffenet(root / MODEL / "train_val.prototxt")
    set_fields(root / MODEL / "solver.prototxt", max_iter=2, snapshot=2, test_iter=1,
               test_interval=2, display=1)  # fmt: skip
    weights = root / "caffenet.caffemodel"
    before = make_caffenet_weights(root, weights)

    out = check_ok(run_script(root, f"{EXAMPLE}/finetune_flickr_style.sh", weights))
    assert f"Finetuning from {weights}" in out and "Optimization Done." in out
    assert "Ignoring source layer fc8" in out
    tuned = caffe_pb2.NetParameter.FromString(
        (root / MODEL / "finetune_flickr_style_iter_2.caffemodel").read_bytes()
    )
    blobs = {layer.name: layer.blobs for layer in tuned.layer if layer.blobs}
    assert list(blobs["fc8_flickr"][0].shape.dim) == [20, 64]
    conv1 = np.asarray(blobs["conv1"][0].data).reshape(before["conv1"].shape)
    np.testing.assert_allclose(conv1, before["conv1"], atol=1e-3)  # started from the weights
    assert not np.array_equal(conv1, before["conv1"])  # and trained


def test_finetune_scripts_say_what_is_missing(sandbox, run_script, tmp_path) -> None:
    root = sandbox(EXAMPLE, MODEL)
    result = run_script(root, f"{EXAMPLE}/finetune_flickr_style.sh")
    assert result.returncode == 2 and "give a trained CaffeNet" in result.stdout
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"")
    result = run_script(root, f"{EXAMPLE}/finetune_flickr_style.sh", weights)
    assert result.returncode == 2 and "create_flickr_style.sh" in result.stdout
    result = run_script(root, f"{EXAMPLE}/create_flickr_style.sh", tmp_path)
    assert result.returncode == 2 and "no images in style folders" in result.stdout
    result = run_script(root, f"{EXAMPLE}/create_flickr_style.sh")
    assert result.returncode == 2 and "usage:" in result.stdout
