"""Snapshots: a net's weights and a solver's state in either of Caffe's formats (binary
protos, or HDF5 where the path ends in ``.h5``, as ``snapshot_format: HDF5`` writes them),
and loading their blobs into a net with Caffe's shape rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.binaryproto import Blob, CaffeModel, read_caffemodel, read_solverstate
from caffec.formats.binaryproto_writer import write_caffemodel, write_solverstate
from caffec.formats.hdf5_snapshot import (
    read_hdf5_solverstate,
    read_hdf5_weights,
    write_hdf5_solverstate,
    write_hdf5_weights,
)
from caffec.formats.upgrade import upgrade_net


def _hdf5(path: str | Path, hdf5: bool | None = None) -> bool:
    """Whether weights are in Caffe's HDF5 form: as asked, else by the ``.h5`` suffix
    (Caffe's rule)."""
    return str(path).endswith(".h5") if hdf5 is None else hdf5


def read_weights(path: str | Path) -> CaffeModel:
    """A binary caffemodel in any Caffe format, its net upgraded to the current one.

    Blobs stay attached to their layers by name, which is how Caffe matches
    trained layers to a net (upgrading may drop V0 padding layers).
    """
    model = read_caffemodel(path)
    if model.format == "current":
        return model
    by_name = model.blobs_by_name()
    try:
        net, _ = upgrade_net(model.net)
    except UserError as err:  # the binary net has no spans: the file name says where
        raise UserError(f"{path}: {err.message}", layer=err.layer, hint=err.hint) from None
    blobs = [by_name.get(layer.name, []) for layer in net.layer]
    return CaffeModel(net=net, blobs=blobs, format="current")


def weights_by_name(path: str | Path, hdf5: bool | None = None) -> dict[str, list[Blob]]:
    """The blobs of trained weights (binary or HDF5) by layer name."""
    return read_hdf5_weights(path) if _hdf5(path, hdf5) else read_weights(path).blobs_by_name()


def write_weights(
    path: str | Path,
    name: str,
    layers: Sequence[tuple[str, str, Sequence[np.ndarray]]],
    hdf5: bool | None = None,
    described: Mapping[str, caffe_pb2.LayerParameter] | None = None,
) -> None:
    """Write ``layers`` (name, type, blobs) as the weights of the net ``name``; a binary
    caffemodel carries each layer's full parameter from ``described`` where given (bottoms,
    tops, settings: a net Caffe can read back, as its snapshots are), else name and type."""
    if _hdf5(path, hdf5):
        write_hdf5_weights(path, [(layer, blobs) for layer, _, blobs in layers])
        return
    net = caffe_pb2.NetParameter(name=name)
    for layer, kind, _ in layers:
        entry = net.layer.add(name=layer, type=kind)
        if described and layer in described:
            entry.CopyFrom(described[layer])
    write_caffemodel(path, net, [blobs for _, _, blobs in layers])


@dataclass
class SolverSnapshot:
    """A solver's state: where it stood, its weights' file and its history blobs."""

    iteration: int
    learned_net: str
    current_step: int
    history: list[Blob]


def read_solver_snapshot(path: str | Path) -> SolverSnapshot:
    """A .solverstate (or .solverstate.h5); one that says it stopped before iteration 0 is
    refused (resuming replays the data up to its iteration)."""
    if _hdf5(path):
        snapshot = SolverSnapshot(*read_hdf5_solverstate(path))
    else:
        state, history = read_solverstate(path)
        snapshot = SolverSnapshot(state.iter, state.learned_net, state.current_step, history)
    if snapshot.iteration < 0:
        raise UserError(
            f"{path} says training stopped at iteration {snapshot.iteration}; iterations "
            "count from 0",
            hint="the solverstate is damaged or was not written by Caffe; resume from another "
            "snapshot",
        )
    return snapshot


def write_solver_snapshot(
    path: str | Path, iteration: int, learned_net: str, history: Sequence[np.ndarray],
    current_step: int,
) -> None:  # fmt: skip
    write = write_hdf5_solverstate if _hdf5(path) else write_solverstate
    write(path, iteration, learned_net, history, current_step)


def load_blobs(blobs: Sequence[Blob], targets: Sequence[np.ndarray], what: str, hint: str) -> None:
    """Copy ``blobs`` into ``targets`` one for one, as Caffe's shape rule allows
    (:meth:`Blob.matches`); ``what`` and ``hint`` say, when they do not fit, whose blobs
    these are and what would fix it."""
    if len(blobs) != len(targets):
        raise UserError(f"{what} holds {len(blobs)} blobs where the net has {len(targets)}",
                        hint=hint)  # fmt: skip
    for i, (blob, target) in enumerate(zip(blobs, targets, strict=True)):
        if not blob.matches(target.shape):
            raise UserError(
                f"{what}: blob {i} has shape {shape_text(blob.shape)}, the net's has "
                f"{shape_text(target.shape)}",
                hint=hint,
            )
        target[...] = blob.data.reshape(target.shape)
