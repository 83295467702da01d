"""``caffec.Net``: pycaffe's Net, compiled from a prototxt (cached) and run by the runtime."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from caffec.compiler.pipeline import Options
from caffec.driver import NetSource, compile_cached, mode_target
from caffec.errors import UserError
from caffec.runtime.compiled_net import TEST, TRAIN, CompiledNet

PHASES = {TRAIN: "TRAIN", TEST: "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}


def phase_name(phase: Any) -> str:
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}", hint="use caffec.TRAIN or caffec.TEST")
    return PHASES[phase]


class Net(CompiledNet):
    """pycaffe's ``caffe.Net``: ``Net(prototxt, phase)`` or ``Net(prototxt, weights, phase)``.

    Keywords beyond pycaffe's: ``shapes`` (data top shapes, as ``--shape``),
    ``dtype`` ("float64" for gradient checks), ``seed`` (fillers and dropout),
    ``backward`` (force a backward pass on or off), ``target_cpu``, and
    ``opt_level`` (as ``caffec compile -O``: 2 fuses kernels across layers, so
    partial runs may not start or stop between fused layers; 1 does not fuse;
    0 is the reference build).
    """

    def __init__(
        self,
        network_file: str | Path,
        *args: Any,
        weights: str | Path | None = None,
        phase: Any = None,
        level: int = 0,
        stages: list[str] | tuple[str, ...] = (),
        shapes: dict[str, tuple[int, ...]] | None = None,
        dtype: str = "float32",
        seed: int = 0,
        backward: bool | None = None,
        target_cpu: str = "native",
        opt_level: int = 2,
    ) -> None:
        if len(args) == 2:
            weights, phase = args
        elif len(args) == 1:
            phase = args[0]
        elif args:
            raise UserError("Net(prototxt, phase) or Net(prototxt, weights, phase)")
        if phase is None:
            raise UserError("give the phase: caffec.Net(prototxt, caffec.TEST)")
        if weights is not None and not os.path.exists(weights):
            raise UserError(f"no such weights file: '{weights}'")
        if opt_level not in (0, 1, 2):
            raise UserError(f"opt_level is 0, 1 or 2, not {opt_level!r}")
        self._network_file = Path(network_file)
        self._options = Options(
            phase=phase_name(phase), stages=tuple(stages), level=level, shapes=dict(shapes or {}),
            dtype=dtype, backward=backward, opt_level=opt_level, target=mode_target(target_cpu),
        )  # fmt: skip
        self._seed = seed
        artifact = compile_cached(NetSource.from_file(self._network_file), self._options)
        super().__init__(artifact, weights, seed=seed)

    def reshape(self) -> None:
        """Apply ``blob.reshape(...)`` calls: a rebuild for the new shapes (cached), same params."""
        pending = {name: b.pending_shape for name, b in self.blobs.items() if b.pending_shape}
        if not pending:
            return
        shapes = dict(self._options.shapes)
        for name, shape in pending.items():
            if name not in self.inputs:
                raise UserError(
                    f"only the net's inputs can be reshaped, not '{name}'",
                    hint=f"inputs: {', '.join(self.inputs)}",
                )
            shapes[name] = shape
        self._rebuild(replace(self._options, shapes=shapes))

    def _cut_fused_kernel(self, direction: str, before: str, after: str) -> None:
        """A partial run that would cut a fused kernel: rebuild once without fusion (-O1,
        cached), parameters and blobs carried over, as Caffe runs any layer range."""
        blobs = {name: (b.data.copy(), b.diff.copy()) for name, b in self.blobs.items()}
        self._rebuild(replace(self._options, opt_level=1))
        for name, (data, diff) in blobs.items():
            self.blobs[name].data[...] = data
            self.blobs[name].diff[...] = diff

    def _rebuild(self, options: Any) -> None:
        """Compile again with ``options`` (cached) and carry the parameters over."""
        self._options = options
        params = self.param_buffers()
        artifact = compile_cached(NetSource.from_file(self._network_file), self._options)
        counter = int(self._exec.counter[1])
        self.close()  # the data readers were sized for the old build
        CompiledNet.__init__(self, artifact, None, seed=self._seed, params=params)
        self._exec.counter[1] = counter
