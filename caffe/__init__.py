"""pycaffe's ``caffe`` module, backed by caffec: ``import caffe`` runs pycaffe code unchanged.

The compiled half (nets, solvers, blobs, modes) is caffec's own API under pycaffe's
names; the Python half (``io``, ``NetSpec``, ``draw``, ``Classifier``, Python layers)
is written here against it.
"""

import sys
import warnings
from pathlib import Path

from caffe import io
from caffe.classifier import Classifier
from caffe.detector import Detector
from caffe.net_spec import NetSpec, layers, params, to_proto
from caffe.proto import caffe_pb2  # noqa: F401 - pycaffe users reach it as caffe.proto
from caffec.compiler.registry import known_types, lookup
from caffec.net import Net
from caffec.runtime.compiled_net import TEST, TRAIN
from caffec.runtime.distributed import (
    NCCL,
    set_multiprocess,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from caffec.runtime.glog import caffe_log
from caffec.runtime.gpu import set_device, set_mode_cpu, set_mode_gpu
from caffec.runtime.python_layers import Layer
from caffec.runtime.random_seed import set_random_seed
from caffec.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
)
from caffec.version import __version__

__all__ = [
    "TEST",
    "TRAIN",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "Classifier",
    "Detector",
    "NCCL",
    "Layer",
    "Net",
    "NetSpec",
    "NesterovSolver",
    "RMSPropSolver",
    "SGDSolver",
    "__version__",
    "get_solver",
    "init_log",
    "io",
    "layer_type_list",
    "layers",
    "log",
    "params",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_multiprocess",
    "set_random_seed",
    "set_solver_count",
    "set_solver_rank",
    "solver_count",
    "solver_rank",
    "to_proto",
]


def layer_type_list() -> list[str]:
    """The layer types caffec compiles (pycaffe lists Caffe's layer registry)."""
    return [name for name in known_types() if lookup(name).can_lower]


def init_log(*_args: object) -> None:
    """pycaffe sets up glog here; caffec's log lines need no setup (kept so code runs)."""


def log(message: str) -> None:
    """One INFO line in glog's format on stderr, as pycaffe's ``caffe.log``."""
    caffe_log(str(message), stream=sys.stderr, source="pycaffe.py:0")


def _say_if_shadowing() -> None:
    """A real Caffe's pycaffe further along ``sys.path`` is hidden by this package: say so
    (once; Python's warnings show a message once per place)."""
    here = Path(__file__).resolve().parent
    for entry in sys.path:
        other = Path(entry or ".") / "caffe"
        if other.is_dir() and other.resolve() != here and any(other.glob("_caffe*")):
            warnings.warn(
                f"`import caffe` gives caffec's pycaffe; the real Caffe's at {other} is "
                "shadowed (put its folder first on PYTHONPATH to use it instead)",
                stacklevel=3,
            )
            return


_say_if_shadowing()
