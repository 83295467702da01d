"""Opening the HDF5 files that an HDF5Data layer's list names, one per line.

h5py says only "file signature not found" about a file that is not HDF5; what the user
needs is which line of which list named it, so every read of a listed file goes through
here and an error names the list, the line and the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caffec.errors import UserError
from caffec.formats.optional import optional_module


@contextlib.contextmanager
def open_listed(path: Path, named_on: str) -> Iterator[Any]:
    """``path`` opened with h5py for the block to read; ``named_on`` says where the list
    named it (``line 3 of train.txt``). h5py's OSError, on opening or reading, becomes a
    UserError naming the three."""
    h5py = optional_module("h5py", "h5py")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as err:
        raise UserError(
            f"{named_on} names {path}, which h5py cannot read as an HDF5 file: {err}",
            hint="an HDF5Data list names HDF5 files (.h5, written with h5py or Caffe), "
            "one path per line",
        ) from None
