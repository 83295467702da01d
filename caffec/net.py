"""``caffec.Net``: pycaffe's Net, compiled from a prototxt (cached) and run by the runtime."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from caffec.errors import UserError
from caffec.runtime.compiled_net import TEST, TRAIN, CompiledNet

PHASES = {TRAIN: "TRAIN", TEST: "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}


def phase_name(phase: Any) -> str:
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}", hint="use caffec.TRAIN or caffec.TEST")
    return PHASES[phase]


def cuda_arch_of_mode() -> str | None:
    """The compute capability to build for when ``caffec.set_mode_gpu()`` is in force (that
    of the device ``set_device`` chose), else None: the C target."""
    from caffec.runtime import gpu

    if not gpu.gpu_mode():
        return None
    from caffec.runtime.cuda_device import open_device

    return str(open_device(gpu.current_device()).arch)


def compile_cached(
    graph: Any,
    source: bytes,
    options: Any,
    target_cpu: str = "native",
    cuda_arch: str | None = None,
) -> Path:
    """The artifact directory of ``graph`` (a layer graph built from ``source``), cached:
    for the C target, or with ``cuda_arch`` (a compute capability) the CUDA target.

    The key covers caffec's own code, the net's text, every value's shape (data
    sources decide some), the options, the solver and the target, so a change to
    any of them compiles anew and an unchanged net compiles once.
    """
    from caffec.codegen.artifact_writer import write_artifact
    from caffec.codegen.toolchain import cache_dir, compiler_fingerprint
    from caffec.compiler.pipeline import build_kernel_graph

    shapes = {v.name: v.shape for v in graph.values.values()}
    chosen = {f.name: getattr(options, f.name) for f in fields(options)}
    if options.solver is not None:
        chosen["solver"] = options.solver.SerializeToString().hex()
    chosen["base_dir"] = str(options.base_dir.resolve())
    key = hashlib.sha256(
        json.dumps(
            [
                compiler_fingerprint(),
                source.hex(),
                sorted(shapes.items()),
                chosen,
                target_cpu,
                cuda_arch,
            ],
            default=str,
            sort_keys=True,
        ).encode()
    ).hexdigest()
    out = cache_dir() / "artifacts" / key[:2] / key
    if not (out / "manifest.json").exists():
        kgraph = build_kernel_graph(graph, options)
        if cuda_arch is None:
            write_artifact(kgraph, out, target_cpu, reference=options.reference_build)
        else:
            write_artifact(kgraph, out, target="cuda", cuda_archs=(cuda_arch,))
    return out


def compile_file(
    network_file: str | Path,
    options: Any,
    target_cpu: str = "native",
    cuda_arch: str | None = None,
) -> Path:
    """:func:`compile_cached` for a prototxt file."""
    from caffec.compiler.pipeline import load_layer_graph

    graph = load_layer_graph(network_file, options)
    options = replace(options, base_dir=Path(network_file).parent)
    return compile_cached(graph, Path(network_file).read_bytes(), options, target_cpu, cuda_arch)


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
        from caffec.compiler.pipeline import Options, optimization_switches

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
            dtype=dtype, backward=backward, **optimization_switches(opt_level),
        )  # fmt: skip
        self._target_cpu = target_cpu
        self._cuda_arch = cuda_arch_of_mode()
        self._seed = seed
        artifact = compile_file(self._network_file, self._options, target_cpu, self._cuda_arch)
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
        from caffec.compiler.pipeline import optimization_switches

        blobs = {name: (b.data.copy(), b.diff.copy()) for name, b in self.blobs.items()}
        self._rebuild(replace(self._options, **optimization_switches(1)))
        for name, (data, diff) in blobs.items():
            self.blobs[name].data[...] = data
            self.blobs[name].diff[...] = diff

    def _rebuild(self, options: Any) -> None:
        """Compile again with ``options`` (cached) and carry the parameters over."""
        self._options = options
        params = self.param_buffers()
        artifact = compile_file(
            self._network_file, self._options, self._target_cpu, self._cuda_arch
        )
        counter = int(self._exec.counter[1])
        self.close()  # the data readers were sized for the old build
        CompiledNet.__init__(self, artifact, None, seed=self._seed, params=params)
        self._exec.counter[1] = counter
