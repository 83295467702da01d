"""The target travels in the compile options: what it decides, what the passes do with it,
and where it is recorded. (Each target's algorithms: test_conv_algorithms.py; that both
targets' kernel graphs compute the same: test_cuda_emulated.py.)"""

from __future__ import annotations

import json
import platform
from dataclasses import replace
from pathlib import Path

import pytest

from caffec.cli import main
from caffec.compiler.pipeline import KERNEL_PASSES, PASS_NAMES, Options, runs
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.driver import NetSource, compile_cached, cpu_target, kernel_graph
from caffec.errors import UserError

REPO = Path(__file__).resolve().parents[2]
LENET = REPO / "examples/mnist/lenet_train_test.prototxt"
TRAIN = Options(phase="TRAIN", shapes={"data": (4, 1, 28, 28)})


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 CPU names")
def test_the_cpu_target_asks_the_compiler_for_its_vector_width() -> None:
    assert cpu_target("x86-64-v2").vector_bytes == 16
    assert cpu_target("x86-64-v3").vector_bytes == 32
    assert cpu_target("x86-64-v4").vector_bytes == 64
    assert cpu_target().vector_bytes in (16, 32, 64)


def test_a_cpu_the_compiler_does_not_know_is_a_user_error(capsys) -> None:
    with pytest.raises(UserError, match="does not build for --target-cpu 'pentium-9000'"):
        cpu_target("pentium-9000")
    status = main(["compile", str(REPO / "examples/mnist/lenet.prototxt"), "--target-cpu",
                   "pentium-9000", "-o", "/nonexistent/x"])  # fmt: skip
    assert status == 2 and "Traceback" not in capsys.readouterr().err


def test_the_passes_that_run_follow_the_level_and_the_target() -> None:
    ran = {(level, target.name): [p.name for p in KERNEL_PASSES
                                  if runs(p, replace(TRAIN, opt_level=level, target=target))]
           for level in (0, 1, 2) for target in (CpuTarget(), CudaTarget())}  # fmt: skip
    assert ran[0, "c"] == ["lower", "autodiff", "solver", "prune", "plan_memory"]
    assert ran[1, "c"] == ["lower", "autodiff", "solver", "prune", "recompute", "plan_memory"]
    assert ran[2, "c"] == ["lower", "autodiff", "solver", "prune", "recompute", "fuse",
                           "parallel_loops", "plan_memory"]  # fmt: skip
    assert ran[2, "cuda"] == [("batched_loops" if p == "parallel_loops" else p)
                              for p in ran[2, "c"]]  # fmt: skip
    skipping = replace(TRAIN, skip=frozenset({"fuse"}))
    assert not any(p.name == "fuse" and runs(p, skipping) for p in KERNEL_PASSES)
    assert PASS_NAMES[-len(KERNEL_PASSES) :] == [p.name for p in KERNEL_PASSES]


def test_threads_are_the_targets() -> None:
    source = NetSource.from_file(LENET)
    for threads in (1, 3):
        kgraph = kernel_graph(source, replace(TRAIN, target=CpuTarget(threads=threads)))
        loops = [i for s in kgraph.forward + kgraph.backward for i in s.instrs
                 if hasattr(i, "body")]  # fmt: skip
        assert loops and max(loop.threads for loop in loops) == min(threads, 4)
        assert kgraph.target.threads == threads


def test_the_target_is_in_the_cache_key_and_the_manifest(capsys) -> None:
    source = NetSource.from_file(REPO / "examples/mnist/lenet.prototxt")
    options = Options(target=CpuTarget(vector_bytes=16, threads=1))
    one, two = (
        compile_cached(source, options),
        compile_cached(source, Options(target=CpuTarget(vector_bytes=16, threads=2))),
    )
    assert one != two
    target = json.loads((one / "manifest.json").read_text())["target"]
    assert target == {"name": "c", "cpu": "native", "vector_bytes": 16, "threads": 1,
                      "archs": None, "multiprocessors": None}  # fmt: skip


def test_a_kernel_graph_knows_what_it_was_built_for() -> None:
    options = replace(TRAIN, opt_level=1, target=CudaTarget(archs=("80",)))
    kgraph = kernel_graph(NetSource.from_file(LENET), options)
    assert kgraph.target == CudaTarget(archs=("80",)) and kgraph.opt_level == 1
