"""Caffe's HDF5 snapshots (``snapshot_format: HDF5``): weights and solver state as .h5 files.

Weights: a group ``data`` with one group per layer and one dataset per blob,
named 0, 1, ...; solver state: ``iter``, ``learned_net``, ``current_step`` and
a group ``history`` of datasets 0, 1, ... Needs h5py (the ``data`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from caffec.errors import UserError
from caffec.formats.atomic import replacing
from caffec.formats.binaryproto import Blob
from caffec.formats.optional import optional_module


def _write_atomically(path: Path, fill: object) -> None:
    h5py = optional_module("h5py", "h5py")
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        fill(f)  # type: ignore[operator]


def write_hdf5_weights(
    path: str | Path, layers: Sequence[tuple[str, Sequence[np.ndarray]]]
) -> None:
    def fill(f: object) -> None:
        data = f.create_group("data")  # type: ignore[attr-defined]
        for name, blobs in layers:
            group = data.create_group(name)
            for i, blob in enumerate(blobs):
                group.create_dataset(str(i), data=blob)

    _write_atomically(Path(path), fill)


def read_hdf5_weights(path: str | Path) -> dict[str, list[Blob]]:
    h5py = optional_module("h5py", "h5py")
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise UserError(f"{path} is not a Caffe HDF5 caffemodel (it has no 'data' group)")
            return {
                name: [Blob(np.array(group[str(i)]), None, False) for i in range(len(group))]
                for name, group in f["data"].items()
            }
    except OSError as err:
        raise UserError(f"cannot read the HDF5 weights {path}: {err}") from None


def write_hdf5_solverstate(
    path: str | Path, iteration: int, learned_net: str, history: Sequence[np.ndarray],
    current_step: int,
) -> None:  # fmt: skip
    def fill(f: object) -> None:
        f.create_dataset("iter", data=np.array([iteration], np.int32))  # type: ignore[attr-defined]
        f.create_dataset("learned_net", data=learned_net)  # type: ignore[attr-defined]
        f.create_dataset("current_step", data=np.array([current_step], np.int32))  # type: ignore[attr-defined]
        group = f.create_group("history")  # type: ignore[attr-defined]
        for i, blob in enumerate(history):
            group.create_dataset(str(i), data=blob)

    _write_atomically(Path(path), fill)


def read_hdf5_solverstate(path: str | Path) -> tuple[int, str, int, list[Blob]]:
    """(iter, learned_net, current_step, history blobs)."""
    h5py = optional_module("h5py", "h5py")
    try:
        with h5py.File(path, "r") as f:
            learned = f["learned_net"][()]
            history = f["history"]
            return (
                int(np.array(f["iter"]).reshape(-1)[0]),
                learned.decode() if isinstance(learned, bytes) else str(learned),
                int(np.array(f["current_step"]).reshape(-1)[0]) if "current_step" in f else 0,
                [Blob(np.array(history[str(i)]), None, False) for i in range(len(history))],
            )
    except (OSError, KeyError) as err:
        raise UserError(f"cannot read the HDF5 solver state {path}: {err}") from None
