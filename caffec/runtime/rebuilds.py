"""Another build of the same net, taken over while it runs: a Filter layer that keeps
another number of items (run-time shapes), a partial run that would cut a fused kernel, a
backward pass asked of a net built without one, new input shapes.

:class:`Rebuilds` is the part of :class:`~caffec.runtime.compiled_net.CompiledNet` that
switches builds; an artifact alone cannot compile itself again (``_recompiled`` says so),
``caffec.Net`` and the solvers' nets can.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError
from caffec.formats.manifest import FilterEntry
from caffec.runtime.executor import Executor

TRAIN, TEST = 0, 1  # pycaffe's caffe.TRAIN and caffe.TEST


class Rebuilds:
    """Running forward across Filter layers, and switching to another build of the net."""

    _filters: list[tuple[FilterEntry, int]]
    _exec: Executor
    _seed: int
    phase: int

    def _open_build(self, artifact: str | Path, params: Mapping[tuple[str, int], Any]) -> None:
        """Run ``artifact`` from now on (CompiledNet's: it opens the build)."""
        raise NotImplementedError

    def _run_forward(
        self,
        begin: int,
        stop: int,
        rebuilt: frozenset[str] = frozenset(),
        averages: dict[tuple[str, int], np.ndarray] | None = None,
    ) -> None:
        """Run forward steps [begin, stop), reading each Filter layer's count of kept items once
        its step has run: where the net was compiled for another count, it is compiled again
        for this one (cached) and the steps run again there, from the running averages the
        pass began with (``averages``). ``rebuilt``: the Filters this pass compiled again for."""
        if averages is None:
            averages = self._running_averages()
        position = begin
        for entry, step in self._filters:
            if not begin <= step < stop:
                continue
            self._run("forward", position, step + 1)
            position = step + 1
            kept = int(self._exec.host(entry.count)[0])
            if kept == entry.shapes[0][0]:
                continue
            if entry.layer in rebuilt:
                raise UserError(
                    f"the Filter keeps {kept} items of a batch that kept {entry.shapes[0][0]} "
                    "before the net was compiled for that count",
                    layer=entry.layer,
                    hint="the selector must follow from the batch, not from random numbers "
                    "drawn anew on each run (a Python layer's)",
                )
            self._take_build(self._recompiled(self._filter_shapes(entry, kept)))
            for (layer, index), value in averages.items():
                self.params[layer][index].data[...] = value
            self._run_forward(begin, stop, rebuilt | {entry.layer}, averages)
            return
        self._run("forward", position, stop)

    def _running_averages(self) -> dict[tuple[str, int], np.ndarray]:
        """What a forward writes into parameters (BatchNorm's running averages, in TRAIN), kept
        while a Filter may send the pass to another build, which runs it again."""
        if not self._filters or self.phase != TRAIN:
            return {}
        kinds = {layer.name: layer.type for layer in self.artifact.manifest.layers}
        return {(name, index): blob.data.copy() for name, blobs in self.params.items()
                if kinds[name] == "BatchNorm" for index, blob in enumerate(blobs)}  # fmt: skip

    def _filter_shapes(self, entry: FilterEntry, kept: int) -> dict[str, tuple[int, ...] | None]:
        """The shape of every Filter top in a build where ``entry`` keeps ``kept`` items and the
        other Filters what they were compiled for (None: every item, a build's default)."""
        if kept == 0:
            selector = self.artifact.manifest.layers[self._layer_index[entry.layer]].bottoms[-1]
            raise UserError(
                f"the Filter keeps no item of this batch{self._batch_origin()}: its selector "
                f"'{selector}' is 0 for all {entry.items} items, and caffec cannot run blobs "
                "without items (Caffe passes empty blobs on)",
                layer=entry.layer,
                hint="make every batch keep at least one item (a larger batch, shuffled data)",
            )
        shapes: dict[str, tuple[int, ...] | None] = {}
        for other in self.artifact.manifest.filters:
            count = kept if other is entry else other.shapes[0][0]
            for top, shape in zip(other.tops, other.shapes, strict=True):
                shapes[top] = None if count == other.items else (count, *shape[1:])
        return shapes

    def _batch_origin(self) -> str:
        """Where the data layers read this batch, as " (read from record '5' of db on)"; ""
        where no data layer read it."""
        for feeder in (getattr(self, "_open_feeders", None) or {}).values():
            if feeder.last is not None and feeder.last.origins:
                return f" (read from {feeder.last.origins[0]} on)"
        return ""

    def _recompiled(self, shapes: dict[str, tuple[int, ...] | None]) -> Path:
        """This net compiled again with ``shapes`` for its Filter layers' tops (None: every
        item): an artifact alone cannot be (``caffec.Net`` and the solvers' nets can)."""
        given = " ".join(f"--shape {top}={','.join(map(str, shape))}"
                         for top, shape in shapes.items() if shape is not None)  # fmt: skip
        raise UserError(
            "a Filter layer kept another number of items than this artifact was compiled for, "
            "and an artifact loaded on its own has fixed shapes",
            hint=f"compile it again for this count ({given or 'no --shape for the Filter tops'}), "
            "or run the prototxt with caffec.Net, which compiles itself again",
        )

    def _take_build(self, artifact: str | Path, replay: bool = False) -> None:
        """Run ``artifact``, another build of this net (other shapes, a backward pass, no
        fusion), from now on as the same net: the parameters stay the same arrays (nets that
        share them still do) and keep their gradients and the solver's histories; the inputs,
        DummyData's values and every blob whose shape stays are carried over; the data
        readers whose shapes stay, the random numbers and the Python layers go on. ``replay``:
        run the last forward again in the new build, for what it left inside the layers
        (softmax probabilities, masks, argmaxes)."""
        m = self.artifact.manifest
        params = self.param_buffers()
        grads = {(p.layer, p.index): self._exec.host(p.grad).copy()
                 for p in m.params if p.grad is not None}  # fmt: skip
        histories = [self._exec.host(slot).copy() for _, slot in m.histories]
        inputs = {name: self._exec.host(slot).copy() for name, slot in m.inputs.items()}
        fills = [self._exec.host(entry.slot).copy() for entry in m.fills]
        blobs = {} if self._lean else {
            name: (b.data.copy(), b.diff.copy() if b.learned_diff else None)
            for name, b in self.blobs.items()
        }  # fmt: skip
        feeders = getattr(self, "_open_feeders", None) or {}
        fed = {top: self.blobs[top].shape for feeder in feeders.values() for top in feeder.tops}
        counter, rng, hook = self._exec.counter.copy(), self._rng, self.step_hook
        passes = self._fill_passes
        self._open_build(artifact, params)
        self._rng, self.step_hook, self._fill_passes = rng, hook, passes
        m = self.artifact.manifest
        for p in m.params:
            carried(self._exec, p.grad, grads.get((p.layer, p.index)))
        for (_, slot), value in zip(m.histories, histories, strict=False):
            carried(self._exec, slot, value)
        for name, slot in m.inputs.items():
            carried(self._exec, slot, inputs.get(name))
        for entry, value in zip(m.fills, fills, strict=False):
            carried(self._exec, entry.slot, value)
        self._open_feeders = {}
        for layer, feeder in feeders.items():
            if all(self.blobs[top].shape == fed[top] for top in feeder.tops):
                self._open_feeders[layer] = feeder
            else:
                feeder.close()  # it reads batches of the old shapes
        if replay:
            self._replay_forward(int(counter[1]))
        self._exec.counter[...] = counter
        for name, (data, diff) in blobs.items():
            blob = self.blobs.get(name)
            if blob is not None and blob.shape == data.shape and not self._lean:
                blob.data[...] = data
                if diff is not None and blob.learned_diff:
                    blob.diff[...] = diff

    def _replay_forward(self, counter: int) -> None:
        """Run the last forward again on the inputs it had (with its dropout masks), leaving
        the parameters as they were (BatchNorm's running averages move in TRAIN)."""
        params = [p.data for p in self.artifact.manifest.params if p.shared_with is None]
        saved = {slot: self._exec.host(slot).copy() for slot in params}
        self._exec.counter[1] = counter - 1 if self.phase == TRAIN else counter
        self._run("forward", 0, len(self.artifact.manifest.forward))
        for slot, array in saved.items():
            self._exec.host(slot, overwrite=True)[...] = array
        self._forwarded = True


def with_counts(
    shapes: Mapping[str, tuple[int, ...]], counts: Mapping[str, tuple[int, ...] | None]
) -> dict[str, tuple[int, ...]]:
    """A compile's ``shapes`` (its ``--shape``) with the Filter tops' shapes for other counts
    (None: the top's shape dropped, to keep every item)."""
    merged = {**shapes, **counts}
    return {name: shape for name, shape in merged.items() if shape is not None}


def carried(buffers: Executor, slot: int | None, value: np.ndarray | None) -> None:
    """Write ``value``, from an earlier build of the net, into ``slot`` where both exist and
    the shapes agree."""
    if slot is not None and value is not None and buffers.host(slot).shape == value.shape:
        buffers.host(slot, overwrite=True)[...] = value
