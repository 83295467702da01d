"""Loading an artifact directory: its manifest and its compiled library.

Only numpy and the standard library are used here, so an artifact runs where
the compiler (lark, networkx, jinja2) is not installed.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caffec.errors import UserError

SUPPORTED_FORMAT = 2
SUPPORTED_ABI = 3

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
    """A loaded artifact: the manifest as a dict, and for the C target the library's entry
    points (a CUDA target's fat binary is loaded onto its device by the runtime)."""

    path: Path
    manifest: dict[str, Any]
    library: ctypes.CDLL | None

    def entry(self, name: str) -> Any:
        function = getattr(self.library, f"caffec_{name}")
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        return function


def load_artifact(path: str | Path) -> Artifact:
    """Open the artifact at ``path``; a missing or foreign directory is a clear UserError."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{root} is not a caffec artifact (no manifest.json)",
            hint="make one with: caffec compile NET.prototxt -o DIR",
        ) from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {manifest_path}: {err}") from None
    if manifest.get("format") != "caffec-artifact":
        raise UserError(f"{manifest_path} is not a caffec artifact manifest")
    if manifest.get("format_version") != SUPPORTED_FORMAT or manifest.get("abi") != SUPPORTED_ABI:
        raise UserError(
            f"{root} was made by another caffec version (format {manifest.get('format_version')}, "
            f"abi {manifest.get('abi')}); this one reads format {SUPPORTED_FORMAT}",
            hint="compile the net again with this caffec",
        )
    library_path = root / manifest["library"]
    if manifest.get("target") == "cuda":
        if not library_path.is_file():
            raise UserError(f"{root} has no {manifest['library']}: the artifact is incomplete",
                            hint="compile it again")  # fmt: skip
        return Artifact(root, manifest, None)
    if manifest.get("target") != "c":
        raise UserError(f"{root} is built for the {manifest.get('target')} target")
    try:
        library = _load_library(library_path.resolve())
    except OSError as err:
        raise UserError(
            f"cannot load {library_path}: {err}",
            hint="the artifact was built for another machine; compile it again here "
            "(or build portable code with --target-cpu x86-64)",
        ) from None
    return Artifact(root, manifest, library)
