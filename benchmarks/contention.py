"""caffec and OpenCV's dnn on a busy machine: forward latency beside N busy processes.

The cases of ``benchmarks/vs_opencv.py`` (the same flags), each timed twice in
one run: alone, then with ``--busy`` processes spinning beside it (``python -c
'while True: pass'``, stopped afterwards). Printed per net: each library's median
forward without and with them, its slowdown, and the ratio caffec / OpenCV under
load. A library that loses only its share of the CPUs slows down by about
(busy + threads) / threads where the busy processes take whole cores; one whose
threads wait for each other at every kernel loses a scheduler tick (4 ms) each
time.

``--after-blas`` also times caffec's forward right after a numpy matrix product
(not timed), whose OpenBLAS threads then spin for a while in the same process:
does caffec slow down beside another thread pool?

    python benchmarks/contention.py [--busy 2] [--only cifar10_full] [--batches 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from vs_opencv import Case, arguments, cases, load, median, runners, set_threads, time_turns


@contextmanager
def busy(count: int) -> Iterator[None]:
    """``count`` processes spinning on a CPU each while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(count)]  # fmt: skip
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def blas_product() -> Callable[[], Any]:
    """A numpy matrix product: OpenBLAS's threads work, then spin for a while."""
    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    return lambda: a @ a


def compare(case: Case, args: argparse.Namespace) -> None:
    """Time ``case`` by both libraries in turns, alone and beside ``args.busy`` busy
    processes, and print its line."""
    ours, theirs, _ = runners(case)
    runs = [ours, theirs] + ([ours] if args.after_blas else [])
    before = {2: blas_product()} if args.after_blas else None
    alone = [median(t) for t in time_turns(runs, args.rounds, args.seconds, before)]
    load_alone = load()
    with busy(args.busy):
        loaded = [median(t) for t in time_turns(runs, args.rounds, args.seconds, before)]
        load_busy = load()
    line = (f"{case.name:<28}{alone[0]:>8.3f} -> {loaded[0]:>7.3f}"
            f"{loaded[0] / alone[0]:>8.1f}x{alone[1]:>8.3f} -> {loaded[1]:>7.3f}"
            f"{loaded[1] / alone[1]:>8.1f}x{alone[0] / alone[1]:>7.2f}"
            f"{loaded[0] / loaded[1]:>11.2f}   {load_alone}, {load_busy}")  # fmt: skip
    if args.after_blas:
        line += f"; after BLAS {alone[2]:.3f} -> {loaded[2]:.3f} ms"
    print(line)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside it")
    parser.add_argument("--after-blas", action="store_true", help="see above")
    args = parser.parse_args()
    print(set_threads(args.threads) + f"; {args.busy} busy processes")
    print(f"{'net':<28}{'caffec ms':>18}{'slowdown':>9}{'OpenCV ms':>18}{'slowdown':>9}"
          f"{'ratio':>7}{'busy ratio':>11}   load alone, busy")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="caffec-contention-") as folder:
        for case in cases(args, Path(folder)):
            compare(case, args)


if __name__ == "__main__":
    main()
