"""Binary Caffe files: caffemodel, binaryproto, BlobProtoVector and solverstate.

Where a test needs an independent view of a file it parses it with protobuf's
own ``caffe_pb2`` classes (slow for big blobs, fine for these small ones).
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import (
    Blob,
    read_blobproto,
    read_blobproto_vector,
    read_caffemodel,
    read_solverstate,
)
from caffec.formats.binaryproto_writer import (
    write_blobproto,
    write_blobproto_vector,
    write_caffemodel,
    write_solverstate,
)
from caffec.tools.inspect import describe_file

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LENET = SHARED / "corpus" / "weights" / "lenet_iter_10000.caffemodel"
LENET_PROTOTXT = SHARED / "corpus" / "weights" / "lenet.prototxt"
needs_lenet = pytest.mark.skipif(
    not LENET.is_file(), reason="../shared/corpus (the real LeNet caffemodel) is not present"
)


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def net_with_layer_bytes(layer: bytes, name: str = "n") -> bytes:
    return caffe_pb2.NetParameter(name=name).SerializeToString() + field(100, layer)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def small_net(*names: str) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="small")
    for name in names:
        net.layer.add(name=name, type="InnerProduct", bottom=["x"], top=[name])
    return net


def error_text(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caffemodel_round_trip_is_bit_identical(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(0)
    arrays = [
        [rng.standard_normal((4, 3, 2, 2)).astype(dtype), rng.standard_normal(4).astype(dtype)],
        [],
        [np.array(2.5, dtype=dtype), np.zeros((0, 3), dtype=dtype)],
        [rng.standard_normal((2, 1, 3, 1, 2)).astype(dtype)],
    ]
    arrays[0][0].flat[0] = np.nan
    arrays[0][0].flat[1] = -np.inf
    net = small_net("a", "b", "c", "d")
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, net, arrays)
    model = read_caffemodel(path)
    assert model.format == "current"
    assert [layer.name for layer in model.net.layer] == ["a", "b", "c", "d"]
    assert model.net.layer[0].type == "InnerProduct"
    assert all(len(layer.blobs) == 0 for layer in model.net.layer)
    for want, got in zip(arrays, model.blobs, strict=True):
        assert len(want) == len(got)
        for a, blob in zip(want, got, strict=True):
            assert same_bits(a, blob.data)
            assert blob.diff is None and not blob.legacy_shape
            assert blob.data.flags.writeable


def test_written_caffemodel_parses_with_protobuf(tmp_path: Path) -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([0.5, -1.0], dtype=np.float64)
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, small_net("ip"), [[w, b]])
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    (layer,) = net.layer
    assert layer.name == "ip" and layer.top == ["ip"]
    assert list(layer.blobs[0].shape.dim) == [2, 3]
    assert np.array_equal(np.array(layer.blobs[0].data, dtype=np.float32), w.ravel())
    assert list(layer.blobs[1].shape.dim) == [2]
    assert list(layer.blobs[1].double_data) == [0.5, -1.0]


shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)
arrays = st.sampled_from([np.float32, np.float64]).flatmap(
    lambda dtype: hnp.arrays(dtype=dtype, shape=shapes)
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(arrays, max_size=3), min_size=1, max_size=4))
def test_caffemodel_round_trip_random(
    tmp_path_factory: pytest.TempPathFactory, layers: list[list[np.ndarray]]
) -> None:
    path = tmp_path_factory.mktemp("hyp") / "m.caffemodel"
    net = small_net(*(f"l{i}" for i in range(len(layers))))
    write_caffemodel(path, net, layers)
    model = read_caffemodel(path)
    got = [[blob.data for blob in blobs] for blobs in model.blobs]
    assert len(got) == len(layers)
    for want_layer, got_layer in zip(layers, got, strict=True):
        assert len(want_layer) == len(got_layer)
        assert all(same_bits(a, b) for a, b in zip(want_layer, got_layer, strict=True))


@settings(max_examples=30, deadline=None)
@given(arrays)
def test_blobproto_round_trip_random(
    tmp_path_factory: pytest.TempPathFactory, array: np.ndarray
) -> None:
    path = tmp_path_factory.mktemp("hyp") / "a.binaryproto"
    write_blobproto(path, array)
    assert same_bits(array, read_blobproto(path).data)


def test_blobs_by_name_mapping(tmp_path: Path) -> None:
    net = small_net("a", "b")
    w = np.ones((2, 2), dtype=np.float32)
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, net, {"b": [w]})
    model = read_caffemodel(path)
    assert [len(b) for b in model.blobs] == [0, 1]
    assert same_bits(model.blobs_by_name()["b"][0].data, w)
    # What was read can be written back as it is.
    write_caffemodel(tmp_path / "again.caffemodel", model.net, model.blobs)
    again = read_caffemodel(tmp_path / "again.caffemodel")
    assert same_bits(again.blobs[1][0].data, w)


def test_writer_drops_blobs_embedded_in_the_net(tmp_path: Path) -> None:
    net = small_net("a")
    net.layer[0].blobs.add(data=[1.0, 2.0]).shape.dim.append(2)
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, net, [[np.zeros(3, np.float32)]])
    assert [b.shape for b in read_caffemodel(path).blobs[0]] == [(3,)]
    assert len(net.layer[0].blobs) == 1  # the caller's message is untouched


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "m.caffemodel"
    net = small_net("a", "b")
    with pytest.raises(UserError, match="'c'.*no layer"):
        write_caffemodel(path, net, {"c": []})
    with pytest.raises(UserError, match="1 lists of blobs given for a net of 2 layers"):
        write_caffemodel(path, net, [[]])
    with pytest.raises(UserError, match="layer 'a' blob 0 has dtype int64"):
        write_caffemodel(path, net, [[np.zeros(3, np.int64)], []])
    v1 = caffe_pb2.NetParameter(layers=[caffe_pb2.V1LayerParameter(name="a")])
    with pytest.raises(UserError, match="V1 'layers' format"):
        write_caffemodel(path, v1, [[]])
    with pytest.raises(UserError, match="cannot write"):
        write_blobproto(tmp_path / "missing" / "x.binaryproto", np.zeros(2, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "m.binaryproto"
    path.write_bytes(b"old")
    write_blobproto(path, np.ones(3, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["m.binaryproto"]
    assert same_bits(read_blobproto(path).data, np.ones(3, np.float32))


# --------------------------------------------------------------------------- real Caffe file


@needs_lenet
def test_real_lenet_caffemodel_loads() -> None:
    model = read_caffemodel(LENET)
    assert model.format == "current"
    assert model.net.name == "LeNet"
    shapes = {
        name: [b.shape for b in blobs] for name, blobs in model.blobs_by_name().items() if blobs
    }
    assert shapes == {
        "conv1": [(20, 1, 5, 5), (20,)],
        "conv2": [(50, 20, 5, 5), (50,)],
        "ip1": [(500, 800), (500,)],
        "ip2": [(10, 500), (10,)],
    }
    assert model.net.layer[1].convolution_param.num_output == 20
    assert all(len(layer.blobs) == 0 for layer in model.net.layer)

    # Independent check: protobuf's own parse of the same file.
    reference = caffe_pb2.NetParameter.FromString(LENET.read_bytes())
    assert [layer.name for layer in reference.layer] == model.layer_names()
    for ref_layer, blobs in zip(reference.layer, model.blobs, strict=True):
        assert len(ref_layer.blobs) == len(blobs)
        for ref, blob in zip(ref_layer.blobs, blobs, strict=True):
            assert list(ref.shape.dim) == list(blob.shape)
            assert blob.data.dtype == np.float32
            assert np.array_equal(np.array(ref.data, dtype=np.float32), blob.data.ravel())


@needs_lenet
def test_describe_real_lenet() -> None:
    text = describe_file(LENET)
    for word in ["current format", "LeNet", "mnist", "conv1", "pool1", "conv2", "pool2"]:
        assert word in text
    for word in ["ip1", "relu1", "ip2", "loss", "SoftmaxWithLoss", "InnerProduct"]:
        assert word in text
    for shape in ["20x1x5x5", "50x20x5x5", "500x800", "10x500"]:
        assert shape in text
    assert "431080 parameters" in text
    assert f"{431080 * 4} bytes" in text


@needs_lenet
def test_truncated_real_caffemodel(tmp_path: Path) -> None:
    data = LENET.read_bytes()
    path = tmp_path / "cut.caffemodel"
    checked = 0
    for cut in [1, 3, 8, 40, 200, 2000, len(data) // 3, len(data) // 2, len(data) - 1]:
        try:  # a cut exactly between two fields is a valid (shorter) message
            caffe_pb2.NetParameter.FromString(data[:cut])
            continue
        except Exception:
            pass
        path.write_bytes(data[:cut])
        with pytest.raises(UserError) as excinfo:
            read_caffemodel(path)
        text = error_text(excinfo)
        assert str(path) in text
        assert "truncated at byte" in text and f"of {cut}" in text
        assert "hint:" in text
        checked += 1
    assert checked >= 7


@needs_lenet
def test_text_prototxt_given_as_caffemodel() -> None:
    with pytest.raises(UserError, match="looks like a text prototxt") as excinfo:
        read_caffemodel(LENET_PROTOTXT)
    assert "give the binary .caffemodel" in error_text(excinfo)
    with pytest.raises(UserError, match="looks like a text prototxt"):
        describe_file(LENET_PROTOTXT)


def test_text_file_detected_without_corpus(tmp_path: Path) -> None:
    path = tmp_path / "net.caffemodel"
    path.write_text('name: "x"\nlayer {\n  name: "data"\n  type: "Input"\n}\n')
    with pytest.raises(UserError, match="looks like a text prototxt"):
        read_caffemodel(path)


# --------------------------------------------------------------------------- old formats


def test_legacy_4d_shape(tmp_path: Path) -> None:
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    layer.blobs.add(num=1, channels=1, height=2, width=3, data=[1, 2, 3, 4, 5, 6])
    # Caffe takes num/channels/height/width over shape when both are present.
    both = layer.blobs.add(num=1, channels=1, height=1, width=2, data=[7, 8])
    both.shape.dim.extend([2])
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(caffe_pb2.NetParameter(layer=[layer]).SerializeToString())
    weight, bias = read_caffemodel(path).blobs[0]
    assert weight.legacy_shape and weight.shape == (1, 1, 2, 3)
    assert np.array_equal(weight.data, np.arange(1, 7, dtype=np.float32).reshape(1, 1, 2, 3))
    assert bias.legacy_shape and bias.shape == (1, 1, 1, 2)
    # Caffe loads legacy 4-D blobs into N-D parameters padded with leading 1s.
    assert bias.matches([2]) and bias.matches([1, 2]) and bias.matches([1, 1, 1, 2])
    assert not bias.matches([2, 1]) and not bias.matches([1, 1, 1, 1, 2])
    assert weight.matches([2, 3]) and not weight.matches([6])
    n_d = Blob(data=np.zeros((1, 2), np.float32), diff=None, legacy_shape=False)
    assert n_d.matches([1, 2]) and not n_d.matches([2])


def test_v1_caffemodel(tmp_path: Path) -> None:
    v1 = caffe_pb2.V1LayerParameter
    conv = v1(name="conv1", type=v1.CONVOLUTION, bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 2
    conv.blobs.add(num=2, channels=1, height=1, width=2, data=[1, 2, 3, 4])
    conv.blobs.add(num=1, channels=1, height=1, width=2, data=[0.5, -0.5])
    relu = v1(name="relu1", type=v1.RELU, bottom=["conv1"], top=["conv1"])
    net = caffe_pb2.NetParameter(name="old", layers=[conv, relu])
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())

    model = read_caffemodel(path)
    assert model.format == "V1"
    assert model.layer_names() == ["conv1", "relu1"]
    assert model.net.layers[0].type == v1.CONVOLUTION
    assert model.net.layers[0].convolution_param.num_output == 2
    assert all(len(layer.blobs) == 0 for layer in model.net.layers)
    weight, bias = model.blobs[0]
    assert weight.shape == (2, 1, 1, 2) and weight.legacy_shape
    assert np.array_equal(weight.data.ravel(), [1, 2, 3, 4])
    assert np.array_equal(bias.data.ravel(), [0.5, -0.5])
    assert model.blobs[1] == []

    text = describe_file(path)
    assert "V1 format" in text and "CONVOLUTION" in text and "RELU" in text
    assert "2x1x1x2 (legacy)" in text


def test_v0_caffemodel(tmp_path: Path) -> None:
    v0 = caffe_pb2.V0LayerParameter(name="fc", type="innerproduct", num_output=2)
    v0.blobs.add(num=1, channels=1, height=2, width=2, data=[1, 2, 3, 4])
    v0.blobs.add(num=1, channels=1, height=1, width=2, data=[5, 6])
    wrapper = caffe_pb2.V1LayerParameter(layer=v0, bottom=["data"], top=["fc"])
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(caffe_pb2.NetParameter(name="ancient", layers=[wrapper]).SerializeToString())

    model = read_caffemodel(path)
    assert model.format == "V0"
    assert model.layer_names() == ["fc"]
    assert model.net.layers[0].layer.num_output == 2
    assert model.net.layers[0].bottom == ["data"]
    assert len(model.net.layers[0].layer.blobs) == 0
    assert [b.shape for b in model.blobs[0]] == [(1, 1, 2, 2), (1, 1, 1, 2)]
    assert np.array_equal(model.blobs[0][1].data.ravel(), [5, 6])
    assert "V0 format" in describe_file(path) and "innerproduct" in describe_file(path)


def test_layer_and_layers_together_is_refused(tmp_path: Path) -> None:
    net = small_net("a")
    net.layers.add(name="b")
    path = tmp_path / "both.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(UserError, match="both 'layer'.*and 'layers'"):
        read_caffemodel(path)


def test_unpacked_and_split_repeated_fields(tmp_path: Path) -> None:
    """Protobuf parsers accept repeated numbers unpacked, and packed in several chunks."""
    shape = field(7, field(1, varint(2) + varint(3)))
    unpacked = b"".join(b"\x2d" + struct.pack("<f", v) for v in [1.0, 2.0, 3.0])
    packed = field(5, struct.pack("<3f", 4.0, 5.0, 6.0))
    diff = b"".join(b"\x49" + struct.pack("<d", v) for v in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    blob = shape + unpacked + packed + diff
    reference = caffe_pb2.BlobProto.FromString(blob)
    assert list(reference.data) == [1, 2, 3, 4, 5, 6]  # the encoding is valid protobuf

    layer = caffe_pb2.LayerParameter(name="ip").SerializeToString() + field(7, blob)
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(net_with_layer_bytes(layer))
    (got,) = read_caffemodel(path).blobs[0]
    assert got.shape == (2, 3)
    assert np.array_equal(got.data.ravel(), np.array(reference.data, dtype=np.float32))
    assert got.diff is not None and got.diff.dtype == np.float64
    assert np.array_equal(got.diff.ravel(), np.array(reference.double_diff))

    path = tmp_path / "unpacked.binaryproto"
    path.write_bytes(blob)
    assert np.array_equal(read_blobproto(path).data, got.data)


def test_double_data_and_diff(tmp_path: Path) -> None:
    blob = caffe_pb2.BlobProto(double_data=[1.5, 2.5], diff=[0.25, 0.75])
    blob.shape.dim.append(2)
    path = tmp_path / "d.binaryproto"
    path.write_bytes(blob.SerializeToString())
    got = read_blobproto(path)
    assert got.data.dtype == np.float64 and list(got.data) == [1.5, 2.5]
    assert got.diff is not None and got.diff.dtype == np.float32 and list(got.diff) == [0.25, 0.75]


# --------------------------------------------------------------------------- errors


def test_count_disagreeing_with_shape(tmp_path: Path) -> None:
    layer = caffe_pb2.LayerParameter(name="fc", type="InnerProduct")
    blob = layer.blobs.add(data=[1, 2, 3, 4, 5])
    blob.shape.dim.extend([2, 3])
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(caffe_pb2.NetParameter(layer=[layer]).SerializeToString())
    with pytest.raises(UserError) as excinfo:
        read_caffemodel(path)
    text = error_text(excinfo)
    assert str(path) in text and "layer 'fc' blob 0" in text
    assert "shape 2x3 needs 6 values" in text and "holds 5 float32 data values" in text


def test_diff_count_disagreeing_with_shape(tmp_path: Path) -> None:
    blob = caffe_pb2.BlobProto(data=[1, 2], diff=[1])
    blob.shape.dim.append(2)
    path = tmp_path / "bad.binaryproto"
    path.write_bytes(blob.SerializeToString())
    with pytest.raises(UserError, match="shape 2 needs 2 values but the file holds 1 float32 diff"):
        read_blobproto(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x0a" + b"\xff" * 11, "bad varint"),
        (b"\x0e\x00", "wire type 6"),
        # A layer whose blob claims more bytes than the layer holds.
        (
            field(100, b"\x0a\x01a" + b"\x3a\x10" + b"\x00" * 4),
            "runs past the end of its enclosing",
        ),
        # A blob whose shape is a varint instead of a message.
        (field(100, field(7, b"\x38\x01")), "BlobProto.shape of layer '' blob 0 has wire type 0"),
        # Packed floats whose byte count is not a multiple of four.
        (field(100, field(7, field(5, b"\x00" * 5))), "not a whole number of 4-byte values"),
        # Layer parameters that protobuf cannot decode (a string with bad length inside).
        (field(100, field(106, b"\x0a\x05ab")), "corrupt data in layer #0"),
    ],
)
def test_corrupt_caffemodel(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as excinfo:
        read_caffemodel(path)
    assert str(path) in error_text(excinfo) and "hint:" in error_text(excinfo)


@needs_lenet
def test_corrupted_bytes_in_real_caffemodel(tmp_path: Path) -> None:
    data = bytearray(LENET.read_bytes())
    # The first layer's first field is its name ("mnist", length 5 at byte 11):
    # claim 0x7f bytes, past the end of the 80-byte layer.
    assert data[9:13] == b"P\n\x05m"
    data[11] = 0x7F
    path = tmp_path / "flipped.caffemodel"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt data at byte 10"):
        read_caffemodel(path)


def test_missing_empty_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        read_caffemodel(tmp_path / "nope.caffemodel")
    with pytest.raises(UserError, match="is a directory"):
        read_caffemodel(tmp_path)
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty \(0 bytes\)"):
        read_caffemodel(tmp_path / "empty.caffemodel")


def test_wrong_kind_of_file(tmp_path: Path) -> None:
    blob_path = tmp_path / "mean.binaryproto"
    write_blobproto(blob_path, np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(UserError, match="not a .caffemodel.*looks like a .binaryproto"):
        read_caffemodel(blob_path)
    model_path = tmp_path / "m.caffemodel"
    write_caffemodel(model_path, small_net("a"), [[np.zeros(2, np.float32)]])
    with pytest.raises(UserError, match="not a .binaryproto.*looks like a .caffemodel"):
        read_blobproto(model_path)
    state_path = tmp_path / "s.solverstate"
    write_solverstate(state_path, 5, "m.caffemodel", [np.zeros(2, np.float32)])
    with pytest.raises(UserError, match="looks like a .solverstate"):
        read_caffemodel(state_path)


# --------------------------------------------------------------------------- other kinds


def test_caffe_style_mean_binaryproto(tmp_path: Path) -> None:
    mean = np.linspace(0, 255, 1 * 3 * 4 * 5, dtype=np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5, data=mean)
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    got = read_blobproto(path)
    assert got.legacy_shape and got.shape == (1, 3, 4, 5)
    assert same_bits(got.data, mean.reshape(1, 3, 4, 5))
    text = describe_file(path)
    assert "1x3x4x5" in text and "float32" in text and "min 0" in text and "max 255" in text


def test_blobproto_vector_round_trip(tmp_path: Path) -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.0, 2.0])]
    path = tmp_path / "v.binaryproto"
    write_blobproto_vector(path, arrays)
    got = read_blobproto_vector(path)
    assert all(same_bits(a, b.data) for a, b in zip(arrays, got, strict=True))
    reference = caffe_pb2.BlobProtoVector.FromString(path.read_bytes())
    assert [list(b.shape.dim) for b in reference.blobs] == [[2, 3], [2]]
    text = describe_file(path)
    assert "BlobProtoVector, 2 blobs" in text and "shape 2x3" in text


def test_solverstate_round_trip(tmp_path: Path) -> None:
    history = [np.full((20, 1, 5, 5), 0.5, np.float32), np.arange(20, dtype=np.float32)]
    path = tmp_path / "lenet_iter_100.solverstate"
    write_solverstate(path, 100, "lenet_iter_100.caffemodel", history, current_step=2)
    state, got = read_solverstate(path)
    assert (state.iter, state.learned_net, state.current_step) == (
        100,
        "lenet_iter_100.caffemodel",
        2,
    )
    assert len(state.history) == 0
    assert all(same_bits(a, b.data) for a, b in zip(history, got, strict=True))
    reference = caffe_pb2.SolverState.FromString(path.read_bytes())
    assert reference.iter == 100 and len(reference.history) == 2
    text = describe_file(path)
    for word in ["iter: 100", "current_step: 2", "lenet_iter_100.caffemodel", "20x1x5x5"]:
        assert word in text


def test_describe_by_extension_when_content_is_ambiguous(tmp_path: Path) -> None:
    # iter (field 1) and current_step (field 4) alone fit a BlobProto's num and
    # width as well: the extension decides.
    content = caffe_pb2.SolverState(iter=7, current_step=3).SerializeToString()
    (tmp_path / "x.solverstate").write_bytes(content)
    assert "iter: 7" in describe_file(tmp_path / "x.solverstate")
    (tmp_path / "x.binaryproto").write_bytes(content)
    assert "shape 7x0x0x3 (legacy" in describe_file(tmp_path / "x.binaryproto")
    path = tmp_path / "v.binaryproto"
    write_blobproto_vector(path, [np.zeros(2, np.float32)])
    assert "BlobProtoVector" in describe_file(path)
    path = tmp_path / "x.weird"
    path.write_bytes(b"\x05\x06\x07")
    with pytest.raises(UserError, match="not a Caffe binary file"):
        describe_file(path)


# --------------------------------------------------------------------------- memory


def test_loading_does_not_build_python_lists(tmp_path: Path) -> None:
    """A ~50 MB caffemodel loads with one copy of its weights, not per-float objects."""
    weight = np.arange(12_500_000, dtype=np.float32).reshape(2500, 5000)
    path = tmp_path / "big.caffemodel"
    write_caffemodel(path, small_net("big", "small"), [[weight], [np.ones(3, np.float32)]])
    size = path.stat().st_size
    del weight
    tracemalloc.start()
    try:
        model = read_caffemodel(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * size, f"peak {peak} bytes for a {size}-byte file"
    assert all(len(layer.blobs) == 0 for layer in model.net.layer)
    blob: Blob = model.blobs[0][0]
    assert blob.shape == (2500, 5000) and blob.data[-1, -1] == 12_499_999
