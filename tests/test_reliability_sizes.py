"""Reliability: impossible sizes are refused where they are written, and cost grows linearly.

Sizes (issue 20, item 5): a size the generated code cannot index (int64) or one more than
the memory budget is a UserError naming the layer, its file:line:col and the bytes, at
compile time (dump shows shapes, but refuses what cannot be indexed); the same for
reshapes, artifacts run on a smaller machine, unknown dtypes and numbers in a prototxt
beyond their field's type.

Cost (item 6): a chain of in-place layers dumps and compiles in time linear in its length,
and resuming training seeks the data readers instead of reading every batch again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import caffec
from caffec.cli import main
from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.manifest import FeederEntry
from caffec.formats.snapshots import read_solver_snapshot, write_solver_snapshot
from caffec.runtime import executor
from caffec.runtime.feeder import make_feeder

INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def net_file(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------- 5. sizes

SMALL = INPUT.format(dims="dim: 1 dim: 3 dim: 4 dim: 4")
IMPOSSIBLE = {  # the net, the layer it names, its line, and whether dump refuses it too
    "num_output": (
        SMALL + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
        "  inner_product_param { num_output: 4294967295 } }\n",
        "ip", 2, False,
    ),
    "pad": (
        SMALL + 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
        "  convolution_param { num_output: 2 kernel_size: 3 pad: 2000000000 } }\n",
        "conv", 2, True,
    ),
    "batch": (INPUT.format(dims="dim: 1000000000 dim: 3 dim: 4 dim: 4"), "data", 1, False),
    "dim": (INPUT.format(dims="dim: 9223372036854775807 dim: 3"), "data", 1, True),
}  # fmt: skip


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_impossible_sizes_are_refused_at_their_layer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    text, layer, line, unindexable = IMPOSSIBLE[case]
    path = net_file(tmp_path, text)
    status, _, err = cli(capsys, "compile", path, "-o", tmp_path / "out", "--max-memory", "8G")
    assert status == 2, err
    assert f"{path}:{line}:1: error: layer '{layer}'" in err and "bytes" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    if unindexable:
        assert "more than the 64-bit indices of generated code reach" in err
    else:
        assert "more than the memory budget, 8.0 GiB" in err and "--max-memory" in err
    status, out, err = cli(capsys, "dump", path)
    assert (status, "64-bit indices" in err) == ((2, True) if unindexable else (0, False))


def test_the_budget_covers_the_whole_net_and_is_the_machines_by_default(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each value fits but the net does not: the memory plan's total is checked too."""
    path = net_file(tmp_path, SMALL + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    status, _, err = cli(capsys, "compile", path, "-o", tmp_path / "a", "--max-memory", "300")
    assert status == 2 and f"{path}:" in err and "the net (" in err and "300 bytes" in err
    with pytest.raises(SystemExit, match="2"):
        main(["compile", str(path), "--max-memory", "4X"])
    assert "'4X' is not a size such as 8G" in capsys.readouterr().err
    huge = net_file(tmp_path, INPUT.format(dims="dim: 1000000000000 dim: 48"), "huge.prototxt")
    with pytest.raises(UserError, match=r"174\.6 TiB .* more than this machine's memory"):
        caffec.Net(str(huge), caffec.TEST)  # (no machine has 192 TB)
    with pytest.raises(UserError, match=r"more than the memory budget, 300 bytes"):
        caffec.Net(str(path), caffec.TEST, max_memory=300)


def test_run_checks_an_artifact_against_this_machine(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An artifact compiled on a larger machine: refused before anything is allocated, and
    an allocation that fails anyway is a UserError too, not a MemoryError."""
    path = net_file(tmp_path, SMALL + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert cli(capsys, "compile", path, "-o", tmp_path / "a")[0] == 0
    status, _, err = cli(capsys, "run", tmp_path / "a", "--max-memory", "100")
    assert status == 2 and f"the net of {tmp_path / 'a'} takes" in err and "100 bytes" in err

    def no_memory(size: int) -> np.ndarray:
        raise MemoryError(size)

    monkeypatch.setattr(executor, "aligned_bytes", no_memory)
    status, _, err = cli(capsys, "run", tmp_path / "a")
    assert status == 2 and "more than this machine can allocate now" in err


def test_reshapes_and_dtypes_are_checked(tmp_path: Path) -> None:
    net = caffec.Net(str(net_file(tmp_path, SMALL)), caffec.TEST)
    with pytest.raises(UserError, match="more than the 64-bit indices"):
        net.blobs["data"].reshape(2**62, 3, 4, 4)
    with pytest.raises(UserError, match=r"16\.0 TiB .* more than this machine's memory") as err:
        net.blobs["data"].reshape(2**40, 4)
    assert "--max-memory" not in str(err.value)  # a reshape's budget is the machine's
    assert net.blobs["data"].shape == (1, 3, 4, 4)
    with pytest.raises(UserError, match="no dtype 'int8'") as err:
        caffec.Net(str(net_file(tmp_path, SMALL)), caffec.TEST, dtype="int8")
    assert err.value.hint == "dtypes: float32, float64"


LONG = "9" * 10**6


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("dim", "out of range for field 'dim' (int64: -9223372036854775808 to"),
        ("num_output", "out of range for field 'num_output' (uint32: 0 to 4294967295)"),
        ("scale", "out of range for field 'scale' (float: at most 3.4028235e+38"),
        ("bias_term", "field 'bias_term' (bool) expects true or false, found number 999"),
        ("pool", "(1000000 characters) is not a value of enum PoolMethod"),
    ],
)
def test_a_million_digit_number_is_out_of_range_at_its_token(
    tmp_path: Path, field: str, words: str
) -> None:
    where = {
        "dim": "input_param { shape { dim: %s } }",
        "num_output": "inner_product_param { num_output: %s }",
        "scale": "transform_param { scale: %s }",
        "bias_term": "inner_product_param { bias_term: %s }",
        "pool": "pooling_param { pool: %s }",
    }[field]
    text = 'name: "n"\nlayer { name: "l" type: "Input" ' + where % LONG + " }\n"
    path = net_file(tmp_path, text)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        caffec.Net(str(path), caffec.TEST)
    assert time.perf_counter() - start < 5
    assert words in err.value.message and len(err.value.message) < 300
    assert str(err.value.span) == f"{path}:2:{text.splitlines()[1].index(LONG) + 1}"
    assert len(str(err.value)) < 1000  # the source line is shown in part


def test_numbers_beyond_a_floats_range_are_out_of_range_but_inf_is_not() -> None:
    from caffec.frontend.textformat import parse_text

    assert parse_text("scale: inf", caffe_pb2.TransformationParameter)[0].scale == np.inf
    assert parse_text("scale: 3.4e38", caffe_pb2.TransformationParameter)[0].scale > 3e38
    for number in ("3.5e38", "1e400", "-1e39", str(2**128)):
        with pytest.raises(UserError, match="out of range for field 'scale'"):
            parse_text(f"scale: {number}", caffe_pb2.TransformationParameter)


# --------------------------------------------------------------------------- 6. cost


def chain(tmp_path: Path, layers: int, kinds: tuple[str, ...] = ("ReLU",)) -> Path:
    """An Input and ``layers`` in-place activations of one blob."""
    lines = [INPUT.format(dims="dim: 2 dim: 5")]
    lines += [
        f'layer {{ name: "a{i}" type: "{kinds[i % len(kinds)]}" bottom: "data" top: "data" }}\n'
        for i in range(layers)
    ]
    return net_file(tmp_path, "".join(lines), f"chain{layers}.prototxt")


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def grows_linearly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    command: str, small: int, large: int,
) -> float:  # fmt: skip
    """How many times longer ``caffec COMMAND`` takes on a chain of ``large`` layers than on
    one of ``small`` (after a tiny one, to warm the process up), each with a new build
    cache."""

    def timed(layers: int) -> float:
        monkeypatch.setenv("CAFFEC_CACHE_DIR", str(tmp_path / f"cache{layers}"))
        net = chain(tmp_path, layers)
        out = ["-o", net.with_suffix(".caffec")] if command == "compile" else []
        return seconds(lambda: cli(capsys, command, net, *out))

    timed(10)
    base = timed(small)
    return timed(large) / base


def test_dump_of_a_long_in_place_chain_is_linear(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """20,000 in-place ReLUs dump in about ten times the time of 2,000 (it was n^2.6: the
    versions' names grew a prime per layer, and so did the output)."""
    assert grows_linearly(capsys, monkeypatch, tmp_path, "dump", 2000, 20000) <= 15


def test_compile_of_a_long_in_place_chain_is_linear(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """600 and 6,000 in-place ReLUs, not 2,000 and 20,000: the C compiler's share is linear
    but large (20,000 layers compile in about 30 s, mostly GCC's), too slow for the test
    command; the ratio of the lengths, and so the bound, is the same. Fusion composed the
    whole chain into one map (quadratic) and GCC took quadratic time on it and on 20,000
    identical empty step functions; now at most 64 maps are composed into one loop and
    empty steps share one function. Each build is new (an empty build cache)."""
    assert grows_linearly(capsys, monkeypatch, tmp_path, "compile", 600, 6000) <= 15


def test_in_place_versions_keep_short_names_and_chains_compute_as_the_reference(
    tmp_path: Path,
) -> None:
    """Versions are named x', x'', x''', x'4, ...; a chain longer than one composed map
    (64) gives the reference build's numbers, fused or not."""
    path = chain(tmp_path, 150, ("ReLU", "Sigmoid", "TanH", "AbsVal"))
    from caffec.compiler.pipeline import Options, load_layer_graph

    graph = load_layer_graph(path, Options())
    assert [v.name for v in graph.ops[-1].tops] == ["data'150"]
    assert [op.tops[0].name for op in graph.ops[:5]] == ["data", "data'", "data''", "data'''",
                                                        "data'4"]  # fmt: skip
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    outputs = [caffec.Net(str(path), caffec.TEST, opt_level=level).forward(data=x)["data"]
               for level in (0, 2)]  # fmt: skip
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)


# --- resuming: the data readers seek


def datum(i: int) -> bytes:
    image = (np.arange(6, dtype=np.uint8) + 10 * i).reshape(1, 2, 3)  # a flip shows
    return caffe_pb2.Datum(channels=1, height=2, width=3, data=image.tobytes(),
                           label=i).SerializeToString()  # fmt: skip


def lmdb_of(tmp_path: Path, records: int) -> Path:
    lmdb = pytest.importorskip("lmdb")
    path = tmp_path / "db"
    with lmdb.open(str(path), map_size=16 << 20) as env, env.begin(write=True) as txn:
        for i in range(records):
            txn.put(b"%04d" % i, datum(i))
    return path


def image_list(tmp_path: Path, images: int) -> Path:
    for i in range(images):
        Image.fromarray(np.full((4, 5, 3), i * 20, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{i}.png {i}\n" for i in range(images)))
    return listed


def hdf5_list(tmp_path: Path, rows: tuple[int, ...]) -> Path:
    h5py = pytest.importorskip("h5py")
    start = 0
    for number, count in enumerate(rows):
        with h5py.File(tmp_path / f"{number}.h5", "w") as f:
            f["data"] = np.arange(start, start + count, dtype=np.float32).reshape(count, 1)
            f["label"] = np.arange(start, start + count, dtype=np.float32)
        start += count
    listed = tmp_path / "h5list.txt"
    listed.write_text("".join(f"{number}.h5\n" for number in range(len(rows))))
    return listed


SOURCES = {  # a data layer (its type and parameters), the shape of its data top
    "Data": ("Data", {"data_param": {"source": "db", "batch_size": 3, "backend": "LMDB"}},
             (3, 1, 2, 3)),
    "Data, random flips": ("Data", {"data_param": {"source": "db", "batch_size": 3,
                                                   "backend": "LMDB"},
                                    "transform_param": {"mirror": True}}, (3, 1, 2, 3)),
    "ImageData": ("ImageData", {"image_data_param": {"source": "list.txt", "batch_size": 2}},
                  (2, 3, 4, 5)),
    "ImageData, shuffled": ("ImageData", {"image_data_param": {
        "source": "list.txt", "batch_size": 2, "shuffle": True}}, (2, 3, 4, 5)),
    "HDF5Data, one file": ("HDF5Data", {"hdf5_data_param": {
        "source": "one.txt", "batch_size": 2, "shuffle": True}}, (2, 1)),
    "HDF5Data": ("HDF5Data", {"hdf5_data_param": {"source": "h5list.txt", "batch_size": 2}},
                 (2, 1)),
    "HDF5Data, shuffled": ("HDF5Data", {"hdf5_data_param": {
        "source": "h5list.txt", "batch_size": 2, "shuffle": True}}, (2, 1)),
}  # fmt: skip


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("skip", [0, 1, 2, 4, 9])
def test_skipping_batches_gives_what_reading_them_gives(
    tmp_path: Path, source: str, skip: int
) -> None:
    """The seek (random flips from each batch's own generator) against reading every batch."""
    kind, param, shape = SOURCES[source]
    lmdb_of(tmp_path, 7)
    image_list(tmp_path, 5)
    hdf5_list(tmp_path, (3, 1, 4))
    (tmp_path / "one.txt").write_text("0.h5\n")
    spec = FeederEntry(
        "d", kind, ["data", "label"], {"name": "d", "type": kind, "top": ["data", "label"], **param}
    )
    shapes = {"data": shape, "label": (shape[0],)}

    def feeder(**kw: int) -> object:
        return make_feeder(spec, shapes, "float32", "TRAIN", tmp_path, 7, prefetch=0, **kw)

    with feeder() as read, feeder(skip=skip) as sought:
        for _ in range(skip):
            read.next()
        for _ in range(6):  # on past the end of the data: the next pass's order too
            want, got = read.next(), sought.next()
            for top in ("data", "label"):
                np.testing.assert_array_equal(got[top], want[top])


def test_resuming_at_iteration_2_31_seeks(tmp_path: Path) -> None:
    """2^31 - 1 iterations of a Data layer: a seek to (iterations x batch) mod records."""
    lmdb_of(tmp_path, 7)
    path = net_file(tmp_path, 'layer { name: "d" type: "Data" top: "data" top: "label"\n'
                    '  data_param { source: "db" batch_size: 3 backend: LMDB } }\n')  # fmt: skip
    net = caffec.Net(str(path), caffec.TRAIN)
    count = 2**31 - 1
    assert seconds(lambda: net.skip_iterations(count)) < 2
    first = count * 3 % 7
    assert list(net.forward()["label"]) == [(first + i) % 7 for i in range(3)]
    net.close()  # its reader's thread


@pytest.mark.parametrize("suffix", ["", ".h5"])
def test_a_solverstate_before_iteration_0_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"run.solverstate{suffix}"
    write_solver_snapshot(path, -5, "run.caffemodel", [np.zeros(2, np.float32)], 0)
    with pytest.raises(UserError, match="stopped at iteration -5") as err:
        read_solver_snapshot(path)
    assert str(path) in err.value.message
