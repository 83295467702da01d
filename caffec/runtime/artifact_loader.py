"""Loading an artifact directory: its manifest (:mod:`caffec.formats.manifest`) and its
compiled library.

Only numpy and the standard library are used here, so an artifact runs where
the compiler (lark, networkx, jinja2) is not installed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caffec.errors import UserError
from caffec.formats.manifest import Manifest, TargetEntry
from caffec.runtime.threads import configure_openmp

# The libraries this process loaded: path -> (device, inode, modification time) of the file
_loaded: dict[str, tuple[int, int, int]] = {}


def _load_library(path: Path) -> ctypes.CDLL:
    """The library at ``path``. dlopen hands back the library it already loaded from a path
    even when the file there was replaced since (an artifact compiled again into the same
    folder): then a private copy of the new file is loaded instead."""
    stat = path.stat()
    identity = (stat.st_dev, stat.st_ino, stat.st_mtime_ns)
    if _loaded.setdefault(str(path), identity) == identity:
        return ctypes.CDLL(str(path))
    folder = Path(tempfile.mkdtemp(prefix="caffec-library-"))
    copy = folder / path.name
    shutil.copyfile(path, copy)
    try:
        return ctypes.CDLL(str(copy))
    finally:  # the loaded library stays mapped; its file is not needed any more
        os.unlink(copy)
        folder.rmdir()


@dataclass
class Artifact:
    """A loaded artifact: its manifest, and for the C target the library's entry points (a
    CUDA target's fat binary is loaded onto its device by the runtime)."""

    path: Path
    manifest: Manifest
    library: ctypes.CDLL | None

    def entry(self, name: str) -> Any:
        function = getattr(self.library, f"caffec_{name}")
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        return function


def load_artifact(path: str | Path) -> Artifact:
    """Open the artifact at ``path``; a missing, foreign or incomplete directory, or one built
    for vectors this CPU lacks, is a clear UserError."""
    root = Path(path)
    manifest = Manifest.read(root / "manifest.json")
    library_path = root / manifest.library
    if not library_path.is_file():
        raise UserError(f"{root} has no {manifest.library}: the artifact is incomplete",
                        hint="compile it again")  # fmt: skip
    if manifest.target.name == "cuda":
        return Artifact(root, manifest, None)
    if manifest.target.name != "c":
        raise UserError(f"{root} is built for the {manifest.target.name} target")
    _check_vectors(root, manifest.target)
    configure_openmp()  # before the library brings libgomp in
    try:
        library = _load_library(library_path.resolve())
    except OSError as err:
        raise UserError(
            f"cannot load {library_path}: {err}",
            hint="the artifact was built for another machine; compile it again here "
            "(or build portable code with --target-cpu x86-64)",
        ) from None
    return Artifact(root, manifest, library)


# what /proc/cpuinfo's flags say of the vector widths a C compiler may use
_VECTOR_FLAGS = [("avx512f", 64), ("avx", 32), ("sse2", 16), ("asimd", 16)]


def cpu_vector_bytes() -> int | None:
    """The widest vectors this CPU runs (64: AVX-512, 32: AVX, 16: SSE2 or NEON), from
    /proc/cpuinfo; None where it does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = {word for line in text.splitlines() if line.startswith(("flags", "Features"))
             for word in line.split(":", 1)[-1].split()}  # fmt: skip
    return next((width for flag, width in _VECTOR_FLAGS if flag in flags), None)


def _check_vectors(root: Path, target: TargetEntry) -> None:
    """Refuse code built for wider vectors than this CPU has: it would die of an illegal
    instruction in its first kernel."""
    have = cpu_vector_bytes()
    if target.vector_bytes and have is not None and target.vector_bytes > have:
        raise UserError(
            f"{root} was built for {target.vector_bytes}-byte vectors (--target-cpu "
            f"{target.cpu}) and this CPU has {have}-byte ones",
            hint="compile it again on this machine, or build it portable with --target-cpu "
            "x86-64-v2 (16-byte vectors) or x86-64-v3 (32)",
        )
