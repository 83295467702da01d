"""Caffe's HDF5Output layer at run time: each forward's data and labels written to an HDF5 file.

The compiler lowers the layer to a host call (:mod:`caffec.compiler.layers.output`),
which the runtime runs through its Python-layer calls: ``setup`` when the net is made,
``forward`` after the steps before the layer. As Caffe's layer does, ``setup`` creates
the file (emptying one that exists) and each forward writes the two bottoms as the
datasets "data" and "label", each item shaped as Caffe's legacy blob axes (num,
channels, height, width), in the net's float type.

Where Caffe's layer makes the two datasets on its first forward and then fails on the
second (the datasets exist), this one appends: after k forwards of N items each the
datasets hold k * N rows, the first N of them what Caffe writes. The file is opened,
appended to and closed on each forward, so between forwards it is complete and readable
(Caffe's stays open until the net is destroyed); a process killed in the middle of a
write can leave it damaged, as Caffe's can.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.runtime.python_layers import Layer

DATASETS = ("data", "label")  # Caffe's HDF5_DATA_DATASET_NAME and HDF5_DATA_LABEL_NAME


def _h5py() -> ModuleType:
    try:
        import h5py
    except ImportError as err:
        raise UserError(
            "the HDF5Output layer writes its file with the Python package 'h5py'",
            hint="pip install h5py (or pip install 'caffec[data]')",
        ) from err
    return h5py


def legacy_rows(values: np.ndarray) -> np.ndarray:
    """A blob as Caffe's legacy (num, channels, height, width): missing axes are 1."""
    return values.reshape(values.shape + (1,) * (4 - values.ndim))


class HDF5OutputLayer(Layer):
    """The layer object the runtime makes; ``param_str`` is ``hdf5_output_param.file_name``."""

    type = "HDF5Output"

    def setup(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        self.h5py = _h5py()
        self.path = Path(self.param_str)
        self._write("create", lambda f: None, "w")

    def forward(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        batches = [legacy_rows(np.asarray(blob.data)) for blob in bottom]
        self._write("append to", lambda f: self._append(f, batches), "a")

    def backward(self, top: Sequence[Any], propagate_down: Sequence[bool],
                 bottom: Sequence[Any]) -> None:  # fmt: skip
        """Caffe's backward does nothing (the compiler emits no call)."""

    def _write(self, what: str, write: Any, mode: str) -> None:
        """Open the file in ``mode``, ``write`` it and close it; h5py's OSError becomes a
        UserError that names the file."""
        try:
            with self.h5py.File(self.path, mode) as f:
                write(f)
        except OSError as err:
            raise UserError(
                f"cannot {what} the HDF5 output file '{self.path}': {err}",
                hint="check hdf5_output_param.file_name: its folder must exist and be "
                "writable (a relative name is taken from the working directory)",
            ) from None

    def _append(self, f: Any, batches: list[np.ndarray]) -> None:
        for name, rows in zip(DATASETS, batches, strict=True):
            if name not in f:
                f.create_dataset(name, data=rows, maxshape=(None, *rows.shape[1:]), chunks=True)
                continue
            dataset = f[name]
            if dataset.shape[1:] != rows.shape[1:] or dataset.dtype != rows.dtype:
                raise UserError(
                    f"the HDF5 output file '{self.path}' holds {name} items of shape "
                    f"{shape_text(dataset.shape[1:])} ({dataset.dtype}); this forward's are "
                    f"{shape_text(rows.shape[1:])} ({rows.dtype})",
                    hint="items keep their shape in one file: write the new shape to another",
                )
            end = dataset.shape[0]
            dataset.resize(end + rows.shape[0], axis=0)
            dataset[end:] = rows
