"""The GPUs CuPy sees, for ``caffec device-query`` and pycaffe's mode switches.

CuPy is the optional ``cuda`` extra: everything here imports it on first use
and turns its absence, a missing driver or a missing device into a
:class:`UserError` that says what to install or which flag to drop.
"""

from __future__ import annotations

import importlib
from typing import Any

from caffec.errors import UserError

INSTALL_HINT = "pip install 'caffec[cuda]' (CuPy for CUDA 13; cupy-cuda12x for CUDA 12 drivers)"


def cupy() -> Any:
    """The cupy module, or a UserError saying how to get it."""
    try:
        return importlib.import_module("cupy")
    except ImportError as error:
        raise UserError(f"GPU support needs CuPy, which is not installed ({error})",
                        hint=INSTALL_HINT) from None  # fmt: skip


def device_count() -> int:
    """How many CUDA devices the driver shows (a UserError where there is none)."""
    runtime = cupy().cuda.runtime
    try:
        count = int(runtime.getDeviceCount())
    except runtime.CUDARuntimeError as error:  # no driver, or no device
        raise UserError(f"no CUDA device is usable: {error}",
                        hint="run on a machine with an NVIDIA GPU and its driver, "
                             "or drop -gpu to run on the CPU") from None  # fmt: skip
    if count == 0:
        raise UserError("no CUDA device found", hint="drop -gpu to run on the CPU")
    return count


def device_ids(gpu: str) -> list[int]:
    """The devices ``-gpu`` names: ``all``, or ids separated by commas, each checked."""
    count = device_count()
    if gpu == "all":
        return list(range(count))
    ids = []
    for part in gpu.split(","):
        if not part.strip().isdigit():
            raise UserError(f"-gpu {gpu}: '{part}' is not a device id",
                            hint="give -gpu 0, -gpu 0,1 or -gpu all")  # fmt: skip
        ids.append(int(part))
        if ids[-1] >= count:
            raise UserError(f"-gpu {gpu}: there is no device {ids[-1]} ({count} found)",
                            hint=f"device ids run from 0 to {count - 1}")  # fmt: skip
    return ids


def describe(device: int) -> list[tuple[str, str]]:
    """What Caffe's ``device_query`` prints of a device, as (label, value) pairs."""
    p = cupy().cuda.runtime.getDeviceProperties(device)
    name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
    return [
        ("Device id", str(device)),
        ("Name", name),
        ("Compute capability", f"{p['major']}.{p['minor']}"),
        ("Total global memory", f"{p['totalGlobalMem'] / (1 << 30):.1f} GiB"),
        ("Shared memory per block", f"{p['sharedMemPerBlock']} bytes"),
        ("Registers per block", str(p["regsPerBlock"])),
        ("Warp size", str(p["warpSize"])),
        ("Maximum threads per block", str(p["maxThreadsPerBlock"])),
        ("Multiprocessor count", str(p["multiProcessorCount"])),
        ("Clock rate", f"{p['clockRate'] / 1000:.0f} MHz"),
    ]


# pycaffe's mode switches (caffe.set_mode_cpu() and friends), as caffec.set_mode_cpu() ...


def set_mode_cpu() -> None:
    """Run nets on the CPU: what caffec's runtime does."""


def set_mode_gpu() -> None:
    """Run nets on the GPU: refused, saying why (no CuPy, no device, or no GPU runtime yet)."""
    device_count()
    raise UserError(
        "caffec cannot run nets on a GPU yet: `caffec compile --target cuda` builds the CUDA "
        "code, but no runtime runs it",
        hint="call caffec.set_mode_cpu() instead, to run on the CPU",
    )


def set_device(device: int) -> None:
    """Choose the GPU: checks that it exists (nets still run on the CPU; see set_mode_gpu)."""
    device_ids(str(device))
