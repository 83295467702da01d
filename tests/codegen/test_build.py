"""The build cache: one compile per source, atomic entries, compiler failures named."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffec.codegen.toolchain import build_library, c_flags
from caffec.errors import InternalError

SOURCE = "static void k0_relu_map(void** buf, long n) { (void)buf; (void)n; }\nint f(void) { return 1; }\n"


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAFFEC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_second_build_comes_from_the_cache(private_cache: Path) -> None:
    flags = c_flags(reference=True)
    first = build_library(SOURCE + "/* 1 */\n", flags)
    stamp = first.stat().st_mtime_ns
    assert build_library(SOURCE + "/* 1 */\n", flags) == first
    assert first.stat().st_mtime_ns == stamp
    assert build_library(SOURCE + "/* 2 */\n", flags) != first
    assert not [p for p in private_cache.rglob("*") if p.name.startswith("tmp")]


def test_concurrent_builds_of_the_same_source_both_succeed(private_cache: Path) -> None:
    code = (
        "from caffec.codegen.toolchain import build_library, c_flags\n"
        f"print(build_library({SOURCE + '/* race */'!r}, c_flags(reference=True)))\n"
    )
    env = {**os.environ, "CAFFEC_CACHE_DIR": str(private_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]  # fmt: skip
    paths = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    (library,) = paths
    assert Path(library).stat().st_size > 0


def test_a_rejected_kernel_is_named_as_a_caffec_bug(private_cache: Path) -> None:
    broken = "static void k7_convolution_gemm(void** buf, long n) {\n    this is not C;\n}\n"
    with pytest.raises(InternalError) as info:
        build_library(broken, c_flags(reference=True))
    assert "in kernel k7_convolution_gemm" in info.value.message
    assert "caffec bug" in info.value.message
    assert info.value.exit_status == 1


def test_target_cpu_is_checked() -> None:
    from caffec.errors import UserError

    with pytest.raises(UserError, match="not a CPU name"):
        c_flags("native; rm -rf /")
    assert "-march=x86-64" in c_flags("x86-64")


def _crashing_compiler(folder: Path, unless: str) -> str:
    """A C compiler that crashes as GCC does on its own bugs, unless given the flag ``unless``
    (then it is the real one)."""
    wrapper = folder / "crashing-cc"
    real = os.environ.get("CC", "cc")
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" {unless} "*|*" --version "*) exec {real} "$@";; esac\n'
        f'echo crash >> "{folder}/crashes"\n'
        'echo "kernels.c:1:13: internal compiler error: in vectorizable_live_operation" >&2\n'
        "exit 1\n"
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def test_a_compiler_crash_is_built_again_without_the_vectoriser(
    private_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """GCC 12's vectoriser has crashed on generated kernels: a compiler that crashes unless
    the vectoriser is off still gives a working library, and a warning that says so."""
    flags = c_flags(reference=True)
    monkeypatch.setenv("CC", _crashing_compiler(tmp_path, "-fno-tree-vectorize"))
    library = build_library(SOURCE, flags)
    assert ctypes.CDLL(str(library)).f() == 1
    warning = capfd.readouterr().err
    assert "crashed on caffec's generated code in kernel k0_relu_map" in warning
    assert "internal compiler error: in vectorizable_live_operation" in warning
    assert "built again with -fno-tree-vectorize" in warning
    # the crash is remembered: the next build of the same source does not crash again
    assert build_library(SOURCE, flags) == library
    assert (tmp_path / "crashes").read_text() == "crash\n"
    assert "built again with -fno-tree-vectorize" in capfd.readouterr().err


def test_a_compiler_that_crashes_either_way_is_a_caffec_bug(
    private_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = c_flags(reference=True)
    monkeypatch.setenv("CC", _crashing_compiler(tmp_path, "--never-given"))
    with pytest.raises(InternalError, match="crashed on caffec's generated code") as info:
        build_library(SOURCE, flags)
    assert info.value.exit_status == 1


def test_the_cache_tells_compiler_releases_apart(
    private_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvcc's first line of ``--version`` is the same for every release: the whole text keys
    the cache, so another release of a compiler builds anew."""
    flags = c_flags(reference=True)
    libraries = []
    for release in ("12.9", "13.0"):
        wrapper = tmp_path / f"cc-{release}"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'case " $* " in *" --version "*) echo "A compiler driver"; echo "release {release}";'
            f' exit 0;; esac\nexec {os.environ.get("CC", "cc")} "$@"\n'
        )
        wrapper.chmod(0o755)
        monkeypatch.setenv("CC", str(wrapper))
        libraries.append(build_library(SOURCE, flags))
    assert libraries[0] != libraries[1]
