"""One rank of a data-parallel run through the Python API, started by the tests under mpirun.

    python mpi_worker.py SOLVER STEPS EVERY [hang|die AT]

Trains STEPS iterations, and every EVERY iterations writes this rank's weights to
rank<R>_iter<I>.npz (the tests compare the ranks'); at iteration AT rank 1 stops answering
(``hang``), is killed (``die``), or is asked to stop as SIGINT asks (``stop``).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import caffec
from caffec.errors import CaffecError


def main() -> int:
    solver_file, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fault, at = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else (None, -1)
    collective = caffec.join_mpi(timeout=float(os.environ.get("WORKER_TIMEOUT", "60")))
    rank = collective.rank
    solver = caffec.SGDSolver(solver_file, dtype=os.environ.get("WORKER_DTYPE", "float32"))
    solver.data_parallel(collective)

    def on_start() -> None:  # pycaffe's two-function callback
        if rank == 1 and solver.iter == at:
            if fault == "stop":
                solver.loop.stop_requested = True
                return
            if fault == "hang":
                time.sleep(3600)
            os.kill(os.getpid(), signal.SIGKILL)

    solver.add_callback(on_start, lambda: None)
    try:
        while solver.iter < steps and not solver.loop.stopping:
            solver.step(every)
            weights = {f"{layer}/{i}": b.data for layer, blobs in solver.net.params.items()
                       for i, b in enumerate(blobs)}  # fmt: skip
            np.savez(f"rank{rank}_iter{solver.iter}.npz", **weights)
    except CaffecError as err:
        print(f"worker: rank {rank}: {err}", file=sys.stderr, flush=True)
        collective.abort(err.exit_status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
