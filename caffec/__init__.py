"""caffec: a graph compiler for Caffe models.

The subpackages follow the pipeline: :mod:`caffec.frontend` reads Caffe's
files, :mod:`caffec.compiler` builds and transforms the graphs,
:mod:`caffec.codegen` renders :mod:`caffec.templates` into kernels and
:mod:`caffec.runtime` runs them.
"""

__version__ = "0.1.0"
