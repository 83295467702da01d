"""Data-parallel training across processes: Caffe's multi-GPU semantics over MPI or NCCL.

Every rank runs the same compiled step on its own batches; before the solver's
update the parameter gradients are summed across ranks and divided by their
number (Caffe's ``NCCL::on_gradients_ready``), so each rank applies the same
update to the same weights. The effective batch is ranks x batch_size; the
learning rate is not rescaled and ``iter_size`` still accumulates. The
gradients travel in buckets, in the order backward finishes them, each
bucket's reduction started before the next is packed. With Caffe's
``layer_wise_reduce`` (its default), the last backward pass of an iteration
runs in segments, cut where buckets' gradients become final
(:func:`ready_points`), and each bucket's reduction starts at the end of its
segment while the rest of backward runs; the sums are the same either way.

:class:`Collective` is the one place that talks to a communication library:
:class:`MpiCollective` (mpi4py: CPU processes on one or many machines) and
:class:`NcclCollective` (cupy.cuda.nccl: one process per GPU). Every wait has a
deadline, so a rank that died or hangs ends the job with a message rather
than a hang. The solver's rank and count are process-wide, as Caffe's
``Caffe::solver_rank()``: the data readers shard their records by them and
only rank 0 logs, tests and snapshots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from caffec.errors import UserError
from caffec.formats.manifest import Manifest

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other ranks
DEFAULT_BUCKET_BYTES = 4 << 20
_MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")

_solvers = {"count": 1, "rank": 0}


# --- the process-wide rank, as Caffe's --------------------------------------------------------
def solver_count() -> int:
    """How many solvers train together (Caffe's ``Caffe::solver_count``)."""
    return _solvers["count"]


def solver_rank() -> int:
    """This process's solver among them (Caffe's ``Caffe::solver_rank``)."""
    return _solvers["rank"]


def set_solver_count(count: int) -> None:
    if int(count) < 1:
        raise UserError(f"a solver count of {count}: give 1 or more")
    _solvers["count"] = int(count)


def set_solver_rank(rank: int) -> None:
    if not 0 <= int(rank) < solver_count():
        raise UserError(f"solver rank {rank} is outside 0..{solver_count() - 1}",
                        hint="call set_solver_count first")  # fmt: skip
    _solvers["rank"] = int(rank)


def set_multiprocess(_multiprocess: bool) -> None:
    """pycaffe's flag for one process per solver: caffec's ranks always are processes."""


def is_root() -> bool:
    """Whether this process logs, tests and snapshots (rank 0)."""
    return solver_rank() == 0


class CollectiveTimeout(UserError):
    """A collective waited past its deadline: another rank died, hangs, or runs another net."""

    exit_status = 1


class RanksDisagree(UserError):
    """The ranks found, together, that they run different nets or solvers: every rank
    raises it, and rank 0 alone need say so."""


# --- the communication libraries --------------------------------------------------------------
class Collective(ABC):
    """Sums, broadcasts and gathers flat arrays among ``size`` ranks; every wait is bounded
    by ``timeout`` seconds."""

    rank: int
    size: int
    timeout: float

    @abstractmethod
    def start_allreduce(self, flat: Any) -> Any:
        """Start summing ``flat`` in place across the ranks; what :meth:`wait` takes."""

    @abstractmethod
    def wait(self, pending: Any, what: str) -> None:
        """Wait for a started collective, or raise :class:`CollectiveTimeout` naming ``what``."""

    @abstractmethod
    def broadcast(self, flat: Any, what: str) -> None:
        """Overwrite ``flat`` with rank 0's, on every rank."""

    @abstractmethod
    def allgather(self, data: np.ndarray, what: str) -> np.ndarray:
        """Every rank's ``data`` (a host uint8 array), one row per rank."""

    def progress(self, pending: list[Any]) -> None:  # noqa: B027 - NCCL's need nothing
        """Let started collectives advance without waiting for them (between backward's
        segments): a library that moves them only inside its calls needs one."""

    def abort(self, status: int) -> None:
        """End every rank of the job (after an error on this one)."""
        os._exit(status)

    def timed_out(self, what: str) -> CollectiveTimeout:
        return CollectiveTimeout(
            f"rank {self.rank} of {self.size}: {what} waited {self.timeout:g} s for the other "
            "ranks: one of them died, hangs, or is stuck in a slower step",
            hint="see the other ranks' messages; --collective-timeout SECONDS waits longer for "
            "slow steps (resume from the last snapshot with -snapshot)",
        )

    def poll(self, done: Callable[[], bool], what: str) -> None:
        """Wait until ``done()``, briefly spinning then sleeping, up to the timeout."""
        deadline = time.monotonic() + self.timeout
        spins = 0
        while not done():
            spins += 1
            if spins > 200:
                if time.monotonic() > deadline:
                    raise self.timed_out(what)
                time.sleep(0.0002)


class MpiCollective(Collective):
    """MPI through mpi4py: the ranks of ``mpirun -np N``, on one machine or many."""

    def __init__(self, comm: Any = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.MPI = mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = timeout

    def start_allreduce(self, flat: np.ndarray) -> Any:
        return self.comm.Iallreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)

    def wait(self, pending: Any, what: str) -> None:
        self.poll(pending.Test, what)

    def progress(self, pending: list[Any]) -> None:
        """Open MPI moves a non-blocking collective on only inside MPI calls: test them all."""
        if pending:
            self.MPI.Request.Testall(pending)

    def broadcast(self, flat: np.ndarray, what: str) -> None:
        self.wait(self.comm.Ibcast(flat, root=0), what)

    def allgather(self, data: np.ndarray, what: str) -> np.ndarray:
        rows = np.empty((self.size, data.size), dtype=np.uint8)
        self.wait(self.comm.Iallgather(np.ascontiguousarray(data), rows), what)
        return rows

    def abort(self, status: int) -> None:
        self.comm.Abort(status)


class NcclCollective(Collective):
    """NCCL through CuPy: one rank per GPU, the arrays on the device (``nccl`` is
    ``cupy.cuda.nccl``; ``stream`` the CUDA stream the net's kernels run on, or None where
    the arrays are host memory)."""

    def __init__(self, comm: Any, rank: int, size: int, nccl: Any, stream: Any = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        self.comm, self.rank, self.size = comm, rank, size
        self.nccl, self.stream, self.timeout = nccl, stream, timeout
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.uint8): nccl.NCCL_UINT8}  # fmt: skip

    def _call(self) -> tuple[int]:
        return (0 if self.stream is None else self.stream.ptr,)

    def _finished(self) -> Any:
        return None if self.stream is None else self.stream.record()

    def start_allreduce(self, flat: Any) -> Any:
        p = pointer(flat)
        self.comm.allReduce(p, p, flat.size, self._types[flat.dtype], self.nccl.NCCL_SUM,
                            *self._call())  # fmt: skip
        return self._finished()

    def wait(self, pending: Any, what: str) -> None:
        if pending is None:
            return
        try:
            self.poll(lambda: pending.done, what)
        except CollectiveTimeout:
            self.comm.abort()  # NCCL's kernels would wait for ever otherwise
            raise

    def broadcast(self, flat: Any, what: str) -> None:
        self.comm.bcast(pointer(flat), flat.size, self._types[flat.dtype], 0, *self._call())
        self.wait(self._finished(), what)

    def allgather(self, data: np.ndarray, what: str) -> np.ndarray:
        xp = array_module(self.stream)
        send = xp.asarray(np.ascontiguousarray(data))
        rows = xp.empty((self.size, data.size), dtype=np.uint8)
        self.comm.allGather(pointer(send), pointer(rows), data.size, self.nccl.NCCL_UINT8,
                            *self._call())  # fmt: skip
        self.wait(self._finished(), what)
        return rows if xp is np else xp.asnumpy(rows)


def pointer(array: Any) -> int:
    """The address of an array's data: device memory for CuPy, host memory for numpy."""
    return array.ctypes.data if isinstance(array, np.ndarray) else array.data.ptr


def array_module(stream: Any) -> Any:
    if stream is None:
        return np
    import cupy

    return cupy


def mpi() -> Any:
    """mpi4py's MPI module, or an error saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise UserError(
            f"this process runs under mpirun, but mpi4py does not load ({err})",
            hint="install Open MPI and the mpi extra: bash scripts/setup.sh --mpi "
            "(or pip install 'caffec[mpi]')",
        ) from None
    return MPI


def launched_by_mpirun() -> bool:
    """Whether mpirun (or srun, mpiexec) started this process as one of several ranks."""
    return any(int(os.environ.get(name, "1") or 1) > 1 for name in _MPI_SIZE_VARIABLES)


def local_rank() -> int:
    """This rank's index among the ranks on its machine (which GPU it takes)."""
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def share_cores() -> None:
    """The ranks of one machine split its cores, where neither a thread count nor mpirun's
    binding did: each taking every core would leave them waiting for each other's threads."""
    from caffec.runtime.threads import available_cpus

    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or os.environ.get("MPI_LOCALNRANKS")
                or 1)  # fmt: skip
    cpus = available_cpus()[0]
    unbound = cpus >= (os.cpu_count() or 1)
    if local > 1 and unbound and not {"CAFFEC_NUM_THREADS", "OMP_NUM_THREADS"} & set(os.environ):
        os.environ["CAFFEC_NUM_THREADS"] = str(max(1, cpus // local))


def join_mpi(timeout: float = DEFAULT_TIMEOUT) -> MpiCollective:
    """This process's place among mpirun's ranks, made the solver rank and count; the
    ranks of a machine split its cores."""
    share_cores()
    collective = MpiCollective(timeout=timeout)
    set_solver_count(collective.size)
    set_solver_rank(collective.rank)
    return collective


def join_nccl(device: Any, rank: int, size: int, uid: Any,
              timeout: float = DEFAULT_TIMEOUT) -> NcclCollective:  # fmt: skip
    """A NCCL communicator for ``device`` (caffec's CUDA device, whose stream the net's
    kernels run on) as rank ``rank`` of ``size``, made the solver rank and count."""
    from cupy.cuda import nccl

    device.cp.cuda.Device(device.id).use()  # the communicator's device is the current one
    comm = nccl.NcclCommunicator(size, tuple(uid), rank)
    set_solver_count(size)
    set_solver_rank(rank)
    return NcclCollective(comm, rank, size, nccl, device.stream, timeout)


def new_nccl_uid() -> list[int]:
    """A NCCL communicator's id, for every rank to join with."""
    try:
        from cupy.cuda import nccl
    except ImportError as err:
        raise UserError(
            f"training on several GPUs needs CuPy's NCCL ({err})",
            hint="pip install 'caffec[cuda]' with NCCL's libraries",
        ) from None
    return list(nccl.get_unique_id())


def spawn_gpu_ranks(argv: Sequence[str], devices: Sequence[int], timeout: float) -> int:
    """Run ``caffec argv`` once per GPU, as NCCL ranks, and wait for them all; the first to
    fail ends the others. Their exit status (the failed one's). Ctrl-C reaches the ranks,
    which stop together (SIGINT's effect); this process waits for them."""
    import signal
    import subprocess
    import sys

    uid = json.dumps(new_nccl_uid())
    children = []
    for rank, device in enumerate(devices):
        env = dict(os.environ, CAFFEC_NCCL_UID=uid, CAFFEC_NCCL_RANK=str(rank),
                   CAFFEC_NCCL_SIZE=str(len(devices)), CAFFEC_NCCL_DEVICE=str(device),
                   CAFFEC_COLLECTIVE_TIMEOUT=str(timeout))  # fmt: skip
        children.append(subprocess.Popen([sys.executable, "-m", "caffec.cli", *argv], env=env))
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _wait_for(children)
    finally:
        signal.signal(signal.SIGINT, interrupt)


def _wait_for(children: list[Any]) -> int:
    """Wait for every child; the first that fails ends the others. The failed one's status."""
    status = 0
    while children:
        time.sleep(0.2)
        for child in [c for c in children if c.poll() is not None]:
            children.remove(child)
            if child.returncode != 0 and status == 0:
                status = child.returncode
                for other in children:
                    other.terminate()
    return status


# --- the gradients ----------------------------------------------------------------------------
class Bucket:
    """Gradients reduced as one message: packed into ``flat`` (the gradient itself when it
    is alone in its bucket, so it is reduced in place)."""

    def __init__(self, arrays: list[Any], xp: Any) -> None:
        self.arrays = [a.reshape(-1) for a in arrays]
        total = sum(a.size for a in self.arrays)
        self.flat = self.arrays[0] if len(arrays) == 1 else xp.empty(total, arrays[0].dtype)

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes)

    def pack(self) -> None:
        if len(self.arrays) > 1:
            offset = 0
            for a in self.arrays:
                self.flat[offset : offset + a.size] = a
                offset += a.size

    def unpack(self, scale: float) -> None:
        if len(self.arrays) == 1:
            self.flat *= scale
            return
        offset = 0
        for a in self.arrays:
            a[...] = self.flat[offset : offset + a.size] * scale
            offset += a.size


def buckets(arrays: Sequence[Any], limit: int, xp: Any = np) -> list[Bucket]:
    """``arrays`` cut, in their order, into buckets of at most ``limit`` bytes (an array larger
    than that is a bucket of its own)."""
    out: list[Bucket] = []
    group: list[Any] = []
    size = 0
    for a in arrays:
        if group and size + a.nbytes > limit:
            out.append(Bucket(group, xp))
            group, size = [], 0
        group.append(a)
        size += a.nbytes
    if group:
        out.append(Bucket(group, xp))
    return out


def ready_points(manifest: Manifest, slots: Iterable[int]) -> dict[int, int]:
    """For each parameter-gradient slot, the first point where backward may be cut (a count
    of its steps) with the gradient final: after the last step that writes it (the backward
    step of every layer that holds the parameter, a shared one's included), moved past the
    steps a fused kernel joins to that one. 0: backward does not write it."""
    steps = manifest.backward
    position = {step.layer: i for i, step in enumerate(steps)}
    last: dict[int, int] = {}
    for p in manifest.params:
        if p.grad is not None and p.layer in position:
            last[p.grad] = max(last.get(p.grad, -1), position[p.layer])
    points = {}
    for slot in slots:
        cut = last.get(slot, -1) + 1
        while cut < len(steps) and steps[cut].joined:
            cut += 1
        points[slot] = cut
    return points


class DataParallel:
    """Caffe's solver callback for data parallelism (pycaffe's ``caffe.NCCL``): add it with
    ``solver.add_callback(dp)``; :meth:`bcast` makes every rank start from rank 0's weights.

    ``on_gradients_ready`` runs after each iteration's backward passes (all ``iter_size`` of
    them): it sums each gradient across the ranks, bucket by bucket, and divides it by their
    number, as Caffe does before its update. With ``overlap`` (Caffe's ``layer_wise_reduce``)
    the net runs the last of the ``iter_size`` backward passes in segments and tells this
    object where each ends (:meth:`cuts`, :meth:`reached`): the buckets final there start
    their reduction while backward goes on, and ``on_gradients_ready`` waits for them.
    """

    def __init__(self, net: Any, collective: Collective, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 overlap: bool = False, iter_size: int = 1) -> None:  # fmt: skip
        self.net = net
        self.collective = collective
        self.rank, self.size = collective.rank, collective.size
        self.reductions = 0  # for messages: how many this run has made
        m = net.artifact.manifest
        learnable = [p for p in m.params if p.grad is not None and p.shared_with is None]
        self._grad_slots = sorted(p.grad for p in learnable)
        # in the order backward finishes them (the last layers' first; within a step, the
        # arena's order reversed), so that each bucket is final as early as it can be
        ready = ready_points(m, self._grad_slots)
        order = sorted(self._grad_slots, key=lambda slot: (ready[slot], -slot))
        self._device = _DeviceBuffers(net) if m.target.name == "cuda" else None
        xp = np if self._device is None else self._device.xp
        self.buckets = buckets([self._array(slot) for slot in order], bucket_bytes, xp)
        self._bucket_slots: list[list[int]] = []  # each bucket's gradients
        taken = 0
        for bucket in self.buckets:
            self._bucket_slots.append(order[taken : taken + len(bucket.arrays)])
            taken += len(bucket.arrays)
        self.overlap, self.iter_size = overlap, iter_size
        self._backwards = 0  # backward passes of this iteration so far
        self._ready: tuple[Any, list[int]] | None = None  # (manifest, each bucket's point)
        self._pending: list[Any] = []  # the buckets' reductions started, in bucket order
        if overlap:
            net.backward_segments = self

    def _array(self, slot: int) -> Any:
        """The memory the compiled code reads the slot from (numpy here, CuPy on a GPU)."""
        if self._device is not None:
            return self._device.array(slot)
        return self.net._exec.persistent(slot)

    # Caffe's Solver::Callback
    def on_start(self) -> None:
        """Nothing to reduce before forward (the weights are equal on every rank already):
        the iteration's backward passes are counted from here."""
        self._backwards = 0

    def _ordered(self) -> Any:
        """On a GPU, queue the copies behind the net's kernels, on its stream."""
        stream = None if self._device is None else self._device.stream
        return contextlib.nullcontext() if stream is None else stream

    def on_gradients_ready(self) -> None:
        with self._ordered():
            self._reduce()
        self._backwards = 0

    def _reduce(self) -> None:
        """Start what backward has not started (everything, without overlap), then wait for
        each bucket in order and unpack it."""
        self._start(len(self.buckets))
        what = f"the gradient allreduce #{self.reductions + 1} of this run"
        for bucket, started in zip(self.buckets, self._pending, strict=True):
            self.collective.wait(started, what)
            bucket.unpack(1.0 / self.size)
        self._pending = []
        if self._device is not None:
            self._device.written(self._grad_slots)
        self.reductions += 1

    def _start(self, count: int) -> None:
        """Start the reductions of the first ``count`` buckets that have not started yet."""
        for bucket in self.buckets[len(self._pending) : count]:
            bucket.pack()
            self._pending.append(self.collective.start_allreduce(bucket.flat))

    # the net's backward in segments (CompiledNet.backward_segments)
    def _bucket_points(self) -> list[int]:
        """Where backward may be cut with each bucket final, for the build the net runs now
        (a rebuild, for a Filter's count, has steps of its own)."""
        m = self.net.artifact.manifest
        if self._ready is None or self._ready[0] is not m:
            points = ready_points(m, self._grad_slots)
            self._ready = (m, [max(points[s] for s in slots) for slots in self._bucket_slots])
        return self._ready[1]

    def cuts(self) -> list[int]:
        """Called as a whole backward pass begins: where to cut it (none but in the last of
        an iteration's ``iter_size`` passes, when overlapping). The buckets that backward
        does not write start now."""
        self._backwards += 1
        if not self.overlap or self._backwards < self.iter_size or self._pending:
            return []
        self.reached(0)
        ends = len(self.net.artifact.manifest.backward)
        return sorted({p for p in self._bucket_points() if 0 < p < ends})

    def reached(self, step: int) -> None:
        """Backward has run its steps before ``step``: start the buckets final there, and let
        those started move on."""
        points = self._bucket_points()
        final = len(self._pending)  # in bucket order, as every rank starts them
        while final < len(points) and points[final] <= step:
            final += 1
        with self._ordered():
            self._start(final)
        self.collective.progress(self._pending)

    def agree(self, loss: float, *flags: bool) -> tuple[float, list[bool]]:
        """The loss averaged over the ranks (that of the whole effective batch), and whether
        any rank raised each flag: a stop or a snapshot that a signal asked one rank for,
        which every rank must act on at the same iteration."""
        xp = np if self._device is None else self._device.xp
        with self._ordered():
            flat = xp.asarray([loss, *map(float, flags)], dtype=np.float64)
            self.collective.wait(self.collective.start_allreduce(flat), "the loss allreduce")
            values = [float(v) for v in flat]
        return values[0] / self.size, [v > 0 for v in values[1:]]

    def bcast(self) -> None:
        """Every rank takes rank 0's weights and solver histories (Caffe's NCCL::Broadcast)."""
        m = self.net.artifact.manifest
        slots = [p.data for p in m.params if p.shared_with is None]
        slots += [slot for _, slot in m.histories]
        if self._device is not None:
            self._device.flush(slots)
        with self._ordered():
            for slot in slots:
                array = self.net._exec.host(slot) if self._device is None else self._array(slot)
                self.collective.broadcast(array.reshape(-1), "the weights")
        if self._device is not None:
            self._device.written(slots)

    def check_agreement(self, described: dict[str, Any]) -> None:
        """Refuse to train unless every rank has the same ``described`` parts (the solver,
        the net's parameters, its batch): ranks that differ would reduce unrelated numbers."""
        names = sorted(described)
        digest = b"".join(hashlib.sha256(json.dumps(described[n], sort_keys=True,
                                                    default=str).encode()).digest()[:8]
                          for n in names)  # fmt: skip
        rows = self.collective.allgather(np.frombuffer(digest, np.uint8), "the setup check")
        for rank, row in enumerate(rows):
            differ = [n for i, n in enumerate(names) if bytes(row[i * 8 : i * 8 + 8])
                      != digest[i * 8 : i * 8 + 8]]  # fmt: skip
            if differ and rank != self.rank:
                raise RanksDisagree(
                    f"rank {rank} trains with other {' and '.join(differ)} than rank "
                    f"{self.rank}: data-parallel ranks must run the same net and solver",
                    hint="start every rank with the same solver, net and flags (and the same "
                    "files on every machine)",
                )


class NCCL(DataParallel):
    """pycaffe's ``caffe.NCCL(solver, uid)``: data parallelism between GPUs, one process each,
    after ``caffe.set_solver_count(n)``, ``caffe.set_solver_rank(r)`` and ``caffe.set_device``.
    """

    def __init__(self, solver: Any, uid: Any) -> None:
        from caffec.runtime import gpu

        if not gpu.gpu_mode():
            raise UserError(
                "caffe.NCCL joins GPUs: call caffe.set_mode_gpu() before making the solver",
                hint="on the CPU, join MPI's ranks: solver.data_parallel(caffec.join_mpi())",
            )
        from caffec.runtime.cuda_device import open_device

        device = open_device(gpu.current_device())
        super().__init__(solver.net, join_nccl(device, solver_rank(), solver_count(), uid),
                         overlap=solver.param.layer_wise_reduce,
                         iter_size=solver.settings.iter_size)  # fmt: skip

    @staticmethod
    def new_uid() -> list[int]:
        return new_nccl_uid()


class _DeviceBuffers:
    """The CUDA target's parameter buffers as CuPy arrays (numpy ones on an emulated device,
    which has no stream), the host copies to upload before a collective reads the device's,
    and those to forget once it has written them."""

    def __init__(self, net: Any) -> None:
        self.executor = net._exec
        self.stream = getattr(net._exec.device, "stream", None)
        self.xp = array_module(self.stream)

    def array(self, slot: int) -> Any:
        mirror = self.executor.persistent(slot)
        return mirror.device.view(mirror.dtype).reshape(mirror.shape)

    def flush(self, slots: Sequence[int]) -> None:
        """Upload what was written into the host copies since the last run (weights loaded)."""
        device = self.executor.device
        for slot in slots:
            mirror = self.executor.persistent(slot)
            if mirror in device.state.dirty:
                del device.state.dirty[mirror]
                mirror.read = device.upload(mirror.device, mirror.host.reshape(-1).view(np.uint8))
                mirror.synced = device.state.runs

    def written(self, slots: Sequence[int]) -> None:
        state = self.executor.device.state
        for slot in slots:
            mirror = self.executor.persistent(slot)
            state.dirty.pop(mirror, None)
            mirror.synced = -1
