"""The ``caffec`` command line: one subcommand per job, Caffe's flag names where Caffe has them.

Errors caffec raises on purpose are printed without a traceback and end with
status 2 (bad input) or 1 (a caffec bug); anything unexpected is reported as
a caffec bug, with the traceback only when ``CAFFEC_DEBUG`` is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from caffec.errors import CaffecError, UserError


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``data=64,1,28,28`` → ``("data", (64, 1, 28, 28))``."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not NAME=N,C,H,W (positive integers), e.g. data=64,1,28,28"
        )
    return name, shape


def parse_memory(text: str) -> int:
    """``8G`` → 8 GiB in bytes (K, M, G, T: powers of 1024)."""
    from caffec.runtime.memory_limits import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_stages(text: str) -> list[str]:
    """``a,b`` → ``["a", "b"]``: Caffe's tools split ``-stage`` on commas."""
    return [stage for stage in text.split(",") if stage]


def _outputs_only_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outputs-only",
        action="store_true",
        help="share memory more: only the outputs stay readable after a run",
    )


def _max_memory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-memory", type=parse_memory, metavar="BYTES",
        help="the memory the net may take, e.g. 8G (default: this machine's memory)",
    )  # fmt: skip


def _precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", default="fp32", metavar="{fp32,tf32,bf16}",
        help="the GEMMs' arithmetic: fp32 (default), or on the CUDA target's tensor cores "
        "tf32 or bf16 (operands rounded, sums in float32)",
    )  # fmt: skip


def _level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-O",
        type=int,
        choices=[0, 1, 2],
        default=2,
        help="0: the reference build (every value its own memory, no fusion); 1: memory "
        "planning (sharing, in-place writes, recomputation); 2: also fuse kernels (default)",
    )


def _cmd_dump(args: argparse.Namespace) -> int:
    from caffec.compiler.dump import FORMATS, kernels_to_text
    from caffec.compiler.pipeline import KERNEL_PASSES, Options
    from caffec.driver import NetSource, kernel_graph, layer_graph
    from caffec.runtime.memory_limits import INDEX_LIMIT

    options = Options(
        phase=args.phase, stages=args.stage, level=args.level, shapes=dict(args.shape),
        keep_blobs=not args.outputs_only, opt_level=args.O,
        max_memory=INDEX_LIMIT,  # shapes whatever memory they take, if code can index them
    )  # fmt: skip
    source = NetSource.from_file(args.net)
    if args.after in {p.name for p in KERNEL_PASSES}:
        if args.format != "text":
            raise UserError(f"--after {args.after} shows the kernel graph, as text only",
                            hint="drop --format, or stop at a layer-graph pass")  # fmt: skip
        sys.stdout.write(kernels_to_text(kernel_graph(source, options, args.after)))
        return 0
    sys.stdout.write(FORMATS[args.format](layer_graph(source, options, args.after)))
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from caffec.formats import caffe_pb2
    from caffec.formats.binaryproto import file_kinds
    from caffec.formats.text_writer import format_text
    from caffec.formats.upgrade import upgrade_net, upgrade_solver
    from caffec.frontend.textformat import read_text_file

    try:
        binary = file_kinds(args.file) != ["text"]
    except UserError:  # missing or empty: the text reader says what is wrong
        binary = False
    if binary:
        return _upgrade_caffemodel(args.file, args.output)
    try:
        net, spans = read_text_file(args.file, caffe_pb2.NetParameter)
        text = format_text(upgrade_net(net, spans)[0])
    except UserError as net_error:
        try:
            solver, spans = read_text_file(args.file, caffe_pb2.SolverParameter)
        except UserError:
            raise net_error from None
        text = format_text(upgrade_solver(solver, spans)[0])
    if args.output:
        from caffec.formats.atomic import write_text_atomically

        write_text_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _upgrade_caffemodel(path: str, output: str | None) -> int:
    """``upgrade_net_proto_binary``: a V0/V1 caffemodel rewritten with ``layer`` entries, each
    layer keeping its blobs as stored (legacy shapes and diffs too)."""
    from caffec.formats.binaryproto_writer import write_caffemodel
    from caffec.formats.snapshots import read_weights

    if not output:
        raise UserError(f"{path} is a binary caffemodel; its upgrade is written to a file",
                        hint="give -o FILE.caffemodel")  # fmt: skip
    model = read_weights(path)
    write_caffemodel(output, model.net, model.blobs)
    blobs = sum(len(b) for b in model.blobs)
    print(f"wrote {output}: {len(model.net.layer)} layers, {blobs} blobs, in the current format")
    return 0


def _use_gpu(gpu: str | None) -> None:
    """``-gpu N``: nets made from now on are compiled for the CUDA target and run on GPU N."""
    if gpu is None:
        return
    from caffec.runtime.gpu import set_device, set_mode_gpu, single_device

    set_device(single_device(gpu))
    set_mode_gpu()


def _cmd_compile(args: argparse.Namespace) -> int:
    import shutil

    from caffec.compiler.pipeline import Options
    from caffec.compiler.targets.cuda import CudaTarget
    from caffec.driver import NetSource, compile_to, cpu_target
    from caffec.formats.atomic import replacing_directory

    if args.target == "cuda" and (args.weights or args.report):
        raise UserError(
            f"{'--weights' if args.weights else '--report'} runs the net on this machine's CPU, "
            "which a CUDA artifact does not",
            hint="give the weights to `caffec run ARTIFACT -gpu 0 --weights FILE` instead, or "
            "build for the C target",
        )
    target = (CudaTarget(archs=tuple(args.cuda_arch or ["90"])) if args.target == "cuda"
              else cpu_target(args.target_cpu))  # fmt: skip
    options = Options(
        phase="TRAIN" if args.train else args.phase, stages=args.stage, level=args.level,
        shapes=dict(args.shape), dtype=args.dtype, backward=True if args.train else None,
        keep_blobs=not args.outputs_only, opt_level=args.O, target=target,
        max_memory=args.max_memory, precision=args.precision,
    )  # fmt: skip
    out = Path(args.output or Path(args.net).with_suffix(".caffec").name)
    with replacing_directory(out) as folder:  # nothing replaced unless the weights fit too
        kgraph = compile_to(NetSource.from_file(args.net), options, folder)
        if args.weights:
            from caffec.runtime.compiled_net import CompiledNet

            # refuse weights that do not fit the net
            CompiledNet(folder, args.weights, strict_weights=args.strict_weights)
            shutil.copyfile(args.weights, folder / _embedded_weights(args.weights))
    print(
        f"wrote {out}: {len(kgraph.forward)} layers, {len(kgraph.kernels())} kernels "
        f"(from {len(kgraph.primitives())} primitives), "
        f"{'forward and backward' if kgraph.backward else 'forward only'}, {kgraph.dtype}"
        + (f", {kgraph.precision} GEMMs on tensor cores" if kgraph.precision != "fp32" else "")
    )
    if args.report:
        print(_report(out))
    return 0


# the file names of weights embedded in an artifact: binary, or Caffe's HDF5 form
EMBEDDED_WEIGHTS = ("weights.caffemodel", "weights.caffemodel.h5")


def _embedded_weights(weights: str | Path) -> str:
    return EMBEDDED_WEIGHTS[str(weights).endswith(".h5")]


def _report(artifact: Path) -> str:
    """Memory of an artifact: its arena against Caffe's allocation, and a run's peak RSS."""
    import math
    import subprocess

    from caffec.formats.manifest import Manifest

    m = Manifest.read(artifact / "manifest.json")
    mib = 1 << 20
    itemsize = 8 if m.dtype == "float64" else 4
    persistent = itemsize * sum(math.prod(b.shape) for b in m.buffers if b.offset is None)
    probe = (
        "import resource, numpy as np\n"
        "from caffec.runtime.compiled_net import CompiledNet\n"
        f"net = CompiledNet({str(artifact)!r})\n"
        "fed = net.artifact.manifest.inputs\n"
        "net.forward(**{n: np.zeros(net.blobs[n].data.shape) for n in fed})\n"
        "net.backward() if net.artifact.manifest.backward else None\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    rss = f"{int(result.stdout.split()[-1]) / 1024:.1f} MiB" if result.returncode == 0 else "n/a"
    ratio = m.arena_bytes / max(1, m.naive_bytes)
    return (
        f"arena {m.arena_bytes / mib:.1f} MiB (naive, as Caffe allocates: "
        f"{m.naive_bytes / mib:.1f} MiB, ratio {ratio:.2f})"
        f" · parameters and solver state {persistent / mib:.1f} MiB"
        f" · peak RSS of a forward{'+backward' if m.backward else ''}: {rss}"
    )


def _read_inputs(specs: list[str]) -> dict[str, object]:
    """``--input data=x.npy`` (one blob) or ``--input batch.npz`` (blobs by key)."""
    import numpy as np

    arrays: dict[str, object] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the input file '{path}': {err}") from None
        if hasattr(loaded, "files"):
            arrays.update({key: loaded[key] for key in loaded.files})
        elif not name:
            raise UserError(f"--input {spec}: name the blob, as NAME={path}")
        else:
            arrays[name] = loaded
    return arrays


def _check_artifact_target(artifact: Any, gpu: str | None) -> None:
    """A CUDA artifact runs with -gpu, a C one without: say which flag is missing."""
    target = artifact.manifest.target.name
    if target == "cuda" and gpu is None:
        raise UserError(f"{artifact.path} is built for the CUDA target", hint="run it with -gpu 0")
    if target == "c" and gpu is not None:
        raise UserError(
            f"{artifact.path} is built for the C target, which runs on the CPU",
            hint="drop -gpu, or compile the net with --target cuda",
        )


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from caffec.runtime.artifact_loader import load_artifact
    from caffec.runtime.compiled_net import CompiledNet
    from caffec.runtime.memory_limits import check_artifact

    embedded = (Path(args.artifact) / name for name in EMBEDDED_WEIGHTS)
    weights = args.weights or next((path for path in embedded if path.exists()), None)
    artifact = load_artifact(args.artifact)  # loaded once: checked, then run
    _check_artifact_target(artifact, args.gpu)
    check_artifact(artifact.manifest, args.max_memory, args.artifact)
    _use_gpu(args.gpu)
    net = CompiledNet(artifact, weights, seed=args.seed, strict_weights=args.strict_weights)
    outputs = net.forward(**_read_inputs(args.input))
    if args.output:
        target = Path(args.output)
        if target.suffix == ".npz":
            np.savez(target, **outputs)
        elif len(outputs) == 1:
            np.save(target, next(iter(outputs.values())))
        else:
            raise UserError(
                f"the net has {len(outputs)} outputs; write them to a .npz file",
                hint=f"outputs: {', '.join(outputs)}",
            )
    else:
        for name, value in outputs.items():
            print(
                f"{name}: shape {'x'.join(map(str, value.shape)) or 'scalar'}  "
                f"min {value.min():.6g}  max {value.max():.6g}  mean {value.mean():.6g}"
            )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from caffec.runtime import distributed

    if args.snapshot and args.weights:
        raise UserError("give -snapshot (resume) or -weights (finetune), not both")
    if args.collective_timeout <= 0:
        raise UserError(f"--collective-timeout {args.collective_timeout:g}: give seconds > 0")
    devices = _several_gpus(args)
    started = "CAFFEC_NCCL_RANK" in os.environ or distributed.launched_by_mpirun()
    if len(devices) > 1 and not started:
        return distributed.spawn_gpu_ranks(args.argv, devices, args.collective_timeout)
    collective = _join_ranks(args, devices)
    try:
        return _train(args, collective)
    except CaffecError as err:
        if collective is None or collective.size == 1:
            raise
        if isinstance(err, distributed.RanksDisagree):  # every rank found it: rank 0 says it
            if distributed.is_root():
                raise
            return err.exit_status
        print(f"caffec train: rank {collective.rank}: {err}", file=sys.stderr, flush=True)
        collective.abort(err.exit_status)  # the other ranks would wait for this one
        raise


def _several_gpus(args: argparse.Namespace) -> list[int]:
    """The devices of ``-gpu all`` or ``-gpu 0,1,...`` (data-parallel ranks, NCCL between
    them); none for one ``-gpu N`` or the CPU."""
    if args.gpu is None or (args.gpu != "all" and "," not in args.gpu):
        return []
    from caffec.runtime.gpu import device_ids

    return device_ids(args.gpu)


def _join_ranks(args: argparse.Namespace, devices: list[int]) -> Any:
    """This process's place among data-parallel ranks, its GPU chosen (None: it trains
    alone): a rank of mpirun's (MPI between CPU processes, NCCL between GPUs), or one of the
    processes that ``-gpu`` with several devices starts (NCCL)."""
    import json

    from caffec.runtime import distributed
    from caffec.runtime.cuda_device import open_device

    timeout = float(os.environ.get("CAFFEC_COLLECTIVE_TIMEOUT", args.collective_timeout))
    if "CAFFEC_NCCL_RANK" in os.environ:  # started by spawn_gpu_ranks
        device = int(os.environ["CAFFEC_NCCL_DEVICE"])
        rank, size = int(os.environ["CAFFEC_NCCL_RANK"]), int(os.environ["CAFFEC_NCCL_SIZE"])
        uid = json.loads(os.environ["CAFFEC_NCCL_UID"])
    elif distributed.launched_by_mpirun():
        mpi = distributed.join_mpi(timeout)
        if args.gpu is None:
            return mpi
        ids = devices or [int(args.gpu)]
        if distributed.local_rank() >= len(ids):
            raise UserError(
                f"rank {mpi.rank} is rank {distributed.local_rank()} on its machine, which has "
                f"no GPU of its own among -gpu {args.gpu}",
                hint="start as many ranks per machine as -gpu names devices",
            )
        device, rank, size = ids[distributed.local_rank()], mpi.rank, mpi.size
        uid = mpi.comm.bcast(distributed.new_nccl_uid() if rank == 0 else None, root=0)
    elif devices:  # -gpu all on one GPU: NCCL all the same, with one rank
        device, rank, size, uid = devices[0], 0, 1, distributed.new_nccl_uid()
    else:
        return None
    args.gpu = str(device)
    _use_gpu(args.gpu)
    return distributed.join_nccl(open_device(device), rank, size, uid, timeout)


def _train(args: argparse.Namespace, collective: Any) -> int:
    import signal

    from caffec.solver import Solver

    _train_mode(args)
    # as `caffe train`: -level sets the solver's train_state level (0 unless given), -stage
    # adds stages to it
    solver = Solver(args.solver, outputs_only=True, train_state=(args.level or 0, args.stage),
                    check_divergence=not args.allow_divergence,
                    max_memory=args.max_memory, precision=args.precision)  # fmt: skip
    if args.weights:
        paths = args.weights.split(",")
        for path in paths:
            solver.loop.log(f"Finetuning from {path}")
        solver.net.load_weights(paths, strict=args.strict_weights)
    if collective is not None:
        solver.loop.log(f"Data-parallel ranks: {collective.size}")
        solver.data_parallel(collective)
    effects = {"sigint": args.sigint_effect, "sighup": args.sighup_effect}

    def handle(signum: int, _frame: object) -> None:
        effect = effects["sigint" if signum == signal.SIGINT else "sighup"]
        if effect == "stop":
            solver.loop.stop_requested = True
        elif effect == "snapshot":
            solver.loop.snapshot_requested = True

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGHUP)}
    try:
        solver.solve(args.snapshot)
    finally:  # main() may be called in a longer-lived process (tests, scripts)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _train_mode(args: argparse.Namespace) -> None:
    """CPU or GPU as ``caffe train`` chooses: -gpu, else the solver's ``solver_mode: GPU`` on
    its ``device_id``; -cpu keeps such a solver on the CPU."""
    from caffec.frontend.loader import read_solver
    from caffec.solver import asks_for_gpu

    if args.gpu is not None and args.cpu:
        raise UserError("give -gpu or -cpu, not both")
    if args.gpu is not None:
        _use_gpu(args.gpu)
        return
    param, _ = read_solver(Path(args.solver))
    if args.cpu or not asks_for_gpu(param):
        return
    try:
        _use_gpu(str(param.device_id))
    except UserError as err:
        raise UserError(
            f"{args.solver} asks for solver_mode: GPU on device {param.device_id}: {err.message}",
            hint="pass -cpu to train on the CPU, or set solver_mode: CPU in the solver",
        ) from None


def _cmd_test(args: argparse.Namespace) -> int:
    import numpy as np

    from caffec.net import Net
    from caffec.runtime.glog import caffe_log

    _use_gpu(args.gpu)
    net = Net(args.model, caffec_phase(args.phase), weights=args.weights, stages=args.stage,
              level=args.level, strict_weights=args.strict_weights,
              max_memory=args.max_memory, precision=args.precision)  # fmt: skip
    weights = dict(net.artifact.manifest.loss_tops)
    sums: dict[str, np.ndarray] = {}
    loss = 0.0
    for i in range(args.iterations):
        outputs = net.forward()
        for name, value in outputs.items():
            sums[name] = sums.get(name, 0) + np.asarray(value, dtype=np.float64)
            loss += weights.get(name, 0) * float(np.sum(value))
            for score in np.asarray(value).reshape(-1):
                caffe_log(f"Batch {i}, {name} = {score:g}")
    caffe_log(f"Loss: {loss / args.iterations:g}")
    for name, total in sums.items():
        for score in (total / args.iterations).reshape(-1):
            line = f"{name} = {score:g}"
            if weights.get(name):
                line += f" (* {weights[name]:g} = {weights[name] * score:g} loss)"
            caffe_log(line)
    return 0


def _cmd_time(args: argparse.Namespace) -> int:
    from caffec.net import Net
    from caffec.runtime.glog import caffe_log
    from caffec.runtime.timing import benchmark

    _use_gpu(args.gpu)
    if args.iterations < 1:
        raise UserError("-iterations must be at least 1")
    net = Net(args.model, caffec_phase(args.phase), weights=args.weights, stages=args.stage,
              level=args.level, shapes=dict(args.shape), backward=True,
              strict_weights=args.strict_weights, max_memory=args.max_memory,
              precision=args.precision)  # fmt: skip

    timed = benchmark(net, args.iterations, caffe_log, kernels=args.kernels)
    _log_rates(net, timed, caffe_log, cpu=args.gpu is None)
    return 0


def _log_rates(net: Any, timed: dict[str, float], log: Callable[[str], None], cpu: bool) -> None:
    """After Caffe's report, lines it does not have: the FLOPs counted from the layer shapes
    (caffec.compiler.flops), each pass's rate and, on the CPU, its share of the measured
    peak (caffec.codegen.peak)."""
    from caffec.codegen.peak import measure_peak
    from caffec.compiler.flops import net_flops
    from caffec.runtime.threads import thread_policy

    flops = net_flops(net._network_file, net._options)
    log(f"FLOPs (convolutions and inner products, 2 per multiply-add): forward "
        f"{flops.forward / 1e9:.4g} G, backward {flops.backward / 1e9:.4g} G")  # fmt: skip
    peak, threads = None, thread_policy().threads
    if cpu:
        peak = measure_peak(net._options.target.cpu)
        log(f"Peak: {peak.describe()}")
    passes = [("Forward pass", "forward", flops.forward),
              ("Backward pass", "backward", flops.backward),
              ("Forward-Backward", "forward_backward", flops.step)]  # fmt: skip
    for label, key, count in passes:
        if count and timed[key] > 0:
            rate = count / timed[key] / 1e6  # FLOPs per ms to GFLOP/s
            share = ""
            if peak is not None:
                share = f", {100 * rate / peak.at(threads):.1f}% of the peak on {threads} threads"
            log(f"{label} rate: {rate:.4g} GFLOP/s{share}")


def caffec_phase(name: str) -> int:
    from caffec.runtime.compiled_net import TEST, TRAIN

    return TRAIN if name == "TRAIN" else TEST


def _cmd_convert_mnist(args: argparse.Namespace) -> int:
    from caffec.tools import convert_mnist

    count = convert_mnist(args.images, args.labels, args.db, backend=args.backend)
    print(f"wrote {count} records to {args.db}")
    return 0


def _cmd_convert_imageset(args: argparse.Namespace) -> int:
    from caffec.tools import convert_imageset

    count = convert_imageset(
        args.root, args.listfile, args.db, resize_height=args.resize_height,
        resize_width=args.resize_width, gray=args.gray, shuffle=args.shuffle,
        encoded=args.encoded, encode_type=args.encode_type, backend=args.backend,
        seed=args.seed, check_size=args.check_size,
    )  # fmt: skip
    print(f"wrote {count} records to {args.db}")
    return 0


def _cmd_compute_mean(args: argparse.Namespace) -> int:
    from caffec.runtime.glog import caffe_log as log
    from caffec.tools import compute_mean

    mean = compute_mean(args.db, args.output, backend=args.backend)
    if args.output:
        log(f"Write to {args.output}")
        print(f"wrote the {'x'.join(map(str, mean.shape))} mean to {args.output}")
    channels = mean.shape[1]
    log(f"Number of channels: {channels}")
    for c, value in enumerate(mean[0].reshape(channels, -1).mean(axis=1, dtype="float64")):
        log(f"mean_value channel [{c}]: {value:g}")
    return 0


def _cmd_convert_cifar(args: argparse.Namespace) -> int:
    from caffec.tools.cifar import convert_cifar

    for db, count in convert_cifar(args.input_folder, args.output_folder, args.backend).items():
        print(f"wrote {count} records to {db}")
    return 0


def _cmd_convert_mnist_siamese(args: argparse.Namespace) -> int:
    from caffec.tools.siamese import convert_mnist_siamese

    count = convert_mnist_siamese(args.images, args.labels, args.db, args.backend, args.seed)
    print(f"wrote {count} pairs to {args.db}")
    return 0


def _cmd_extract_features(args: argparse.Namespace) -> int:
    from caffec.net import Net
    from caffec.tools.features import write_features

    names, dbs = args.blobs.split(","), args.dbs.split(",")
    if args.num_batches < 1:
        raise UserError("NUM_BATCHES must be at least 1")
    if args.mode == "GPU":
        _use_gpu(str(args.device_id))

    def batches() -> Iterator[list[Any]]:
        # built once the databases are known to be new, so that a bad one fails first
        net = Net(args.net, caffec_phase("TEST"), weights=args.weights)
        unknown = [name for name in names if name not in net.blobs]
        if unknown:
            raise UserError(
                f"the net {args.net} has no blob {', '.join(map(repr, unknown))}",
                hint=f"its blobs: {', '.join(net.blobs)}",
            )
        for _ in range(args.num_batches):
            net.forward()
            yield [net.blobs[name].data for name in names]

    counts = write_features(batches(), names, dbs, args.backend)
    for name, db, count in zip(names, dbs, counts, strict=True):
        print(f"wrote the features of {count} items of '{name}' to {db}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from caffec.tools.inspect import describe_file

    sys.stdout.write(describe_file(args.file))
    return 0


def _cmd_draw(args: argparse.Namespace) -> int:
    from caffec.formats import caffe_pb2
    from caffec.frontend.loader import read_net
    from caffec.tools.draw import draw_to_file

    net, _ = read_net(args.net)
    phase = None if args.phase == "ALL" else caffe_pb2.Phase.Value(args.phase)
    draw_to_file(net, args.output, args.rankdir, phase, args.display_lrm)
    print(f"wrote {args.output}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from caffec.tools.plot import CAFFE_CHART_TYPES, describe, plot_logs

    chart, axis = args.chart, args.x
    if chart.isdigit():  # Caffe's plot_training_log.py chart types, 0..7
        chart, axis = CAFFE_CHART_TYPES[int(chart)]
    for log in plot_logs(args.logs, args.output, chart, axis, args.title):
        print(describe(log))
    print(f"wrote {args.output}")
    return 0


def _net_options(
    parser: argparse.ArgumentParser, phase: str = "TEST", caffe: bool = False, shape: bool = True
) -> None:
    """The options that pick which net a prototxt describes: phase, NetState, data shapes;
    ``caffe``: also under the single-dash names Caffe's tool takes (``-phase``)."""

    def names(flag: str) -> list[str]:
        return [f"-{flag}", f"--{flag}"] if caffe else [f"--{flag}"]

    parser.add_argument(*names("phase"), choices=["TRAIN", "TEST"], default=phase,
                        type=str.upper)  # fmt: skip
    _netstate_options(parser, names)
    if shape:
        parser.add_argument("--shape", action="append", default=[], type=parse_shape,
                            metavar="NAME=N,C,H,W",
                            help="the shape of a data layer's top (repeatable)")  # fmt: skip


def _strict_weights(parser: argparse.ArgumentParser, caffe: bool) -> None:
    names = ["-strict_weights", "--strict-weights"] if caffe else ["--strict-weights"]
    parser.add_argument(*names, action="store_true", dest="strict_weights",
                        help="weights that miss a layer with parameters are an error, "
                             "not a warning")  # fmt: skip


def _netstate_options(
    parser: argparse.ArgumentParser, names: Callable[[str], list[str]], level: int | None = 0
) -> None:
    """-stage (repeatable, and split on commas as Caffe splits it) and -level."""
    parser.add_argument(*names("stage"), action="extend", type=parse_stages, default=[],
                        help="NetState stages, separated by commas (repeatable)")  # fmt: skip
    parser.add_argument(*names("level"), type=int, default=level, help="the NetState level")


def _parser() -> argparse.ArgumentParser:
    from caffec.compiler.pipeline import PASS_NAMES
    from caffec.version import __version__

    parser = argparse.ArgumentParser(
        prog="caffec", description="A graph compiler for Caffe models."
    )
    parser.add_argument("--version", action="version", version=f"caffec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dump = sub.add_parser("dump", help="print a net's layer graph after a pass")
    dump.add_argument("net", help="a net .prototxt (any Caffe format version)")
    _net_options(dump)
    dump.add_argument("--after", choices=PASS_NAMES, help="stop after this pass (default: all)")
    dump.add_argument("--format", choices=["text", "json", "dot"], default="text")
    _level_option(dump)
    _outputs_only_option(dump)
    dump.set_defaults(run=_cmd_dump)

    upgrade = sub.add_parser("upgrade", help="rewrite a V0/V1 net or old solver in today's format")
    upgrade.add_argument("file", help="a net or solver .prototxt, or a binary .caffemodel")
    upgrade.add_argument("-o", "--output", help="write here instead of standard output "
                         "(a caffemodel's upgrade: required)")  # fmt: skip
    upgrade.set_defaults(run=_cmd_upgrade)

    compile_ = sub.add_parser("compile", help="compile a net into an artifact directory")
    compile_.add_argument("net", help="a net .prototxt")
    compile_.add_argument("-o", "--output", help="the artifact directory (default: NET.caffec)")
    compile_.add_argument("--train", action="store_true", help="TRAIN phase, with backward")
    _net_options(compile_)
    compile_.add_argument("--weights", help="a .caffemodel to check and embed in the artifact")
    _strict_weights(compile_, caffe=False)
    compile_.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    _precision_option(compile_)
    _level_option(compile_)
    _outputs_only_option(compile_)
    _max_memory_option(compile_)
    compile_.add_argument(
        "--report", action="store_true", help="print the arena against Caffe's, and peak RSS"
    )
    compile_.add_argument(
        "--target-cpu", default="native", help="the -march the C compiler builds for"
    )
    compile_.add_argument(
        "--target", choices=["c", "cuda"], default="c", help="generated C, or CUDA C (nvcc)"
    )
    compile_.add_argument(
        "--cuda-arch", action="append", metavar="CC",
        help="a compute capability to build machine code for (default 90; repeat for more)",
    )  # fmt: skip
    compile_.set_defaults(run=_cmd_compile)

    run = sub.add_parser("run", help="run a compiled artifact forward on .npy/.npz inputs")
    run.add_argument("artifact", help="a directory made by caffec compile")
    run.add_argument("--weights", help="a .caffemodel (default: the one embedded, if any)")
    _strict_weights(run, caffe=False)
    run.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.npy|FILE.npz",
        help="an input blob's data (repeatable)",
    )  # fmt: skip
    run.add_argument("--output", help="write the outputs to a .npy (one output) or .npz file")
    run.add_argument("--seed", type=int, default=0, help="seed of the fillers of missing weights")
    run.add_argument("-gpu", "--gpu", help="the GPU a CUDA artifact runs on")
    _max_memory_option(run)
    run.set_defaults(run=_cmd_run)

    train = sub.add_parser("train", help="train a net with a solver, as `caffe train`")
    train.add_argument("-solver", "--solver", required=True, help="the solver .prototxt")
    train.add_argument("-snapshot", "--snapshot", help="a .solverstate to resume from")
    train.add_argument("-weights", "--weights", help="caffemodels to finetune from (commas)")
    _strict_weights(train, caffe=True)
    train.add_argument("-allow_divergence", "--allow-divergence", action="store_true",
                       dest="allow_divergence",
                       help="train on when the loss or the weights stop being finite")  # fmt: skip
    train.add_argument("-gpu", "--gpu",
                       help="the GPU to run on (the CUDA target); several (0,1 or all): one "
                       "data-parallel process per GPU, NCCL between them")  # fmt: skip
    train.add_argument("-collective_timeout", "--collective-timeout", type=float,
                       default=300.0, dest="collective_timeout", metavar="SECONDS",
                       help="how long a data-parallel rank waits for the others")  # fmt: skip
    train.add_argument("-cpu", "--cpu", action="store_true",
                       help="run a solver that asks for solver_mode: GPU on the CPU")  # fmt: skip
    _max_memory_option(train)
    _precision_option(train)
    _netstate_options(train, lambda flag: [f"-{flag}", f"--{flag}"], level=None)
    for name, default in (("sigint", "stop"), ("sighup", "snapshot")):
        train.add_argument(f"-{name}_effect", f"--{name}_effect", default=default,
                           choices=["stop", "snapshot", "none"],
                           help=f"what {name.upper()} does (default {default})")  # fmt: skip
    train.set_defaults(run=_cmd_train)

    test = sub.add_parser("test", help="score a trained net, as `caffe test`")
    test.add_argument("-model", "--model", required=True, help="the net .prototxt")
    test.add_argument("-weights", "--weights", help="the trained .caffemodel")
    _strict_weights(test, caffe=True)
    test.add_argument("-iterations", "--iterations", type=int, default=50)
    test.add_argument("-gpu", "--gpu", help="the GPU to run on (the CUDA target)")
    _net_options(test, caffe=True, shape=False)
    _max_memory_option(test)
    _precision_option(test)
    test.set_defaults(run=_cmd_test)

    backends = {"choices": ["lmdb", "leveldb"], "default": "lmdb", "type": str.lower}
    mnist = sub.add_parser("convert-mnist", help="MNIST-format IDX files to a Datum database")
    mnist.add_argument("images", help="the images IDX file (plain or .gz)")
    mnist.add_argument("labels", help="the labels IDX file (plain or .gz)")
    mnist.add_argument("db", help="the database to create")
    mnist.add_argument("-backend", "--backend", **backends)
    mnist.set_defaults(run=_cmd_convert_mnist)

    imageset = sub.add_parser("convert-imageset", help="images listed with labels to a database")
    imageset.add_argument("root", help="the folder the list's paths are relative to")
    imageset.add_argument("listfile", help="lines of 'path label'")
    imageset.add_argument("db", help="the database to create")
    for flag in ("resize_height", "resize_width", "seed"):
        imageset.add_argument(f"-{flag}", f"--{flag}", type=int, default=0)
    for flag in ("gray", "shuffle", "encoded", "check_size"):
        imageset.add_argument(f"-{flag}", f"--{flag}", action="store_true")
    imageset.add_argument("-encode_type", "--encode_type", default="", help="png, jpg, ...")
    imageset.add_argument("-backend", "--backend", **backends)
    imageset.set_defaults(run=_cmd_convert_imageset)

    mean = sub.add_parser("compute-mean", help="the mean image of a database, as .binaryproto")
    mean.add_argument("db")
    mean.add_argument("output", nargs="?", help="the .binaryproto to write (default: none)")
    mean.add_argument("-backend", "--backend", **backends)
    mean.set_defaults(run=_cmd_compute_mean)

    cifar = sub.add_parser("convert-cifar", help="CIFAR-10's binary batches to two databases")
    cifar.add_argument("input_folder", help="holds data_batch_1.bin .. 5 and test_batch.bin")
    cifar.add_argument("output_folder", help="gets cifar10_train_BACKEND, cifar10_test_BACKEND")
    cifar.add_argument("backend", nargs="?", **backends)
    cifar.set_defaults(run=_cmd_convert_cifar)

    siamese = sub.add_parser("convert-mnist-siamese", help="random pairs of MNIST images")
    siamese.add_argument("images", help="the images IDX file (plain or .gz)")
    siamese.add_argument("labels", help="the labels IDX file (plain or .gz)")
    siamese.add_argument("db", help="the database to create")
    siamese.add_argument("-backend", "--backend", **{**backends, "default": "leveldb"})
    siamese.add_argument("-seed", "--seed", type=int, default=0, help="the seed of the pairs")
    siamese.set_defaults(run=_cmd_convert_mnist_siamese)

    time_ = sub.add_parser("time", help="time a net layer by layer, as `caffe time`")
    time_.add_argument("-model", "--model", required=True, help="the net .prototxt")
    time_.add_argument("-iterations", "--iterations", type=int, default=50)
    time_.add_argument("-gpu", "--gpu", help="the GPU to run on (the CUDA target)")
    time_.add_argument("-weights", "--weights", help="a .caffemodel to load before timing")
    _strict_weights(time_, caffe=True)
    _net_options(time_, "TRAIN", caffe=True)
    time_.add_argument("--kernels", action="store_true", help="also time every kernel")
    _max_memory_option(time_)
    _precision_option(time_)
    time_.set_defaults(run=_cmd_time)

    inspect = sub.add_parser("inspect", help="describe a .caffemodel, .binaryproto or .solverstate")
    inspect.add_argument("file")
    inspect.set_defaults(run=_cmd_inspect)

    features = sub.add_parser(
        "extract-features", help="blobs' values per item into databases, as extract_features"
    )
    features.add_argument("weights", help="the trained .caffemodel")
    features.add_argument("net", help="the net .prototxt (its TEST phase runs)")
    features.add_argument("blobs", help="the blobs to extract, separated by commas")
    features.add_argument("dbs", help="one new database per blob, separated by commas")
    features.add_argument("num_batches", type=int, help="how many forward passes")
    features.add_argument("backend", choices=["lmdb", "leveldb"], type=str.lower)
    features.add_argument("mode", nargs="?", choices=["CPU", "GPU"], default="CPU",
                          type=str.upper)  # fmt: skip
    features.add_argument("device_id", nargs="?", type=int, default=0, help="the GPU's id")
    features.set_defaults(run=_cmd_extract_features)

    draw = sub.add_parser("draw", help="draw a net with Graphviz, as Caffe's draw_net.py")
    draw.add_argument("net", help="a net .prototxt (any Caffe format version)")
    draw.add_argument("output", help="the drawing: .svg, .png, .pdf or .dot")
    draw.add_argument("--rankdir", choices=["LR", "TB", "BT", "RL"], default="LR",
                      type=str.upper, help="the direction the net flows in")  # fmt: skip
    draw.add_argument("--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL",
                      type=str.upper, help="draw only this phase's layers")  # fmt: skip
    draw.add_argument("--display-lrm", "--display_lrm", action="store_true",
                      help="show learning-rate multipliers")  # fmt: skip
    draw.set_defaults(run=_cmd_draw)

    plot = sub.add_parser("plot", help="chart a training log's loss and accuracy (matplotlib)")
    plot.add_argument("logs", nargs="+", metavar="LOG", help="logs of caffec train (its stderr)")
    plot.add_argument("output", metavar="OUTPUT", help="the chart: .png, .svg or .pdf")
    plot.add_argument("--chart", default="summary",
                      choices=["summary", "test-accuracy", "test-loss", "learning-rate",
                               "train-loss", *map(str, range(8))],
                      help="what to draw (default: loss beside test accuracy); 0..7: the "
                           "chart types of Caffe's plot_training_log.py")  # fmt: skip
    plot.add_argument("--x", choices=["iters", "seconds"], default="iters", type=str.lower,
                      help="the x axis: iterations or seconds since the log's start")  # fmt: skip
    plot.add_argument("--title", help="a title over the chart")
    plot.set_defaults(run=_cmd_plot)

    query = sub.add_parser("device-query", help="describe the GPUs, as `caffe device_query` "
                           "(also spelt device_query)")  # fmt: skip
    query.add_argument("-gpu", "--gpu", default="all", help="device ids, or all (the default)")
    query.set_defaults(run=_cmd_device_query)
    return parser


def _cmd_device_query(args: argparse.Namespace) -> int:
    from caffec.runtime.gpu import describe, device_ids

    blocks = []
    for device in device_ids(args.gpu):
        pairs = describe(device)
        width = max(len(label) for label, _ in pairs) + 2
        blocks.append("".join(f"{label + ':':<{width}}{value}\n" for label, value in pairs))
    sys.stdout.write("\n".join(blocks))
    return 0


# Caffe's spellings of commands caffec names otherwise: the same parser runs them
CAFFE_COMMANDS = {"device_query": "device-query"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv:
        argv[0] = CAFFE_COMMANDS.get(argv[0], argv[0])
    args = _parser().parse_args(argv)
    args.argv = argv  # what the processes of `train -gpu 0,1` are started with
    try:
        return args.run(args)
    except CaffecError as err:
        print(f"caffec {args.command}: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt as err:  # Ctrl-C; an Interrupted says what it stopped
        print(f"caffec {args.command}: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `caffec dump net.prototxt | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:  # noqa: BLE001 - every other failure is a caffec bug
        detail = traceback.format_exc() if os.environ.get("CAFFEC_DEBUG") else ""
        print(
            f"{detail}caffec {args.command}: internal error: {sys.exc_info()[1]!r}\n"
            "  this is a caffec bug; rerun with CAFFEC_DEBUG=1 for the traceback and report it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
