"""Passes: each a function from a graph to a graph, listed in :mod:`caffec.compiler.pipeline`."""
