"""Every failure a clear answer (docs/reliability.md): damaged databases and HDF5 lists, what
a killed snapshot leaves, a full disk, an unknown CPU name, Ctrl-C during a compile, a
solverstate whose weights are gone, and backward on a net without a loss. Bad input ends
with a UserError (exit 2) naming the file, never a signal, a traceback or exit 1."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from nets import solver_beside
from runtime.test_data import data_spec, feed, hdf5_spec, raw_datum, write_db
from test_solver import RANDOM_NET

import caffec
from caffec.cli import main
from caffec.errors import UserError
from caffec.formats.databases import open_db

lmdb = pytest.importorskip("lmdb", reason="lmdb is not installed")

SOLVING = 'base_lr: 0.01\nlr_policy: "fixed"\n'

NET = """name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{source}" batch_size: 4 backend: {backend} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def records(n: int = 60) -> list[tuple[bytes, bytes]]:
    """Datums of 1x32x32 images: a few to a page, so that 60 of them fill many pages."""
    rng = np.random.default_rng(0)
    return [(b"%08d" % i, raw_datum(rng.integers(0, 256, (1, 32, 32)), i % 2)) for i in range(n)]


def tiny_net(folder: Path, db: Path, backend: str = "LMDB") -> tuple[Path, Path]:
    """A net reading ``db``, and a solver training it: (net, solver)."""
    net = folder / "net.prototxt"
    net.write_text(NET.format(source=db, backend=backend))
    solver = folder / "solver.prototxt"
    solver.write_text(f'net: "{net}"\n{SOLVING}max_iter: 30\nsnapshot_after_train: false\n')
    return net, solver


def random_solver(folder: Path, max_iter: int) -> Path:
    """A solver training test_solver's RANDOM_NET (no data files), snapshots named run_*."""
    return solver_beside(folder, RANDOM_NET, f'{SOLVING}max_iter: {max_iter}\n'
                                             f'snapshot_prefix: "{folder / "run"}"\n')  # fmt: skip


def commands(net: Path, solver: Path) -> dict[str, list[str]]:
    """`caffec test` and `caffec train` reading the net's database well past its first page."""
    return {"test": ["test", "-model", str(net), "-iterations", "30"],
            "train": ["train", "-solver", str(solver)]}  # fmt: skip


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().err


def in_subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``caffec ARGV`` in its own process, so that a crash is a signal's exit status."""
    return subprocess.run([sys.executable, "-m", "caffec", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def deploy_net(folder: Path) -> Path:
    """A net without data layers or a loss, quick to compile."""
    net = folder / "deploy.prototxt"
    net.write_text(
        'name: "tiny"\ninput: "data" input_shape { dim: 2 dim: 3 }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
        '  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }\n'
        'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\n'
    )
    return net


def page_size(db: Path) -> int:
    """The page size of an LMDB database (the OS's when it was written)."""
    with lmdb.open(str(db), readonly=True, lock=False) as env:
        return env.stat()["psize"]


def truncated_lmdb(folder: Path) -> Path:
    """An LMDB database cut after its fifth page (its root and most leaves lost), as an
    interrupted copy leaves one."""
    db = write_db(folder / "db", records())
    os.truncate(db / "data.mdb", 5 * page_size(db))
    return db


def damage(db: Path, page: int) -> None:
    """Overwrite the header of one page of an LMDB database."""
    psize = page_size(db)
    with open(db / "data.mdb", "r+b") as f:
        f.seek(page * psize)
        f.write(b"\xab" * 64)


# --------------------------------------------------------------------------- damaged databases


@pytest.mark.parametrize("command", ["test", "train"])
def test_a_truncated_lmdb_exits_2_instead_of_sigbus(tmp_path: Path, command: str) -> None:
    db = truncated_lmdb(tmp_path)
    data = db / "data.mdb"
    net, solver = tiny_net(tmp_path, db)
    result = in_subprocess(commands(net, solver)[command], tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])  # not -SIGBUS
    assert f"the LMDB database {db} is damaged: {data} is" in result.stderr
    assert "header says" in result.stderr and "copy or convert" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_data_reader_refuses_a_truncated_lmdb(tmp_path: Path) -> None:
    """Read directly, not through the CLI; in a subprocess too, as a miss is a SIGBUS."""
    db = truncated_lmdb(tmp_path)
    code = (
        "from caffec.formats.databases import open_db\n"
        f"cursor = open_db({str(db)!r}, 'LMDB')\n"
        "for _ in range(200): cursor.next()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1, result.returncode  # the UserError's traceback, no signal
    assert "UserError" in result.stderr and "is damaged" in result.stderr


def test_a_whole_lmdb_shorter_than_its_last_page_is_read(tmp_path: Path) -> None:
    """LMDB leaves pages a transaction used and freed again unwritten at the end of the
    file: such a file is whole, and the length check must not refuse it."""
    path = tmp_path / "db"
    keys: list[bytes] = []
    with lmdb.open(str(path), map_size=1 << 30) as env:
        for txn_number in range(5):  # a workload that leaves free pages at the end
            with env.begin(write=True) as txn:
                for i in range(200):
                    keys.append(b"%08d" % (((txn_number * 200 + i) * 7919) % 100003))
                    txn.put(keys[-1], b"v" * 1000)
                for _ in range(190):
                    txn.delete(keys.pop(0))
        last_page = env.info()["last_pgno"]
    if (path / "data.mdb").stat().st_size >= (last_page + 1) * page_size(path):
        pytest.skip("this lmdb wrote every page of the workload")
    cursor = open_db(path, "LMDB")
    try:
        assert sorted(key for key, _ in cursor.once()) == sorted(keys)
    finally:
        cursor.close()


def test_a_damaged_lmdb_page_names_the_database(capsys, tmp_path: Path) -> None:
    """A leaf in the middle, which lmdb would meet only while reading: the check of the
    tree before lmdb maps the file finds it at the start (tests/fuzz/test_findings.py has a
    case for each kind of damage)."""
    db = write_db(tmp_path / "db", records())
    damage(db, 5)
    damaged = f"the LMDB database {db} is damaged: {db / 'data.mdb'} page 5 (child "
    net, solver = tiny_net(tmp_path, db)
    for argv in commands(net, solver).values():
        status, err = cli(capsys, *argv)
        assert status == 2, err
        assert damaged in err and "rebuild the database" in err and "Traceback" not in err
    with pytest.raises(UserError, match="is damaged: .* page 5 "):
        feed(data_spec(db), (4, 1, 32, 32), n=30)


def test_a_damaged_first_lmdb_page_names_the_database_at_compile_time(capsys, tmp_path) -> None:
    db = write_db(tmp_path / "db", records(3))  # one leaf page, read by shape inference
    damage(db, 2)
    net, _ = tiny_net(tmp_path, db)
    status, err = cli(capsys, "test", "-model", str(net), "-iterations", "1")
    assert status == 2 and f"the LMDB database {db} is damaged: " in err, err
    assert "page 2 (the root, at depth 1 of its tree)" in err


def test_a_damaged_leveldb_names_the_database(capsys, tmp_path: Path) -> None:
    plyvel = pytest.importorskip("plyvel", reason="plyvel is not installed (LevelDB)")
    db = write_db(tmp_path / "db", records(), "LEVELDB")
    with plyvel.DB(str(db)) as handle:
        handle.compact_range()  # every record in a table file, none in the log
    for table in db.glob("*.ldb"):
        with open(table, "r+b") as f:
            f.seek(1000)
            f.write(b"\xab" * 5000)
    net, _ = tiny_net(tmp_path, db, "LEVELDB")
    status, err = cli(capsys, "test", "-model", str(net), "-iterations", "30")
    assert status == 2 and f"cannot read the LevelDB database {db}: Corruption" in err, err
    with pytest.raises(UserError, match="cannot read the LevelDB database .*: Corruption"):
        feed(data_spec(db, "LEVELDB"), (4, 1, 32, 32), n=30)


# --------------------------------------------------------------------------- HDF5 lists


def test_an_hdf5_list_naming_a_file_that_is_not_hdf5(capsys, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed")
    with h5py.File(tmp_path / "good.h5", "w") as f:
        f["data"] = np.zeros((4, 3), np.float32)
        f["label"] = np.zeros(4, np.float32)
    (tmp_path / "notes.h5").write_text("not HDF5\n")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'notes.h5'}\n")
    net = tmp_path / "net.prototxt"
    net.write_text(
        'layer { name: "d" type: "HDF5Data" top: "data" top: "label"\n'
        f'  hdf5_data_param {{ source: "{listing}" batch_size: 4 }} }}\n'
    )
    # the first file: read by shape inference
    status, err = cli(capsys, "test", "-model", str(net), "-iterations", "1")
    assert status == 2, err
    assert f"line 1 of {listing} names {tmp_path / 'notes.h5'}, which h5py cannot read" in err
    # a later one: read by the data layer while the net runs
    listing.write_text(f"{tmp_path / 'good.h5'}\n\n{tmp_path / 'notes.h5'}\n")
    with pytest.raises(UserError, match=r"line 3 of .*list.txt names .*notes.h5, which h5py"):
        feed(hdf5_spec(listing, tops=["data", "label"]), (4, 3), n=2)


# --------------------------------------------------------------------------- leftovers and blame


def test_temporaries_of_a_killed_snapshot_are_swept_on_the_next_start(tmp_path: Path) -> None:
    def temporary_of(name: str, killed: bool) -> subprocess.Popen[str]:
        """A process writing ``name`` atomically: killed (-9) halfway, or still writing."""
        end = "os.kill(os.getpid(), signal.SIGKILL)" if killed else "input()"
        code = (
            "import os, signal\nfrom caffec.formats.atomic import replacing\n"
            f"with replacing({name!r}) as tmp:\n"
            "    open(tmp, 'wb').write(b'half')\n    print(tmp, flush=True)\n"
            f"    {end}\n"
        )
        return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    killed = temporary_of("run_iter_10.caffemodel", killed=True)
    assert killed.stdout is not None
    left = tmp_path / killed.stdout.readline().strip()
    assert killed.wait(timeout=60) == -signal.SIGKILL and left.exists()
    other = tmp_path / f".other_iter_10.caffemodel.{killed.pid}.0123abcd.tmp"
    other.write_bytes(b"another prefix's")
    writing = temporary_of("run_iter_20.solverstate", killed=False)
    assert writing.stdout is not None
    live = tmp_path / writing.stdout.readline().strip()
    try:
        lines: list[str] = []
        caffec.get_solver(random_solver(tmp_path, 1), log=lines.append)
        assert not left.exists() and f"Removed {left}" in "\n".join(lines)
        assert live.exists() and other.exists()  # a live writer's, another prefix's
    finally:
        writing.communicate("\n", timeout=60)


def no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_an_artifact(capsys, monkeypatch, tmp_path: Path) -> None:
    from caffec.codegen import artifact_writer

    monkeypatch.setattr(artifact_writer.shutil, "copyfile", no_space)
    out = tmp_path / "tiny.caffec"
    status, err = cli(capsys, "compile", str(deploy_net(tmp_path)), "-o", str(out))
    assert status == 2 and f"{out}: cannot write: no space left on device" in err, err
    assert list(tmp_path.glob(".tiny.caffec*")) == [] and not out.exists()


def test_a_full_disk_while_writing_the_build_cache(capsys, monkeypatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAFFEC_CACHE_DIR", str(cache))
    write_text = Path.write_text

    def full_cache(self: Path, *args: object, **kwargs: object) -> int:
        if cache in self.parents:
            no_space()
        return write_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_cache)
    status, err = cli(capsys, "compile", str(deploy_net(tmp_path)), "-o", str(tmp_path / "a"))
    assert status == 2 and f"{cache}" in err and "cannot write: no space left on device" in err
    assert "CAFFEC_CACHE_DIR" in err


def test_a_compiler_that_finds_the_disk_full(capsys, monkeypatch, tmp_path: Path) -> None:
    """The linker's "No space left on device" is no caffec bug: exit 2, quoting it."""
    fake = tmp_path / "cc"
    fake.write_text(
        '#!/bin/sh\ncase "$*" in *kernels.so*) '
        'echo "ld: final link failed: No space left on device" >&2; exit 1;; esac\n'
        'exec cc "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("CAFFEC_CACHE_DIR", str(tmp_path / "cache"))
    status, err = cli(capsys, "compile", str(deploy_net(tmp_path)), "-o", str(tmp_path / "a"))
    assert status == 2, err
    assert "cannot build: no space left on device" in err and "final link failed" in err
    assert "caffec bug" not in err


def test_a_full_disk_while_writing_a_snapshot(monkeypatch, tmp_path: Path) -> None:
    solver = caffec.get_solver(random_solver(tmp_path, 1), log=lambda line: None)
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError, match="run_iter_0.caffemodel: cannot write: no space left"):
        solver.snapshot()
    assert list(tmp_path.glob(".run_iter_0*")) == []  # the partial file is gone too


def test_an_unknown_target_cpu_lists_the_valid_names(capsys, tmp_path: Path) -> None:
    status, err = cli(capsys, "compile", str(deploy_net(tmp_path)), "--target-cpu", "nosuchcpu",
                      "-o", str(tmp_path / "a"))  # fmt: skip
    assert status == 2 and "does not build for --target-cpu 'nosuchcpu'" in err, err
    assert "valid names: " in err and "native" in err and "caffec bug" not in err


def test_ctrl_c_during_a_compile_says_so_and_writes_nothing(capsys, monkeypatch, tmp_path) -> None:
    from caffec.formats.manifest import Manifest

    out = tmp_path / "tiny.caffec"
    assert main(["compile", str(deploy_net(tmp_path)), "-o", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())

    def interrupted(self: Manifest) -> str:
        raise KeyboardInterrupt  # after kernels.c and the library were written beside

    monkeypatch.setattr(Manifest, "to_json", interrupted)
    capsys.readouterr()
    status, err = cli(capsys, "compile", str(deploy_net(tmp_path)), "-o", str(out))
    assert status == 130
    assert "interrupted while compiling 'tiny'; nothing was written" in err
    assert sorted(p.name for p in out.iterdir()) == before  # the old artifact, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_solverstate_whose_learned_net_is_gone_or_wrong(capsys, tmp_path: Path) -> None:
    solver = random_solver(tmp_path, 2)
    assert main(["train", "-solver", str(solver)]) == 0
    state, weights = tmp_path / "run_iter_2.solverstate", tmp_path / "run_iter_2.caffemodel"
    other = tmp_path / "other.prototxt"  # the same layers, ip2 with 4 outputs
    other.write_text(RANDOM_NET.replace("num_output: 3", "num_output: 4"))
    caffec.Net(str(other), caffec.TEST).save(str(tmp_path / "other.caffemodel"))
    shutil.copyfile(tmp_path / "other.caffemodel", weights)
    capsys.readouterr()
    status, err = cli(capsys, "train", "-solver", str(solver), "-snapshot", str(state))
    assert status == 2 and f"{state} names its weights as learned_net '{weights}': " in err, err
    weights.unlink()
    status, err = cli(capsys, "train", "-solver", str(solver), "-snapshot", str(state))
    assert status == 2 and f"{state} names its weights as learned_net '{weights}': " in err, err
    assert "working directory" in err


def test_backward_true_on_a_net_without_a_loss_runs_as_documented(tmp_path: Path) -> None:
    """docs/python.md: ``backward=True`` builds the backward pass, and which layers run
    backward follows Caffe's rules: without a loss none does (a warning, zero diffs) unless
    the net sets force_backward."""
    deploy = deploy_net(tmp_path)
    net = caffec.Net(str(deploy), caffec.TEST, backward=True)
    net.forward(data=np.ones((2, 3)))
    with pytest.warns(UserWarning, match="no loss and no force_backward"):
        diffs = net.backward(prob=np.ones((2, 4)))
    assert not diffs["data"].any()
    forced = tmp_path / "forced.prototxt"
    forced.write_text("force_backward: true\n" + deploy.read_text())
    net = caffec.Net(str(forced), caffec.TEST, backward=True)
    net.forward(data=np.ones((2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diffs = net.backward(prob=np.eye(2, 4))
    assert diffs["data"].any()


def test_a_build_cache_entry_written_meanwhile_by_another_process(
    monkeypatch, tmp_path: Path
) -> None:
    """Two MPI ranks compile one net at once: the second to finish finds the artifact in
    place (its rename fails, the folder not empty) and uses the first's."""
    import errno

    from caffec import driver
    from caffec.compiler.pipeline import Options

    monkeypatch.setenv("CAFFEC_CACHE_DIR", str(tmp_path / "cache"))
    write = driver.write_artifact

    def written_by_another_rank_first(kgraph, out):  # the other rank's rename came first
        write(kgraph, out)
        raise OSError(errno.ENOTEMPTY, "Directory not empty", str(out))

    monkeypatch.setattr(driver, "write_artifact", written_by_another_rank_first)
    source = driver.NetSource.from_file(deploy_net(tmp_path))
    out = driver.compile_cached(source, Options())
    assert (out / "manifest.json").exists()
