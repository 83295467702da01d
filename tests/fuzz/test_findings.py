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
from runtime.test_data import encoded, raw_datum, write_db
from test_fuzz import in_child
from test_reliability_files import page_size, records

from caffec.cli import main
from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import read_blobproto, read_caffemodel, read_solverstate
from caffec.formats.datum import datum_array, parse_datum
from caffec.formats.images import read_image
from caffec.formats.lmdb_file import check_lmdb_file
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


# An LMDB file damaged inside its pages: lmdb trusts them, and reading one killed the process
# (SIGABRT from an assertion in mdb.c, or SIGBUS reading past the file's end). Now the tree is
# checked before lmdb maps the file (caffec/formats/lmdb_file.py). Each edit damages a
# database of test_reliability_files.records() (a branch page over 30 leaves of 2 records) or,
# where it is named "big", one of 3 records whose values lie in overflow pages of their own.

P_BRANCH, P_LEAF, P_OVERFLOW, F_BIGDATA = 0x01, 0x02, 0x04, 0x01
MAIN_DB_ENTRIES = 16 + 104  # md_entries of the main DB in a meta page (after the header)


def flagged(data: bytearray, psize: int, flag: int) -> list[int]:
    """The pages whose header has ``flag``, in file order."""
    return [p for p in range(len(data) // psize)
            if struct.unpack_from("<H", data, p * psize + 10)[0] & flag]  # fmt: skip


def node(data: bytearray, page: int, psize: int, index: int) -> int:
    """Where node ``index`` of a page lies in the file."""
    return page * psize + struct.unpack_from("<H", data, page * psize + 16 + 2 * index)[0]


def last_leaf(data: bytearray, psize: int) -> int:
    return flagged(data, psize, P_LEAF)[-1]


def as_branch(data: bytearray, psize: int) -> None:
    """A leaf flagged as a branch: lmdb asserts IS_LEAF and aborts (SIGABRT)."""
    struct.pack_into("<H", data, last_leaf(data, psize) * psize + 10, P_BRANCH)


def big_value_at(data: bytearray, psize: int, page: int) -> None:
    """The last leaf's first record said to be 1,000,000 bytes in overflow pages from
    ``page`` on (-1: the leaf itself): lmdb copies it from past the file's end (SIGBUS)."""
    leaf = last_leaf(data, psize)
    at = node(data, leaf, psize, 0)
    key_size = struct.unpack_from("<H", data, at + 6)[0]
    struct.pack_into("<HHH", data, at, 1_000_000 & 0xFFFF, 1_000_000 >> 16, F_BIGDATA)
    struct.pack_into("<Q", data, at + 8 + key_size, leaf if page < 0 else page)


def value_past_the_end(data: bytearray, psize: int) -> None:
    big_value_at(data, psize, -1)


def value_in_a_page_past_the_end(data: bytearray, psize: int) -> None:
    big_value_at(data, psize, 1_000_000)


def overflow_run_past_the_end(data: bytearray, psize: int) -> None:
    """(big) The first overflow run said to be 1,000,000 pages long."""
    struct.pack_into("<I", data, flagged(data, psize, P_OVERFLOW)[0] * psize + 12, 1_000_000)


def value_longer_than_its_pages(data: bytearray, psize: int) -> None:
    """(big) A value said to be longer than its overflow run holds."""
    struct.pack_into("<HH", data, node(data, flagged(data, psize, P_LEAF)[0], psize, 0),
                     (3 * psize) & 0xFFFF, (3 * psize) >> 16)  # fmt: skip


def set_child(data: bytearray, psize: int, child: int | None) -> None:
    """Child 1 of the branch page set to page ``child`` (None: child 0's page)."""
    branch = flagged(data, psize, P_BRANCH)[0]
    if child is None:
        first = node(data, branch, psize, 0)
        child = struct.unpack_from("<I", data, first)[0] | data[first + 4] << 32
    struct.pack_into("<IH", data, node(data, branch, psize, 1), child & 0xFFFFFFFF, child >> 32)


def child_past_the_end(data: bytearray, psize: int) -> None:
    set_child(data, psize, 1_000_000)


def child_named_twice(data: bytearray, psize: int) -> None:
    set_child(data, psize, None)


def node_outside_its_page(data: bytearray, psize: int) -> None:
    struct.pack_into("<H", data, last_leaf(data, psize) * psize + 16, 4)


def free_space_upside_down(data: bytearray, psize: int) -> None:
    """mp_lower past mp_upper."""
    page = last_leaf(data, psize) * psize
    struct.pack_into("<H", data, page + 12, struct.unpack_from("<H", data, page + 14)[0] + 2)


def key_past_the_page_end(data: bytearray, psize: int) -> None:
    struct.pack_into("<H", data, node(data, last_leaf(data, psize), psize, 0) + 6, 60_000)


def page_says_it_is_another(data: bytearray, psize: int) -> None:
    struct.pack_into("<Q", data, last_leaf(data, psize) * psize, 7)


def one_record_too_many(data: bytearray, psize: int) -> None:
    """Both meta pages count 61 records where there are 60 (the reader's seek divides by
    the count: 0 was a ZeroDivisionError)."""
    for meta in (0, psize):
        struct.pack_into("<Q", data, meta + MAIN_DB_ENTRIES, 61)


DAMAGE = {  # an edit of the file, and what the message says about it
    as_branch: "should be a leaf page, but its flags are 0x0001",
    value_past_the_end: "has its value in page 32, which is not an overflow page",
    value_in_a_page_past_the_end: "has its value in page 1000000, outside its pages (2 to 32)",
    overflow_run_past_the_end: "has its value in 1000000 pages from page 3 on, outside its pages",
    value_longer_than_its_pages: "has a value of 12288 bytes, more than its 2 overflow pages",
    child_past_the_end: "page 4: node 1 names page 1000000 as a child, outside its pages",
    child_named_twice: "(child 1 of branch page 4, at depth 2 of its tree) is reached a second",
    node_outside_its_page: "node 0 is at byte 4, outside the page's nodes (bytes 1992 to 4096)",
    free_space_upside_down: "has its free space from byte 1994 to 1992, outside its 4096 bytes",
    key_past_the_page_end: "node 0: 61035 bytes of key and value after its header run past the page's end",
    page_says_it_is_another: "page 32 (child 29 of branch page 4, at depth 2 of its tree) says "
    "it is page 7",
    one_record_too_many: "counts 61 records in its header, but its leaf pages hold 60",
}


def damaged(folder: Path, edit: Callable[[bytearray, int], None]) -> Path:
    """A database damaged by ``edit(data, page_size)``."""
    big = edit in (overflow_run_past_the_end, value_longer_than_its_pages)
    values = [(b"%02d" % i, raw_datum(np.zeros((1, 64, 64)), 1)) for i in range(3)]
    db = write_db(folder / "db", values if big else records())
    data = bytearray((db / "data.mdb").read_bytes())
    edit(data, page_size(db))
    (db / "data.mdb").write_bytes(data)
    return db


@pytest.mark.parametrize("edit", DAMAGE, ids=lambda edit: edit.__name__)
def test_a_damaged_lmdb_page_exits_2(tmp_path: Path, edit: Callable) -> None:
    """In a forked copy (in_child), as a miss would be a signal."""
    if page_size(write_db(tmp_path / "probe", records(1))) != 4096:
        pytest.skip("the messages count pages of 4096 bytes")
    db = damaged(tmp_path, edit)
    status, err = in_child(["compute-mean", str(db)], 60)
    assert status == 2, (status, err[-2000:])
    assert f"the LMDB database {db} is damaged: {db / 'data.mdb'}" in err, err
    assert DAMAGE[edit] in err and "rebuild the database" in err and "Traceback" not in err


def test_a_damaged_leaf_page_exits_2_from_a_new_process(tmp_path: Path) -> None:
    """The finding as it was found: ``caffec compute-mean`` on a leaf flagged as a branch."""
    db = damaged(tmp_path, as_branch)
    result = subprocess.run([sys.executable, "-m", "caffec", "compute-mean", str(db)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert str(db) in result.stderr


def test_whole_trees_of_every_shape_pass_the_check(tmp_path: Path) -> None:
    """Three levels (600 records), values in overflow pages, an empty database."""
    lmdb = pytest.importorskip("lmdb")
    shapes = {"deep": records(600), "big": [(b"%02d" % i, b"v" * 20_000 * i) for i in range(4)],
              "empty": []}  # fmt: skip
    for name, values in shapes.items():
        db = write_db(tmp_path / name, values)
        check_lmdb_file(db)
        with lmdb.open(str(db), readonly=True, lock=False) as env:
            depth = env.stat()["depth"]
        assert depth == {"deep": 3, "big": 1, "empty": 0}[name]


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
