"""Solvers from a solver.prototxt, as pycaffe's ``caffe.get_solver`` and ``caffe.SGDSolver``.

The train net is compiled with its backward pass and the solver's update
step; each test net is compiled for the TEST phase with its ``test_state``
and runs on the train net's parameter arrays (no copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from caffec.compiler.pipeline import Options
from caffec.driver import NetSource, compile_cached, mode_target
from caffec.errors import UserError
from caffec.formats.atomic import sweep_temporaries
from caffec.frontend.loader import read_solver
from caffec.runtime import random_seed
from caffec.runtime.compiled_net import CompiledNet
from caffec.runtime.debug_info import Diverged, first_nonfinite
from caffec.runtime.distributed import (
    DEFAULT_BUCKET_BYTES,
    Collective,
    DataParallel,
    is_root,
    solver_rank,
)
from caffec.runtime.glog import caffe_log, net_setup_lines
from caffec.runtime.rebuilds import with_counts
from caffec.runtime.training import SolverSettings, TrainingLoop


class SolverNet(CompiledNet):
    """A net of a solver's, which compiles itself again (cached) when a Filter layer keeps
    another number of items than it was compiled for."""

    def __init__(self, source: NetSource, options: Options, **kwargs: Any) -> None:
        self._source, self._options = source, options
        super().__init__(compile_cached(source, options), **kwargs)

    def _recompiled(self, shapes: dict[str, tuple[int, ...] | None]) -> Path:
        self._options = replace(self._options, shapes=with_counts(self._options.shapes, shapes))
        return compile_cached(self._source, self._options)


def _settings(param: Any) -> SolverSettings:
    values = {}
    for f in fields(SolverSettings):
        value = getattr(param, f.name)
        if f.name == "snapshot_format":
            value = param.SnapshotFormat.Name(value)
        elif f.name in ("stepvalue", "test_iter"):
            value = list(value)
        values[f.name] = value
    return SolverSettings(**values)


def _net_sources(param: Any) -> tuple[Any, list[Any]]:
    """(train net, test nets) as (kind, value) pairs, with Caffe's rules for which fields."""
    given = [name for name in ("net", "net_param", "train_net", "train_net_param")
             if param.HasField(name)]  # fmt: skip
    if len(given) != 1:
        raise UserError(
            "a solver names its train net exactly once"
            + (f"; this one gives {', '.join(given)}" if given else "; this one gives none"),
            hint='set net: "train_test.prototxt" (or train_net / net_param)',
        )
    train = (given[0], getattr(param, given[0]))
    tests = [("test_net_param", p) for p in param.test_net_param]
    tests += [("test_net", p) for p in param.test_net]
    generic = len(param.test_iter) - len(tests)
    if given[0] in ("net", "net_param") and generic > 0:
        tests += [train] * generic
    if len(param.test_iter) != len(tests):
        raise UserError(
            f"{len(param.test_iter)} test_iter values for {len(tests)} test nets",
            hint="give one test_iter per test net",
        )
    if param.test_state and len(param.test_state) != len(tests):
        raise UserError(f"{len(param.test_state)} test_state entries for {len(tests)} test nets")
    return train, tests


def _described(source: tuple[str, Any], training: bool) -> str:
    """Where a net comes from, in the words of Caffe's solver log."""
    kind, value = source
    inline = kind.endswith("_param")
    if training:
        return f"specified in {kind}." if inline else f"from {kind} file: {value}"
    return f"specified by {kind}" if inline else f"specified by {kind} file: {value}"


def asks_for_gpu(param: Any) -> bool:
    """Whether a SolverParameter says ``solver_mode: GPU`` (Caffe's default, but only a
    solver that spells it out is taken to mean it: caffec's default is the CPU)."""
    return param.HasField("solver_mode") and param.solver_mode == param.GPU


class Solver:
    """A solver.prototxt ready to train: ``solver.net``, ``solver.test_nets``, ``step``, ``solve``.

    The nets are compiled for the mode in force (``caffec.set_mode_gpu()``: the
    CUDA target on the chosen device; else the C target): as in pycaffe, the
    file's ``solver_mode`` is not read here (``caffec train`` reads it).
    ``solver_type`` builds that solver whatever the file's ``type`` says, as
    pycaffe's typed constructors (``caffec.AdamSolver(file)``) do;
    ``train_state`` (level, stages) sets the train net's level and adds stages,
    as ``caffe train -level -stage`` does.
    ``outputs_only`` builds the nets lean (as ``caffec train`` does): only their
    outputs stay readable in ``net.blobs``, and the memory of every other value
    is reused, as ``caffec compile --outputs-only`` reports. ``max_memory``: the bytes
    each net may take, as ``--max-memory`` (default: this machine's memory). ``precision``:
    the GEMMs' arithmetic, as ``--precision`` ("tf32", "bf16": tensor cores, GPU mode).
    Under data parallelism (``caffec.set_solver_count``/``set_solver_rank`` or a
    :class:`~caffec.runtime.distributed.DataParallel` callback) only rank 0 logs, tests and
    snapshots, and each rank seeds its random numbers with ``random_seed + rank`` (Caffe's).
    """

    def __init__(
        self,
        solver_file: str | Path,
        *,
        solver_type: str | None = None,
        train_state: tuple[int, Sequence[str]] | None = None,
        check_divergence: bool = True,
        log: Any = caffe_log,
        target_cpu: str = "native",
        dtype: str = "float32",
        outputs_only: bool = False,
        max_memory: int | None = None,
        precision: str = "fp32",
    ) -> None:
        self.path = Path(solver_file)
        self.dtype = dtype
        self.precision = precision
        self.keep_blobs = not outputs_only
        self.max_memory = max_memory
        if not is_root():
            log = _silent
        self.param, _ = read_solver(self.path)
        p = self.param
        if solver_type is not None:
            p.type = solver_type
        if train_state is not None:  # `caffe train -level -stage`
            p.train_state.level = train_state[0]
            p.train_state.stage.extend(train_state[1])
        self.target = mode_target(target_cpu)
        self.settings = _settings(p)
        # what a snapshot killed halfway (kill -9, a crash) left under this prefix
        prefix = self.settings.snapshot_prefix or "snapshot"
        for leftover in sweep_temporaries(f"{prefix}_iter_") if is_root() else ():
            log(f"Removed {leftover}, left by an interrupted snapshot")
        seed = (p.random_seed if p.random_seed >= 0 else random_seed.current()) + solver_rank()
        train, tests = _net_sources(p)
        log("Initializing solver from parameters: \n" + text_format.MessageToString(p).rstrip())
        train_state = p.train_state if p.HasField("train_state") else None
        log(f"Creating training net {_described(train, True)}")
        self._train = (train, train_state, seed)
        self.net = self._compile(train, "TRAIN", train_state, seed, solver=p,
                                 inspectable=self.settings.debug_info)  # fmt: skip
        for line in net_setup_lines(self.net.artifact.manifest):
            log(line)
        shared = self.net.param_buffers()
        self.test_nets = []
        for i, source in enumerate(tests):
            log(f"Creating test net (#{i}) {_described(source, False)}")
            state = p.test_state[i] if p.test_state else None
            self.test_nets.append(self._compile(source, "TEST", state, seed, params=shared))
            for line in net_setup_lines(self.test_nets[-1].artifact.manifest):
                log(line)
        log("Solver scaffolding done.")
        self.loop = TrainingLoop(self.settings, self.net, self.test_nets, log,
                                 check_divergence=check_divergence)  # fmt: skip

    def _compile(self, source: Any, phase: str, state: Any, seed: int, solver: Any = None,
                 params: Any = None, inspectable: bool = False) -> CompiledNet:  # fmt: skip
        """A net of the solver's; ``inspectable``: every blob kept and no fusion, so each
        layer's values can be read after its step (debug_info, finding a divergence)."""
        kind, value = source
        options = Options(
            phase=phase,
            stages=tuple(state.stage) if state is not None else (),
            level=state.level if state is not None else 0,
            backward=phase == "TRAIN",
            solver=solver,
            dtype=self.dtype,
            keep_blobs=self.keep_blobs or inspectable,
            opt_level=1 if inspectable else 2,
            target=self.target,
            max_memory=self.max_memory,
            precision=self.precision,
        )
        if kind.endswith("_param"):
            net = NetSource.inline(value, self.path.parent)
        elif not Path(value).exists():
            raise UserError(
                f"the solver's net file '{value}' does not exist",
                hint="Caffe resolves it from the working directory; run from there",
            )
        else:
            net = NetSource.from_file(value)
        return SolverNet(net, options, seed=seed, params=params)

    @property
    def iter(self) -> int:
        return self.loop.iter

    def step(self, iterations: int) -> None:
        self._located(lambda: self.loop.step(iterations))

    def solve(self, resume_file: str | Path | None = None) -> None:
        if resume_file is not None:
            self.restore(resume_file)
        self._located(self.loop.solve)

    def _located(self, run: Any) -> None:
        """Run ``run``; a divergence it meets is reported with the first layer that made
        non-finite values, found on a rerun of the batch by a net built to be inspected."""
        try:
            run()
        except Diverged as err:
            raise Diverged(err.iteration, f"{err.what}; {self._first_nonfinite()}") from None

    def _first_nonfinite(self) -> str:
        train, state, seed = self._train
        probe = self._compile(train, "TRAIN", state, seed, params=self.net.param_buffers(),
                              inspectable=True)  # fmt: skip
        m = self.net.artifact.manifest
        for name, slot in m.inputs.items():  # what the caller fed; data layers read anew
            probe._exec.host(probe.artifact.manifest.inputs[name], overwrite=True)[...] = (
                self.net._exec.host(slot)
            )
        probe.skip_iterations(int(self.net._exec.counter[1]) - 1)
        found: list[str] = []

        def look(direction: str, step: int) -> None:
            found.extend(filter(None, [first_nonfinite(probe, direction, step)]))
            if found:
                raise StopIteration

        probe.step_hook = look
        try:
            probe.forward()
            probe.backward()
        except StopIteration:
            pass
        finally:
            probe.close()
        return found[0] if found else "a rerun of the batch gave finite values"

    def snapshot(self) -> tuple[Path, Path]:
        return self.loop.snapshot()

    def data_parallel(
        self, collective: Collective, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> DataParallel:
        """Train as one rank of ``collective`` (``caffec.join_mpi()``, say): the ranks check
        that they run the same solver and net, take rank 0's weights, and from now on average
        their gradients before each update; with the solver's ``layer_wise_reduce`` (Caffe's
        default) the reduction starts while backward still runs."""
        parallel = DataParallel(self.net, collective, bucket_bytes,
                                overlap=self.param.layer_wise_reduce,
                                iter_size=self.settings.iter_size)  # fmt: skip
        m = self.net.artifact.manifest
        parallel.check_agreement({
            "solver": asdict(self.settings),
            "parameters": [(p.layer, p.index, m.buffers[p.data].shape) for p in m.params],
            "batch": {name: b.shape for name, b in self.net.blobs.items()},
        })  # fmt: skip
        parallel.bcast()
        self.add_callback(parallel)
        return parallel

    def add_callback(self, on_start: Any, on_gradients_ready: Any = None) -> None:
        """pycaffe's ``solver.add_callback``: an object with ``on_start()`` and
        ``on_gradients_ready()`` (a ``DataParallel``, pycaffe's ``caffe.NCCL``), or those two
        functions; both are called every iteration, the second before the update."""
        if on_gradients_ready is None:
            self.loop.add_callback(on_start)
        else:
            self.loop.add_callback(_Callback(on_start, on_gradients_ready))

    def restore(self, path: str | Path) -> None:
        self.loop.restore(path)


class _Callback:
    """Two functions as one Solver::Callback."""

    def __init__(self, on_start: Any, on_gradients_ready: Any) -> None:
        self.on_start, self.on_gradients_ready = on_start, on_gradients_ready


def _silent(_message: str) -> None:
    """The log of a rank other than 0."""


def get_solver(solver_file: str | Path, **kwargs: Any) -> Solver:
    """pycaffe's ``caffe.get_solver``: the solver its file's ``type`` names."""
    return Solver(solver_file, **kwargs)


def _typed(name: str) -> type[Solver]:
    def init(self: Solver, solver_file: str | Path, **kwargs: Any) -> None:
        Solver.__init__(self, solver_file, solver_type=name, **kwargs)

    return type(
        f"{name}Solver", (Solver,), {"__init__": init, "__doc__": f"pycaffe's {name}Solver."}
    )


SGDSolver = _typed("SGD")
NesterovSolver = _typed("Nesterov")
AdaGradSolver = _typed("AdaGrad")
RMSPropSolver = _typed("RMSProp")
AdaDeltaSolver = _typed("AdaDelta")
AdamSolver = _typed("Adam")
