"""caffec: a graph compiler for Caffe models.

The subpackages follow the pipeline: :mod:`caffec.frontend` reads Caffe's
files, :mod:`caffec.compiler` builds and transforms the graphs,
:mod:`caffec.codegen` renders :mod:`caffec.templates` into kernels and
:mod:`caffec.runtime` runs them.
"""

from caffec.version import __version__

__all__ = ["__version__"]


def __getattr__(name: str):  # the API loads on first use, so `import caffec` stays light
    if name == "Net":
        from caffec.net import Net

        return Net
    if name in ("TRAIN", "TEST"):
        from caffec.runtime import compiled_net as net

        return getattr(net, name)
    if name in ("set_mode_cpu", "set_mode_gpu", "set_device"):
        from caffec.runtime import gpu

        return getattr(gpu, name)
    if name == "get_solver" or name.endswith("Solver"):
        from caffec import solver

        if hasattr(solver, name):
            return getattr(solver, name)
    raise AttributeError(f"module 'caffec' has no attribute {name!r}")
