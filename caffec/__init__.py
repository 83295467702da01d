"""caffec: a graph compiler for Caffe models.

The subpackages follow the pipeline: :mod:`caffec.frontend` reads Caffe's
files, :mod:`caffec.compiler` builds and transforms the graphs,
:mod:`caffec.codegen` renders :mod:`caffec.templates` into kernels and
:mod:`caffec.runtime` runs them.
"""

import sys
import warnings
from pathlib import Path

from caffec.version import __version__

__all__ = ["__version__"]


def _caffe_shadows_ours() -> str | None:
    """Where the ``caffe`` already imported lives, if it is not the one installed with caffec
    (a real Caffe's pycaffe, which pycaffe code in this process then runs on)."""
    module = sys.modules.get("caffe")
    where = getattr(module, "__file__", None)
    if module is None or where is None:
        return None
    ours = Path(__file__).resolve().parent.parent / "caffe"
    return None if Path(where).resolve().parent == ours else where


if (_shadowing := _caffe_shadows_ours()) is not None:
    warnings.warn(
        f"`import caffe` gave a real Caffe ({_shadowing}), which shadows caffec's pycaffe "
        "module; remove it from PYTHONPATH to run pycaffe code on caffec",
        stacklevel=2,
    )


# data parallelism (docs/distributed.md)
_DISTRIBUTED = ("join_mpi", "DataParallel", "NCCL", "solver_count", "solver_rank",
                "set_solver_count", "set_solver_rank", "set_multiprocess")  # fmt: skip


def __getattr__(name: str):  # the API loads on first use, so `import caffec` stays light
    if name == "Net":
        from caffec.net import Net

        return Net
    if name in ("TRAIN", "TEST"):
        from caffec.runtime import compiled_net as net

        return getattr(net, name)
    if name == "set_random_seed":
        from caffec.runtime.random_seed import set_random_seed

        return set_random_seed
    if name in ("set_mode_cpu", "set_mode_gpu", "set_device"):
        from caffec.runtime import gpu

        return getattr(gpu, name)
    if name in _DISTRIBUTED:
        from caffec.runtime import distributed

        return getattr(distributed, name)
    if name == "get_solver" or name.endswith("Solver"):
        from caffec import solver

        if hasattr(solver, name):
            return getattr(solver, name)
    raise AttributeError(f"module 'caffec' has no attribute {name!r}")
