"""How many threads a C artifact runs on, and how its idle threads wait: chosen at run time.

The generated C never fixes its thread count: its parallel regions ask for
``caffec_threads`` threads, which the executor sets when it loads the library
(:func:`thread_policy`; a per-image loop takes at most as many as the compiler gave
it workspace copies). The count is, in this order of precedence:

1. ``CAFFEC_NUM_THREADS``;
2. ``OMP_NUM_THREADS`` (its first number, as for nested lists);
3. the CPUs this process may use: its affinity mask (``taskset``, ``docker --cpuset-cpus``)
   and its cgroup's CPU quota (``docker --cpus``, Kubernetes limits), whichever is less.

OpenMP's threads, once a region ends, wait for the next one. GCC's libgomp spins
300,000 times by default before it sleeps, which on a busy machine takes CPU from the
threads that have work, and a region's closing barrier then waits out the scheduler's
tick, once per kernel. :func:`configure_openmp` sets ``OMP_WAIT_POLICY=PASSIVE`` (threads
sleep at once, and are woken when work comes) before libgomp starts, unless the user
chose ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` already. A short spin
(``GOMP_SPINCOUNT=30000``) is faster on an idle machine, but still lost 8x on GoogLeNet
beside two busy processes, where sleeping threads lost 2.3x (docs/performance.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from caffec.errors import UserError

WAIT_POLICY = "PASSIVE"  # set for libgomp unless the user chose a wait policy or spin count


@dataclass(frozen=True)
class ThreadPolicy:
    """What the runtime gives a C artifact: ``threads`` and where that number came from
    (``source``: an environment variable, "affinity" or "cgroup quota"), and how idle
    threads wait (``wait_policy``: the OpenMP variables that set it, or libgomp's default)."""

    threads: int
    source: str
    wait_policy: str


CGROUPS = Path("/sys/fs/cgroup")


def _quota(folder: Path) -> int | None:
    """The CPUs a cgroup folder's own quota allows per period, rounded up (v2's ``cpu.max``,
    or v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); None without one."""
    try:
        if (folder / "cpu.max").exists():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota == "max" or int(quota) <= 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _cgroup_quota(root: Path = CGROUPS, membership: str | None = None) -> int | None:
    """The least CPU quota of this process's cgroups and their parents, in the v2 and v1
    hierarchies mounted under ``root`` (``membership``: what /proc/self/cgroup says); None
    without one. Inside a container the cgroup's own folder is the mount itself."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            membership = "0::/"
    quotas = []
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:
            if "cpu" not in controllers.split(","):
                continue
            mounts = [root / controllers, root / "cpu"]
        else:
            mounts = [root, root / "unified"]  # v2 alone, or beside v1 (hybrid)
        for mount in mounts:
            folder = mount / path.lstrip("/")
            for up in [folder, *folder.parents]:
                quotas.append(_quota(up))
                if up == mount:
                    break
    return min((q for q in quotas if q is not None), default=None)


def available_cpus() -> tuple[int, str]:
    """The CPUs this process may use, and what limits them ("affinity" or "cgroup quota")."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None and quota < cpus:
        return quota, "cgroup quota"
    return cpus, "affinity"


def _requested(variable: str) -> int | None:
    """The thread count environment ``variable`` asks for; None where it is unset or empty,
    or where OMP_NUM_THREADS is not a count (libgomp ignores it then too)."""
    text = os.environ.get(variable, "").strip()
    first = text.split(",")[0].strip()  # OMP_NUM_THREADS may list a count per nesting level
    if first.isdigit() and int(first) >= 1:
        return int(first)
    if text and variable == "CAFFEC_NUM_THREADS":
        raise UserError(
            f"{variable}={text!r} is not a number of threads",
            hint=f"set {variable} to a whole number of at least 1, or unset it",
        )
    return None


def thread_policy() -> ThreadPolicy:
    """The threads C artifacts run on now, by the precedence of the module docstring."""
    waiting = ", ".join(f"{v}={os.environ[v]}" for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                        if v in os.environ) or "libgomp's default"  # fmt: skip
    for variable in ("CAFFEC_NUM_THREADS", "OMP_NUM_THREADS"):
        threads = _requested(variable)
        if threads is not None:
            return ThreadPolicy(threads, variable, waiting)
    threads, source = available_cpus()
    return ThreadPolicy(threads, source, waiting)


def configure_openmp() -> None:
    """Let idle OpenMP threads sleep rather than spin (see the module docstring): called
    before an artifact's library, and with it libgomp, is loaded. libgomp reads its
    environment once, when it starts; later calls change nothing for it."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
