"""Code generation: a kernel graph rendered for its target and built, written as an artifact.

:mod:`.renderer` is what every target's generator provides; :mod:`.c` and
:mod:`.cuda` render the templates of ``caffec/templates/<target>``;
:mod:`.toolchain` runs the C compiler and nvcc through the build cache;
:mod:`.artifact_writer` writes the directory the runtime loads.
"""
