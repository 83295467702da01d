"""One rank of a data-parallel run through the Python API, started by the tests under mpirun.

    python mpi_worker.py SOLVER STEPS EVERY [hang|die AT]

Trains STEPS iterations, and every EVERY iterations writes this rank's weights to
rank<R>_iter<I>.npz (the tests compare the ranks'); at iteration AT rank 1 stops answering
(``hang``), is killed (``die``), or is asked to stop as SIGINT asks (``stop``). At the end
it prints how many calls ran backward's steps (segments, when the reduction overlaps).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import caffec
from caffec.errors import CaffecError
from caffec.runtime.distributed import DEFAULT_BUCKET_BYTES


def main() -> int:
    solver_file, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fault, at = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else (None, -1)
    # each rank starts Python and compiles its nets before the setup check: on a cold build
    # cache, with two ranks at once on a loaded 2-core machine, that can take minutes; the
    # timeout under test (WORKER_TIMEOUT) applies to the training's collectives after it
    collective = caffec.join_mpi(timeout=240)
    rank = collective.rank
    solver = caffec.SGDSolver(solver_file, dtype=os.environ.get("WORKER_DTYPE", "float32"))
    solver.data_parallel(
        collective, int(os.environ.get("WORKER_BUCKET_BYTES", DEFAULT_BUCKET_BYTES))
    )
    collective.timeout = float(os.environ.get("WORKER_TIMEOUT", "240"))

    def on_start() -> None:  # pycaffe's two-function callback
        if rank == 1 and solver.iter == at:
            if fault == "stop":
                solver.loop.stop_requested = True
                return
            if fault == "hang":
                time.sleep(3600)
            os.kill(os.getpid(), signal.SIGKILL)

    solver.add_callback(on_start, lambda: None)
    backward_runs: list[tuple[int, int]] = []
    run = solver.net._exec.run

    def counted(direction: str, begin: int, end: int) -> None:
        if direction == "backward":
            backward_runs.append((begin, end))
        run(direction, begin, end)

    solver.net._exec.run = counted
    try:
        while solver.iter < steps and not solver.loop.stopping:
            solver.step(every)
            weights = {f"{layer}/{i}": b.data for layer, blobs in solver.net.params.items()
                       for i, b in enumerate(blobs)}  # fmt: skip
            np.savez(f"rank{rank}_iter{solver.iter}.npz", **weights)
        print(f"rank {rank}: {len(backward_runs)} backward runs", flush=True)
    except CaffecError as err:
        print(f"worker: rank {rank}: {err}", file=sys.stderr, flush=True)
        collective.abort(err.exit_status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
