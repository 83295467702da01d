"""The fuzz suite (docs/reliability.md): prototxts, caffemodels, solverstates, binaryprotos,
Datum records and LMDB databases damaged by hypothesis (tests/fuzz/mutations.py), each
read the way caffec reads it. Every case must end with a result or a UserError (exit 2)
whose message names the file: never another exception, exit status 1, a signal or a hang.

Seeded: the same few hundred cases on every run; ``pytest tests/fuzz --fuzz-long`` runs
tens of thousands. The exact inputs it has found are plain tests in test_findings.py."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from formats.test_upgrade import V0_NET, V1_VGG
from hypothesis import given, settings
from hypothesis import strategies as st
from mutations import BYTE_MUTATIONS, TEXT_MUTATIONS, VALUE_MUTATIONS, Mutation, mutated
from runtime.test_data import data_spec, encoded, feed, raw_datum, write_db
from test_reliability_files import page_size, records, tiny_net

import caffec
from caffec.cli import main
from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import Blob, file_kinds, read_blobproto, read_blobproto_vector
from caffec.formats.binaryproto_writer import write_blobproto, write_blobproto_vector
from caffec.formats.datum import datum_array, parse_datum
from caffec.formats.snapshots import (
    read_solver_snapshot,
    weights_by_name,
    write_solver_snapshot,
    write_weights,
)
from caffec.frontend.loader import read_net, read_solver, select_phase

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
CASE_SECONDS = 20  # one read or dump: far longer than any takes, far shorter than a hang
COMPILE_SECONDS = 300  # a compile, or a `caffec test` that compiles, with a C compiler

Fuzz = Callable[..., settings]  # tests/conftest.py's ``fuzz`` fixture: fuzz(ci_cases, long_cases)


# --------------------------------------------------------------------------- running a case


class Hang(BaseException):
    """A case ran past its time; a BaseException, so that no ``except Exception`` in caffec
    turns it into an answer."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail a case that runs past ``seconds`` instead of waiting for ever."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def answers(named: Path | str, action: Callable[[], object]) -> UserError | None:
    """Run one case: it must return, or refuse with a UserError whose message names
    ``named``; the error (None when it returned)."""
    with time_limit(CASE_SECONDS):
        try:
            action()
        except UserError as err:
            assert str(named) in str(err), f"the error does not name {named}:\n{err}"
            return err
    return None


def exits_well(status: int, stderr: str, named: Path | str) -> None:
    """A command's end: status 0, or 2 with a message naming ``named``."""
    assert status in (0, 2), f"exit status {status}:\n{stderr[-4000:]}"
    assert status == 0 or str(named) in stderr, f"the message does not name {named}:\n{stderr}"


def in_child(argv: list[str], seconds: int) -> tuple[int, str]:
    """``caffec ARGV`` in a forked copy of this process, so that a crash (a SIGBUS or SIGSEGV
    in lmdb's memory map) or a hang ends the copy and not the test run: its exit status
    (``-N`` for signal N, as subprocess says it) and what it wrote to stderr."""
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the copy: leaves with os._exit, never back into pytest
            status = 1
            try:
                faulthandler.disable()  # a crash shows as the status, not as pytest's output
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(seconds)
                sys.stdout = open(os.devnull, "w")
                sys.stderr = open(err.fileno(), "w", closefd=False)
                status = main(argv)
            finally:
                sys.stderr.flush()
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        err.seek(0)
        return os.waitstatus_to_exitcode(wait_status), err.read().decode(errors="replace")


@contextlib.contextmanager
def case_folder(root: Path) -> Iterator[Path]:
    """An empty folder of its own for one case, removed after it."""
    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Compiles of damaged nets fill a build cache of their own, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAFFEC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


# --------------------------------------------------------------------------- prototxt text


def _text_seeds() -> list[tuple[str, bytes]]:
    """(file name, text) of every net and solver of examples/ and of the corpus (when it is
    beside the checkout), and the V1 and V0 nets of the upgrade tests."""
    files = sorted(REPO.glob("examples/**/*.prototxt"))
    files += sorted(CORPUS.glob("**/*.prototxt")) if CORPUS.is_dir() else []
    inline = [("v1_net.prototxt", V1_VGG), ("v0_net.prototxt", V0_NET)]
    return [(f.name, f.read_bytes()) for f in files] + [(n, t.encode()) for n, t in inline]


TEXTS = _text_seeds()
NETS = [(name, text) for name, text in TEXTS if "solver" not in name]
# nets without data layers that compile in a second or two (one of each text)
QUICK = ("lenet.prototxt", "cifar10_quick.prototxt", "conv.prototxt", "mnist_siamese.prototxt")
SMALL_NETS = list({text: (name, text) for name, text in NETS if name in QUICK}.values())


def damaged_text(
    seeds: list[tuple[str, bytes]], mutations: list[Mutation] = TEXT_MUTATIONS, most: int = 4
) -> st.SearchStrategy:
    """(file name, damaged text) from ``seeds``."""
    texts = [text for _, text in seeds]
    return mutated(texts, mutations, most).map(lambda case: (seeds[case[0]][0], case[1]))


def write_case(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def read_prototxt(path: Path) -> None:
    """What every command does first: read, upgrade, and select each phase's layers."""
    if "solver" in path.name:
        read_solver(path)
        return
    net, spans = read_net(path)
    for phase in ("TRAIN", "TEST"):
        select_phase(net, spans, phase)


def test_damaged_prototxts_are_read_or_refused_at_a_position(fuzz: Fuzz, tmp_path: Path) -> None:
    @fuzz(250)
    @given(damaged_text(TEXTS))
    def check(case: tuple[str, bytes]) -> None:
        with case_folder(tmp_path) as folder:
            path = write_case(folder, *case)
            err = answers(path, lambda: read_prototxt(path))
            if err is not None:
                assert err.span is not None, f"no file:line:col in:\n{err}"
                assert err.span.file == str(path) and str(err.span) in str(err), str(err)

    check()


DUMPS = st.sampled_from([[], ["--phase", "TRAIN"], ["--after", "plan_memory"],
                         ["--after", "plan_memory", "--phase", "TRAIN", "-O", "0"]])  # fmt: skip


def test_damaged_nets_dump_or_exit_2(
    fuzz: Fuzz, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past reading (values and names changed, the syntax kept): building the layer graph,
    shapes, parameters, and the kernel passes."""

    @fuzz(40, 2_000)
    @given(damaged_text(NETS, VALUE_MUTATIONS, most=2), DUMPS)
    def check(case: tuple[str, bytes], flags: list[str]) -> None:
        with case_folder(tmp_path) as folder:
            path = write_case(folder, *case)
            with time_limit(CASE_SECONDS):
                status = main(["dump", str(path), *flags])
            exits_well(status, capsys.readouterr().err, path)

    check()


def test_damaged_nets_compile_or_exit_2(
    fuzz: Fuzz, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few through the C compiler: one value or name changed, so that many still compile."""

    @fuzz(4, 100)
    @given(damaged_text(SMALL_NETS, VALUE_MUTATIONS, most=1))
    def check(case: tuple[str, bytes]) -> None:
        with case_folder(tmp_path) as folder:
            path = write_case(folder, *case)
            with time_limit(COMPILE_SECONDS):
                status = main(["compile", str(path), "-o", str(folder / "artifact")])
            exits_well(status, capsys.readouterr().err, path)

    check()


# --------------------------------------------------------------------------- binary files

NET = """name: "fuzz"
input: "data" input_shape { dim: 1 dim: 1 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 } }
"""
V1_TYPES = {"conv": caffe_pb2.V1LayerParameter.CONVOLUTION,
            "ip": caffe_pb2.V1LayerParameter.INNER_PRODUCT}  # fmt: skip
V0_TYPES = {"conv": "conv", "ip": "innerproduct"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, build_cache: None) -> caffec.Net:
    """The net damaged weights are loaded into, compiled once."""
    path = tmp_path_factory.mktemp("net") / "net.prototxt"
    path.write_text(NET)
    return caffec.Net(str(path), caffec.TEST)


def legacy(array: np.ndarray) -> Blob:
    """``array`` with Caffe's old num/channels/height/width shape (1s in front)."""
    return Blob(data=array.reshape((1,) * (4 - array.ndim) + array.shape), diff=None,
                legacy_shape=True)  # fmt: skip


def old_caffemodel(weights: dict[str, list[np.ndarray]], v0: bool) -> bytes:
    """A V1 (``layers``) or V0 (``layers { layer }``) caffemodel, as old Caffe wrote them."""
    model = caffe_pb2.NetParameter(name="fuzz", input=["data"], input_dim=[1, 1, 6, 6])
    for name, arrays in weights.items():
        entry = model.layers.add()
        if v0:
            entry.layer.name, entry.layer.type = name, V0_TYPES[name]
        else:
            entry.name, entry.type = name, V1_TYPES[name]
        for array in arrays:
            blob = (entry.layer if v0 else entry).blobs.add(data=legacy(array).data.reshape(-1))
            blob.num, blob.channels, blob.height, blob.width = legacy(array).shape
    return model.SerializeToString()


@pytest.fixture(scope="module")
def binary_seeds(net: caffec.Net, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Valid files of every binary kind: caffemodels for ``net`` (current with N-D and with
    legacy shapes, V1, V0), a solverstate, binaryprotos (float32, float64 with a diff, an
    empty legacy blob) and a BlobProtoVector."""
    folder = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    weights = {name: [rng.standard_normal(p.data.shape, dtype=np.float32) for p in params]
               for name, params in net.params.items()}  # fmt: skip
    writes: list[Callable[[Path], None]] = [
        lambda p: write_weights(p, "fuzz", [(n, "", a) for n, a in weights.items()]),
        lambda p: write_weights(p, "fuzz", [(n, "", [legacy(a) for a in b])
                                            for n, b in weights.items()]),  # fmt: skip
        lambda p: p.write_bytes(old_caffemodel(weights, v0=False)),
        lambda p: p.write_bytes(old_caffemodel(weights, v0=True)),
        lambda p: write_solver_snapshot(p, 100, "fuzz_iter_100.caffemodel",
                                        [a for b in weights.values() for a in b], 2),  # fmt: skip
        lambda p: write_blobproto(p, weights["conv"][0]),
        lambda p: write_blobproto(p, Blob(data=rng.standard_normal((2, 3)),
                                          diff=rng.standard_normal((2, 3)), legacy_shape=False)),
        lambda p: write_blobproto(p, Blob(np.zeros((0, 3, 4, 5), np.float32), None, True)),
        lambda p: write_blobproto_vector(p, weights["ip"]),
    ]  # fmt: skip
    seeds = []
    for i, write in enumerate(writes):
        write(folder / f"seed{i}")
        seeds.append((folder / f"seed{i}").read_bytes())
    return seeds


READERS = [file_kinds, weights_by_name, read_solver_snapshot, read_blobproto,
           read_blobproto_vector]  # fmt: skip


def test_damaged_binary_files_are_read_or_refused(
    fuzz: Fuzz, tmp_path: Path, binary_seeds: list[bytes]
) -> None:
    """Every reader on every damaged file: the wrong kind of file is a case too."""

    @fuzz(150)
    @given(st.one_of(mutated(binary_seeds, BYTE_MUTATIONS).map(lambda case: case[1]),
                     st.binary(max_size=64)))  # fmt: skip
    def check(data: bytes) -> None:
        with case_folder(tmp_path) as folder:
            path = write_case(folder, "damaged.caffemodel", data)
            for read in READERS:
                answers(path, lambda: read(path))  # noqa: B023 - called at once

    check()


def test_damaged_weights_load_or_are_refused(
    fuzz: Fuzz, tmp_path: Path, net: caffec.Net, binary_seeds: list[bytes]
) -> None:
    """Into a net, with Caffe's rules for names and shapes."""
    caffemodels = binary_seeds[:4]

    @fuzz(40)
    @given(mutated(caffemodels, BYTE_MUTATIONS))
    def check(case: tuple[int, bytes]) -> None:
        with case_folder(tmp_path) as folder:
            path = write_case(folder, "damaged.caffemodel", case[1])
            answers(path, lambda: net.copy_from(path))

    check()


# --------------------------------------------------------------------------- Datum records


def _images() -> list[bytes]:
    """Small images in the formats Caffe's tools encode: PNG (color, gray), JPEG, BMP, GIF."""
    color = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return [encoded(color), encoded(color[:, :, 0]), encoded(color, "JPEG"),
            encoded(color, "BMP"), encoded(color, "GIF")]  # fmt: skip


def encoded_datum(image: bytes) -> bytes:
    return caffe_pb2.Datum(data=image, encoded=True, label=2).SerializeToString()


IMAGES = _images()
RAW = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
FLOATS = caffe_pb2.Datum(channels=2, height=3, width=3, label=1, float_data=np.linspace(-1, 1, 18))
DATUMS = [raw_datum(RAW, 3), FLOATS.SerializeToString(), *map(encoded_datum, IMAGES)]
SIZES = st.one_of(st.integers(-2, 6), st.integers(-(2**31), 2**31 - 1))
RANDOM_DATUMS = st.builds(
    caffe_pb2.Datum, channels=SIZES, height=SIZES, width=SIZES, data=st.binary(max_size=80),
    float_data=st.lists(st.floats(width=32), max_size=20), encoded=st.booleans(),
    label=st.integers(-(2**31), 2**31 - 1),
).map(lambda datum: datum.SerializeToString())  # fmt: skip
# whole records damaged, images damaged inside a whole record, records made up, any bytes
DAMAGED_DATUMS = st.one_of(
    mutated(DATUMS, BYTE_MUTATIONS).map(lambda case: case[1]),
    mutated(IMAGES, BYTE_MUTATIONS).map(lambda case: encoded_datum(case[1])),
    RANDOM_DATUMS, st.binary(max_size=64),
)  # fmt: skip


def test_damaged_datums_parse_or_are_refused(fuzz: Fuzz) -> None:
    where = "record '00000007' of /data/train_lmdb"

    @fuzz(150)
    @given(DAMAGED_DATUMS, st.sampled_from([None, "color", "gray"]))
    def check(value: bytes, mode: str | None) -> None:
        answers(where, lambda: datum_array(parse_datum(value, where), where, mode))

    check()


TRANSFORMS = st.sampled_from([None, {"force_color": True}, {"force_gray": True},
                              {"crop_size": 3, "mirror": True}, {"mean_value": [1, 2, 3]}])  # fmt: skip


def test_damaged_datums_reach_a_data_layer_or_are_refused(fuzz: Fuzz, tmp_path: Path) -> None:
    """Through a Data layer's reader: a damaged record first, a valid one after it."""

    @fuzz(40, 2_000)
    @given(DAMAGED_DATUMS, TRANSFORMS)
    def check(value: bytes, transform: dict | None) -> None:
        with case_folder(tmp_path) as folder:
            db = write_db(folder / "db", [(b"0", value), (b"1", DATUMS[0])])
            answers(
                db, lambda: feed(data_spec(db, transform=transform), (2, *RAW.shape), prefetch=0)
            )

    check()


# --------------------------------------------------------------------------- LMDB files


@pytest.fixture(scope="module")
def lmdb_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database of 60 records on some thirty pages: two meta pages, a branch, leaves."""
    return write_db(tmp_path_factory.mktemp("lmdb") / "db", records())


def lmdb_mutations(db: Path) -> list[Mutation]:
    """The byte mutations, and a page's header overwritten (an interrupted write, a bad
    sector)."""
    psize = page_size(db)

    def damage_page(draw: st.DrawFn, data: bytes) -> bytes:
        start = draw(st.integers(0, max(len(data) // psize - 1, 0))) * psize
        junk = draw(st.binary(min_size=1, max_size=64))
        return data[:start] + junk + data[start + len(junk) :]

    return [*BYTE_MUTATIONS, damage_page]


def damaged_lmdbs(seed: Path, most: int) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(damaged bytes for the data.mdb of a copy of ``seed``, whether it keeps its lock
    file)."""
    pristine = (seed / "data.mdb").read_bytes()
    damaged = mutated([pristine], lmdb_mutations(seed), most).map(lambda case: case[1])
    return st.tuples(damaged, st.booleans())


@contextlib.contextmanager
def damaged_lmdb(seed: Path, root: Path, case: tuple[bytes, bool]) -> Iterator[Path]:
    """A copy of the database ``seed``, in a case folder, damaged as ``case`` says."""
    data, lock = case
    with case_folder(root) as folder:
        db = folder / "db"
        shutil.copytree(seed, db)
        (db / "data.mdb").write_bytes(data)
        if not lock:
            (db / "lock.mdb").unlink()
        yield db


def test_damaged_lmdbs_are_read_or_refused(fuzz: Fuzz, tmp_path: Path, lmdb_seed: Path) -> None:
    """``caffec compute-mean`` reads every record; a crash ends only its forked copy."""

    @fuzz(60, 5_000)
    @given(damaged_lmdbs(lmdb_seed, most=3))
    def check(case: tuple[bytes, bool]) -> None:
        with damaged_lmdb(lmdb_seed, tmp_path, case) as db:
            exits_well(*in_child(["compute-mean", str(db)], CASE_SECONDS), db)

    check()


def test_damaged_lmdbs_feed_caffec_test_or_exit_2(
    fuzz: Fuzz, tmp_path: Path, lmdb_seed: Path
) -> None:
    """A whole ``caffec test`` over every record: shapes from the first, then batches."""

    @fuzz(4, 200)
    @given(damaged_lmdbs(lmdb_seed, most=2))
    def check(case: tuple[bytes, bool]) -> None:
        with damaged_lmdb(lmdb_seed, tmp_path, case) as db:
            model, _ = tiny_net(db.parent, db)
            argv = ["test", "-model", str(model), "-iterations", "16"]
            exits_well(*in_child(argv, COMPILE_SECONDS), db)

    check()
