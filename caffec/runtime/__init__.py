"""Loading a compiled artifact and running it (numpy and CuPy only).

Arrives with the C-target issue; nothing here may import lark, networkx or
jinja2, so that artifacts run where the compiler is not installed.
"""
