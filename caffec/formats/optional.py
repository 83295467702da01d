"""The optional libraries that read some formats (the ``data`` extra), imported on first use."""

from __future__ import annotations

import importlib
from types import ModuleType

from caffec.errors import UserError


def optional_module(module: str, package: str) -> ModuleType:
    """An optional library (lmdb, plyvel, h5py, Pillow), or a UserError saying what to
    install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(
            f"reading this data source needs the Python package '{package}'",
            hint=f"pip install {package} (or pip install 'caffec[data]')",
        ) from err
