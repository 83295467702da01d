"""Plots the siamese net's 2-D features of the test images, one colour per class: classes
the net learnt to tell apart form separate clusters (Caffe shows the same chart in its
siamese example's notebook).

    python examples/siamese/plot_features.py [WEIGHTS] [-i IDX_DIR] [-o OUT.png] [-n COUNT]

WEIGHTS: a caffemodel of train_mnist_siamese.sh (default: the newest
examples/siamese/mnist_siamese_iter_*.caffemodel); IDX_DIR: the folder of
t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (default: Debian's
Fashion-MNIST); OUT: the chart (default: examples/siamese/mnist_siamese_features.png).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
BATCH = 500


def fail(message: str) -> None:
    print(f"plot_features.py: {message}", file=sys.stderr)
    sys.exit(2)


def idx_file(folder: Path, name: str) -> Path:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    fail(f"no {name} (or {name}.gz) in {folder}")
    raise AssertionError


def features(weights: Path, images: np.ndarray) -> np.ndarray:
    """The ``feat`` output of mnist_siamese.prototxt for each image (scaled to 0..1)."""
    import caffe

    # built for batches of BATCH images (caffec's shapes=), not the 10000 the prototxt says
    net = caffe.Net(str(ROOT / "examples/siamese/mnist_siamese.prototxt"), str(weights),
                    caffe.TEST, shapes={"data": (BATCH, 1, *images.shape[1:])})  # fmt: skip
    out = np.empty((len(images), 2), dtype=np.float32)
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        net.blobs["data"].data[: len(chunk), 0] = chunk * np.float32(0.00390625)
        out[start : start + len(chunk)] = net.forward()["feat"][: len(chunk)]
    return out


def nearest_neighbour_accuracy(feat: np.ndarray, labels: np.ndarray) -> float:
    """How often a test image's nearest other test image (in feature space) is of its class:
    how well the 2-D features keep the classes apart."""
    hits = 0
    for start in range(0, len(feat), 1000):
        block = feat[start : start + 1000]
        distances = ((block[:, None, :] - feat[None, :, :]) ** 2).sum(axis=2)
        distances[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        hits += int((labels[distances.argmin(axis=1)] == labels[start : start + 1000]).sum())
    return hits / len(feat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", nargs="?", help="a caffemodel (default: the newest snapshot)")
    parser.add_argument("-i", "--images", default="/usr/share/datasets/fashion-mnist",
                        help="the folder of the t10k IDX files")  # fmt: skip
    parser.add_argument("-o", "--output", default="examples/siamese/mnist_siamese_features.png")
    parser.add_argument("-n", "--count", type=int, default=10000, help="how many test images")
    args = parser.parse_args()

    from caffec.errors import CaffecError
    from caffec.tools.convert import read_mnist

    if args.weights:
        weights = Path(args.weights)
    else:
        snapshots = sorted((ROOT / "examples/siamese").glob("mnist_siamese_iter_*.caffemodel"),
                           key=lambda p: int(p.stem.rsplit("_", 1)[1]))  # fmt: skip
        if not snapshots:
            fail(
                "no examples/siamese/mnist_siamese_iter_*.caffemodel; "
                "run examples/siamese/train_mnist_siamese.sh first, or give a caffemodel"
            )
        weights = snapshots[-1]
    if not weights.is_file():
        fail(f"no caffemodel {weights}")
    folder = Path(args.images)
    if not folder.is_dir():
        fail(f"no folder {folder} (apt-get install dataset-fashion-mnist, or give -i IDX_DIR)")
    try:
        pixels, labels = read_mnist(idx_file(folder, "t10k-images-idx3-ubyte"),
                                    idx_file(folder, "t10k-labels-idx1-ubyte"))  # fmt: skip
        pixels, labels = pixels[: args.count], labels[: args.count]
        feat = features(weights, pixels.astype(np.float32))
    except CaffecError as err:
        fail(str(err))
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        fail("needs matplotlib (pip install 'caffec[draw]')")
    names = FASHION if "fashion" in str(folder).lower() else [str(c) for c in range(10)]
    figure = Figure(figsize=(7.5, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for c in range(int(labels.max()) + 1):
        mine = labels == c
        name = names[c] if c < len(names) else str(c)
        axes.plot(feat[mine, 0], feat[mine, 1], ".", markersize=2, alpha=0.6, label=name)
    axes.legend(markerscale=6, fontsize="small", loc="best")
    axes.set_title(f"siamese features of {len(labels)} test images ({weights.name})")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.output)
    shown = os.path.relpath(weights)  # as the user would name it, from where they are
    shown = shown if not shown.startswith("..") else weights
    print(f"wrote {args.output} ({len(labels)} images, weights {shown})")
    if len(labels) > 1:
        accuracy = nearest_neighbour_accuracy(feat, labels)
        print(f"nearest-neighbour accuracy of the features: {accuracy:.4f}")


if __name__ == "__main__":
    main()
