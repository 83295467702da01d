"""The GPUs CuPy sees, for ``caffec device-query`` and pycaffe's mode switches.

CuPy is the optional ``cuda`` extra: everything here imports it on first use
and turns its absence, a missing driver or a missing device into a
:class:`UserError` that says what to install or which flag to drop.
"""

from __future__ import annotations

import importlib
from typing import Any

from caffec.errors import UserError

INSTALL_HINT = (
    "pip install 'caffec[cuda]' (CuPy for CUDA 13; cupy-cuda12x for CUDA 12 drivers), "
    "or drop -gpu to run on the CPU"
)


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


# pycaffe's mode switches: caffec.Net and the solvers compile for the mode set when they
# are made (the C target, or the CUDA target for the device chosen).
_mode = {"gpu": False, "device": 0}


def set_mode_cpu() -> None:
    """Nets made from now on run on the CPU (the C target)."""
    _mode["gpu"] = False


def set_mode_gpu() -> None:
    """Nets made from now on run on the chosen GPU (the CUDA target); checks that it exists."""
    device_ids(str(_mode["device"]))
    _mode["gpu"] = True


def set_device(device: int) -> None:
    """Choose the GPU that nets run on in GPU mode (and that CUDA artifacts run on)."""
    device_ids(str(device))
    _mode["device"] = int(device)


def current_device() -> int:
    """The GPU chosen by :func:`set_device` (0 unless set)."""
    return _mode["device"]


def gpu_mode() -> bool:
    """Whether :func:`set_mode_gpu` is in force."""
    return _mode["gpu"]


def single_device(gpu: str) -> int:
    """The one device ``-gpu`` names: caffec runs a net on one GPU."""
    ids = device_ids(gpu)
    if len(ids) != 1:
        raise UserError(
            f"-gpu {gpu}: caffec runs a net on one GPU; training on several is not supported yet",
            hint=f"name one device, e.g. -gpu {ids[0]}",
        )
    return ids[0]
