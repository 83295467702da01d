"""Building generated C into a shared library, through a cache.

A build is keyed by the hash of the source, the compiler's identity and the
flags, so the same net compiles once per machine. Entries are written under a
temporary name and renamed into place, so two processes building the same
net at once both end with a whole library and never see half of one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from caffec.errors import InternalError, UserError, did_you_mean
from caffec.formats.atomic import cannot_write, disk_full


def cache_dir() -> Path:
    """``$CAFFEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/caffec``, else ``~/.cache/caffec``."""
    if "CAFFEC_CACHE_DIR" in os.environ:
        return Path(os.environ["CAFFEC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "caffec"


@functools.cache
def compiler_fingerprint() -> str:
    """A hash of caffec's own code and templates: cached artifacts are only valid for it."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".j2", ".lark", ".proto") and path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _tool(variable: str, default: str, what: str, hint: str) -> str:
    """The program ``$variable`` names (else ``default``), if it is on PATH."""
    program = os.environ.get(variable, default)
    if shutil.which(program) is None:
        raise UserError(f"no {what}: '{program}' is not on PATH", hint=hint)
    return program


def c_compiler() -> str:
    return _tool("CC", "cc", "C compiler",
                 "install one (Debian: apt-get install build-essential) or set CC")  # fmt: skip


@functools.cache
def _compiler_identity(compiler: str) -> str:
    """What ``compiler --version`` says, whole: nvcc names its release on the fourth line."""
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return result.stdout.strip() or compiler


@functools.cache
def _supports(compiler: str, flag: str) -> bool:
    """Whether ``compiler`` accepts ``flag`` (OpenMP is missing on some systems)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.c")
        src.write_text("int probe(void) { return 0; }\n")
        result = subprocess.run(
            [compiler, flag, "-shared", "-fPIC", str(src), "-o", str(Path(tmp, "probe.so"))],
            capture_output=True,
        )
    return result.returncode == 0


def _check_cpu_name(target_cpu: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", target_cpu):
        raise UserError(f"--target-cpu '{target_cpu}' is not a CPU name", hint="e.g. x86-64-v3")


# how GCC ("valid arguments to '-march=' switch are: ...") and Clang ("valid target CPU
# values are: ...") list the CPU names they know, after refusing one
_CPU_NAMES = re.compile(r"valid (?:arguments to \S+ switch are|target CPU values are): ([^;\n]*)")


def _cpu_names_hint(target_cpu: str, stderr: str) -> str:
    """The CPU names the compiler listed when it refused ``target_cpu`` (a close one first)."""
    listed = _CPU_NAMES.search(stderr)
    if listed is None:
        return "use native (this machine's CPU), or a -march name of the C compiler"
    names = listed.group(1).replace(",", " ").split()
    close = did_you_mean(target_cpu, names)
    return f"{close + ' ' if close else ''}valid names: {' '.join(names)}"


# The C compiler's macros for vector instruction sets, widest first, and their width in bytes
_VECTOR_MACROS = [("__AVX512F__", 64), ("__AVX__", 32), ("__SSE2__", 16), ("__ARM_NEON", 16)]


@functools.cache
def vector_bytes(target_cpu: str) -> int:
    """The widest vectors the C compiler uses for ``-march=target_cpu`` (64 for AVX-512, 32
    for AVX, 16 for SSE2 or NEON, 0 for none), as its predefined macros say."""
    _check_cpu_name(target_cpu)
    compiler = c_compiler()
    result = subprocess.run(
        [compiler, f"-march={target_cpu}", "-dM", "-E", "-x", "c", os.devnull],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise UserError(
            f"the C compiler ({compiler}) does not build for --target-cpu '{target_cpu}'",
            hint=_cpu_names_hint(target_cpu, result.stderr),
        )
    defined = set(re.findall(r"#define (\w+)", result.stdout))
    return next((width for macro, width in _VECTOR_MACROS if macro in defined), 0)


def c_flags(target_cpu: str = "native", reference: bool = False) -> list[str]:
    """The flags caffec builds with: optimised, position-independent, threaded when possible.

    ``reference`` builds (``-O0``) are compiled at -O1: no auto-vectorisation, so the
    reference is also a check on the C compiler's optimiser (GCC 12 at -O3 has miscompiled
    generated kernels), and they compile in less than half the time."""
    _check_cpu_name(target_cpu)
    compiler = c_compiler()
    flags = ["-O1" if reference else "-O3", "-fPIC", "-shared", "-std=c99", "-fno-math-errno",
             "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]  # fmt: skip
    flags.append(f"-march={target_cpu}")
    if _supports(compiler, "-fopenmp"):
        flags.append("-fopenmp")
    return flags


NO_VECTORISER = "-fno-tree-vectorize"
# how GCC and Clang say that they failed, not the source
_CRASH = re.compile(r"internal compiler error|PLEASE submit a bug report")


class CompilerCrash(InternalError):
    """The compiler itself failed on generated code (GCC's "internal compiler error")."""


def build_library(source: str, flags: list[str]) -> Path:
    """The shared library built from ``source`` with ``flags`` (from the cache when there).

    Where the C compiler crashes on the source, the build is tried once more without its
    vectoriser (``-fno-tree-vectorize``), with a warning: GCC 12's vectoriser has crashed on
    generated kernels, at -O2 as at -O3; the GEMM and convolution kernels are written with
    vector types, which do not need it, so the cost is in the other kernels' loops."""
    compiler = c_compiler()
    identity = _compiler_identity(compiler)

    def build(flags: list[str]) -> Path:
        command = [compiler, *flags, "kernels.c", "-o", "kernels.so", "-lm"]
        return _cached_build(source, command, identity, "kernels.c", "kernels.so")

    try:
        return build(flags)
    except CompilerCrash as crash:
        if NO_VECTORISER in flags:
            raise
        lines = crash.message.splitlines()
        said = [line.strip() for line in lines if "internal compiler error" in line][:1]
        print("\n  ".join([f"caffec: warning: {lines[0]}", *said,
                            f"built again with {NO_VECTORISER}, which is slower"]),
              file=sys.stderr)  # fmt: skip
        return build([*flags, NO_VECTORISER])


def nvcc() -> str:
    return _tool("NVCC", "nvcc", "CUDA compiler",
                 "install the CUDA toolkit (its bin/ on PATH), or set NVCC")  # fmt: skip


def cuda_flags(archs: tuple[str, ...] = ("90",)) -> list[str]:
    """nvcc's flags: a fat binary with machine code for each of ``archs`` (compute
    capabilities such as "90": H100 and H200) and PTX for the first, which newer GPUs
    compile when they load it."""
    for arch in archs:
        if not re.fullmatch(r"[0-9]{2,3}[a-z]?", arch):
            raise UserError(f"--cuda-arch '{arch}' is not a compute capability", hint="e.g. 90")
    flags = ["-fatbin", "-O3"]
    for number, arch in enumerate(archs):
        codes = f"sm_{arch},compute_{arch}" if number == 0 else f"sm_{arch}"
        flags.append(f"-gencode=arch=compute_{arch},code=[{codes}]")
    return flags


def build_cuda(source: str, flags: list[str]) -> Path:
    """The fat binary nvcc builds from ``source`` with ``flags`` (from the cache when there)."""
    compiler = nvcc()
    command = [compiler, *flags, "kernels.cu", "-o", "kernels.fatbin"]
    return _cached_build(
        source, command, _compiler_identity(compiler), "kernels.cu", "kernels.fatbin"
    )


def _cached_build(
    source: str, command: list[str], identity: str, source_name: str, output_name: str
) -> Path:
    """Run ``command``, which reads ``source_name`` and writes ``output_name``, on ``source``
    in a temporary folder of the cache entry its hash names; move the output into place.
    A crash of the compiler is kept in the entry too (``crash.txt``, the message), so that
    the next build of the same source goes to the fallback without crashing it again."""
    key = hashlib.sha256("\0".join([source, identity, *command[1:]]).encode()).hexdigest()
    entry = cache_dir() / Path(source_name).suffix[1:] / key[:2] / key
    output, crash = entry / output_name, entry / "crash.txt"
    if output.exists():
        return output
    if crash.exists():
        raise CompilerCrash(crash.read_text(encoding="utf-8"))
    try:
        entry.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=entry) as tmp:
            Path(tmp, source_name).write_text(source, encoding="utf-8")
            result = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
            if result.returncode != 0:
                _check_disk(result.stderr, entry, command[0])
                crashed = bool(_CRASH.search(result.stderr))
                message = _describe_failure(source, result.stderr, source_name, crashed)
                if not crashed:
                    raise InternalError(message)
                Path(tmp, "crash.txt").write_text(message, encoding="utf-8")
                os.replace(Path(tmp, "crash.txt"), crash)
                raise CompilerCrash(message)
            os.replace(Path(tmp, output_name), output)
            if not (entry / source_name).exists():
                os.replace(Path(tmp, source_name), entry / source_name)
    except OSError as err:
        raise cannot_write(entry, err, CACHE_FULL) from None
    return output


CACHE_FULL = "free some space on that disk, or set CAFFEC_CACHE_DIR to a folder on another one"


def _check_disk(stderr: str, entry: Path, compiler: str) -> None:
    """A compiler that failed because the disk is full (the cache's, or its temporaries'
    in $TMPDIR) is no caffec bug: a UserError quoting it."""
    said = [line.strip() for line in stderr.splitlines() if disk_full(line)]
    if said:
        raise UserError(
            f"{entry}: cannot build: {disk_full(said[0])} ({compiler}: {said[0]})",
            hint=f"{CACHE_FULL} (and TMPDIR, where the compiler writes its temporaries)",
        )


def _describe_failure(source: str, stderr: str, source_name: str, crashed: bool = False) -> str:
    """Name the generated kernel the compiler rejected (or crashed on): a caffec bug."""
    lines = source.splitlines()
    kernel = None
    match = re.search(rf"{re.escape(source_name)}[:(](\d+)", stderr)
    if match:
        for number in range(min(int(match.group(1)), len(lines)) - 1, -1, -1):
            found = re.match(r'(?:static|extern "C" __global__) void (k\d+_\w+)\(', lines[number])
            if found:
                kernel = found.group(1)
                break
    where = f" in kernel {kernel}" if kernel else ""
    first = "\n".join(stderr.strip().splitlines()[:12])
    compiler = "nvcc" if source_name.endswith(".cu") else "the C compiler"
    what = "crashed on" if crashed else "rejected"
    return (
        f"{compiler} {what} caffec's generated code{where} (a caffec bug; please report it "
        f"with the net):\n{first}"
    )
