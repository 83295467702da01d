"""Solvers from a solver.prototxt, as pycaffe's ``caffe.get_solver`` and ``caffe.SGDSolver``.

The train net is compiled with its backward pass and the solver's update
step; each test net is compiled for the TEST phase with its ``test_state``
and runs on the train net's parameter arrays (no copies).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from caffec.compiler.pipeline import Options
from caffec.driver import NetSource, compile_cached, mode_target
from caffec.errors import UserError
from caffec.frontend.loader import read_solver
from caffec.runtime.compiled_net import CompiledNet
from caffec.runtime.training import SolverSettings, TrainingLoop, caffe_log


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


def asks_for_gpu(param: Any) -> bool:
    """Whether a SolverParameter says ``solver_mode: GPU`` (Caffe's default, but only a
    solver that spells it out is taken to mean it: caffec's default is the CPU)."""
    return param.HasField("solver_mode") and param.solver_mode == param.GPU


class Solver:
    """A solver.prototxt ready to train: ``solver.net``, ``solver.test_nets``, ``step``, ``solve``.

    The nets are compiled for the mode in force (``caffec.set_mode_gpu()``: the
    CUDA target on the chosen device; else the C target). A solver that asks for
    ``solver_mode: GPU`` outside GPU mode is refused, never silently moved to the
    CPU, unless ``cpu_fallback`` allows that (``caffec train`` switches to GPU
    mode for such a solver itself).
    ``outputs_only`` builds the nets lean (as ``caffec train`` does): only their
    outputs stay readable in ``net.blobs``, and the memory of every other value
    is reused, as ``caffec compile --outputs-only`` reports.
    """

    def __init__(
        self,
        solver_file: str | Path,
        *,
        cpu_fallback: bool = False,
        log: Any = caffe_log,
        target_cpu: str = "native",
        dtype: str = "float32",
        outputs_only: bool = False,
    ) -> None:
        self.path = Path(solver_file)
        self.dtype = dtype
        self.keep_blobs = not outputs_only
        self.param, _ = read_solver(self.path)
        p = self.param
        self.target = mode_target(target_cpu)
        if asks_for_gpu(p) and self.target.name != "cuda" and not cpu_fallback:
            raise UserError(
                f"{self.path} asks for solver_mode: GPU, and caffec is in CPU mode",
                hint="call caffec.set_mode_gpu() first (caffec train does), or allow the CPU "
                "with cpu_fallback=True",
            )
        self.settings = _settings(p)
        seed = p.random_seed if p.random_seed >= 0 else 0
        train, tests = _net_sources(p)
        train_state = p.train_state if p.HasField("train_state") else None
        self.net = self._compile(train, "TRAIN", train_state, seed, solver=p)
        shared = self.net.param_buffers()
        self.test_nets = [
            self._compile(source, "TEST", p.test_state[i] if p.test_state else None, seed,
                          params=shared)
            for i, source in enumerate(tests)
        ]  # fmt: skip
        self.loop = TrainingLoop(self.settings, self.net, self.test_nets, log)

    def _compile(self, source: Any, phase: str, state: Any, seed: int, solver: Any = None,
                 params: Any = None) -> CompiledNet:  # fmt: skip
        kind, value = source
        options = Options(
            phase=phase,
            stages=tuple(state.stage) if state is not None else (),
            level=state.level if state is not None else 0,
            backward=phase == "TRAIN",
            solver=solver,
            dtype=self.dtype,
            keep_blobs=self.keep_blobs,
            target=self.target,
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
        return CompiledNet(compile_cached(net, options), seed=seed, params=params)

    @property
    def iter(self) -> int:
        return self.loop.iter

    def step(self, iterations: int) -> None:
        self.loop.step(iterations)

    def solve(self, resume_file: str | Path | None = None) -> None:
        if resume_file is not None:
            self.restore(resume_file)
        self.loop.solve()

    def snapshot(self) -> tuple[Path, Path]:
        return self.loop.snapshot()

    def restore(self, path: str | Path) -> None:
        self.loop.restore(path)


def get_solver(solver_file: str | Path, **kwargs: Any) -> Solver:
    """pycaffe's ``caffe.get_solver``: the solver its file's ``type`` names."""
    return Solver(solver_file, **kwargs)


def _typed(name: str) -> type[Solver]:
    def init(self: Solver, solver_file: str | Path, **kwargs: Any) -> None:
        Solver.__init__(self, solver_file, **kwargs)
        if self.settings.type != name:
            raise UserError(
                f"{name}Solver was given a solver file of type {self.settings.type}",
                hint="use caffec.get_solver, which follows the file's type",
            )

    return type(
        f"{name}Solver", (Solver,), {"__init__": init, "__doc__": f"pycaffe's {name}Solver."}
    )


SGDSolver = _typed("SGD")
NesterovSolver = _typed("Nesterov")
AdaGradSolver = _typed("AdaGrad")
RMSPropSolver = _typed("RMSProp")
AdaDeltaSolver = _typed("AdaDelta")
AdamSolver = _typed("Adam")
