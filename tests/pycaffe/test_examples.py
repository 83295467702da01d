"""BVLC Caffe's own pycaffe examples, transcribed as acceptance tests.

Each test is one example's Python code as a user copies it from Caffe (the notebooks in
``examples/``, ``python/classify.py``, ``python/draw_net.py``, ``examples/pycaffe/``), with
only these changes:

- ``set_mode_gpu()`` becomes ``set_mode_cpu()``, and Python 2 becomes Python 3 (``print``,
  ``xrange``, ``iteritems``, ``/`` where an index is meant, text-mode temporary files; numpy 2
  refuses ``loadtxt(..., delimiter='\\n')``, so one-item-per-line files are read with ``'\\t'``);
- Fashion-MNIST (Debian's ``dataset-fashion-mnist``, converted with ``caffec convert-mnist``)
  stands in for MNIST, small generated images for downloaded ones, random weights for the
  model-zoo caffemodels (saved to a caffemodel and loaded as the examples load theirs), and a
  generated 4-feature data set for scikit-learn's ``make_classification``;
- smaller iteration counts and batch sizes, and file paths under the test's tmp folder;
- matplotlib is not a dependency: ``plt``/pylab's drawing calls go to :class:`Pyplot`, which
  only records what would have been shown;
- the notebooks' shell lines (``!`` downloads, ``cat``, ``diff``, ``caffe train``) are left
  out, and so is ``caffe.set_device(0)`` with ``set_mode_gpu()``; a ``%%timeit`` cell runs
  as a function, as IPython runs it in a namespace of its own; classify.py imports pandas
  (not a dependency) only where ``--print_results`` uses it.

After each transcription come the checks: what the example shows (shapes, printed values, the
learning it demonstrates) and what pycaffe gives for the same code, computed here in numpy.
"""

# The transcribed code keeps the examples' own style: %-formatting and str.format, unused
# loop variables and names, mutable default arguments, zip() without strict=, semicolons,
# imports where the notebooks' cells make them (again in a later cell, several on a line).
# ruff: noqa: UP031, UP032, B006, B007, B905, E702, F811, F841, I001

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO
from google.protobuf import text_format

import caffe
from caffec.cli import main as caffec_main
from caffec.formats.idx import read_idx

# Debian's dataset-fashion-mnist, or a copy elsewhere (scripts/gpu_check.sh carries one)
FASHION = Path(os.environ.get("CAFFEC_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


class Pyplot:
    """Stands in for ``matplotlib.pyplot`` and pylab's drawing names: records each image
    ``imshow`` is given and each line ``plot`` draws, draws nothing."""

    def __init__(self) -> None:
        self.rcParams: dict[str, Any] = {}
        self.shown: list[np.ndarray] = []
        self.plotted: list[np.ndarray] = []

    def imshow(self, data: Any, *args: Any, **kwargs: Any) -> None:
        self.shown.append(np.array(data))

    def plot(self, *args: Any, **kwargs: Any) -> None:
        lines = [arg for arg in args if not isinstance(arg, str)]  # not the format string
        self.plotted.append(np.array(list(lines[-1])))

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


# --------------------------------------------------------------------------- the model zoo

# models/bvlc_reference_caffenet/deploy.prototxt, one layer a line
CAFFENET_DEPLOY = """\
name: "CaffeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2" convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3" convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4" convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5" convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 1000 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

# examples/net_surgery/bvlc_caffenet_full_conv.prototxt, one layer a line
CAFFENET_FULL_CONV = """\
# Fully convolutional network version of CaffeNet.
name: "CaffeNetConv"
layer {
  name: "data" type: "Input" top: "data"
  input_param {
    # initial shape for a fully convolutional network:
    # the shape can be set for each input by reshape.
    shape: { dim: 1 dim: 3 dim: 451 dim: 451 }
  }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2" convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3" convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4" convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5" convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6-conv" type: "Convolution" bottom: "pool5" top: "fc6-conv" convolution_param { num_output: 4096 kernel_size: 6 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6-conv" top: "fc6-conv" }
layer { name: "drop6" type: "Dropout" bottom: "fc6-conv" top: "fc6-conv" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7-conv" type: "Convolution" bottom: "fc6-conv" top: "fc7-conv" convolution_param { num_output: 4096 kernel_size: 1 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7-conv" top: "fc7-conv" }
layer { name: "drop7" type: "Dropout" bottom: "fc7-conv" top: "fc7-conv" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8-conv" type: "Convolution" bottom: "fc7-conv" top: "fc8-conv" convolution_param { num_output: 1000 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "fc8-conv" top: "prob" }
"""

# examples/net_surgery/conv.prototxt
SURGERY_CONV = """\
# Simple single-layer network to showcase editing model parameters.
name: "convolution"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape: { dim: 1 dim: 1 dim: 100 dim: 100 } }
}
layer {
  name: "conv"
  type: "Convolution"
  bottom: "data"
  top: "conv"
  convolution_param {
    num_output: 3
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "gaussian"
      std: 0.01
    }
    bias_filler {
      type: "constant"
      value: 0
    }
  }
}
"""

CAFFENET_BLOBS = [
    ("data", (3, 227, 227)), ("conv1", (96, 55, 55)), ("pool1", (96, 27, 27)),
    ("norm1", (96, 27, 27)), ("conv2", (256, 27, 27)), ("pool2", (256, 13, 13)),
    ("norm2", (256, 13, 13)), ("conv3", (384, 13, 13)), ("conv4", (384, 13, 13)),
    ("conv5", (256, 13, 13)), ("pool5", (256, 6, 6)), ("fc6", (4096,)), ("fc7", (4096,)),
    ("fc8", (1000,)), ("prob", (1000,)),
]  # fmt: skip
CAFFENET_PARAMS = [
    ("conv1", (96, 3, 11, 11)), ("conv2", (256, 48, 5, 5)), ("conv3", (384, 256, 3, 3)),
    ("conv4", (384, 192, 3, 3)), ("conv5", (256, 192, 3, 3)), ("fc6", (4096, 9216)),
    ("fc7", (4096, 4096)), ("fc8", (1000, 4096)),
]  # fmt: skip
IMAGENET_MEAN = np.array([104.0, 117.0, 123.0])  # BGR, as ilsvrc_2012_mean.npy's pixel mean


def save_image(path: Path, pixels: np.ndarray) -> None:
    pil = pytest.importorskip("PIL.Image", reason="Pillow (the `data` extra) is not installed")
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.fromarray(pixels).save(path, quality=95)


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB uint8 picture with some edges: colour ramps, a disc and a bar."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 2 * np.pi, 3)
    rgb = [128 + 100 * np.sin(6 * x * (c + 1) + 4 * y + phase[c]) for c in range(3)]
    pixels = np.stack(rgb, axis=-1)
    cy, cx = rng.uniform(0.3, 0.7, 2)
    pixels[(y - cy * height / width) ** 2 + (x - cx) ** 2 < 0.02] = rng.uniform(0, 255, 3)
    pixels[:, int(width * 0.8) : int(width * 0.85)] = 20
    return np.clip(pixels, 0, 255).astype(np.uint8)


def drop_weights(folder: Path) -> None:
    """Remove the caffemodels (CaffeNet's are 240 MB each) that pytest would keep."""
    for path in folder.rglob("*.caffemodel"):
        path.unlink()


@pytest.fixture(autouse=True)
def _weights_removed_after(tmp_path: Path) -> Iterator[None]:
    yield
    drop_weights(tmp_path)


@pytest.fixture(scope="module")
def caffe_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder laid out as Caffe's checkout after its download scripts: CaffeNet's deploy
    net with random weights (He-scaled, conv1 for inputs of about ±100, so each layer's
    output stays of order one), the ImageNet mean, 1000 labels, the two example images and
    the net surgery nets."""
    root = tmp_path_factory.mktemp("caffe_root")
    model = root / "models/bvlc_reference_caffenet"
    model.mkdir(parents=True)
    (model / "deploy.prototxt").write_text(CAFFENET_DEPLOY)
    net = caffe.Net(str(model / "deploy.prototxt"), caffe.TEST)
    rng = np.random.default_rng(1701)
    for name, (weights, bias) in net.params.items():
        fan_in = int(np.prod(weights.data.shape[1:]))
        scale = np.sqrt(2.0 / fan_in) / (100.0 if name == "conv1" else 1.0)
        weights.data[...] = rng.standard_normal(weights.data.shape, dtype=np.float32) * scale
        bias.data[...] = rng.uniform(-0.1, 0.1, bias.data.shape)
    net.save(str(model / "bvlc_reference_caffenet.caffemodel"))

    imagenet = root / "python/caffe/imagenet"
    imagenet.mkdir(parents=True)
    mean = IMAGENET_MEAN[:, None, None] + rng.normal(0, 5, (3, 256, 256))
    np.save(imagenet / "ilsvrc_2012_mean.npy", mean)
    ilsvrc12 = root / "data/ilsvrc12"
    ilsvrc12.mkdir(parents=True)
    (ilsvrc12 / "synset_words.txt").write_text(
        "".join(f"n{i:08d} thing {i}, other name\n" for i in range(1000))
    )
    blob = caffe.io.array_to_blobproto(mean[np.newaxis])
    (ilsvrc12 / "imagenet_mean.binaryproto").write_bytes(blob.SerializeToString())

    save_image(root / "examples/images/cat.jpg", photo(360, 480, 0))
    save_image(root / "examples/images/cat_gray.jpg", photo(360, 480, 0).mean(-1).astype(np.uint8))
    surgery = root / "examples/net_surgery"
    surgery.mkdir(parents=True)
    (surgery / "conv.prototxt").write_text(SURGERY_CONV)
    (surgery / "bvlc_caffenet_full_conv.prototxt").write_text(CAFFENET_FULL_CONV)
    yield root
    drop_weights(root)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------ examples/00-classification


def test_00_classification(caffe_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CaffeNet (random weights) classifies an image after the notebook's Transformer; the
    blob and parameter listings; the filter visualisations; the second image."""
    monkeypatch.chdir(caffe_root / "examples")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook adds '../python'
    plt = Pyplot()
    # fmt: off
    # set display defaults
    plt.rcParams['figure.figsize'] = (10, 10)        # large images
    plt.rcParams['image.interpolation'] = 'nearest'  # don't interpolate: show square pixels
    plt.rcParams['image.cmap'] = 'gray'  # use grayscale output rather than a (potentially misleading) color heatmap

    # The caffe module needs to be on the Python path;
    #  we'll add it here explicitly.
    caffe_root_ = '../'  # this file should be run from {caffe_root}/examples (otherwise change this line)
    sys.path.insert(0, caffe_root_ + 'python')

    import caffe
    # If you get "No module named _caffe", either you have not built pycaffe or you have the wrong path.

    caffe.set_mode_cpu()

    model_def = caffe_root_ + 'models/bvlc_reference_caffenet/deploy.prototxt'
    model_weights = caffe_root_ + 'models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel'

    net = caffe.Net(model_def,      # defines the structure of the model
                    model_weights,  # contains the trained weights
                    caffe.TEST)     # use test mode (e.g., don't perform dropout)

    # load the mean ImageNet image (as distributed with Caffe) for subtraction
    mu = np.load(caffe_root_ + 'python/caffe/imagenet/ilsvrc_2012_mean.npy')
    mu = mu.mean(1).mean(1)  # average over pixels to obtain the mean (BGR) pixel values
    print('mean-subtracted values:', list(zip('BGR', mu)))

    # create transformer for the input called 'data'
    transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})

    transformer.set_transpose('data', (2,0,1))  # move image channels to outermost dimension
    transformer.set_mean('data', mu)            # subtract the dataset-mean value in each channel
    transformer.set_raw_scale('data', 255)      # rescale from [0, 1] to [0, 255]
    transformer.set_channel_swap('data', (2,1,0))  # swap channels from RGB to BGR

    # set the size of the input (we can skip this if we're happy
    #  with the default; we can also change it later, e.g., for different batch sizes)
    net.blobs['data'].reshape(50,        # batch size
                              3,         # 3-channel (BGR) images
                              227, 227)  # image size is 227x227

    image = caffe.io.load_image(caffe_root_ + 'examples/images/cat.jpg')
    transformed_image = transformer.preprocess('data', image)
    plt.imshow(image)

    # copy the image data into the memory allocated for the net
    net.blobs['data'].data[...] = transformed_image

    ### perform classification
    output = net.forward()

    output_prob = output['prob'][0]  # the output probability vector for the first image in the batch

    print('predicted class is:', output_prob.argmax())

    # load ImageNet labels
    labels_file = caffe_root_ + 'data/ilsvrc12/synset_words.txt'
    labels = np.loadtxt(labels_file, str, delimiter='\t')

    print('output label:', labels[output_prob.argmax()])

    # sort top five predictions from softmax output
    top_inds = output_prob.argsort()[::-1][:5]  # reverse sort and take five largest items

    print('probabilities and labels:')
    top_five = list(zip(output_prob[top_inds], labels[top_inds]))

    net.forward()  # %timeit net.forward()

    # for each layer, show the output shape
    for layer_name, blob in net.blobs.items():
        print(layer_name + '\t' + str(blob.data.shape))

    for layer_name, param in net.params.items():
        print(layer_name + '\t' + str(param[0].data.shape), str(param[1].data.shape))

    def vis_square(data):
        """Take an array of shape (n, height, width) or (n, height, width, 3)
           and visualize each (height, width) thing in a grid of size approx. sqrt(n) by sqrt(n)"""

        # normalize data for display
        data = (data - data.min()) / (data.max() - data.min())

        # force the number of filters to be square
        n = int(np.ceil(np.sqrt(data.shape[0])))
        padding = (((0, n ** 2 - data.shape[0]),
                   (0, 1), (0, 1))                 # add some space between filters
                   + ((0, 0),) * (data.ndim - 3))  # don't pad the last dimension (if there is one)
        data = np.pad(data, padding, mode='constant', constant_values=1)  # pad with ones (white)

        # tile the filters into an image
        data = data.reshape((n, n) + data.shape[1:]).transpose((0, 2, 1, 3) + tuple(range(4, data.ndim + 1)))
        data = data.reshape((n * data.shape[1], n * data.shape[3]) + data.shape[4:])

        plt.imshow(data); plt.axis('off')

    # the parameters are a list of [weights, biases]
    filters = net.params['conv1'][0].data
    vis_square(filters.transpose(0, 2, 3, 1))

    feat = net.blobs['conv1'].data[0, :36]
    vis_square(feat)

    feat = net.blobs['pool5'].data[0]
    vis_square(feat)

    feat = net.blobs['fc6'].data[0]
    plt.subplot(2, 1, 1)
    plt.plot(feat.flat)
    plt.subplot(2, 1, 2)
    _ = plt.hist(feat.flat[feat.flat > 0], bins=100)

    feat = net.blobs['prob'].data[0]
    plt.figure(figsize=(15, 3))
    plt.plot(feat.flat)
    # fmt: on
    first_prob = output_prob.copy()

    # the checks: the preprocessing is pycaffe's, done by hand
    assert mu == pytest.approx(IMAGENET_MEAN, abs=0.1)
    assert image.shape == (360, 480, 3) and image.dtype == np.float32
    resized = caffe.io.resize_image(image, (227, 227))
    by_hand = resized[:, :, ::-1].transpose(2, 0, 1) * 255 - mu[:, None, None]
    np.testing.assert_allclose(transformed_image, by_hand, rtol=1e-5, atol=1e-3)
    data = net.blobs["data"].data
    np.testing.assert_array_equal(data, np.broadcast_to(transformed_image, (50, 3, 227, 227)))

    # the listings, at the new batch size
    assert [(k, v.data.shape) for k, v in net.blobs.items()] == [
        (name, (50, *shape)) for name, shape in CAFFENET_BLOBS
    ]
    assert [(k, v[0].data.shape, v[1].data.shape) for k, v in net.params.items()] == [
        (name, shape, shape[:1]) for name, shape in CAFFENET_PARAMS
    ]

    # the numbers: conv1 (after its in-place ReLU) and the classifier, by hand
    w, b = net.params["conv1"][0].data, net.params["conv1"][1].data
    for k, i, j in ((0, 0, 0), (17, 20, 31), (95, 54, 54)):
        window = data[0, :, 4 * i : 4 * i + 11, 4 * j : 4 * j + 11]
        expected = max(0.0, float((window * w[k]).sum() + b[k]))
        assert net.blobs["conv1"].data[0, k, i, j] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    fc7 = net.blobs["fc7"].data
    fc8 = fc7 @ net.params["fc8"][0].data.T + net.params["fc8"][1].data
    np.testing.assert_allclose(net.blobs["fc8"].data, fc8, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.blobs["prob"].data, softmax(fc8), rtol=1e-4, atol=1e-6)
    assert 1e-3 < fc8.std() < 1e3  # the random weights keep the scores of order one
    # every image of the batch is the cat, so every row is the same probabilities
    prob = net.blobs["prob"].data
    np.testing.assert_allclose(prob, np.broadcast_to(prob[0], prob.shape), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-5)
    assert top_inds[0] == first_prob.argmax() and list(first_prob[top_inds]) == sorted(
        first_prob[top_inds], reverse=True
    )
    assert [name for _, name in top_five] == [f"n{i:08d} thing {i}, other name" for i in top_inds]
    # the deploy net at its own batch size (10) gives the same prediction
    net10 = caffe.Net(model_def, model_weights, caffe.TEST)
    net10.blobs["data"].data[...] = transformed_image
    np.testing.assert_allclose(net10.forward()["prob"][0], first_prob, rtol=1e-4, atol=1e-6)

    # the tiled pictures: 96 RGB filters in a 10x10 grid, 36 maps in 6x6, 256 in 16x16
    shown = plt.shown
    assert [s.shape for s in shown[1:4]] == [(120, 120, 3), (336, 336), (112, 112)]
    assert shown[1].min() == 0 and shown[1].max() == 1
    np.testing.assert_array_equal(plt.plotted[-1], prob[0])

    # fmt: off
    # transform it and copy it into the net
    image = caffe.io.load_image(caffe_root_ + 'examples/images/cat_gray.jpg')
    net.blobs['data'].data[...] = transformer.preprocess('data', image)

    # perform classification
    net.forward()

    # obtain the output probabilities
    output_prob = net.blobs['prob'].data[0]

    # sort top five predictions from softmax output
    top_inds = output_prob.argsort()[::-1][:5]

    plt.imshow(image)

    print('probabilities and labels:')
    list(zip(output_prob[top_inds], labels[top_inds]))
    # fmt: on
    assert image.shape == (360, 480, 3)  # a gray file, read in colour, is three equal channels
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])
    assert not np.allclose(output_prob, first_prob)
    np.testing.assert_allclose(output_prob.sum(), 1, rtol=1e-5)


# ------------------------------------------------------------ examples/01-learning-lenet

# examples/mnist/lenet_auto_solver.prototxt, testing 5 batches where it tests 100
LENET_AUTO_SOLVER = """\
# The train/test net protocol buffer definition
train_net: "mnist/lenet_auto_train.prototxt"
test_net: "mnist/lenet_auto_test.prototxt"
# test_iter specifies how many forward passes the test should carry out.
# In the case of MNIST, we have test batch size 100 and 100 test iterations,
# covering the full 10,000 testing images.
test_iter: 5
# Carry out testing every 500 training iterations.
test_interval: 500
# The base learning rate, momentum and the weight decay of the network.
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
# The learning rate policy
lr_policy: "inv"
gamma: 0.0001
power: 0.75
# Display every 100 iterations
display: 100
# The maximum number of iterations
max_iter: 10000
# snapshot intermediate results
snapshot: 5000
snapshot_prefix: "mnist/lenet"
"""


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzipped), MNIST's format: magic, dims, big-endian data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array).tobytes()))


def fashion_mnist(folder: Path, train: int, test: int) -> dict[str, np.ndarray]:
    """``mnist_train_lmdb`` and ``mnist_test_lmdb`` in ``folder``, made by ``caffec
    convert-mnist`` from the first ``train`` and ``test`` Fashion-MNIST images, as Caffe's
    ``create_mnist.sh`` makes MNIST's; the images and labels they hold."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            "Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)"
        )
    pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")
    arrays = {}
    for split, source, count in (("train", "train", train), ("test", "t10k", test)):
        for kind in ("images-idx3", "labels-idx1"):
            array = read_idx(FASHION / f"{source}-{kind}-ubyte.gz")[:count]
            write_idx(folder / f"{split}-{kind}-ubyte.gz", array)
            arrays[f"{split}_{kind.split('-')[0]}"] = array
        assert caffec_main(["convert-mnist", str(folder / f"{split}-images-idx3-ubyte.gz"),
                            str(folder / f"{split}-labels-idx1-ubyte.gz"),
                            str(folder / f"mnist_{split}_lmdb")]) == 0  # fmt: skip
    return arrays


def test_01_learning_lenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LeNet written with NetSpec, solved step by step in Python on Fashion-MNIST: the nets'
    data, one step's gradients, a loop whose test accuracy rises well above chance; then the
    notebook's own solver (a SolverParameter written from Python) on a logistic regression."""
    (tmp_path / "mnist").mkdir()
    fashion = fashion_mnist(tmp_path / "mnist", train=1280, test=500)
    (tmp_path / "mnist/lenet_auto_solver.prototxt").write_text(LENET_AUTO_SOLVER)
    monkeypatch.chdir(tmp_path)  # the notebook runs in {caffe_root}/examples
    plt = Pyplot()
    zeros, imshow, axis = np.zeros, plt.imshow, plt.axis  # from pylab import *
    # fmt: off
    from caffe import layers as L, params as P

    def lenet(lmdb, batch_size):
        # our version of LeNet: a series of linear and simple nonlinear transformations
        n = caffe.NetSpec()

        n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                                 transform_param=dict(scale=1./255), ntop=2)

        n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
        n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
        n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
        n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
        n.fc1 =   L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
        n.relu1 = L.ReLU(n.fc1, in_place=True)
        n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
        n.loss =  L.SoftmaxWithLoss(n.score, n.label)

        return n.to_proto()

    with open('mnist/lenet_auto_train.prototxt', 'w') as f:
        f.write(str(lenet('mnist/mnist_train_lmdb', 64)))

    with open('mnist/lenet_auto_test.prototxt', 'w') as f:
        f.write(str(lenet('mnist/mnist_test_lmdb', 100)))

    # caffe.set_device(0): picks a GPU, which needs one (as in Caffe)
    caffe.set_mode_cpu()

    ### load the solver and create train and test nets
    solver = None  # ignore this workaround for lmdb data (can't instantiate two solvers on the same data)
    solver = caffe.SGDSolver('mnist/lenet_auto_solver.prototxt')

    # each output is (batch size, feature dim, spatial dim)
    blobs = [(k, v.data.shape) for k, v in solver.net.blobs.items()]

    # just print the weight sizes (we'll omit the biases)
    params = [(k, v[0].data.shape) for k, v in solver.net.params.items()]

    train_out = solver.net.forward()  # train net
    test_out = solver.test_nets[0].forward()  # test net (there can be more than one)

    # we use a little trick to tile the first eight images
    imshow(solver.net.blobs['data'].data[:8, 0].transpose(1, 0, 2).reshape(28, 8*28), cmap='gray'); axis('off')
    print('train labels:', solver.net.blobs['label'].data[:8])

    imshow(solver.test_nets[0].blobs['data'].data[:8, 0].transpose(1, 0, 2).reshape(28, 8*28), cmap='gray'); axis('off')
    print('test labels:', solver.test_nets[0].blobs['label'].data[:8])
    # fmt: on

    # the checks so far: the files, the shapes the notebook prints, the first batches
    written = text_format.Parse(
        Path("mnist/lenet_auto_train.prototxt").read_text(), caffe.proto.caffe_pb2.NetParameter()
    )
    assert written.layer[0].data_param.source == "mnist/mnist_train_lmdb"
    assert written.layer[0].data_param.batch_size == 64
    assert written.layer[0].transform_param.scale == pytest.approx(1 / 255)
    assert blobs == [
        ("data", (64, 1, 28, 28)), ("label", (64,)), ("conv1", (64, 20, 24, 24)),
        ("pool1", (64, 20, 12, 12)), ("conv2", (64, 50, 8, 8)), ("pool2", (64, 50, 4, 4)),
        ("fc1", (64, 500)), ("score", (64, 10)), ("loss", ()),
    ]  # fmt: skip
    assert params == [
        ("conv1", (20, 1, 5, 5)), ("conv2", (50, 20, 5, 5)), ("fc1", (500, 800)),
        ("score", (10, 500)),
    ]  # fmt: skip
    assert list(train_out) == ["loss"] and 1.5 < float(train_out["loss"]) < 3.5  # about ln 10
    assert 1.5 < float(test_out["loss"]) < 3.5
    np.testing.assert_array_equal(solver.net.blobs["label"].data, fashion["train_labels"][:64])
    np.testing.assert_allclose(solver.net.blobs["data"].data[:, 0],
                               fashion["train_images"][:64] / 255.0, rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(solver.test_nets[0].blobs["label"].data,
                                  fashion["test_labels"][:100])  # fmt: skip
    assert plt.shown[0].shape == (28, 224)
    before = solver.net.params["conv1"][0].data.copy()

    # fmt: off
    solver.step(1)

    imshow(solver.net.params['conv1'][0].diff[:, 0].reshape(4, 5, 5, 5)
           .transpose(0, 2, 1, 3).reshape(4*5, 5*5), cmap='gray'); axis('off')
    # fmt: on
    diff = solver.net.params["conv1"][0].diff
    assert plt.shown[-1].shape == (20, 25) and np.abs(diff).max() > 0
    # the diff is the update Caffe's Blob::Update subtracted from the weights
    np.testing.assert_allclose(solver.net.params["conv1"][0].data, before - diff, atol=1e-7)
    # the test net computes with the train net's parameters (no copies)
    test_conv1 = solver.test_nets[0].params["conv1"][0].data
    assert np.shares_memory(test_conv1, solver.net.params["conv1"][0].data)

    # fmt: off
    niter = 60
    test_interval = 20
    # losses will also be stored in the log
    train_loss = zeros(niter)
    test_acc = zeros(int(np.ceil(niter / test_interval)))
    output = zeros((niter, 8, 10))

    # the main solver loop
    for it in range(niter):
        solver.step(1)  # SGD by Caffe

        # store the train loss
        train_loss[it] = solver.net.blobs['loss'].data

        # store the output on the first test batch
        # (start the forward pass at conv1 to avoid loading new data)
        solver.test_nets[0].forward(start='conv1')
        output[it] = solver.test_nets[0].blobs['score'].data[:8]

        # run a full test every so often
        # (Caffe can also do this for us and write to a log, but we show here
        #  how to do it directly in Python, where more complicated things are easier.)
        if it % test_interval == 0:
            print('Iteration', it, 'testing...')
            correct = 0
            for test_it in range(5):
                solver.test_nets[0].forward()
                correct += sum(solver.test_nets[0].blobs['score'].data.argmax(1)
                               == solver.test_nets[0].blobs['label'].data)
            test_acc[it // test_interval] = correct / 5e2
    # fmt: on
    print("test accuracy", test_acc, "train loss", train_loss[::10])
    assert solver.iter == niter + 1
    assert train_loss[:5].mean() > 1.0 and train_loss[-10:].mean() < 0.7 * train_loss[:5].mean()
    assert test_acc[-1] > 0.5 and test_acc[-1] > test_acc[0]  # chance is 0.1
    # a full test reads the whole (500-image) test set, so the test net is back on the first
    # batch, and forward(start='conv1') read no data: the first eight are the first eight
    np.testing.assert_array_equal(solver.test_nets[0].blobs["label"].data[:8],
                                  fashion["test_labels"][:8])  # fmt: skip
    assert (output[-1].argmax(1) == fashion["test_labels"][:8]).mean() >= 0.5
    np.testing.assert_array_equal(solver.test_nets[0].params["conv1"][0].data,
                                  solver.net.params["conv1"][0].data)  # fmt: skip

    # fmt: off
    train_net_path = 'mnist/custom_auto_train.prototxt'
    test_net_path = 'mnist/custom_auto_test.prototxt'
    solver_config_path = 'mnist/custom_auto_solver.prototxt'

    ### define net
    def custom_net(lmdb, batch_size):
        # define your own net!
        n = caffe.NetSpec()

        # keep this data layer for all networks
        n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                                 transform_param=dict(scale=1./255), ntop=2)

        # EDIT HERE to try different networks
        # this single layer defines a simple linear classifier
        # (in particular this defines a multiway logistic regression)
        n.score =   L.InnerProduct(n.data, num_output=10, weight_filler=dict(type='xavier'))

        # keep this loss layer for all networks
        n.loss =  L.SoftmaxWithLoss(n.score, n.label)

        return n.to_proto()

    with open(train_net_path, 'w') as f:
        f.write(str(custom_net('mnist/mnist_train_lmdb', 64)))
    with open(test_net_path, 'w') as f:
        f.write(str(custom_net('mnist/mnist_test_lmdb', 100)))

    ### define solver
    from caffe.proto import caffe_pb2
    s = caffe_pb2.SolverParameter()

    # Set a seed for reproducible experiments:
    # this controls for randomization in training.
    s.random_seed = 0xCAFFE

    # Specify locations of the train and (maybe) test networks.
    s.train_net = train_net_path
    s.test_net.append(test_net_path)
    s.test_interval = 500  # Test after every 500 training iterations.
    s.test_iter.append(5) # Test on 5 batches each time we test.

    s.max_iter = 10000     # no. of times to update the net (training iterations)

    # EDIT HERE to try different solvers
    # solver types include "SGD", "Adam", and "Nesterov" among others.
    s.type = "SGD"

    # Set the initial learning rate for SGD.
    s.base_lr = 0.01  # EDIT HERE to try different learning rates
    # Set momentum to accelerate learning by
    # taking weighted average of current and previous updates.
    s.momentum = 0.9
    # Set weight decay to regularize and prevent overfitting
    s.weight_decay = 5e-4

    # Set `lr_policy` to define how the learning rate changes during training.
    # This is the same policy as our default LeNet.
    s.lr_policy = 'inv'
    s.gamma = 0.0001
    s.power = 0.75
    # EDIT HERE to try the fixed rate (and compare with adaptive solvers)
    # `fixed` is the simplest policy that keeps the learning rate constant.
    # s.lr_policy = 'fixed'

    # Display the current training loss and accuracy every 1000 iterations.
    s.display = 1000

    # Snapshots are files used to store networks we've trained.
    # We'll snapshot every 5K iterations -- twice during training.
    s.snapshot = 5000
    s.snapshot_prefix = 'mnist/custom_net'

    # Train on the GPU
    s.solver_mode = caffe_pb2.SolverParameter.GPU

    # Write the solver to a temporary file and return its filename.
    with open(solver_config_path, 'w') as f:
        f.write(str(s))

    ### load the solver and create train and test nets
    solver = None  # ignore this workaround for lmdb data (can't instantiate two solvers on the same data)
    solver = caffe.get_solver(solver_config_path)

    ### solve
    niter = 50  # EDIT HERE increase to train for longer
    test_interval = niter // 10
    # losses will also be stored in the log
    train_loss = zeros(niter)
    test_acc = zeros(int(np.ceil(niter / test_interval)))

    # the main solver loop
    for it in range(niter):
        solver.step(1)  # SGD by Caffe

        # store the train loss
        train_loss[it] = solver.net.blobs['loss'].data

        # run a full test every so often
        # (Caffe can also do this for us and write to a log, but we show here
        #  how to do it directly in Python, where more complicated things are easier.)
        if it % test_interval == 0:
            print('Iteration', it, 'testing...')
            correct = 0
            for test_it in range(5):
                solver.test_nets[0].forward()
                correct += sum(solver.test_nets[0].blobs['score'].data.argmax(1)
                               == solver.test_nets[0].blobs['label'].data)
            test_acc[it // test_interval] = correct / 5e2
    # fmt: on
    print("logistic regression: test accuracy", test_acc)
    assert [(k, v[0].data.shape) for k, v in solver.net.params.items()] == [("score", (10, 784))]
    assert test_acc[-1] > 0.5 and train_loss[-10:].mean() < train_loss[:3].mean()


# ------------------------------------------------------------ examples/brewing-logreg


def make_classification(n_samples, n_features, n_redundant, n_informative,
                        n_clusters_per_class, hypercube, random_state):  # fmt: skip
    """Stands in for scikit-learn's (not a dependency): two classes, each a mixture of two
    Gaussian clusters in the two informative features, one of them on the other class's
    side, so that no line separates the classes but a small net can; the other features
    are noise."""
    assert (n_features, n_redundant, n_informative, n_clusters_per_class) == (4, 0, 2, 2)
    rng = np.random.default_rng(random_state)
    y = rng.integers(0, 2, n_samples)
    cluster = rng.integers(0, 2, n_samples)
    centres = np.array([[[0.0, 0.0], [0.0, 3.0]], [[3.0, 1.5], [-3.0, 4.0]]])
    informative = centres[y, cluster] + rng.normal(0, 0.8, (n_samples, 2))
    noise = rng.normal(0, 1, (n_samples, n_features - n_informative))
    return np.hstack([informative, noise]), y


def train_test_split(X, y):
    """scikit-learn's default split: a shuffled quarter for testing."""
    order = np.random.default_rng(0).permutation(len(X))
    cut = len(X) * 3 // 4
    return X[order[:cut]], X[order[cut:]], y[order[:cut]], y[order[cut:]]


def test_brewing_logreg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logistic regression and a two-layer net on vectors from HDF5 files (written with
    h5py, one listed twice, one gzipped), NetSpec nets, a SolverParameter written from
    Python, caffe.get_solver, solve() and the accuracy over the test set."""
    h5py = pytest.importorskip("h5py", reason="h5py (the `data` extra) is not installed")
    import shutil

    (tmp_path / "examples/hdf5_classification").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the notebook runs in {caffe_root}
    # fmt: off
    X, y = make_classification(
        n_samples=10000, n_features=4, n_redundant=0, n_informative=2,
        n_clusters_per_class=2, hypercube=False, random_state=0
    )

    # Split into train and test
    X, Xt, y, yt = train_test_split(X, y)

    # Write out the data to HDF5 files in a temp directory.
    # This file is assumed to be caffe_root/examples/hdf5_classification.ipynb
    dirname = os.path.abspath('./examples/hdf5_classification/data')
    if not os.path.exists(dirname):
        os.makedirs(dirname)

    train_filename = os.path.join(dirname, 'train.h5')
    test_filename = os.path.join(dirname, 'test.h5')

    # HDF5DataLayer source should be a file containing a list of HDF5 filenames.
    # To show this off, we'll list the same data file twice.
    with h5py.File(train_filename, 'w') as f:
        f['data'] = X
        f['label'] = y.astype(np.float32)
    with open(os.path.join(dirname, 'train.txt'), 'w') as f:
        f.write(train_filename + '\n')
        f.write(train_filename + '\n')

    # HDF5 is pretty efficient, but can be further compressed.
    comp_kwargs = {'compression': 'gzip', 'compression_opts': 1}
    with h5py.File(test_filename, 'w') as f:
        f.create_dataset('data', data=Xt, **comp_kwargs)
        f.create_dataset('label', data=yt.astype(np.float32), **comp_kwargs)
    with open(os.path.join(dirname, 'test.txt'), 'w') as f:
        f.write(test_filename + '\n')

    from caffe import layers as L
    from caffe import params as P

    def logreg(hdf5, batch_size):
        # logistic regression: data, matrix multiplication, and 2-class softmax loss
        n = caffe.NetSpec()
        n.data, n.label = L.HDF5Data(batch_size=batch_size, source=hdf5, ntop=2)
        n.ip1 = L.InnerProduct(n.data, num_output=2, weight_filler=dict(type='xavier'))
        n.accuracy = L.Accuracy(n.ip1, n.label)
        n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
        return n.to_proto()

    train_net_path = 'examples/hdf5_classification/logreg_auto_train.prototxt'
    with open(train_net_path, 'w') as f:
        f.write(str(logreg('examples/hdf5_classification/data/train.txt', 10)))

    test_net_path = 'examples/hdf5_classification/logreg_auto_test.prototxt'
    with open(test_net_path, 'w') as f:
        f.write(str(logreg('examples/hdf5_classification/data/test.txt', 10)))

    from caffe.proto import caffe_pb2

    def solver(train_net_path, test_net_path):
        s = caffe_pb2.SolverParameter()

        # Specify locations of the train and test networks.
        s.train_net = train_net_path
        s.test_net.append(test_net_path)

        s.test_interval = 1000  # Test after every 1000 training iterations.
        s.test_iter.append(250) # Test 250 "batches" each time we test.

        s.max_iter = 2000      # # of times to update the net (training iterations)

        # Set the initial learning rate for stochastic gradient descent (SGD).
        s.base_lr = 0.01

        # Set `lr_policy` to define how the learning rate changes during training.
        # Here, we 'step' the learning rate by multiplying it by a factor `gamma`
        # every `stepsize` iterations.
        s.lr_policy = 'step'
        s.gamma = 0.1
        s.stepsize = 1000

        # Set other optimization parameters. Setting a non-zero `momentum` takes a
        # weighted average of the current gradient and previous gradients to make
        # learning more stable. L2 weight decay regularizes learning, to help prevent
        # the model from overfitting.
        s.momentum = 0.9
        s.weight_decay = 5e-4

        # Display the current training loss and accuracy every 1000 iterations.
        s.display = 1000

        # Snapshots are files used to store networks we've trained.  Here, we'll
        # snapshot every 2K iterations -- just once at the end of training.
        # For larger networks that take longer to train, you may want to set
        # snapshot < max_iter to save the network and training state to disk during
        # optimization, preventing disaster in case of machine crashes, etc.
        s.snapshot = 2000
        s.snapshot_prefix = 'examples/hdf5_classification/data/train'

        # We'll train on the CPU for fair benchmarking against scikit-learn.
        # Changing to GPU should result in much faster training!
        s.solver_mode = caffe_pb2.SolverParameter.CPU

        return s

    solver_path = 'examples/hdf5_classification/logreg_solver.prototxt'
    with open(solver_path, 'w') as f:
        f.write(str(solver(train_net_path, test_net_path)))

    def timeit_cell():  # %%timeit: the cell runs in a namespace of its own
        caffe.set_mode_cpu()
        solver = caffe.get_solver(solver_path)
        solver.solve()

        accuracy = 0
        batch_size = solver.test_nets[0].blobs['data'].num
        test_iters = int(len(Xt) / batch_size)
        for i in range(test_iters):
            solver.test_nets[0].forward()
            accuracy += solver.test_nets[0].blobs['accuracy'].data
        accuracy /= test_iters

        print("Accuracy: {:.3f}".format(accuracy))
        return solver, accuracy, batch_size, test_iters

    trained, accuracy, batch_size, test_iters = timeit_cell()
    # fmt: on
    logreg_accuracy = float(accuracy)
    # the accuracy is the learned weights' over the whole test set, by hand
    w, b = trained.net.params["ip1"][0].data, trained.net.params["ip1"][1].data
    by_hand = ((Xt @ w.T + b).argmax(1) == yt).mean()
    assert logreg_accuracy == pytest.approx(by_hand, abs=1e-6)
    assert trained.iter == 2000 and batch_size == 10 and test_iters == 250
    assert 0.6 < logreg_accuracy < 0.85  # a line separates some of the data, not all
    assert os.path.exists("examples/hdf5_classification/data/train_iter_2000.caffemodel")
    assert os.path.exists("examples/hdf5_classification/data/train_iter_2000.solverstate")

    # fmt: off
    from caffe import layers as L
    from caffe import params as P  # noqa: F401

    def nonlinear_net(hdf5, batch_size):
        # one small nonlinearity, one leap for model kind
        n = caffe.NetSpec()
        n.data, n.label = L.HDF5Data(batch_size=batch_size, source=hdf5, ntop=2)
        # define a hidden layer of dimension 40
        n.ip1 = L.InnerProduct(n.data, num_output=40, weight_filler=dict(type='xavier'))
        # transform the output through the ReLU (rectified linear) non-linearity
        n.relu1 = L.ReLU(n.ip1, in_place=True)
        # score the (now non-linear) features
        n.ip2 = L.InnerProduct(n.ip1, num_output=2, weight_filler=dict(type='xavier'))
        # same accuracy and loss as before
        n.accuracy = L.Accuracy(n.ip2, n.label)
        n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
        return n.to_proto()

    train_net_path = 'examples/hdf5_classification/nonlinear_auto_train.prototxt'
    with open(train_net_path, 'w') as f:
        f.write(str(nonlinear_net('examples/hdf5_classification/data/train.txt', 10)))

    test_net_path = 'examples/hdf5_classification/nonlinear_auto_test.prototxt'
    with open(test_net_path, 'w') as f:
        f.write(str(nonlinear_net('examples/hdf5_classification/data/test.txt', 10)))

    solver_path = 'examples/hdf5_classification/nonlinear_logreg_solver.prototxt'
    with open(solver_path, 'w') as f:
        f.write(str(solver(train_net_path, test_net_path)))

    def timeit_cell():  # %%timeit: the cell runs in a namespace of its own
        caffe.set_mode_cpu()
        solver = caffe.get_solver(solver_path)
        solver.solve()

        accuracy = 0
        batch_size = solver.test_nets[0].blobs['data'].num
        test_iters = int(len(Xt) / batch_size)
        for i in range(test_iters):
            solver.test_nets[0].forward()
            accuracy += solver.test_nets[0].blobs['accuracy'].data
        accuracy /= test_iters

        print("Accuracy: {:.3f}".format(accuracy))
        return solver, accuracy, batch_size, test_iters

    trained, accuracy, batch_size, test_iters = timeit_cell()

    # Clean up (comment this out if you want to examine the hdf5_classification/data directory).
    shutil.rmtree(dirname)
    # fmt: on
    print("logistic regression", logreg_accuracy, "nonlinear", float(accuracy))
    # "The final accuracy of the new network should be higher than logistic regression!"
    assert float(accuracy) > logreg_accuracy + 0.1


# ------------------------------------------------------------ examples/net_surgery


def correlate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Caffe's convolution (a correlation, no padding, stride 1) of one 2-D image."""
    windows = np.lib.stride_tricks.sliding_window_view(image, kernel.shape)
    return np.einsum("ijkl,kl->ij", windows, kernel)


def test_net_surgery(caffe_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Designer filters: a one-layer net reshaped to an image, its bias and weights edited in
    place (a Gaussian blur, Sobel edges); then CaffeNet's classifier cast into a fully
    convolutional net by transplanting the fc weights, saved, and run on a larger image."""
    monkeypatch.chdir(caffe_root / "examples")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook adds '../python'
    plt = Pyplot()
    # fmt: off
    # Make sure that caffe is on the python path:
    caffe_root_ = '../'  # this file is expected to be in {caffe_root}/examples
    sys.path.insert(0, caffe_root_ + 'python')

    import caffe

    # configure plotting
    plt.rcParams['figure.figsize'] = (10, 10)
    plt.rcParams['image.interpolation'] = 'nearest'
    plt.rcParams['image.cmap'] = 'gray'

    # Load the net, list its data and params, and filter an example image.
    caffe.set_mode_cpu()
    net = caffe.Net('net_surgery/conv.prototxt', caffe.TEST)
    print("blobs {}\nparams {}".format(net.blobs.keys(), net.params.keys()))

    # load image and prepare as a single input batch for Caffe
    im = np.array(caffe.io.load_image('images/cat_gray.jpg', color=False)).squeeze()
    plt.title("original image")
    plt.imshow(im)
    plt.axis('off')

    im_input = im[np.newaxis, np.newaxis, :, :]
    net.blobs['data'].reshape(*im_input.shape)
    net.blobs['data'].data[...] = im_input

    # helper show filter outputs
    def show_filters(net):
        net.forward()
        plt.figure()
        filt_min, filt_max = net.blobs['conv'].data.min(), net.blobs['conv'].data.max()
        for i in range(3):
            plt.subplot(1,4,i+2)
            plt.title("filter #{} output".format(i))
            plt.imshow(net.blobs['conv'].data[0, i], vmin=filt_min, vmax=filt_max)
            plt.tight_layout()
            plt.axis('off')

    # filter the image with initial
    show_filters(net)

    # pick first filter output
    conv0 = net.blobs['conv'].data[0, 0]
    print("pre-surgery output mean {:.2f}".format(conv0.mean()))
    pre_surgery = conv0.mean()
    # set first filter bias to 1
    net.params['conv'][1].data[0] = 1.
    net.forward()
    print("post-surgery output mean {:.2f}".format(conv0.mean()))
    post_surgery = conv0.mean()

    ksize = net.params['conv'][0].data.shape[2:]
    # make Gaussian blur
    sigma = 1.
    y, x = np.mgrid[-ksize[0]//2 + 1:ksize[0]//2 + 1, -ksize[1]//2 + 1:ksize[1]//2 + 1]
    g = np.exp(-((x**2 + y**2)/(2.0*sigma**2)))
    gaussian = (g / g.sum()).astype(np.float32)
    net.params['conv'][0].data[0] = gaussian
    # make Sobel operator for edge detection
    net.params['conv'][0].data[1:] = 0.
    sobel = np.array((-1, -2, -1, 0, 0, 0, 1, 2, 1), dtype=np.float32).reshape((3,3))
    net.params['conv'][0].data[1, 0, 1:-1, 1:-1] = sobel  # horizontal
    net.params['conv'][0].data[2, 0, 1:-1, 1:-1] = sobel.T  # vertical
    show_filters(net)
    # fmt: on
    assert list(net.blobs.keys()) == ["data", "conv"] and list(net.params.keys()) == ["conv"]
    assert im.shape == (360, 480) and net.blobs["conv"].data.shape == (1, 3, 356, 476)
    assert [s.shape for s in plt.shown] == [(360, 480)] + [(356, 476)] * 6
    # the initial filters are the prototxt's: gaussian (std 0.01) weights, zero biases
    first = plt.shown[1:4]
    assert abs(float(pre_surgery)) < 0.2 and np.abs(first[0]).max() > 0
    # conv0 is a view of the net's output: the second forward shows through it
    assert float(post_surgery) == pytest.approx(float(pre_surgery) + 1.0, abs=1e-4)
    # the designed filters, by hand: a blur (with the bias of 1) and Sobel edges
    out = net.blobs["conv"].data[0]
    np.testing.assert_allclose(out[0], correlate(im, gaussian) + 1.0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], correlate(im, np.pad(sobel, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[2], correlate(im, np.pad(sobel.T, 1)), rtol=1e-5, atol=1e-5)
    assert ksize == (5, 5) and np.abs(out[1]).max() > 0.5  # the bar's edges

    # fmt: off
    # Load the original network and extract the fully connected layers' parameters.
    net = caffe.Net('../models/bvlc_reference_caffenet/deploy.prototxt',
                    '../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel',
                    caffe.TEST)
    params = ['fc6', 'fc7', 'fc8']
    # fc_params = {name: (weights, biases)}
    fc_params = {pr: (net.params[pr][0].data, net.params[pr][1].data) for pr in params}

    for fc in params:
        print('{} weights are {} dimensional and biases are {} dimensional'.format(fc, fc_params[fc][0].shape, fc_params[fc][1].shape))

    # Load the fully convolutional network to transplant the parameters.
    net_full_conv = caffe.Net('net_surgery/bvlc_caffenet_full_conv.prototxt',
                              '../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel',
                              caffe.TEST)
    params_full_conv = ['fc6-conv', 'fc7-conv', 'fc8-conv']
    # conv_params = {name: (weights, biases)}
    conv_params = {pr: (net_full_conv.params[pr][0].data, net_full_conv.params[pr][1].data) for pr in params_full_conv}

    for conv in params_full_conv:
        print('{} weights are {} dimensional and biases are {} dimensional'.format(conv, conv_params[conv][0].shape, conv_params[conv][1].shape))
    # fmt: on
    assert [fc_params[fc][0].shape for fc in params] == [(4096, 9216), (4096, 4096), (1000, 4096)]
    assert [conv_params[c][0].shape for c in params_full_conv] == [
        (4096, 256, 6, 6), (4096, 4096, 1, 1), (1000, 4096, 1, 1)
    ]  # fmt: skip
    # the conv layers the two nets share by name were loaded; the renamed ones were not
    np.testing.assert_array_equal(net_full_conv.params["conv3"][0].data,
                                  net.params["conv3"][0].data)  # fmt: skip
    assert not conv_params["fc6-conv"][0].any() and not conv_params["fc6-conv"][1].any()

    # fmt: off
    for pr, pr_conv in zip(params, params_full_conv):
        conv_params[pr_conv][0].flat = fc_params[pr][0].flat  # flat unrolls the arrays
        conv_params[pr_conv][1][...] = fc_params[pr][1]

    net_full_conv.save('net_surgery/bvlc_caffenet_full_conv.caffemodel')

    # load input and configure preprocessing
    im = caffe.io.load_image('images/cat.jpg')
    transformer = caffe.io.Transformer({'data': net_full_conv.blobs['data'].data.shape})
    transformer.set_mean('data', np.load('../python/caffe/imagenet/ilsvrc_2012_mean.npy').mean(1).mean(1))
    transformer.set_transpose('data', (2,0,1))
    transformer.set_channel_swap('data', (2,1,0))
    transformer.set_raw_scale('data', 255.0)
    # make classification map by forward and print prediction indices at each location
    out = net_full_conv.forward_all(data=np.asarray([transformer.preprocess('data', im)]))
    print(out['prob'][0].argmax(axis=0))
    # show net input and confidence map (probability of the top prediction at each location)
    plt.subplot(1, 2, 1)
    plt.imshow(transformer.deprocess('data', net_full_conv.blobs['data'].data[0]))
    plt.subplot(1, 2, 2)
    plt.imshow(out['prob'][0,281])
    # fmt: on
    # the transplant went into the net's own parameters, and the file holds it
    for pr, pr_conv in zip(params, params_full_conv):
        np.testing.assert_array_equal(
            net_full_conv.params[pr_conv][0].data.reshape(fc_params[pr][0].shape),
            net.params[pr][0].data,
        )
        np.testing.assert_array_equal(net_full_conv.params[pr_conv][1].data, net.params[pr][1].data)
    saved = caffe.Net("net_surgery/bvlc_caffenet_full_conv.prototxt",
                      "net_surgery/bvlc_caffenet_full_conv.caffemodel", caffe.TEST)  # fmt: skip
    for name in ("conv1", "fc6-conv", "fc8-conv"):
        for saved_blob, blob in zip(saved.params[name], net_full_conv.params[name], strict=True):
            np.testing.assert_array_equal(saved_blob.data, blob.data)
    # an 8x8 map of 1000-way probabilities over the 451x451 input
    prob_map = out["prob"]
    assert prob_map.shape == (1, 1000, 8, 8)
    np.testing.assert_allclose(prob_map.sum(1), 1, rtol=1e-5)
    assert plt.shown[-1].shape == (8, 8) and plt.shown[-2].shape == (451, 451, 3)
    np.testing.assert_allclose(plt.shown[-2], caffe.io.resize_image(im, (451, 451)),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # on a 227x227 input the fully convolutional net is the classifier: a 1x1 map of the
    # same probabilities
    crop = caffe.io.resize_image(im, (227, 227))
    mean = np.load("../python/caffe/imagenet/ilsvrc_2012_mean.npy").mean(1).mean(1)
    net.blobs["data"].data[...] = crop[:, :, ::-1].transpose(2, 0, 1) * 255.0 - mean[:, None, None]
    expected = net.forward()["prob"][0]
    saved.blobs["data"].reshape(1, 3, 227, 227)
    saved.blobs["data"].data[...] = net.blobs["data"].data[0]
    got = saved.forward()["prob"]
    assert got.shape == (1, 1000, 1, 1)
    np.testing.assert_allclose(got[0, :, 0, 0], expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------ examples/02-fine-tuning

STYLE_NAMES = ["Detailed", "Pastel", "Melancholy", "Noir", "HDR", "Vintage", "Long Exposure",
               "Horror", "Sunny", "Bright", "Hazy", "Bokeh", "Serene", "Texture", "Ethereal",
               "Macro", "Depth of Field", "Geometric Composition", "Minimal", "Romantic"]  # fmt: skip
STYLE_COLOURS = np.array(
    [[200, 40, 40], [40, 200, 40], [40, 40, 200], [220, 220, 40], [30, 30, 30]]
)


def flickr_style(root: Path, per_class: dict[str, int]) -> None:
    """What ``assemble_data.py`` leaves: ``data/flickr_style/{train,test}.txt`` listing
    images with labels 0-4, here 64x64 pictures tinted in one colour per label."""
    folder = root / "data/flickr_style"
    (root / "examples/finetune_flickr_style").mkdir(parents=True, exist_ok=True)
    (root / "examples/finetune_flickr_style/style_names.txt").write_text(
        "\n".join(STYLE_NAMES) + "\n"
    )
    for split, count in per_class.items():
        lines = []
        for i in range(count * len(STYLE_COLOURS)):
            label = i % len(STYLE_COLOURS)
            picture = 0.5 * photo(64, 64, seed=100 * i + 7) + 0.5 * STYLE_COLOURS[label]
            path = folder / "images" / f"{split}_{i}.jpg"
            save_image(path, picture.astype(np.uint8))
            lines.append(f"{path} {label}\n")
        (folder / f"{split}.txt").write_text("".join(lines))


def opencv_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize(..., INTER_LINEAR)`` of an H×W×C image, as Caffe's ImageData resizes:
    pixel centres aligned, edges clamped, rounded to integer levels."""

    def taps(size: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        at = np.clip((np.arange(new) + 0.5) * size / new - 0.5, 0, size - 1)
        low = np.floor(at).astype(int)
        return low, np.minimum(low + 1, size - 1), at - low

    y0, y1, wy = taps(pixels.shape[0], height)
    x0, x1, wx = taps(pixels.shape[1], width)
    rows = pixels[y0] * (1 - wy)[:, None, None] + pixels[y1] * wy[:, None, None]
    return np.rint(rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None])


def test_02_fine_tuning(caffe_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CaffeNet written with NetSpec (lr_mult lists, frozen or learned layers, a renamed
    classifier), ImageData input with a mean file, the ImageNet weights copied in by name,
    two solvers stepped side by side, the weights saved and evaluated, then end to end."""
    flickr_style(caffe_root, {"train": 2, "test": 1})
    monkeypatch.chdir(caffe_root / "examples")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the notebook's temporary files
    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook adds '../python'
    plt = Pyplot()
    # fmt: off
    caffe_root_ = '../'  # this file should be run from {caffe_root}/examples (otherwise change this line)

    sys.path.insert(0, caffe_root_ + 'python')
    import caffe

    caffe.set_mode_cpu()

    import numpy as np
    import tempfile

    # Helper function for deprocessing preprocessed images, e.g., for display.
    def deprocess_net_image(image):
        image = image.copy()              # don't modify destructively
        image = image[::-1]               # BGR -> RGB
        image = image.transpose(1, 2, 0)  # CHW -> HWC
        image += [123, 117, 104]          # (approximately) undo mean subtraction

        # clamp values in [0, 255]
        image[image < 0], image[image > 255] = 0, 255

        # round and cast from float32 to uint8
        image = np.round(image)
        image = np.require(image, dtype=np.uint8)

        return image

    # Download just a small subset of the data for this exercise.
    # (2000 of 80K images, 5 of 20 labels.)
    # To download the entire dataset, set `full_dataset = True`.
    full_dataset = False
    if full_dataset:
        NUM_STYLE_IMAGES = NUM_STYLE_LABELS = -1
    else:
        NUM_STYLE_IMAGES = 2000
        NUM_STYLE_LABELS = 5

    import os
    weights = os.path.join(caffe_root_, 'models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel')
    assert os.path.exists(weights)

    # Load ImageNet labels to imagenet_labels
    imagenet_label_file = caffe_root_ + 'data/ilsvrc12/synset_words.txt'
    imagenet_labels = list(np.loadtxt(imagenet_label_file, str, delimiter='\t'))
    assert len(imagenet_labels) == 1000
    print('Loaded ImageNet labels:\n', '\n'.join(imagenet_labels[:10] + ['...']))

    # Load style labels to style_labels
    style_label_file = caffe_root_ + 'examples/finetune_flickr_style/style_names.txt'
    style_labels = list(np.loadtxt(style_label_file, str, delimiter='\t'))
    if NUM_STYLE_LABELS > 0:
        style_labels = style_labels[:NUM_STYLE_LABELS]
    print('\nLoaded style labels:\n', ', '.join(style_labels))

    from caffe import layers as L
    from caffe import params as P

    weight_param = dict(lr_mult=1, decay_mult=1)
    bias_param   = dict(lr_mult=2, decay_mult=0)
    learned_param = [weight_param, bias_param]

    frozen_param = [dict(lr_mult=0)] * 2

    def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1,
                  param=learned_param,
                  weight_filler=dict(type='gaussian', std=0.01),
                  bias_filler=dict(type='constant', value=0.1)):
        conv = L.Convolution(bottom, kernel_size=ks, stride=stride,
                             num_output=nout, pad=pad, group=group,
                             param=param, weight_filler=weight_filler,
                             bias_filler=bias_filler)
        return conv, L.ReLU(conv, in_place=True)

    def fc_relu(bottom, nout, param=learned_param,
                weight_filler=dict(type='gaussian', std=0.005),
                bias_filler=dict(type='constant', value=0.1)):
        fc = L.InnerProduct(bottom, num_output=nout, param=param,
                            weight_filler=weight_filler,
                            bias_filler=bias_filler)
        return fc, L.ReLU(fc, in_place=True)

    def max_pool(bottom, ks, stride=1):
        return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)

    def caffenet(data, label=None, train=True, num_classes=1000,
                 classifier_name='fc8', learn_all=False):
        """Returns a NetSpec specifying CaffeNet, following the original proto text
           specification (./models/bvlc_reference_caffenet/train_val.prototxt)."""
        n = caffe.NetSpec()
        n.data = data
        param = learned_param if learn_all else frozen_param
        n.conv1, n.relu1 = conv_relu(n.data, 11, 96, stride=4, param=param)
        n.pool1 = max_pool(n.relu1, 3, stride=2)
        n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
        n.conv2, n.relu2 = conv_relu(n.norm1, 5, 256, pad=2, group=2, param=param)
        n.pool2 = max_pool(n.relu2, 3, stride=2)
        n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
        n.conv3, n.relu3 = conv_relu(n.norm2, 3, 384, pad=1, param=param)
        n.conv4, n.relu4 = conv_relu(n.relu3, 3, 384, pad=1, group=2, param=param)
        n.conv5, n.relu5 = conv_relu(n.relu4, 3, 256, pad=1, group=2, param=param)
        n.pool5 = max_pool(n.relu5, 3, stride=2)
        n.fc6, n.relu6 = fc_relu(n.pool5, 4096, param=param)
        if train:
            n.drop6 = fc7input = L.Dropout(n.relu6, in_place=True)
        else:
            fc7input = n.relu6
        n.fc7, n.relu7 = fc_relu(fc7input, 4096, param=param)
        if train:
            n.drop7 = fc8input = L.Dropout(n.relu7, in_place=True)
        else:
            fc8input = n.relu7
        # always learn fc8 (param=learned_param)
        fc8 = L.InnerProduct(fc8input, num_output=num_classes, param=learned_param)
        # give fc8 the name specified by argument `classifier_name`
        n.__setattr__(classifier_name, fc8)
        if not train:
            n.probs = L.Softmax(fc8)
        if label is not None:
            n.label = label
            n.loss = L.SoftmaxWithLoss(fc8, n.label)
            n.acc = L.Accuracy(fc8, n.label)
        # write the net to a temporary file and return its filename
        with tempfile.NamedTemporaryFile(mode='w', delete=False) as f:
            f.write(str(n.to_proto()))
            return f.name

    dummy_data = L.DummyData(shape=dict(dim=[1, 3, 227, 227]))
    imagenet_net_filename = caffenet(data=dummy_data, train=False)
    imagenet_net = caffe.Net(imagenet_net_filename, weights, caffe.TEST)

    def style_net(train=True, learn_all=False, subset=None):
        if subset is None:
            subset = 'train' if train else 'test'
        source = caffe_root_ + 'data/flickr_style/%s.txt' % subset
        transform_param = dict(mirror=train, crop_size=227,
            mean_file=caffe_root_ + 'data/ilsvrc12/imagenet_mean.binaryproto')
        style_data, style_label = L.ImageData(
            transform_param=transform_param, source=source,
            batch_size=5, new_height=256, new_width=256, ntop=2)
        return caffenet(data=style_data, label=style_label, train=train,
                        num_classes=NUM_STYLE_LABELS,
                        classifier_name='fc8_flickr',
                        learn_all=learn_all)

    untrained_style_net = caffe.Net(style_net(train=False, subset='train'),
                                    weights, caffe.TEST)
    untrained_style_net.forward()
    style_data_batch = untrained_style_net.blobs['data'].data.copy()
    style_label_batch = np.array(untrained_style_net.blobs['label'].data, dtype=np.int32)

    def disp_preds(net, image, labels, k=5, name='ImageNet'):
        input_blob = net.blobs['data']
        net.blobs['data'].data[0, ...] = image
        probs = net.forward(start='conv1')['probs'][0]
        top_k = (-probs).argsort()[:k]
        print('top %d predicted %s labels =' % (k, name))
        print('\n'.join('\t(%d) %5.2f%% %s' % (i+1, 100*probs[p], labels[p])
                        for i, p in enumerate(top_k)))

    def disp_imagenet_preds(net, image):
        disp_preds(net, image, imagenet_labels, name='ImageNet')

    def disp_style_preds(net, image):
        disp_preds(net, image, style_labels, name='style')

    batch_index = 3
    image = style_data_batch[batch_index]
    plt.imshow(deprocess_net_image(image))
    print('actual label =', style_labels[style_label_batch[batch_index]])

    disp_imagenet_preds(imagenet_net, image)

    disp_style_preds(untrained_style_net, image)

    diff = untrained_style_net.blobs['fc7'].data[0] - imagenet_net.blobs['fc7'].data[0]
    error = (diff ** 2).sum()
    assert error < 1e-8
    # fmt: on
    # the checks: the batch is the list's first five images, resized, cropped, less the mean
    assert style_labels == ["Detailed", "Pastel", "Melancholy", "Noir", "HDR"]
    assert list(style_label_batch) == [0, 1, 2, 3, 4]
    pixels = np.round(
        caffe.io.load_image(caffe_root / "data/flickr_style/images/train_3.jpg") * 255
    )
    resized = opencv_resize(pixels[:, :, ::-1], 256, 256).transpose(2, 0, 1)  # BGR, as OpenCV reads
    mean = np.load(caffe_root / "python/caffe/imagenet/ilsvrc_2012_mean.npy")
    centre = (resized - mean)[:, 14:241, 14:241]
    assert np.abs(image - centre).max() <= 1.001  # OpenCV rounds its fixed point to a level
    # the ImageNet net's own classifier; the style net's, zero-filled: 20% each
    imagenet_probs = imagenet_net.blobs["probs"].data[0]
    assert imagenet_probs.shape == (1000,) and imagenet_probs.max() > 2e-3
    np.testing.assert_allclose(untrained_style_net.blobs["probs"].data[0], 0.2, rtol=1e-6)
    pretrained = {name: [b.data.copy() for b in blobs]
                  for name, blobs in imagenet_net.params.items()}  # fmt: skip
    del untrained_style_net

    # fmt: off
    from caffe.proto import caffe_pb2

    def solver(train_net_path, test_net_path=None, base_lr=0.001):
        s = caffe_pb2.SolverParameter()

        # Specify locations of the train and (maybe) test networks.
        s.train_net = train_net_path
        if test_net_path is not None:
            s.test_net.append(test_net_path)
            s.test_interval = 1000  # Test after every 1000 training iterations.
            s.test_iter.append(100) # Test on 100 batches each time we test.

        # The number of iterations over which to average the gradient.
        # Effectively boosts the training batch size by the given factor, without
        # affecting memory utilization.
        s.iter_size = 1

        s.max_iter = 100000     # # of times to update the net (training iterations)

        # Solve using the stochastic gradient descent (SGD) algorithm.
        # Other choices include 'Adam' and 'RMSProp'.
        s.type = 'SGD'

        # Set the initial learning rate for SGD.
        s.base_lr = base_lr

        # Set `lr_policy` to define how the learning rate changes during training.
        # Here, we 'step' the learning rate by multiplying it by a factor `gamma`
        # every `stepsize` iterations.
        s.lr_policy = 'step'
        s.gamma = 0.1
        s.stepsize = 20000

        # Set other SGD hyperparameters. Setting a non-zero `momentum` takes a
        # weighted average of the current gradient and previous gradients to make
        # learning more stable. L2 weight decay regularizes learning, to help prevent
        # the model from overfitting.
        s.momentum = 0.9
        s.weight_decay = 5e-4

        # Display the current training loss and accuracy every 1000 iterations.
        s.display = 1000

        # Snapshots are files used to store networks we've trained.  Here, we'll
        # snapshot every 10K iterations -- ten times during training.
        s.snapshot = 10000
        s.snapshot_prefix = caffe_root_ + 'models/finetune_flickr_style/finetune_flickr_style'

        # Train on the GPU.  Using the CPU to train large networks is very slow.
        s.solver_mode = caffe_pb2.SolverParameter.GPU

        # Write the solver to a temporary file and return its filename.
        with tempfile.NamedTemporaryFile(mode='w', delete=False) as f:
            f.write(str(s))
            return f.name

    def run_solvers(niter, solvers, disp_interval=10):
        """Run solvers for niter iterations,
           returning the loss and accuracy recorded each iteration.
           `solvers` is a list of (name, solver) tuples."""
        blobs = ('loss', 'acc')
        loss, acc = ({name: np.zeros(niter) for name, _ in solvers}
                     for _ in blobs)
        for it in range(niter):
            for name, s in solvers:
                s.step(1)  # run a single SGD step in Caffe
                loss[name][it], acc[name][it] = (s.net.blobs[b].data.copy()
                                                 for b in blobs)
            if it % disp_interval == 0 or it + 1 == niter:
                loss_disp = '; '.join('%s: loss=%.3f, acc=%2d%%' %
                                      (n, loss[n][it], np.round(100*acc[n][it]))
                                      for n, _ in solvers)
                print('%3d) %s' % (it, loss_disp))
        # Save the learned weights from both nets.
        weight_dir = tempfile.mkdtemp()
        weights = {}
        for name, s in solvers:
            filename = 'weights.%s.caffemodel' % name
            weights[name] = os.path.join(weight_dir, filename)
            s.net.save(weights[name])
        return loss, acc, weights

    niter = 4  # number of iterations to train

    # Reset style_solver as before.
    style_solver_filename = solver(style_net(train=True))
    style_solver = caffe.get_solver(style_solver_filename)
    style_solver.net.copy_from(weights)

    # For reference, we also create a solver that isn't initialized from
    # the pretrained ImageNet weights.
    scratch_style_solver_filename = solver(style_net(train=True))
    scratch_style_solver = caffe.get_solver(scratch_style_solver_filename)
    # fmt: on
    scratch_init = {
        name: [b.data.copy() for b in blobs]
        for name, blobs in scratch_style_solver.net.params.items()
    }  # fmt: skip
    # fmt: off

    print('Running solvers for %d iterations...' % niter)
    solvers = [('pretrained', style_solver),
               ('scratch', scratch_style_solver)]
    loss, acc, weights = run_solvers(niter, solvers)
    print('Done.')

    train_loss, scratch_train_loss = loss['pretrained'], loss['scratch']
    train_acc, scratch_train_acc = acc['pretrained'], acc['scratch']
    style_weights, scratch_style_weights = weights['pretrained'], weights['scratch']
    # fmt: on
    # the frozen layers kept the ImageNet weights; the classifier learned
    trained = {
        name: [b.data.copy() for b in blobs] for name, blobs in style_solver.net.params.items()
    }  # fmt: skip
    assert list(trained) == [*list(pretrained)[:-1], "fc8_flickr"]
    for name in list(pretrained)[:-1]:
        for blob, before in zip(trained[name], pretrained[name], strict=True):
            np.testing.assert_array_equal(blob, before)
    assert trained["fc8_flickr"][0].shape == (5, 4096) and trained["fc8_flickr"][0].any()
    # the scratch net starts from the fillers NetSpec wrote: gaussian weights, biases of 0.1
    assert scratch_init["conv1"][0].std() == pytest.approx(0.01, rel=0.05)
    assert scratch_init["fc6"][0].std() == pytest.approx(0.005, rel=0.05)
    np.testing.assert_array_equal(scratch_init["fc7"][1], np.float32(0.1))
    assert not scratch_init["fc8_flickr"][0].any()
    assert np.isfinite(train_loss).all() and np.isfinite(scratch_train_loss).all()
    assert train_loss[0] == pytest.approx(np.log(5), rel=1e-4)  # zero-filled classifier
    np.testing.assert_allclose(train_acc * 5, np.round(train_acc * 5), atol=1e-5)  # k of 5 right
    del style_solver, scratch_style_solver, solvers

    # fmt: off
    def eval_style_net(weights, test_iters=1):
        test_net = caffe.Net(style_net(train=False), weights, caffe.TEST)
        accuracy = 0
        for it in range(test_iters):
            accuracy += test_net.forward()['acc']
        accuracy /= test_iters
        return test_net, accuracy

    test_net, accuracy = eval_style_net(style_weights)
    print('Accuracy, trained from ImageNet initialization: %3.1f%%' % (100*accuracy, ))
    scratch_test_net, scratch_accuracy = eval_style_net(scratch_style_weights)
    print('Accuracy, trained from   random initialization: %3.1f%%' % (100*scratch_accuracy, ))
    # fmt: on
    # the saved weights are what the solver had
    for name, blobs in test_net.params.items():
        for blob, saved in zip(blobs, trained[name], strict=True):
            np.testing.assert_array_equal(blob.data, saved)
    # "we expect both results to be better than chance accuracy (20%), and [...] the result
    # from training using the ImageNet pretraining initialization to be much better"
    assert float(accuracy) > 0.2 and float(accuracy) > float(scratch_accuracy)

    # fmt: off
    end_to_end_net = style_net(train=True, learn_all=True)

    # Set base_lr to 1e-3, the same as last time when learning only the classifier.
    # You may want to play around with different values of this or other
    # optimization parameters when fine-tuning.  For example, if learning diverges
    # (e.g., the loss gets very large or goes to infinity/NaN), you should try
    # decreasing base_lr (e.g., to 1e-4, then 1e-5, etc., until you find a value
    # for which learning does not diverge).
    base_lr = 0.001

    style_solver_filename = solver(end_to_end_net, base_lr=base_lr)
    style_solver = caffe.get_solver(style_solver_filename)
    style_solver.net.copy_from(style_weights)

    scratch_style_solver_filename = solver(end_to_end_net, base_lr=base_lr)
    scratch_style_solver = caffe.get_solver(scratch_style_solver_filename)
    scratch_style_solver.net.copy_from(scratch_style_weights)

    print('Running solvers for %d iterations...' % niter)
    solvers = [('pretrained, end-to-end', style_solver),
               ('scratch, end-to-end', scratch_style_solver)]
    _, _, finetuned_weights = run_solvers(niter, solvers)
    print('Done.')

    style_weights_ft = finetuned_weights['pretrained, end-to-end']
    scratch_style_weights_ft = finetuned_weights['scratch, end-to-end']
    # fmt: on
    # end to end, every layer learns
    for name, blobs in style_solver.net.params.items():
        assert not np.array_equal(blobs[0].data, trained[name][0]), name
    del style_solver, scratch_style_solver, solvers

    # fmt: off
    test_net, accuracy = eval_style_net(style_weights_ft)
    print('Accuracy, finetuned from ImageNet initialization: %3.1f%%' % (100*accuracy, ))
    scratch_test_net, scratch_accuracy = eval_style_net(scratch_style_weights_ft)
    print('Accuracy, finetuned from   random initialization: %3.1f%%' % (100*scratch_accuracy, ))

    plt.imshow(deprocess_net_image(image))
    disp_style_preds(test_net, image)

    batch_index = 1
    image = test_net.blobs['data'].data[batch_index]
    plt.imshow(deprocess_net_image(image))
    print('actual label =', style_labels[int(test_net.blobs['label'].data[batch_index])])

    disp_style_preds(test_net, image)

    disp_style_preds(scratch_test_net, image)

    disp_imagenet_preds(imagenet_net, image)
    # fmt: on
    assert [s.shape for s in plt.shown] == [(227, 227, 3)] * 3
    probs = test_net.blobs["probs"].data[0]
    np.testing.assert_allclose(probs.sum(), 1, rtol=1e-5)
    # the first test image is label 0, the second label 1 (the test list is not shuffled)
    assert int(test_net.blobs["label"].data[batch_index]) == 1


# ------------------------------------------------------------ python/classify.py

# python/classify.py (Python 3: print calls; pandas, which only --print_results uses, is
# imported where it is used, as pandas is not a dependency here)
CLASSIFY_PY = '''\
#!/usr/bin/env python
"""
classify.py is an out-of-the-box image classifer callable from the command line.

By default it configures and runs the Caffe reference ImageNet model.
"""
import numpy as np
import os
import sys
import argparse
import glob
import time

import caffe


def main(argv):
    pycaffe_dir = os.path.dirname(__file__)

    parser = argparse.ArgumentParser()
    # Required arguments: input and output files.
    parser.add_argument(
        "input_file",
        help="Input image, directory, or npy."
    )
    parser.add_argument(
        "output_file",
        help="Output npy filename."
    )
    # Optional arguments.
    parser.add_argument(
        "--model_def",
        default=os.path.join(pycaffe_dir,
                "../models/bvlc_reference_caffenet/deploy.prototxt"),
        help="Model definition file."
    )
    parser.add_argument(
        "--pretrained_model",
        default=os.path.join(pycaffe_dir,
                "../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel"),
        help="Trained model weights file."
    )
    parser.add_argument(
        "--gpu",
        action='store_true',
        help="Switch for gpu computation."
    )
    parser.add_argument(
        "--center_only",
        action='store_true',
        help="Switch for prediction from center crop alone instead of " +
             "averaging predictions across crops (default)."
    )
    parser.add_argument(
        "--images_dim",
        default='256,256',
        help="Canonical 'height,width' dimensions of input images."
    )
    parser.add_argument(
        "--mean_file",
        default=os.path.join(pycaffe_dir,
                             'caffe/imagenet/ilsvrc_2012_mean.npy'),
        help="Data set image mean of [Channels x Height x Width] dimensions " +
             "(numpy array). Set to '' for no mean subtraction."
    )
    parser.add_argument(
        "--input_scale",
        type=float,
        help="Multiply input features by this scale to finish preprocessing."
    )
    parser.add_argument(
        "--raw_scale",
        type=float,
        default=255.0,
        help="Multiply raw input by this scale before preprocessing."
    )
    parser.add_argument(
        "--channel_swap",
        default='2,1,0',
        help="Order to permute input channels. The default converts " +
             "RGB -> BGR since BGR is the Caffe default by way of OpenCV."
    )
    parser.add_argument(
        "--ext",
        default='jpg',
        help="Image file extension to take as input when a directory " +
             "is given as the input file."
    )
    parser.add_argument(
        "--labels_file",
        default=os.path.join(pycaffe_dir,
                "../data/ilsvrc12/synset_words.txt"),
        help="Readable label definition file."
    )
    parser.add_argument(
        "--print_results",
        action='store_true',
        help="Write output text to stdout rather than serializing to a file."
    )
    args = parser.parse_args()

    image_dims = [int(s) for s in args.images_dim.split(',')]

    mean, channel_swap = None, None
    if args.mean_file:
        mean = np.load(args.mean_file).mean(1).mean(1)
    if args.channel_swap:
        channel_swap = [int(s) for s in args.channel_swap.split(',')]

    if args.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")

    # Make classifier.
    classifier = caffe.Classifier(args.model_def, args.pretrained_model,
            image_dims=image_dims, mean=mean,
            input_scale=args.input_scale, raw_scale=args.raw_scale,
            channel_swap=channel_swap)

    # Load numpy array (.npy), directory glob (*.jpg), or image file.
    args.input_file = os.path.expanduser(args.input_file)
    if args.input_file.endswith('npy'):
        print("Loading file: %s" % args.input_file)
        inputs = np.load(args.input_file)
    elif os.path.isdir(args.input_file):
        print("Loading folder: %s" % args.input_file)
        inputs =[caffe.io.load_image(im_f)
                 for im_f in glob.glob(args.input_file + '/*.' + args.ext)]
    else:
        print("Loading file: %s" % args.input_file)
        inputs = [caffe.io.load_image(args.input_file)]

    print("Classifying %d inputs." % len(inputs))

    # Classify.
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print("Done in %.2f s." % (time.time() - start))

    if args.print_results:
        import pandas as pd
        with open(args.labels_file) as f:
          labels_df = pd.DataFrame([
               {
                   'synset_id': l.strip().split(' ')[0],
                   'name': ' '.join(l.strip().split(' ')[1:]).split(',')[0]
               }
               for l in f.readlines()
            ])
        labels = labels_df.sort('synset_id')['name'].values

        indices = (-predictions[0]).argsort()[:5]
        predicted_labels = labels[indices]

        meta = [
                   (p, '%.5f' % predictions[0][i])
                   for i, p in zip(indices, predicted_labels)
               ]

        print(meta)

    # Save
    print("Saving results into %s" % args.output_file)
    np.save(args.output_file, predictions)


if __name__ == '__main__':
    main(sys.argv)
'''


def run_script(script: Path, *args: str, cwd: Path) -> str:
    """``python script args`` as a user runs Caffe's scripts: ``caffe`` on PYTHONPATH."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_classify_py(caffe_root: Path, tmp_path: Path) -> None:
    """python/classify.py with its defaults (CaffeNet, the mean file, 256x256 images) on a
    folder of two images, ten crops each, and on a .npy of two with --center_only: the saved
    predictions are what the net gives for those crops, computed here by hand."""
    import glob

    script = caffe_root / "python/classify.py"
    script.write_text(CLASSIFY_PY)
    images = tmp_path / "images"
    save_image(images / "a.jpg", photo(300, 400, 1))
    save_image(images / "b.jpg", photo(200, 200, 2))
    out = run_script(script, str(images), "predictions.npy", cwd=tmp_path)
    assert "CPU mode" in out and "Classifying 2 inputs." in out
    assert "Saving results into predictions.npy" in out
    predictions = np.load(tmp_path / "predictions.npy")
    assert predictions.shape == (2, 1000)
    arrays = np.stack([photo(256, 256, 3), photo(256, 256, 4)]).astype(np.float32) / 255
    np.save(tmp_path / "inputs.npy", arrays)
    out = run_script(script, "inputs.npy", "centre.npy", "--center_only", cwd=tmp_path)
    assert "Loading file: inputs.npy" in out and "Classifying 2 inputs." in out
    centre_predictions = np.load(tmp_path / "centre.npy")

    # the same by hand: 256x256, the corners, the centre and their mirrors (or the centre),
    # BGR in [0, 255] less the mean pixel, the deploy net, the average over the crops
    net = caffe.Net(str(caffe_root / "models/bvlc_reference_caffenet/deploy.prototxt"),
                    str(caffe_root / "models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel"),
                    caffe.TEST)  # fmt: skip
    mean = np.load(caffe_root / "python/caffe/imagenet/ilsvrc_2012_mean.npy").mean(1).mean(1)

    def predict(image: np.ndarray, offsets: list[tuple[int, int]], mirror: bool) -> np.ndarray:
        crops = [image[y : y + 227, x : x + 227] for y, x in offsets]
        crops += [crop[:, ::-1] for crop in crops] if mirror else []
        batch = np.stack(crops)[:, :, :, ::-1].transpose(0, 3, 1, 2) * 255.0
        net.blobs["data"].data[: len(crops)] = batch - mean[None, :, None, None]
        return net.forward()["prob"][: len(crops)].mean(0)

    corners = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]
    for row, path in zip(predictions, glob.glob(str(images) + "/*.jpg"), strict=True):
        image = caffe.io.resize_image(caffe.io.load_image(path), (256, 256))
        np.testing.assert_allclose(row, predict(image, corners, True), rtol=1e-4, atol=1e-6)
    for row, image in zip(centre_predictions, arrays, strict=True):
        np.testing.assert_allclose(row, predict(image, [(14, 14)], False), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------ python/draw_net.py

# python/draw_net.py
DRAW_NET_PY = '''\
#!/usr/bin/env python
"""
Draw a graph of the net architecture.
"""
from argparse import ArgumentParser, ArgumentDefaultsHelpFormatter
from google.protobuf import text_format

import caffe
import caffe.draw
from caffe.proto import caffe_pb2


def parse_args():
    """Parse input arguments
    """

    parser = ArgumentParser(description=__doc__,
                            formatter_class=ArgumentDefaultsHelpFormatter)

    parser.add_argument('input_net_proto_file',
                        help='Input network prototxt file')
    parser.add_argument('output_image_file',
                        help='Output image file')
    parser.add_argument('--rankdir',
                        help=('One of TB (top-bottom, i.e., vertical), '
                              'RL (right-left, i.e., horizontal), or another '
                              'valid dot option; see '
                              'http://www.graphviz.org/doc/info/'
                              'attrs.html#k:rankdir'),
                        default='LR')
    parser.add_argument('--phase',
                        help=('Which network phase to draw: can be TRAIN, '
                              'TEST, or ALL.  If ALL, then all layers are drawn '
                              'regardless of phase.'),
                        default="ALL")
    parser.add_argument('--display_lrm', action='store_true',
                        help=('Use this flag to visualize the learning rate '
                              'multiplier, when non-zero, for the '
                              'convolution and inner product layers.'))

    args = parser.parse_args()
    return args


def main():
    args = parse_args()
    net = caffe_pb2.NetParameter()
    text_format.Merge(open(args.input_net_proto_file).read(), net)
    print('Drawing net to %s' % args.output_image_file)
    phase=None;
    if args.phase == "TRAIN":
        phase = caffe.TRAIN
    elif args.phase == "TEST":
        phase = caffe.TEST
    elif args.phase != "ALL":
        raise ValueError("Unknown phase: " + args.phase)
    caffe.draw.draw_net_to_file(net, args.output_image_file, args.rankdir,
                                phase, args.display_lrm)


if __name__ == '__main__':
    main()
'''

# a train/test net in the style of examples/mnist/lenet_train_test.prototxt
TRAIN_TEST = """\
name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "mnist_train_lmdb" batch_size: 64 } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "mnist_test_lmdb" batch_size: 100 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 } convolution_param { num_output: 20 kernel_size: 5 } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1" inner_product_param { num_output: 10 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def test_draw_net_py(caffe_root: Path, tmp_path: Path) -> None:
    """python/draw_net.py draws CaffeNet to a PNG, and one phase of a train/test net, with
    its learning rate multipliers, to SVG."""
    pytest.importorskip("pydot", reason="pydot (the `draw` extra) is not installed")
    script = tmp_path / "draw_net.py"
    script.write_text(DRAW_NET_PY)
    deploy = caffe_root / "models/bvlc_reference_caffenet/deploy.prototxt"
    out = run_script(script, str(deploy), "caffenet.png", cwd=tmp_path)
    assert out == "Drawing net to caffenet.png\n"
    assert (tmp_path / "caffenet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "lenet_train_test.prototxt").write_text(TRAIN_TEST)
    run_script(script, "lenet_train_test.prototxt", "lenet.svg", "--rankdir", "TB",
               "--phase", "TRAIN", "--display_lrm", cwd=tmp_path)  # fmt: skip
    svg = (tmp_path / "lenet.svg").read_text()
    assert svg.startswith("<?xml") and "conv1" in svg and "ip1" in svg
    assert "accuracy" not in svg  # a TEST-only layer, not drawn for TRAIN
    assert "lr mult: 1.0, 2.0" in svg and "lr mult: 1.0, 1.0" in svg  # conv1's, ip1's default


# ------------------------------------------------------------ examples/pycaffe/caffenet.py


def imageset_lmdb(folder: Path, name: str, count: int) -> tuple[Path, list[np.ndarray]]:
    """A database of ``count`` 256x256 pictures made by ``caffec convert-imageset`` (Caffe's
    ``convert_imageset``), and the pictures (BGR, as stored)."""
    pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")
    lines, pictures = [], []
    for i in range(count):
        pixels = photo(256, 256, seed=50 + i)
        save_image(folder / f"{name}/{i}.png", pixels)  # lossless, so the pixels are known
        lines.append(f"{name}/{i}.png {i * 7 % 1000}\n")
        pictures.append(pixels[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))
    (folder / f"{name}.txt").write_text("".join(lines))
    db = folder / f"{name}_lmdb"
    assert caffec_main(["convert-imageset", str(folder) + "/", str(folder / f"{name}.txt"),
                        str(db)]) == 0  # fmt: skip
    return db, pictures


def test_caffenet_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/pycaffe/caffenet.py writes CaffeNet's train and test nets with NetSpec; both
    run on databases of pictures: mean values, crops and mirrors as Caffe's data transformer
    makes them, and, its layers having no fillers, Caffe's numbers for an all-zero net."""
    train_db, train_pictures = imageset_lmdb(tmp_path, "train", 2)
    test_db, test_pictures = imageset_lmdb(tmp_path, "val", 2)
    monkeypatch.chdir(tmp_path)
    # fmt: off
    from caffe import layers as L, params as P, to_proto
    from caffe.proto import caffe_pb2

    # helper function for common structures

    def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1):
        conv = L.Convolution(bottom, kernel_size=ks, stride=stride,
                                    num_output=nout, pad=pad, group=group)
        return conv, L.ReLU(conv, in_place=True)

    def fc_relu(bottom, nout):
        fc = L.InnerProduct(bottom, num_output=nout)
        return fc, L.ReLU(fc, in_place=True)

    def max_pool(bottom, ks, stride=1):
        return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)

    def caffenet(lmdb, batch_size=256, include_acc=False):
        data, label = L.Data(source=lmdb, backend=P.Data.LMDB, batch_size=batch_size, ntop=2,
            transform_param=dict(crop_size=227, mean_value=[104, 117, 123], mirror=True))

        # the net itself
        conv1, relu1 = conv_relu(data, 11, 96, stride=4)
        pool1 = max_pool(relu1, 3, stride=2)
        norm1 = L.LRN(pool1, local_size=5, alpha=1e-4, beta=0.75)
        conv2, relu2 = conv_relu(norm1, 5, 256, pad=2, group=2)
        pool2 = max_pool(relu2, 3, stride=2)
        norm2 = L.LRN(pool2, local_size=5, alpha=1e-4, beta=0.75)
        conv3, relu3 = conv_relu(norm2, 3, 384, pad=1)
        conv4, relu4 = conv_relu(relu3, 3, 384, pad=1, group=2)
        conv5, relu5 = conv_relu(relu4, 3, 256, pad=1, group=2)
        pool5 = max_pool(relu5, 3, stride=2)
        fc6, relu6 = fc_relu(pool5, 4096)
        drop6 = L.Dropout(relu6, in_place=True)
        fc7, relu7 = fc_relu(drop6, 4096)
        drop7 = L.Dropout(relu7, in_place=True)
        fc8 = L.InnerProduct(drop7, num_output=1000)
        loss = L.SoftmaxWithLoss(fc8, label)

        if include_acc:
            acc = L.Accuracy(fc8, label)
            return to_proto(loss, acc)
        else:
            return to_proto(loss)

    def make_net():
        with open('train.prototxt', 'w') as f:
            print(caffenet(str(train_db), batch_size=2), file=f)

        with open('test.prototxt', 'w') as f:
            print(caffenet(str(test_db), batch_size=2, include_acc=True), file=f)

    make_net()
    # fmt: on
    train = text_format.Parse(Path("train.prototxt").read_text(), caffe_pb2.NetParameter())
    test = text_format.Parse(Path("test.prototxt").read_text(), caffe_pb2.NetParameter())
    assert [layer.type for layer in test.layer] == [layer.type for layer in train.layer] + [
        "Accuracy"
    ]
    assert len(train.layer) == 24 and train.layer[-1].name == "SoftmaxWithLoss1"

    # the test net: centre crops less the mean values, mirrored or not; a net of zeros gives
    # every class the same score, which Caffe's Accuracy counts as wrong, and a loss of ln 1000
    net = caffe.Net("test.prototxt", caffe.TEST)
    out = net.forward()
    assert sorted(out) == ["Accuracy1", "SoftmaxWithLoss1"]
    assert float(out["Accuracy1"]) == 0.0
    assert float(out["SoftmaxWithLoss1"]) == pytest.approx(np.log(1000), rel=1e-5)
    mean = np.array([104.0, 117.0, 123.0])[:, None, None]
    for image, picture in zip(net.blobs["Data1"].data, test_pictures, strict=True):
        centre = picture[:, 14:241, 14:241] - mean
        assert np.array_equal(image, centre) or np.array_equal(image, centre[:, :, ::-1])
    np.testing.assert_array_equal(net.blobs["Data2"].data, [0, 7])

    # the train net: random crops; one step's gradients, by hand: with zero features only the
    # classifier's bias learns, (softmax - one-hot) averaged over the batch
    net = caffe.Net("train.prototxt", caffe.TRAIN)
    net.forward()
    net.backward()
    for image, picture in zip(net.blobs["Data1"].data, train_pictures, strict=True):
        found = [
            (y, x)
            for y in range(30)
            for x in range(30)
            for crop in (picture[:, y : y + 227, x : x + 227] - mean,)
            if np.array_equal(image, crop) or np.array_equal(image, crop[:, :, ::-1])
        ]
        assert len(found) == 1
    labels = net.blobs["Data2"].data.astype(int)
    expected = np.full((2, 1000), 1e-3)
    expected[[0, 1], labels] -= 1
    np.testing.assert_allclose(net.params["InnerProduct3"][1].diff, expected.mean(0), atol=1e-7)
    assert not net.params["InnerProduct3"][0].diff.any()


# ------------------------------------------------------------ examples/pycaffe/layers/pyloss.py

# examples/pycaffe/layers/pyloss.py
PYLOSS_PY = '''\
import caffe
import numpy as np


class EuclideanLossLayer(caffe.Layer):
    """
    Compute the Euclidean Loss in the same manner as the C++ EuclideanLossLayer
    to demonstrate the class interface for developing layers in Python.
    """

    def setup(self, bottom, top):
        # check input pair
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        # check input dimensions match
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        # difference is shape of inputs
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        # loss output is scalar
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            if i == 0:
                sign = 1
            else:
                sign = -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
'''

# examples/pycaffe/linreg.prototxt
LINREG_PROTOTXT = """\
name: 'LinearRegressionExample'
# define a simple network for linear regression on dummy data
# that computes the loss by a PythonLayer.
layer {
  type: 'DummyData'
  name: 'x'
  top: 'x'
  dummy_data_param {
    shape: { dim: 10 dim: 3 dim: 2 }
    data_filler: { type: 'gaussian' }
  }
}
layer {
  type: 'DummyData'
  name: 'y'
  top: 'y'
  dummy_data_param {
    shape: { dim: 10 dim: 3 dim: 2 }
    data_filler: { type: 'gaussian' }
  }
}
# include InnerProduct layers for parameters
# so the net will need backward
layer {
  type: 'InnerProduct'
  name: 'ipx'
  top: 'ipx'
  bottom: 'x'
  inner_product_param {
    num_output: 10
    weight_filler { type: 'xavier' }
  }
}
layer {
  type: 'InnerProduct'
  name: 'ipy'
  top: 'ipy'
  bottom: 'y'
  inner_product_param {
    num_output: 10
    weight_filler { type: 'xavier' }
  }
}
layer {
  type: 'Python'
  name: 'loss'
  top: 'loss'
  bottom: 'ipx'
  bottom: 'ipy'
  python_param {
    # the module name -- usually the filename -- that needs to be in $PYTHONPATH
    module: 'pyloss'
    # the layer name -- the class name in the module
    layer: 'EuclideanLossLayer'
  }
  # set loss weight so Caffe knows this is a loss layer.
  # since PythonLayer inherits directly from Layer, this isn't automatically
  # known to Caffe
  loss_weight: 1
}
"""


def test_pyloss_linreg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/pycaffe/linreg.prototxt with the Python loss of layers/pyloss.py on the
    path: the loss and the gradients are the Euclidean loss's, by hand; DummyData draws new
    data each pass; a solver on the net brings the loss down."""
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers/pyloss.py").write_text(PYLOSS_PY)
    (tmp_path / "linreg.prototxt").write_text(LINREG_PROTOTXT)
    monkeypatch.syspath_prepend(str(tmp_path / "layers"))  # PYTHONPATH=examples/pycaffe/layers
    monkeypatch.delitem(sys.modules, "pyloss", raising=False)
    monkeypatch.chdir(tmp_path)

    net = caffe.Net("linreg.prototxt", caffe.TRAIN)
    loss = float(net.forward()["loss"][0])
    net.backward()
    ipx, ipy = net.blobs["ipx"].data.copy(), net.blobs["ipy"].data.copy()
    assert ipx.shape == (10, 10) and net.blobs["loss"].data.shape == (1,)
    assert loss == pytest.approx(((ipx - ipy) ** 2).sum() / 10 / 2, rel=1e-5)
    np.testing.assert_allclose(net.blobs["ipx"].diff, (ipx - ipy) / 10, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.blobs["ipy"].diff, (ipy - ipx) / 10, rtol=1e-5, atol=1e-7)
    x = net.blobs["x"].data.reshape(10, 6).copy()
    np.testing.assert_allclose(net.params["ipx"][0].diff, net.blobs["ipx"].diff.T @ x,
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    net.forward()
    assert not np.array_equal(net.blobs["x"].data.reshape(10, 6), x)  # a gaussian refills

    (tmp_path / "solver.prototxt").write_text(
        'net: "linreg.prototxt"\nbase_lr: 0.05\nmomentum: 0.9\nlr_policy: "fixed"\n'
        'max_iter: 100\ndisplay: 0\nsnapshot_prefix: "linreg"\n'
    )
    solver = caffe.SGDSolver("solver.prototxt")
    losses = []
    for _ in range(100):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data[0]))
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])
