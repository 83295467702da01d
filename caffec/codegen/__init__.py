"""Rendering a scheduled kernel graph into C or CUDA source and building it.

Arrives with the C-target issue; the folder exists so the package layout is
the one DESIGN.md describes from the first commit.
"""
