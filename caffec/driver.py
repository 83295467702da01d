"""The driver: from a Caffe net to a compiled artifact, the one path every front door takes.

A :class:`NetSource` (a prototxt file, or a solver's inline ``net_param``) is
read and upgraded by the frontend, becomes a layer graph (the layer-graph
passes) and a kernel graph for a target (the kernel passes), and code
generation writes it as an artifact directory (:mod:`caffec.compiler.pipeline`
lists the passes). ``caffec.Net``, the solvers and the command line all
compile through here; :func:`compile_cached` keeps the artifacts in the build
cache, so an unchanged net compiles once per machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from caffec.codegen.artifact_writer import write_artifact
from caffec.codegen.toolchain import cache_dir, compiler_fingerprint, vector_bytes
from caffec.compiler.ir import LayerGraph
from caffec.compiler.kernels import KernelGraph
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of
from caffec.compiler.targets import Target
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.errors import Interrupted
from caffec.formats.source_map import SourceMap
from caffec.formats.upgrade import upgrade_net
from caffec.frontend.loader import read_net

Compile = TypeVar("Compile", bound=Callable[..., Any])


@dataclass(frozen=True)
class NetSource:
    """A net to compile, read and upgraded: the NetParameter with where each field was
    written, the bytes that identify it in the build cache, and the folder its relative
    data sources are looked for in."""

    net: Any  # a caffe_pb2.NetParameter
    spans: SourceMap
    text: bytes
    base_dir: Path

    @classmethod
    def from_file(cls, path: str | Path) -> NetSource:
        path = Path(path)
        net, spans = read_net(path)
        return cls(net, spans, path.read_bytes(), path.parent)

    @classmethod
    def inline(cls, param: Any, base_dir: Path) -> NetSource:
        """A NetParameter given in another file (a solver's ``net_param``)."""
        net, spans = upgrade_net(param)
        return cls(net, spans, param.SerializeToString(), base_dir)


def cpu_target(cpu: str = "native") -> CpuTarget:
    """This machine's CPU (or the one ``cpu`` names, as ``-march`` does), with the vector
    width the C compiler uses there."""
    return CpuTarget(cpu=cpu, vector_bytes=vector_bytes(cpu))


def mode_target(cpu: str = "native") -> Target:
    """The target of the mode in force: with ``caffec.set_mode_gpu()`` the CUDA target for the
    device ``set_device`` chose (its compute capability and multiprocessors), else the CPU."""
    from caffec.runtime import gpu

    if not gpu.gpu_mode():
        return cpu_target(cpu)
    from caffec.runtime.cuda_device import open_device

    device = open_device(gpu.current_device())
    return CudaTarget(archs=(str(device.arch),), multiprocessors=device.multiprocessors)


def layer_graph(source: NetSource, options: Options, after: str | None = None) -> LayerGraph:
    """The layer graph of ``source`` after the layer-graph passes (or the one ``after``)."""
    return layer_graph_of(source.net, source.spans, _located(source, options), after)


def kernel_graph(source: NetSource, options: Options, after: str | None = None) -> KernelGraph:
    """The kernel graph of ``source`` for ``options.target`` after the kernel passes (or the
    one ``after``)."""
    options = _located(source, options)
    return build_kernel_graph(layer_graph(source, options), options, after)


def _interruptible(compile_: Compile) -> Compile:
    """Ctrl-C during a compile says what it stopped: artifacts and build-cache entries are
    written under temporary names that an interrupted write removes, so nothing was."""

    @functools.wraps(compile_)
    def run(source: NetSource, *args: Any) -> Any:
        try:
            return compile_(source, *args)
        except Interrupted:
            raise
        except KeyboardInterrupt:
            name = f"'{source.net.name}'" if source.net.name else "the net"
            raise Interrupted(f"interrupted while compiling {name}; nothing was written") from None

    return run  # type: ignore[return-value]


@_interruptible
def compile_to(source: NetSource, options: Options, out: str | Path) -> KernelGraph:
    """Compile ``source`` into the artifact directory ``out`` (replacing what is there);
    the kernel graph it was built from."""
    kgraph = kernel_graph(source, options)
    write_artifact(kgraph, out)
    return kgraph


@_interruptible
def compile_cached(source: NetSource, options: Options) -> Path:
    """The artifact directory of ``source`` built with ``options``, from the build cache.

    The key covers caffec's own code, the net's text, every value's shape (data sources
    decide some), the options (the solver and the target among them), so a change to any
    of them compiles anew and an unchanged net compiles once.
    """
    options = _located(source, options)
    graph = layer_graph(source, options)
    chosen = {f.name: getattr(options, f.name) for f in fields(options)}
    if options.solver is not None:
        chosen["solver"] = options.solver.SerializeToString().hex()
    chosen["base_dir"] = str(options.base_dir.resolve())
    shapes = sorted((v.name, v.shape) for v in graph.values.values())
    key = hashlib.sha256(
        json.dumps(
            [compiler_fingerprint(), source.text.hex(), shapes, chosen], default=str, sort_keys=True
        ).encode()  # fmt: skip
    ).hexdigest()
    out = cache_dir() / "artifacts" / key[:2] / key
    if not (out / "manifest.json").exists():
        try:
            write_artifact(build_kernel_graph(graph, options), out)
        except OSError:
            # another process (an MPI rank beside this one) put the same artifact in place
            # while this one built it: the key says they are the same, so theirs serves
            if not (out / "manifest.json").exists():
                raise
    return out


def _located(source: NetSource, options: Options) -> Options:
    """``options`` with the folder the net's relative data sources are looked for in."""
    return replace(options, base_dir=source.base_dir)
