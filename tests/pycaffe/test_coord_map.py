"""pycaffe's coord_map on FCN-style nets: maps and crop offsets worked out by hand, and the
Crop layer crop() makes gives caffec's shape inference the input's size back."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import graph_from_text

from caffe.coord_map import (
    AxisMismatchException,
    UndefinedMapException,
    coord_map,
    coord_map_from_to,
    crop,
)
from caffe.net_spec import NetSpec
from caffe.net_spec import layers as L
from caffe.net_spec import params as P
from caffec.errors import UserError


def fcn(pad=100, pool=2, up_kernel=4, up_stride=2, up_pad=0, size=100):
    """conv (pad ``pad``) → ReLU → pool → conv → deconv: FCN's shape, small."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, size, size]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=pad)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=pool, stride=pool)
    n.conv2 = L.Convolution(n.pool1, num_output=4, kernel_size=3)
    n.up = L.Deconvolution(n.conv2, convolution_param=dict(
        num_output=4, kernel_size=up_kernel, stride=up_stride, pad=up_pad, bias_term=False))  # fmt: skip
    return n


def shapes(n: NetSpec) -> dict[str, tuple[int, ...]]:
    graph = graph_from_text(str(n.to_proto()))
    return {v.blob: v.shape for v in graph.values.values()}


def test_fcn_crop_offset_worked_by_hand() -> None:
    # data x → conv1 x + 99 → pool (x + 99)/2 - 1/4 → conv2 (x + 99)/2 - 5/4
    #   → deconv 2((x + 99)/2 - 5/4) + 3/2 = x + 98: data pixel 0 is pixel 98 of up
    n = fcn()
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert (ax, list(a), list(b)) == (1, [1], [-98])
    n.score = crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert (layer.type, list(layer.bottom)) == ("Crop", ["up", "data"])
    assert (layer.crop_param.axis, list(layer.crop_param.offset)) == (2, [98])
    got = shapes(n)
    assert got["up"] == (1, 4, 296, 296) and got["score"] == (1, 4, 100, 100)


def test_unpadded_nets_lose_border_pixels_at_each_scale() -> None:
    # conv1 x - 1 → pool (x - 1)/2 - 1/4 → conv2 (x - 1)/2 - 5/4 → deconv x - 2
    n = fcn(pad=0)
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert (ax, list(a), list(b)) == (1, [1], [2])
    # 4x: conv1 x - 1 → pool (x - 1)/4 - 3/8 → conv2 (x - 1)/4 - 11/8 → deconv x - 3
    n4 = fcn(pad=0, pool=4, up_kernel=8, up_stride=4)
    assert [list(v) for v in coord_map_from_to(n4.up, n4.data)[1:]] == [[1], [3]]
    # padding the deconv moves its output back by as much
    n4p = fcn(pad=0, pool=4, up_kernel=8, up_stride=4, up_pad=3)
    assert list(coord_map_from_to(n4p.up, n4p.data)[2]) == [6]


def test_maps_per_axis_legacy_h_w_and_dilation() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 50, 50]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=[3, 5], stride=[1, 2], pad=[0, 10])
    ax, a, b = coord_map_from_to(n.conv, n.data)  # from conv's coordinates to the data's
    np.testing.assert_allclose(a, [1, 2])
    np.testing.assert_allclose(b, [1, 2 - 10])  # centre of the window, less the pad
    n.legacy = L.Convolution(n.data, num_output=1, kernel_h=3, kernel_w=5, stride_w=2, pad_w=10)
    np.testing.assert_allclose(coord_map_from_to(n.legacy, n.data)[2], b)
    n.dilated = L.Convolution(n.data, num_output=1, kernel_size=3, dilation=2)  # spans 5
    assert list(coord_map_from_to(n.dilated, n.data)[2]) == [2]


def test_pass_through_crop_of_crop_and_multi_bottom() -> None:
    n = fcn(pad=0)
    _, _, b = coord_map_from_to(n.up, n.data)
    n.relu = L.ReLU(n.up)
    n.cropped = L.Crop(n.relu, n.data, axis=2, offset=3)
    ax, a, b_crop = coord_map_from_to(n.cropped, n.data)
    assert (ax, list(a), list(b_crop)) == (1, [1], [b[0] + 3])
    assert coord_map(n.relu.fn) == (None, 1, 0)
    n.pair_a, n.pair_b = L.Convolution(
        n.data, n.data, ntop=2, num_output=1, kernel_size=5, stride=2
    )
    assert [list(v) for v in coord_map_from_to(n.pair_b, n.data)[1:]] == [[2], [2]]


def test_crop_refuses_what_no_crop_can_align() -> None:
    n = fcn(pool=3)  # pool 3x, deconv 2x
    with pytest.raises(AssertionError, match="scale"):
        crop(n.up, n.data)
    n = fcn(pad=0, up_pad=10)  # the output now starts inside the input
    with pytest.raises(UserError, match="negative offset"):
        crop(n.up, n.data)
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=2, pad=1)  # half a pixel off
    with pytest.raises(UserError, match="whole number"):
        crop(n.conv, n.data)


def test_unconnected_tops_and_axis_mismatch() -> None:
    n = fcn()
    n.ip = L.InnerProduct(n.up, num_output=2)
    with pytest.raises(RuntimeError, match="no common blob"):
        coord_map_from_to(n.ip, n.data)
    n.gap = L.Pooling(n.up, pool=P.Pooling.AVE, global_pooling=True)
    with pytest.raises(UserError, match="no common blob"):
        coord_map_from_to(n.gap, n.data)
    with pytest.raises(UndefinedMapException):
        coord_map(n.ip.fn)
    n.cropped = L.Crop(n.up, n.data, axis=3)
    with pytest.raises(AxisMismatchException, match="axis 2 with one along 1"):
        coord_map_from_to(n.cropped, n.data)
