"""What the examples' tests share (imported by each as ``example_tools``; not a conftest.py,
which would shadow tests/conftest.py for the tests that import from it): a sandbox checkout holding copies of the example folders
(so that the scripts run as they are, from a checkout's root, without writing into this
one), a ``caffec`` command for them, and edits of the copied prototxts that make a run short.

The shipped scripts and prototxts are never changed: a test copies them, writes small data in
the data's real format, and shrinks the copies (``max_iter``, ``test_iter``, batch sizes, crop
sizes) with :func:`set_fields`, so each script runs end to end in seconds."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# what a run of an example leaves beside its files: never copied into a sandbox
OUTPUTS = shutil.ignore_patterns(
    "*_lmdb", "*_leveldb", "*.caffemodel", "*.caffemodel.h5", "*.solverstate",
    "*.solverstate.h5", "*.log", "mean.binaryproto", "cifar-10-batches-bin",
)  # fmt: skip


@pytest.fixture(name="sandbox")
def sandbox_fixture(tmp_path: Path) -> Callable[..., Path]:
    """``sandbox("examples/cifar10", ...)``: a checkout root in ``tmp_path`` with copies of
    those folders of this one."""

    def make(*folders: str) -> Path:
        root = tmp_path / "checkout"
        root.mkdir(exist_ok=True)
        for folder in folders:
            shutil.copytree(REPO / folder, root / folder, ignore=OUTPUTS)
        return root

    return make


@pytest.fixture(name="caffec_bin", scope="session")
def caffec_bin_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``caffec`` runs this checkout's caffec with this interpreter."""
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "caffec"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m caffec "$@"\n')
    script.chmod(0o755)
    return folder


@pytest.fixture(name="run_script")
def run_script_fixture(caffec_bin: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_script(root, "examples/x/y.sh", *args, env={...})``: the script run with bash,
    ``caffec`` on the PATH; its output (stdout and stderr together) in ``.stdout``."""

    def run(
        root: Path, script: str, *args: object, env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        environ = {**os.environ, "PATH": f"{caffec_bin}{os.pathsep}{os.environ['PATH']}"}
        environ.pop("CAFFEC_DEBUG", None)
        return subprocess.run(
            ["bash", str(root / script), *map(str, args)], cwd=cwd or root,
            env={**environ, **(env or {})}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=600, check=False,
        )  # fmt: skip

    return run


def set_fields(path: Path, **fields: object) -> None:
    """Give every ``NAME: value`` line (or inline field) of the prototxt ``path`` a new
    value: ``set_fields(solver, max_iter=4, test_iter=1)``; a field the file lacks is an
    error (the test would not shrink what it means to)."""
    text = path.read_text(encoding="utf-8")
    for name, value in fields.items():
        value = f'"{value}"' if isinstance(value, str) else value
        text, count = re.subn(rf"\b{name}: *[^ \n}}]+", f"{name}: {value}", text)
        assert count, f"{path} has no field {name}"
    path.write_text(text, encoding="utf-8")


def check_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Traceback" not in result.stdout, result.stdout[-4000:]
    return result.stdout


def write_idx(path: Path, array: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(head + array.astype(np.uint8).tobytes()))


def write_mnist(folder: Path, train: int = 40, test: int = 20) -> dict[str, np.ndarray]:
    """Gzipped IDX files as Fashion-MNIST's package ships them; the arrays by file name."""
    rng = np.random.default_rng(3)
    folder.mkdir()
    arrays = {}
    for name, count in (("train", train), ("t10k", test)):
        arrays[f"{name}-images-idx3-ubyte"] = rng.integers(0, 256, (count, 28, 28))
        arrays[f"{name}-labels-idx1-ubyte"] = np.arange(count) % 3
    for name, array in arrays.items():
        write_idx(folder / f"{name}.gz", array)
    return arrays
