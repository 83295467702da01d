"""The sizes a net may have: what generated code can index, and what memory holds.

Generated code indexes with C's ``long`` (int64) and numpy with ``intp``, so no
blob may have 2^63 bytes or more; and a net whose blobs cannot fit in memory
should be refused when it is compiled, naming the layer, not die in an
allocation later. The memory budget is this machine's memory unless the user
gives one (``--max-memory 8G``, ``max_memory=``). The compiler checks every
value and parameter against it, the runtime every reshape and allocation.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from fractions import Fraction

from caffec.errors import UserError, shape_text
from caffec.formats.manifest import Manifest

INDEX_LIMIT = 2**63 - 1  # the most bytes (or elements) an int64 index reaches

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50, "E": 2**60}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGTPE]?)(?:I?B)?\s*", re.IGNORECASE)

BUDGET_HINT = "or raise the memory budget (--max-memory, or max_memory= in Python) if it fits"


def machine_memory() -> int:
    """This machine's physical memory in bytes (no limit where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return INDEX_LIMIT


def budget_or_machine(budget: int | None) -> int:
    """``budget``, or this machine's memory where none is given."""
    return machine_memory() if budget is None else budget


def parse_bytes(text: str) -> int:
    """``8G`` → 8 GiB: a number of bytes, with K, M, G, T, P or E for powers of 1024 (and
    an optional B or iB); a ValueError says what is accepted."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"'{text}' is not a size such as 8G, 512M or 1000000 (bytes)")
    size = int(Fraction(match[1]) * _UNITS[match[2].upper()])
    if not 0 < size <= INDEX_LIMIT:
        raise ValueError(f"'{text}' is not a size from 1 byte to 8E (2^63 - 1 bytes)")
    return size


def bytes_text(size: int, exact: bool = True) -> str:
    """A byte count as people read it: ``71.0 TiB (78065325572096 bytes)``, or without the
    exact count: ``71.0 TiB``."""
    if size < 1024:
        return f"{size} bytes"
    unit = next(u for u in "EPTGMK" if size >= _UNITS[u])
    return f"{size / _UNITS[unit]:.1f} {unit}iB" + (f" ({size} bytes)" if exact else "")


def check_bytes(size: int, budget: int | None, what: str, hint: str, raisable: bool = True) -> None:
    """A UserError where ``size`` bytes are more than an int64 indexes, or than ``budget``
    (None: this machine's memory); ``what`` names what takes them, ``hint`` how to shrink it,
    ``raisable`` whether the user can give a larger budget there."""
    if size > INDEX_LIMIT:
        raise UserError(
            f"{what} takes {size} bytes, more than the 64-bit indices of generated code reach "
            "(2^63 - 1)",
            hint=hint,
        )
    limit = budget_or_machine(budget)
    if size > limit:
        whose = "this machine's memory" if budget is None else "the memory budget"
        raise UserError(
            f"{what} takes {bytes_text(size)}, more than {whose}, {bytes_text(limit, False)}",
            hint=f"{hint}, {BUDGET_HINT}" if raisable else hint,
        )


def check_size(
    shape: Sequence[int], itemsize: int, budget: int | None, what: str, raisable: bool = True
) -> None:
    """:func:`check_bytes` for a blob of ``shape`` with ``itemsize``-byte elements."""
    check_bytes(math.prod(shape) * itemsize, budget, f"{what} ({shape_text(shape)})",
                "make it smaller (batch, num_output, pad, kernel_size, dim)", raisable)  # fmt: skip


def artifact_bytes(manifest: Manifest) -> int:
    """What running an artifact allocates on the host: its arena and its persistent buffers
    (parameters, their gradients, solver state)."""
    itemsize = 8 if manifest.dtype == "float64" else 4
    persistent = sum(math.prod(b.shape) for b in manifest.buffers if b.offset is None)
    return manifest.arena_bytes + itemsize * persistent


def check_artifact(manifest: Manifest, budget: int | None, where: str) -> None:
    """:func:`check_bytes` for running the artifact at ``where``."""
    check_bytes(artifact_bytes(manifest), budget, f"the net of {where}",
                "compile it with a smaller batch (--shape)")  # fmt: skip
