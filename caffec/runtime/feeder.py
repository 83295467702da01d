"""Feeding a compiled net's data layers: one batch per call, prepared ahead on a thread.

:func:`make_feeder` turns one ``feeders`` entry of an artifact's manifest
into a :class:`Feeder`, whose :meth:`Feeder.next` hands back one batch per
call: a dict from top name to an array of exactly the top's compiled shape,
from the layer's source (:mod:`caffec.runtime.sources`).

Batches are prepared on a thread, a few ahead (``data_param.prefetch``,
default 4), so the compiled step does not wait for data that is faster than
the net. Every random choice comes from numpy Generators seeded from ``seed``,
the layer's name and, for what is drawn per item, the batch's index
(:class:`~caffec.runtime.random_seed.LayerRandom`), so a run is reproducible and a
resumed run reads the batches a run from the start would.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from caffec.errors import InternalError, UserError
from caffec.formats import caffe_pb2
from caffec.formats.manifest import FeederEntry
from caffec.runtime.distributed import solver_count, solver_rank
from caffec.runtime.random_seed import LayerRandom
from caffec.runtime.sources import (
    Batch,
    DataSource,
    HDF5Source,
    ImageDataSource,
    Source,
    resolver,
)
from caffec.runtime.window_data import WindowDataSource

_SOURCES: dict[str, type[Source]] = {
    "Data": DataSource,
    "ImageData": ImageDataSource,
    "HDF5Data": HDF5Source,
    "WindowData": WindowDataSource,
}


_JOIN_SECONDS = 30.0  # how long close() waits for a batch being made to finish


class _Failure:
    """An exception raised on the prefetch thread, carried to :meth:`Feeder.next`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(source: Source, batches: queue.Queue, stop: threading.Event) -> None:
    """The prefetch thread: batches into the queue until stopped or failed."""
    try:
        while not stop.is_set():
            _put(batches, source.batch(), stop)
    except BaseException as error:  # noqa: BLE001 - handed to the consumer as it was
        _put(batches, _Failure(error), stop)


def _put(batches: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Queue ``item`` once there is room, unless the feeder stops first."""
    while not stop.is_set():
        try:
            batches.put(item, timeout=0.05)
            return
        except queue.Full:
            continue


def _shutdown(
    source: Source, thread: threading.Thread | None, stop: threading.Event, batches: queue.Queue
) -> None:
    stop.set()
    if thread is not None:
        deadline = time.monotonic() + _JOIN_SECONDS
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    batches.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
        if thread.is_alive():
            return  # stuck in a read: leave the source to the daemon thread, never close under it
    source.close()


class Feeder:
    """One data layer's batches, prepared ahead on a thread.

    :meth:`next` returns ``{top: array}`` with every top's compiled shape and
    the net's dtype; each call returns new arrays. An error met while
    preparing a batch is raised by the :meth:`next` that would have returned
    it, as it was raised (a UserError stays a UserError). :meth:`close` stops
    the thread and closes the source; a Feeder is also a context manager.
    :attr:`last` is the batch :meth:`next` returned last (its ``origins`` name where each
    item came from).
    """

    def __init__(self, source: Source, prefetch: int) -> None:
        self.layer = source.layer
        self.tops = list(source.tops)
        self.shapes = dict(source.shapes)
        self.waited = 0.0  # seconds next() spent waiting for the thread
        self.last: Batch | None = None
        self._source = source
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        if prefetch > 0:
            self._thread = threading.Thread(
                target=_produce,
                args=(source, self._queue, self._stop),
                name=f"caffec-data-{source.layer}",
                daemon=True,
            )
            self._thread.start()
        self._finalizer = weakref.finalize(
            self, _shutdown, source, self._thread, self._stop, self._queue
        )

    @property
    def prefetching(self) -> bool:
        """Whether the prefetch thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def next(self) -> Batch:
        """The next batch: ``{top: array of the top's shape}``."""
        if self._closed:
            raise UserError(f"layer '{self.layer}': its data feeder was closed")
        if self._error is not None:
            raise self._error
        if self._thread is None:
            try:
                self.last = self._source.batch()
            except BaseException as error:
                self._error = error
                raise
            return self.last
        start = time.perf_counter()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise InternalError(
                        f"layer '{self.layer}': the data thread stopped without a reason"
                    ) from None
        self.waited += time.perf_counter() - start
        if isinstance(item, _Failure):
            self._error = item.error
            raise item.error
        self.last = item
        return item

    __next__ = next

    def __iter__(self) -> Feeder:
        return self

    def close(self) -> None:
        """Stop the prefetch thread and close the source (safe to call twice)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layer_param(spec: FeederEntry) -> caffe_pb2.LayerParameter:
    try:
        return json_format.ParseDict(spec.param, caffe_pb2.LayerParameter())
    except json_format.ParseError as err:
        raise InternalError(
            f"layer '{spec.layer}': the manifest's data layer parameters do not parse: {err}"
        ) from None


def make_feeder(
    spec: FeederEntry,
    shapes: Mapping[str, tuple[int, ...]],
    dtype: Any,
    phase: str,
    net_dir: str | Path,
    seed: int,
    *,
    prefetch: int | None = None,
    skip: int = 0,
) -> Feeder:
    """A :class:`Feeder` for one ``feeders`` entry of a manifest.

    ``spec`` names the layer, its type and tops, and holds its LayerParameter as
    JSON; ``shapes`` gives each top's compiled shape (the batch size is the first
    top's first dimension); ``phase`` is ``"TRAIN"`` or ``"TEST"`` (random
    crops in TRAIN, centred in TEST); ``seed`` seeds every random choice
    (mixed with the layer's name, so two data layers differ). ``prefetch``
    overrides ``data_param.prefetch`` (0: no thread, batches are made in
    :meth:`Feeder.next`). The source is opened and its first record checked
    here, so a missing or ill-fitting source fails now. ``skip``: batches to pass
    over first, as resuming training does (:meth:`Source.skip`: a seek; the
    skipped batches are not read).
    """
    layer, kind = spec.layer, spec.type
    source_type = _SOURCES.get(kind)
    if source_type is None:
        raise UserError(
            f"layer '{layer}': caffec cannot read the sources of {kind} layers",
            hint="feed the net's inputs yourself (net.forward(data=...))",
        )
    tops = list(spec.tops)
    missing = [t for t in tops if t not in shapes]
    if not tops or missing:
        raise InternalError(f"layer '{layer}': no shape for the tops {missing or tops}")
    param = _layer_param(spec)
    phase_name = {"0": "TRAIN", "1": "TEST"}.get(str(phase), str(phase).upper())
    if phase_name not in ("TRAIN", "TEST"):
        raise InternalError(f"unknown phase {phase!r}")
    net_dir = Path(net_dir) if net_dir else None
    source = source_type(
        param,
        resolver(net_dir),
        layer=layer,
        tops=tops,
        shapes=shapes,
        dtype=np.dtype(dtype),
        phase=phase_name,
        net_dir=net_dir,
        random=LayerRandom(seed, layer),
    )
    try:
        if phase_name == "TRAIN" and solver_count() > 1:  # Caffe's ranks test on rank 0 alone
            source.shard(solver_rank(), solver_count())
        if skip:
            source.skip(skip)
    except BaseException:
        source.close()
        raise
    depth = int(param.data_param.prefetch) if prefetch is None else int(prefetch)
    return Feeder(source, max(depth, 0))
