"""``caffec.Net``: pycaffe's Net, compiled from a prototxt (cached) and run by the runtime."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from caffec.compiler.pipeline import Options
from caffec.driver import NetSource, compile_cached, mode_target
from caffec.errors import UserError
from caffec.runtime import random_seed
from caffec.runtime.compiled_net import TEST, TRAIN, CompiledNet
from caffec.runtime.rebuilds import with_counts

PHASES = {TRAIN: "TRAIN", TEST: "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}


def phase_name(phase: Any) -> str:
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}", hint="use caffec.TRAIN or caffec.TEST")
    return PHASES[phase]


class Net(CompiledNet):
    """pycaffe's ``caffe.Net``: ``Net(prototxt, phase)`` or ``Net(prototxt, weights, phase)``.

    Keywords beyond pycaffe's: ``shapes`` (data top shapes, as ``--shape``),
    ``dtype`` ("float64" for gradient checks), ``seed`` (fillers and dropout;
    default: :func:`caffec.set_random_seed`'s), ``backward`` (build a backward
    pass on or off), ``target_cpu``, ``strict_weights`` (weights that miss a
    layer with parameters are an error, not a warning), ``opt_level`` (as
    ``caffec compile -O``: 2 fuses kernels across layers, so partial runs may
    not start or stop between fused layers; 1 does not fuse; 0 is the
    reference build), ``max_memory`` (the bytes the net may take, as
    ``--max-memory``; default: this machine's memory), and ``precision`` (the GEMMs'
    arithmetic, as ``--precision``: "fp32", or in GPU mode "tf32" or "bf16" on tensor cores).
    """

    def __init__(
        self,
        network_file: str | bytes | Path,
        *args: Any,
        weights: str | bytes | Path | None = None,
        phase: Any = None,
        level: int = 0,
        stages: list[str] | tuple[str, ...] = (),
        shapes: dict[str, tuple[int, ...]] | None = None,
        dtype: str = "float32",
        seed: int | None = None,
        backward: bool | None = None,
        target_cpu: str = "native",
        opt_level: int = 2,
        strict_weights: bool = False,
        max_memory: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if len(args) == 2:
            weights, phase = args
        elif len(args) == 1:
            phase = args[0]
        elif args:
            raise UserError("Net(prototxt, phase) or Net(prototxt, weights, phase)")
        if phase is None:
            raise UserError("give the phase: caffec.Net(prototxt, caffec.TEST)")
        if weights is not None:
            weights = os.fsdecode(weights)
            if not os.path.exists(weights):
                raise UserError(f"no such weights file: '{weights}'")
        if opt_level not in (0, 1, 2):
            raise UserError(f"opt_level is 0, 1 or 2, not {opt_level!r}")
        self._network_file = Path(os.fsdecode(network_file))
        self._options = Options(
            phase=phase_name(phase), stages=tuple(stages), level=level, shapes=dict(shapes or {}),
            dtype=dtype, backward=backward, opt_level=opt_level, target=mode_target(target_cpu),
            max_memory=max_memory, precision=precision,
        )  # fmt: skip
        seed = random_seed.current() if seed is None else seed
        artifact = compile_cached(NetSource.from_file(self._network_file), self._options)
        super().__init__(artifact, weights, seed=seed, strict_weights=strict_weights)

    def reshape(self) -> None:
        """Apply ``blob.reshape(...)`` calls: a rebuild for the new shapes (cached), with the
        parameters and what was written into the reshaped blobs."""
        pending = {name: b for name, b in self.blobs.items() if b.pending_shape}
        if not pending:
            return
        fed = self.artifact.manifest.inputs
        for name in pending:
            if name not in fed:
                raise UserError(
                    f"only the net's inputs can be reshaped, not '{name}'",
                    hint=f"inputs: {', '.join(fed)}",
                )
        counted = {top for entry in self.artifact.manifest.filters for top in entry.tops}
        # the Filters' counts are the next batch's to decide
        shapes = {name: s for name, s in self._options.shapes.items() if name not in counted}
        shapes.update({name: b.shape for name, b in pending.items()})
        written = {name: b.data for name, b in pending.items()}
        self._rebuild(replace(self._options, shapes=shapes))
        for name, value in written.items():
            self.blobs[name].data[...] = value

    def backward(
        self,
        diffs: Iterable[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """As :meth:`CompiledNet.backward`; a net built without a backward pass gets one on
        first use (a cached rebuild), as every Caffe net can run backward. A net without a
        loss runs no layer backward, as in Caffe, unless it sets ``force_backward``."""
        m = self.artifact.manifest
        if not m.backward and not m.seeds:
            if not m.loss_tops:
                if kwargs:
                    warnings.warn(
                        "this net has no loss and no force_backward, so no layer runs backward "
                        "(Caffe's rule) and the diffs stay zero; set force_backward: true in "
                        "the prototxt to get the gradients",
                        stacklevel=2,
                    )
                return {name: self._blob(name).diff for name in [*self.inputs, *(diffs or [])]}
            self._rebuild(replace(self._options, backward=True))
        return super().backward(diffs, start, end, **kwargs)

    def _cut_fused_kernel(self, direction: str, before: str, after: str) -> None:
        """A partial run that would cut a fused kernel: rebuild once without fusion (-O1,
        cached), parameters and blobs carried over, as Caffe runs any layer range."""
        self._rebuild(replace(self._options, opt_level=1))

    def _rebuild(self, options: Options) -> None:
        """Compile again with ``options`` (cached) and go on in that build with this one's
        parameters, inputs and blobs (:meth:`CompiledNet._take_build`); where the shapes stay,
        the last forward runs again there for what it left inside the layers."""
        replay = self._forwarded and options.shapes == self._options.shapes
        self._options = options
        self._take_build(compile_cached(NetSource.from_file(self._network_file), options), replay)

    def _recompiled(self, shapes: dict[str, tuple[int, ...] | None]) -> Path:
        """Compile again (cached) with ``shapes`` for the Filter layers' tops (None: every item),
        when a batch keeps another number of items."""
        self._options = replace(self._options, shapes=with_counts(self._options.shapes, shapes))
        return compile_cached(NetSource.from_file(self._network_file), self._options)
