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
from collections.abc import Sequence
from pathlib import Path

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


def _cmd_dump(args: argparse.Namespace) -> int:
    from caffec.compiler.dump import FORMATS
    from caffec.compiler.pipeline import Options, load_layer_graph

    options = Options(
        phase=args.phase, stages=args.stage, level=args.level, shapes=dict(args.shape)
    )
    graph = load_layer_graph(args.net, options, after=args.after)
    sys.stdout.write(FORMATS[args.format](graph))
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from caffec.frontend import caffe_pb2
    from caffec.frontend.textformat import format_text, read_text_file
    from caffec.frontend.upgrade import upgrade_net, upgrade_solver

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
        _write_atomically(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from caffec.frontend.binaryproto import describe_file

    sys.stdout.write(describe_file(args.file))
    return 0


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {err.strerror}") from err


def _parser() -> argparse.ArgumentParser:
    from caffec.compiler.pipeline import PASS_NAMES

    parser = argparse.ArgumentParser(
        prog="caffec", description="A graph compiler for Caffe models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dump = sub.add_parser("dump", help="print a net's layer graph after a pass")
    dump.add_argument("net", help="a net .prototxt (any Caffe format version)")
    dump.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST", type=str.upper)
    dump.add_argument("--stage", action="append", default=[], help="a NetState stage (repeatable)")
    dump.add_argument("--level", type=int, default=0, help="the NetState level")
    dump.add_argument(
        "--shape",
        action="append",
        default=[],
        type=parse_shape,
        metavar="NAME=N,C,H,W",
        help="the shape of a data layer's top (repeatable)",
    )
    dump.add_argument("--after", choices=PASS_NAMES, help="stop after this pass (default: all)")
    dump.add_argument("--format", choices=["text", "json", "dot"], default="text")
    dump.set_defaults(run=_cmd_dump)

    upgrade = sub.add_parser("upgrade", help="rewrite a V0/V1 net or old solver in today's format")
    upgrade.add_argument("file", help="a net or solver .prototxt")
    upgrade.add_argument("-o", "--output", help="write here instead of standard output")
    upgrade.set_defaults(run=_cmd_upgrade)

    inspect = sub.add_parser("inspect", help="describe a .caffemodel, .binaryproto or .solverstate")
    inspect.add_argument("file")
    inspect.set_defaults(run=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except CaffecError as err:
        print(f"caffec {args.command}: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
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
