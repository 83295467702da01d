"""pycaffe's ``caffe`` module, backed by caffec: ``import caffe`` runs pycaffe code unchanged.

The compiled half (nets, solvers, blobs, modes) is caffec's own API under pycaffe's
names; the Python half (``io``, ``NetSpec``, ``draw``, ``Classifier``, Python layers)
is written here against it.
"""

from caffe.proto import caffe_pb2  # noqa: F401 - pycaffe users reach it as caffe.proto
from caffec.net import Net
from caffec.runtime.compiled_net import TEST, TRAIN
from caffec.runtime.gpu import set_device, set_mode_cpu, set_mode_gpu
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
    "Net",
    "NesterovSolver",
    "RMSPropSolver",
    "SGDSolver",
    "__version__",
    "get_solver",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
]
