"""What the fuzz suite (test_fuzz.py) found, each case reduced to its smallest input: the
fixed ones as plain tests, the open ones marked xfail (strict, so that a fix shows) with the
file the bug lies in."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from runtime.test_data import encoded, write_db
from test_reliability_files import page_size, records

from caffec.cli import main
from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import read_blobproto, read_caffemodel, read_solverstate
from caffec.formats.datum import datum_array, parse_datum
from caffec.formats.images import read_image
from caffec.formats.snapshots import weights_by_name
from caffec.frontend.loader import parse_net

V0_LAYER = caffe_pb2.NetParameter(
    layers=[caffe_pb2.V1LayerParameter(layer=caffe_pb2.V0LayerParameter(name="conv", type="conv"))]
).SerializeToString()


def refused(path: Path, read: Callable[[Path], object]) -> str:
    """The message of the UserError ``read`` refuses ``path`` with; it must name the file."""
    with pytest.raises(UserError) as caught:
        read(path)
    assert str(path) in str(caught.value)
    return str(caught.value)


# --------------------------------------------------------------------------- fixed


def test_an_empty_blob_wider_than_any_array(tmp_path: Path) -> None:
    """A 0x3x4x(2**63-1) legacy blob holds no values, but numpy cannot shape even an empty
    array so (it was a ValueError)."""
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(b"\x08\x00\x10\x03\x18\x04 \xff\xff\xff\xff\xff\xff\xff\xff\x7f*\x00")
    assert "0x3x4x9223372036854775807, larger than any array" in refused(path, read_blobproto)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\n\x04f\xa5zz" + V0_LAYER, id="V0 net's name"),  # was a UnicodeDecodeError
        pytest.param(b"\xa2\x06\x06\n\x04f\xa5zz", id="layer's name"),  # was a bytes name
    ],
)
def test_a_name_that_is_not_utf8_in_a_caffemodel(tmp_path: Path, data: bytes) -> None:
    """protobuf parses such a string and hands it back as bytes, which failed wherever the
    name was used first (an upgrade copying it, a message naming the layer)."""
    path = tmp_path / "net.caffemodel"
    path.write_bytes(data)
    assert "b'f\\xa5zz' is not UTF-8" in refused(path, weights_by_name)


def test_a_learned_net_that_is_not_utf8_in_a_solverstate(tmp_path: Path) -> None:
    path = tmp_path / "net.solverstate"
    path.write_bytes(b"\x08\x01\x12\x03\xff.x")
    assert "is not UTF-8" in refused(path, read_solverstate)


def test_an_upgrade_error_in_a_binary_net_names_the_file(tmp_path: Path) -> None:
    """A V1 caffemodel with eight input_dim values for one input: the upgrade's message had
    no file, as a binary net has no line and column."""
    path = tmp_path / "old.caffemodel"
    path.write_bytes(caffe_pb2.NetParameter(input=["data"], input_dim=[1, 1, 6, 6] * 2,
                                            layers=[{"name": "ip"}]).SerializeToString())  # fmt: skip
    read_caffemodel(path)  # the file itself is whole
    assert "8 'input_dim' values" in refused(path, weights_by_name)


def _gif_claiming_65535_squared() -> bytes:
    """A GIF whose header says 65535x65535 pixels: Pillow's DecompressionBombError, which
    is not one of the errors decoding was checked for."""
    gif = encoded(np.zeros((4, 5, 3), np.uint8), "GIF")
    return gif[:6] + b"\xff\xff\xff\xff" + gif[10:]


def test_an_encoded_datum_claiming_billions_of_pixels() -> None:
    where = "record '0' of train_lmdb"
    datum = caffe_pb2.Datum(data=_gif_claiming_65535_squared(), encoded=True)
    with pytest.raises(UserError, match="record '0' of train_lmdb: cannot decode"):
        datum_array(parse_datum(datum.SerializeToString(), where), where)


def test_an_image_file_claiming_billions_of_pixels(tmp_path: Path) -> None:
    path = tmp_path / "huge.gif"
    path.write_bytes(_gif_claiming_65535_squared())
    assert "cannot read the image" in refused(path, lambda p: read_image(p, None, "line 1"))


# --------------------------------------------------------------------------- open


def test_an_enum_number_past_int32() -> None:
    with pytest.raises(UserError, match="4294967296 is not a value of enum DB"):
        parse_net('layer { name: "d" type: "Data" data_param { backend: 4294967296 } }', "n")


def test_a_nan_layer_parameter_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = tmp_path / "net.prototxt"
    net.write_text(
        'layer { name: "data" type: "Input" top: "data"\n'
        "  input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n"
        'layer { name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param { beta: nan } }\n'
    )
    assert main(["dump", str(net), "--after", "lower"]) == 2
    assert f"{net}:3:1: error: layer 'norm'" in capsys.readouterr().err


P_BRANCH, P_LEAF, F_BIGDATA = 0x01, 0x02, 0x01


def damaged_leaf(folder: Path, edit: Callable[[bytearray, int, int], None]) -> Path:
    """A database whose last leaf page ``edit(data, page_offset, page_number)`` changed."""
    db = write_db(folder / "db", records())
    data = bytearray((db / "data.mdb").read_bytes())
    psize = page_size(db)
    leaves = [p for p in range(len(data) // psize)
              if struct.unpack_from("<H", data, p * psize + 10)[0] & P_LEAF]  # fmt: skip
    edit(data, leaves[-1] * psize, leaves[-1])
    (db / "data.mdb").write_bytes(data)
    return db


def as_branch(data: bytearray, page: int, _: int) -> None:
    """The page's flags say branch: lmdb asserts IS_LEAF and aborts (SIGABRT)."""
    struct.pack_into("<H", data, page + 10, P_BRANCH)


def value_past_the_end(data: bytearray, page: int, number: int) -> None:
    """The first node's value said to be 1,000,000 bytes in overflow pages from this page
    on: lmdb copies it from past the end of the file (SIGBUS)."""
    (node,) = struct.unpack_from("<H", data, page + 16)
    key_size = struct.unpack_from("<H", data, page + node + 6)[0]
    struct.pack_into("<HHH", data, page + node, 1_000_000 & 0xFFFF, 1_000_000 >> 16, F_BIGDATA)
    struct.pack_into("<Q", data, page + node + 8 + key_size, number)


@pytest.mark.xfail(
    strict=True,
    reason="caffec/formats/databases.py (and lmdb_file.py's checks before lmdb maps a "
    "file): lmdb trusts its pages, so a damaged leaf kills the process (SIGABRT from an "
    "assertion in mdb.c, or SIGBUS reading past the file's end) instead of exit 2",
)
@pytest.mark.parametrize("edit", [as_branch, value_past_the_end])
def test_a_damaged_leaf_page_exits_2(tmp_path: Path, edit: Callable) -> None:
    db = damaged_leaf(tmp_path, edit)
    result = subprocess.run([sys.executable, "-m", "caffec", "compute-mean", str(db)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert str(db) in result.stderr
