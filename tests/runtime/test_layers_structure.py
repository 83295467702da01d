"""ArgMax, Tile, ShuffleChannel, Axpy, Parameter, Embed, BatchReindex, Im2col and DummyData's
shape fields: forward against numpy references written here, backward by finite
differences, and the errors for bad fields and bad indices."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from gradcheck import check_gradients, one_layer_net, params, run_case

import caffec
from caffec.errors import UserError

# ----------------------------------------------------------------------------- references


def argmax_ref(x: np.ndarray, top_k: int, out_max_val: bool, axis: int | None) -> np.ndarray:
    """Caffe's ranks: (value, index) pairs in descending order, larger index first on ties."""
    if axis is None:
        rows = x.reshape(x.shape[0], -1)
        out = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k))
        for n, row in enumerate(rows):
            best = sorted(range(row.size), key=lambda m: (row[m], m), reverse=True)[:top_k]
            out[n, 0] = best
            if out_max_val:
                out[n, 1] = row[best]
        return out.reshape(out.shape + (1,) * (x.ndim - 3))
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,))
    for at in np.ndindex(moved.shape[:-1]):
        row = moved[at]
        best = sorted(range(row.size), key=lambda m: (row[m], m), reverse=True)[:top_k]
        out[at] = row[best] if out_max_val else best
    return np.moveaxis(out, -1, axis)


def shuffle_ref(x: np.ndarray, group: int) -> np.ndarray:
    n, c = x.shape[:2]
    return x.reshape(n, group, c // group, -1).swapaxes(1, 2).reshape(x.shape)


def im2col_ref(x: np.ndarray, kernel, stride, pad, dilation) -> np.ndarray:
    """Column (c, i, j) at position (p, q) holds x[c, p*s - pad + i*d, q*s - pad + j*d]."""
    n, c, h, w = x.shape
    oh = (h + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    out = np.zeros((n, c, kernel[0], kernel[1], oh, ow))
    for ch, i, j, p, q in itertools.product(range(c), range(kernel[0]), range(kernel[1]),
                                            range(oh), range(ow)):  # fmt: skip
        row = p * stride[0] - pad[0] + i * dilation[0]
        col = q * stride[1] - pad[1] + j * dilation[1]
        if 0 <= row < h and 0 <= col < w:
            out[:, ch, i, j, p, q] = x[:, ch, row, col]
    return out.reshape(n, c * kernel[0] * kernel[1], oh, ow)


def layer(type_: str, params: str = "", bottoms: str = "a") -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    return f'layer {{ name: "x" type: "{type_}" {bottom} top: "y" {params} }}'


LOSS = '\nlayer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "b" top: "loss" }'


def build_error(tmp_path: Path, text: str, bottoms: dict) -> UserError:
    with pytest.raises(UserError) as info:
        one_layer_net(tmp_path, text, bottoms)
    return info.value


# ----------------------------------------------------------------------------- ArgMax

ARGMAX_CASES = [
    ("", (3, 4, 5), 1, False, None),
    ("top_k: 3", (2, 7), 3, False, None),
    ("top_k: 4 out_max_val: true", (3, 2, 2, 2), 4, True, None),
    ("out_max_val: true top_k: 8", (2, 8), 8, True, None),  # every value, in order
    ("axis: 1", (2, 5, 3), 1, False, 1),
    ("axis: 1 top_k: 2 out_max_val: true", (2, 4, 3, 2), 2, True, 1),
    ("axis: -1 top_k: 3", (3, 2, 6), 3, False, 2),
    ("axis: 0 top_k: 2", (4, 3), 2, False, 0),
]  # fmt: skip


@pytest.mark.parametrize(("param", "shape", "top_k", "out_max_val", "axis"), ARGMAX_CASES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_argmax(tmp_path: Path, param, shape, top_k, out_max_val, axis, ties: bool) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, shape).astype(float) if ties else rng.standard_normal(shape)
    text = layer("ArgMax", f"argmax_param {{ {param} }}")
    net, feed, out, _ = run_case(tmp_path, text, {"a": shape}, ["y"], inputs={"a": x})
    np.testing.assert_array_equal(out["y"], argmax_ref(x, top_k, out_max_val, axis))


def test_argmax_ties_prefer_the_larger_index(tmp_path: Path) -> None:
    """std::greater on (value, index) pairs: of equal values (0 and -0 too), the later first."""
    x = np.array([[1.0, 3.0, 0.0, 3.0, -0.0, 3.0]])
    text = layer("ArgMax", "argmax_param { top_k: 5 out_max_val: true }")
    _, _, out, _ = run_case(tmp_path, text, {"a": x.shape}, ["y"], inputs={"a": x})
    np.testing.assert_array_equal(out["y"][0], [[5, 3, 1, 0, 4], [3, 3, 3, 1, -0.0]])


def test_argmax_ranks_infinities(tmp_path: Path) -> None:
    x = np.array([[-np.inf, 1.0, -np.inf, np.inf, 2.0, -np.inf]])
    text = layer("ArgMax", "argmax_param { top_k: 6 }")
    _, _, out, _ = run_case(tmp_path, text, {"a": x.shape}, ["y"], inputs={"a": x})
    np.testing.assert_array_equal(out["y"][0, 0], [3, 4, 1, 5, 2, 0])


def test_argmax_has_no_backward(tmp_path: Path) -> None:
    """force_backward passes it by; a loss behind it is an error naming the layer."""
    net = one_layer_net(tmp_path, layer("ArgMax"), {"a": (2, 3)})
    assert net.forward(a=np.eye(2, 3))["y"].ravel().tolist() == [0, 1]
    text = ('layer { name: "ip" type: "InnerProduct" bottom: "a" top: "h" '
            "inner_product_param { num_output: 3 } }\n"
            + layer("ArgMax", bottoms="h") + LOSS)  # fmt: skip
    error = build_error(tmp_path, text, {"a": (2, 3), "b": (2, 1, 1)})
    assert error.layer == "x" and "no backward" in error.message


@pytest.mark.parametrize(
    ("param", "shape", "message"),
    [("top_k: 0", (2, 3), "top_k must be at least 1"),
     ("top_k: 7", (2, 2, 3), "top_k 7 exceeds the 6 values per item"),
     ("axis: 1 top_k: 4", (2, 3, 5), "top_k 4 exceeds axis 1's size 3"),
     ("axis: 3", (2, 3, 5), "axis 3 is out of range")],
)  # fmt: skip
def test_argmax_errors(tmp_path: Path, param: str, shape: tuple, message: str) -> None:
    error = build_error(tmp_path, layer("ArgMax", f"argmax_param {{ {param} }}"), {"a": shape})
    assert message in error.message and error.layer == "x" and error.hint


# ----------------------------------------------------------------------------- DummyData


def dummy_net(tmp_path: Path, fields: str, tops: int) -> caffec.Net:
    path = tmp_path / "dummy.prototxt"
    top = " ".join(f'top: "t{i}"' for i in range(tops))
    path.write_text(f'layer {{ name: "d" type: "DummyData" {top} dummy_data_param {{ {fields} '
                    '} }\n')  # fmt: skip
    return caffec.Net(str(path), caffec.TEST)


@pytest.mark.parametrize(
    ("fields", "shapes"),
    [("num: 2 channels: 3 channels: 4 height: 5 width: 6", [(2, 3, 5, 6), (2, 4, 5, 6)]),
     ("num: 1 num: 2 channels: 3 height: 4 height: 5 width: 6", [(1, 3, 4, 6), (2, 3, 5, 6)]),
     ("num: 7 channels: 1 height: 1 width: 2 width: 3 width: 4",
      [(7, 1, 1, 2), (7, 1, 1, 3), (7, 1, 1, 4)]),
     ("num: 2 channels: 3 height: 4 width: 5", [(2, 3, 4, 5)] * 2),
     ("shape { dim: 3 }", [(3,)] * 3),
     ("shape { dim: 3 } shape { dim: 1 dim: 2 }", [(3,), (1, 2)])],
)  # fmt: skip
def test_dummy_data_counts(tmp_path: Path, fields: str, shapes: list) -> None:
    """num, channels, height and width are each given once or once per top, independently."""
    net = dummy_net(tmp_path, fields, len(shapes))
    assert [net.blobs[f"t{i}"].data.shape for i in range(len(shapes))] == shapes


@pytest.mark.parametrize(
    ("fields", "tops", "message"),
    [("num: 2 num: 3 channels: 3 height: 4 width: 5", 3, "num is given 2 times for 3 tops"),
     ("num: 2 channels: 3 width: 5", 2, "height is given 0 times for 2 tops"),
     ("shape { dim: 1 } shape { dim: 2 }", 3, "2 shapes for 3 tops"),
     ("", 1, "0 shapes for 1 tops"),
     ("shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1", 1, "both shape and num"),
     ("shape { dim: 2 } data_filler { } data_filler { }", 3, "2 data_filler entries for 3")],
)  # fmt: skip
def test_dummy_data_count_errors(tmp_path: Path, fields: str, tops: int, message: str) -> None:
    with pytest.raises(UserError) as info:
        dummy_net(tmp_path, fields, tops)
    assert message in info.value.message and info.value.layer == "d" and info.value.hint


# ----------------------------------------------------------------------------- Tile


@pytest.mark.parametrize(
    ("param", "shape", "axis", "tiles"),
    [("tiles: 3", (2, 3, 2), 1, 3), ("axis: 0 tiles: 2", (2, 3), 0, 2),
     ("axis: -1 tiles: 4", (2, 2, 3), 2, 4), ("axis: 2 tiles: 1", (2, 3, 4, 2), 2, 1),
     ("axis: 1 tiles: 2", (3, 1, 2, 2), 1, 2)],
)  # fmt: skip
def test_tile(tmp_path: Path, param: str, shape: tuple, axis: int, tiles: int) -> None:
    net, feed, out, rng = run_case(tmp_path, layer("Tile", f"tile_param {{ {param} }}"),
                                   {"a": shape}, ["y"])  # fmt: skip
    np.testing.assert_array_equal(out["y"], np.concatenate([feed["a"]] * tiles, axis=axis))
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(
    ("param", "message"),
    [("axis: 1", "number of tiles is not given"), ("tiles: 0", "tiles must be positive"),
     ("tiles: -2", "tiles must be positive"), ("axis: 2 tiles: 2", "axis 2 is out of range")],
)  # fmt: skip
def test_tile_errors(tmp_path: Path, param: str, message: str) -> None:
    error = build_error(tmp_path, layer("Tile", f"tile_param {{ {param} }}"), {"a": (2, 3)})
    assert message in error.message and error.layer == "x"


# ----------------------------------------------------------------------------- ShuffleChannel


@pytest.mark.parametrize(
    ("param", "shape", "group"),
    [("group: 2", (2, 6, 2, 3), 2), ("group: 3", (1, 6, 3, 2), 3), ("", (2, 4, 2, 2), 1),
     ("group: 4", (2, 4, 3), 4), ("group: 2", (3, 4), 2), ("group: 5", (1, 10, 1, 1), 5)],
)  # fmt: skip
def test_shuffle_channel(tmp_path: Path, param: str, shape: tuple, group: int) -> None:
    text = layer("ShuffleChannel", f"shuffle_channel_param {{ {param} }}")
    net, feed, out, rng = run_case(tmp_path, text, {"a": shape}, ["y"])
    np.testing.assert_array_equal(out["y"], shuffle_ref(feed["a"], group))
    check_gradients(net, feed, ["y"], rng)


def test_shuffle_channel_moves_channels_as_shufflenet_does(tmp_path: Path) -> None:
    """Channels 0..5 in 2 groups come out 0 3 1 4 2 5."""
    x = np.arange(6.0).reshape(1, 6, 1, 1)
    text = layer("ShuffleChannel", "shuffle_channel_param { group: 2 }")
    _, _, out, _ = run_case(tmp_path, text, {"a": x.shape}, ["y"], inputs={"a": x})
    assert out["y"].ravel().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize(
    ("param", "shape", "message"),
    [("group: 4", (2, 6, 2, 2), "group 4 does not divide the bottom's 6 channels"),
     ("group: 0", (2, 6), "group must be at least 1"),
     ("group: 2", (6,), "no channel axis")],
)  # fmt: skip
def test_shuffle_channel_errors(tmp_path: Path, param: str, shape: tuple, message: str) -> None:
    text = layer("ShuffleChannel", f"shuffle_channel_param {{ {param} }}")
    error = build_error(tmp_path, text, {"a": shape})
    assert message in error.message and error.hint


# ----------------------------------------------------------------------------- Axpy


@pytest.mark.parametrize(
    ("scale", "shape"),
    [((2, 3, 1, 1), (2, 3, 4, 5)), ((2, 3), (2, 3, 4, 2)), ((3, 4), (3, 4)),
     ((2, 5, 1), (2, 5, 3))],
)  # fmt: skip
def test_axpy(tmp_path: Path, scale: tuple, shape: tuple) -> None:
    bottoms = {"s": scale, "a": shape, "b": shape}
    net, feed, out, rng = run_case(tmp_path, layer("Axpy", bottoms="s a b"), bottoms, ["y"])
    a = feed["s"].reshape(shape[:2] + (1,) * (len(shape) - 2))
    np.testing.assert_allclose(out["y"], a * feed["a"] + feed["b"], rtol=1e-14)
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(
    ("scale", "x", "y", "message"),
    [((2, 4), (2, 3, 4, 4), (2, 3, 4, 4), "the scale 2x4 must be N x C"),
     ((2, 3, 2, 1), (2, 3, 4, 4), (2, 3, 4, 4), "the scale 2x3x2x1 must be N x C"),
     ((3, 3), (2, 3, 4), (2, 3, 4), "the scale 3x3 must be N x C"),
     ((2, 3), (2, 3, 4), (2, 3, 5), "bottoms 1 and 2 must have one shape")],
)  # fmt: skip
def test_axpy_errors(tmp_path: Path, scale, x, y, message: str) -> None:
    error = build_error(tmp_path, layer("Axpy", bottoms="s a b"), {"s": scale, "a": x, "b": y})
    assert message in error.message and error.layer == "x"


# ----------------------------------------------------------------------------- Parameter


@pytest.mark.parametrize("dims", [(2, 3), (4,), (1, 2, 3, 2)])
def test_parameter(tmp_path: Path, dims: tuple) -> None:
    """The blob is the top (zero until set); the top's gradient is the blob's."""
    shape = " ".join(f"dim: {d}" for d in dims)
    text = ('layer { name: "x" type: "Parameter" top: "y" parameter_param { shape { '
            f"{shape} }} }} }}")  # fmt: skip
    net = one_layer_net(tmp_path, text, {})
    assert np.all(net.forward()["y"] == 0)
    rng = np.random.default_rng(5)
    value = rng.standard_normal(dims)
    net.params["x"][0].data[...] = value
    np.testing.assert_array_equal(net.forward()["y"], value)
    check_gradients(net, {}, ["y"], rng, wrt=[])


def test_parameter_error(tmp_path: Path) -> None:
    text = ('layer { name: "x" type: "Parameter" top: "y" parameter_param { shape { dim: 2 '
            "dim: 0 } } }")  # fmt: skip
    error = build_error(tmp_path, text, {})
    assert "the shape 2x0 has a dimension below 1" in error.message and error.hint


# ----------------------------------------------------------------------------- Embed

EMBED = 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }'


@pytest.mark.parametrize(
    ("param", "shape", "bias"),
    [(f"num_output: 3 input_dim: 5 {EMBED}", (4,), True),
     (f"num_output: 2 input_dim: 4 bias_term: false {EMBED}", (2, 3), False),
     (f"num_output: 4 input_dim: 1 {EMBED}", (3, 1), True),
     ("num_output: 3 input_dim: 6", (7,), True)],  # default fillers: zeros
)  # fmt: skip
def test_embed(tmp_path: Path, param: str, shape: tuple, bias: bool) -> None:
    input_dim = int(param.split("input_dim: ")[1].split()[0])
    rng = np.random.default_rng(4)
    indices = rng.integers(0, input_dim, shape).astype(float)
    indices.reshape(-1)[0] = input_dim - 1  # the last row too
    net, feed, out, rng = run_case(tmp_path, layer("Embed", f"embed_param {{ {param} }}"),
                                   {"a": shape}, ["y"], inputs={"a": indices})  # fmt: skip
    blobs = params(net)
    expected = blobs[0][indices.astype(int)] + (blobs[1] if bias else 0)
    np.testing.assert_array_equal(out["y"], expected)
    check_gradients(net, feed, ["y"], rng, wrt=[])


def test_embed_repeated_indices_add_their_gradients(tmp_path: Path) -> None:
    text = layer("Embed", "embed_param { num_output: 2 input_dim: 3 }")
    net = one_layer_net(tmp_path, text, {"a": (4,)})
    net.forward(a=np.array([2.0, 0.0, 2.0, 2.0]))
    net.clear_param_diffs()
    dy = np.arange(8.0).reshape(4, 2)
    net.backward(y=dy)
    weight, bias = (np.array(b.diff) for b in net.params["x"])
    np.testing.assert_array_equal(weight, [dy[1], [0, 0], dy[0] + dy[2] + dy[3]])
    np.testing.assert_array_equal(bias, dy.sum(0))


@pytest.mark.parametrize(
    ("param", "message"),
    [("input_dim: 3", "num_output must be positive"), ("num_output: 3", "input_dim must be")],
)  # fmt: skip
def test_embed_errors(tmp_path: Path, param: str, message: str) -> None:
    error = build_error(tmp_path, layer("Embed", f"embed_param {{ {param} }}"), {"a": (2,)})
    assert message in error.message and error.hint


def test_embed_refuses_a_gradient_to_its_indices(tmp_path: Path) -> None:
    text = (layer("Embed", "embed_param { num_output: 2 input_dim: 3 } propagate_down: true")
            + LOSS)  # fmt: skip
    error = build_error(tmp_path, text, {"a": (2,), "b": (2, 2)})
    assert "gradient to its indices" in error.message and "propagate_down" in error.hint


@pytest.mark.parametrize("bad", [3.0, -1.0, 1.5])
def test_embed_names_a_bad_index(tmp_path: Path, bad: float) -> None:
    net = one_layer_net(tmp_path, layer("Embed", "embed_param { num_output: 2 input_dim: 3 }"),
                        {"a": (3,)})  # fmt: skip
    with pytest.raises(UserError, match=f"index {bad:g} of item 1 .* in \\[0, 3\\)") as info:
        net.forward(a=np.array([0.0, bad, 2.0]))
    assert info.value.layer == "x" and "input_dim" in info.value.hint


# ----------------------------------------------------------------------------- BatchReindex


@pytest.mark.parametrize(
    ("data", "indices"),
    [((4, 3), [3, 0, 0, 2, 1, 3]), ((3, 2, 2), [1]), ((5, 2, 1, 3), [4, 4, 4]),
     ((2,), [1, 0, 1])],
)  # fmt: skip
def test_batch_reindex(tmp_path: Path, data: tuple, indices: list) -> None:
    index = np.array(indices, dtype=float)
    bottoms = {"a": data, "i": index.shape}
    net, feed, out, rng = run_case(tmp_path, layer("BatchReindex", bottoms="a i"), bottoms,
                                   ["y"], inputs={"i": index})  # fmt: skip
    np.testing.assert_array_equal(out["y"], feed["a"][indices])
    check_gradients(net, feed, ["y"], rng, wrt=["a"])


def test_batch_reindex_errors(tmp_path: Path) -> None:
    text = layer("BatchReindex", bottoms="a i")
    error = build_error(tmp_path, text, {"a": (3, 2), "i": (2, 1)})
    assert "indices (bottom 1) must be 1-D, got 2x1" in error.message and error.hint
    both = text.replace(" }", " propagate_down: true propagate_down: true }") + LOSS
    error = build_error(tmp_path, both, {"a": (3, 2), "i": (2,), "b": (2, 2)})
    assert "gradient to its indices (bottom 1)" in error.message
    net = one_layer_net(tmp_path, text, {"a": (3, 2), "i": (2,)})
    with pytest.raises(UserError, match="index 3 of item 1 .* in \\[0, 3\\)"):
        net.forward(a=np.ones((3, 2)), i=np.array([0.0, 3.0]))


# ----------------------------------------------------------------------------- Im2col


@pytest.mark.parametrize(
    ("param", "shape", "geometry"),
    [("kernel_size: 3", (2, 2, 5, 4), ((3, 3), (1, 1), (0, 0), (1, 1))),
     ("kernel_size: 2 stride: 2 pad: 1", (1, 3, 4, 5), ((2, 2), (2, 2), (1, 1), (1, 1))),
     ("kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (2, 1, 5, 3),
      ((3, 1), (2, 1), (1, 0), (1, 1))),
     ("kernel_size: 2 dilation: 2 pad: 1", (1, 2, 5, 5), ((2, 2), (1, 1), (1, 1), (2, 2))),
     ("kernel_size: 1", (2, 3, 2, 2), ((1, 1), (1, 1), (0, 0), (1, 1))),
     ("axis: 2 kernel_size: 2", (2, 2, 3, 3, 4), ((2, 2), (1, 1), (0, 0), (1, 1)))],
)  # fmt: skip
def test_im2col(tmp_path: Path, param: str, shape: tuple, geometry: tuple) -> None:
    """Every item before the channel axis is one image."""
    text = layer("Im2col", f"convolution_param {{ {param} }}")
    net, feed, out, rng = run_case(tmp_path, text, {"a": shape}, ["y"])
    images = feed["a"].reshape(-1, *shape[-3:])
    expected = im2col_ref(images, *geometry)
    np.testing.assert_array_equal(out["y"], expected.reshape(*shape[:-3], *expected.shape[1:]))
    check_gradients(net, feed, ["y"], rng)


@pytest.mark.parametrize(
    ("param", "shape", "message"),
    [("stride: 2", (1, 2, 4, 4), "no kernel size"),
     ("kernel_size: 5", (1, 2, 4, 4), "smaller than the kernel extent 5"),
     ("kernel_size: 2", (2, 3, 4), "caffec unfolds 2-D images only"),
     ("kernel_size: 2 stride: 0", (1, 1, 4, 4), "strides must be positive")],
)  # fmt: skip
def test_im2col_errors(tmp_path: Path, param: str, shape: tuple, message: str) -> None:
    error = build_error(tmp_path, layer("Im2col", f"convolution_param {{ {param} }}"),
                        {"a": shape})  # fmt: skip
    assert message in error.message and error.layer == "x"
