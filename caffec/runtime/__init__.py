"""Running a compiled artifact: memory, entry points, data feeding, training, timing.

Nothing here imports lark, networkx or jinja2 (nor the compiler that uses them), so an
artifact runs where only numpy, protobuf (and CuPy, on a GPU) are installed; the files
it reads are :mod:`caffec.formats`'.
"""
