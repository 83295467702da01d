"""Caffe's data tools: convert_mnist_data, convert_imageset and compute_image_mean."""

from caffec.tools.convert import compute_mean, convert_imageset, convert_mnist

__all__ = ["compute_mean", "convert_imageset", "convert_mnist"]
