"""Caffe's data tools: convert_mnist_data, convert_imageset, compute_image_mean,
convert_cifar_data, convert_mnist_siamese_data, and extract_features' writing half."""

from caffec.tools.cifar import convert_cifar
from caffec.tools.convert import compute_mean, convert_imageset, convert_mnist
from caffec.tools.features import write_features
from caffec.tools.siamese import convert_mnist_siamese

__all__ = [
    "compute_mean",
    "convert_cifar",
    "convert_imageset",
    "convert_mnist",
    "convert_mnist_siamese",
    "write_features",
]
