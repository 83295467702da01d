"""The thread policy: small kernels open no parallel region, and the thread count is the
runtime's (CAFFEC_NUM_THREADS, OMP_NUM_THREADS, the CPUs this process may use), read when
an artifact loads, never compiled in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffec.codegen.c import CRenderer
from caffec.compiler.pipeline import Options
from caffec.driver import NetSource, compile_to, kernel_graph
from caffec.errors import UserError
from caffec.runtime import threads
from caffec.runtime.threads import thread_policy

REPO = Path(__file__).resolve().parents[2]
NET = """
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 1 dim: {channels} dim: {size} dim: {size} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: {channels} kernel_size: 3 pad: 1
                            weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "mix" type: "Convolution" bottom: "conv" top: "mix"
        convolution_param {{ num_output: {channels} kernel_size: 1
                            weight_filler {{ type: "gaussian" std: 0.1 }}
                            bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "mix_relu" type: "ReLU" bottom: "mix" top: "mix" }}
layer {{ name: "norm" type: "LRN" bottom: "mix" top: "norm" }}
layer {{ name: "scale" type: "Power" bottom: "norm" top: "out" power_param {{ scale: 0.5 }} }}
"""


def source_of(tmp_path: Path, channels: int, size: int) -> str:
    """The generated C of NET with ``channels`` channels of ``size`` x ``size``."""
    path = tmp_path / f"net{channels}x{size}.prototxt"
    path.write_text(NET.format(channels=channels, size=size))
    options = Options(base_dir=tmp_path)
    kgraph = kernel_graph(NetSource.from_file(path), options)
    kgraph.number_buffers()
    return CRenderer(options.target).render(kgraph).source


def regions(source: str) -> int:
    """The parallel regions of the kernels and steps (caffec_kernels, which times kernels
    one by one, aside)."""
    return source.split("int caffec_kernels(")[0].count("#pragma omp parallel")


def test_a_small_net_opens_no_parallel_region_and_a_large_one_does(tmp_path: Path) -> None:
    small = source_of(tmp_path, channels=4, size=8)
    assert regions(small) == 0, "every kernel of a tiny net runs on the calling thread"
    assert "on the calling thread" in small
    large = source_of(tmp_path, channels=32, size=64)
    assert regions(large) > 0
    # the 1x1 convolution's GEMM and its bias and ReLU, LRN's sums of squares and its map
    # (and the 3x3 convolution's, where its algorithm fuses its ReLU): one region each
    assert large.count("one parallel region for every part") >= 2
    # no region fixes its thread count: each takes the runtime's
    for pragma in re.findall(r"#pragma omp parallel[^\n]*", large.split("int caffec_kernels(")[0]):
        assert "num_threads(caffec_threads)" in pragma or "num_threads(team)" in pragma, pragma


PROBE = """
import json, sys
import numpy as np
from caffec.runtime.artifact_loader import load_artifact
from caffec.runtime.compiled_net import CompiledNet
from caffec.runtime.executor import Executor
from caffec.runtime.threads import thread_policy

net = CompiledNet(sys.argv[1])
x = np.linspace(-1, 1, net.blobs["data"].data.size).reshape(net.blobs["data"].data.shape)
out = net.forward(data=x)["out"]
policy = thread_policy()
print(json.dumps({"threads": Executor(load_artifact(sys.argv[1])).threads,
                  "source": policy.source, "out": out.ravel().tolist()}))
"""


def run_probe(artifact: Path, **env: str) -> dict:
    """What a fresh process running ``artifact`` under ``env`` reports (see PROBE)."""
    base = {k: v for k, v in os.environ.items() if k not in ("CAFFEC_NUM_THREADS",
                                                            "OMP_NUM_THREADS")}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", PROBE, str(artifact)], env={**base, **env},
                            capture_output=True, text=True, cwd=REPO, check=True)  # fmt: skip
    return json.loads(result.stdout.splitlines()[-1])


def test_the_thread_count_follows_the_environment_without_recompiling(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(channels=32, size=64))
    artifact = tmp_path / "net.caffec"
    compile_to(NetSource.from_file(path), Options(base_dir=tmp_path), artifact)
    library = artifact / "kernels.so"
    built = library.stat().st_mtime_ns
    three = run_probe(artifact, CAFFEC_NUM_THREADS="3", OMP_NUM_THREADS="2")
    assert (three["threads"], three["source"]) == (3, "CAFFEC_NUM_THREADS")
    two = run_probe(artifact, OMP_NUM_THREADS="2,1")
    assert (two["threads"], two["source"]) == (2, "OMP_NUM_THREADS")
    one = run_probe(artifact, CAFFEC_NUM_THREADS="1")
    assert one["threads"] == 1
    cpus = run_probe(artifact)
    assert cpus["threads"] == threads.available_cpus()[0]
    assert library.stat().st_mtime_ns == built, "the artifact was not rebuilt"
    # each output is computed alike on any count (each GEMM tile by one thread, in order)
    np.testing.assert_array_equal(three["out"], one["out"])
    np.testing.assert_array_equal(cpus["out"], one["out"])
    # and as the reference build (-O0: no fusion, so no shared regions) computes it
    reference = tmp_path / "reference.caffec"
    compile_to(NetSource.from_file(path), Options(base_dir=tmp_path, opt_level=0), reference)
    expected = run_probe(reference, CAFFEC_NUM_THREADS="3")["out"]
    np.testing.assert_allclose(three["out"], expected, rtol=1e-5, atol=1e-6)


def test_the_policy_takes_caffec_then_openmp_then_the_cpus(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CAFFEC_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_policy().threads == threads.available_cpus()[0]
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    assert (thread_policy().threads, thread_policy().source) == (4, "OMP_NUM_THREADS")
    monkeypatch.setenv("CAFFEC_NUM_THREADS", " 6 ")
    assert (thread_policy().threads, thread_policy().source) == (6, "CAFFEC_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # libgomp ignores it, and so does caffec
    monkeypatch.delenv("CAFFEC_NUM_THREADS")
    assert thread_policy().source in ("affinity", "cgroup quota")
    monkeypatch.setenv("CAFFEC_NUM_THREADS", "0")
    with pytest.raises(UserError, match="CAFFEC_NUM_THREADS='0' is not a number of threads"):
        thread_policy()


def test_a_cgroup_quota_limits_the_cpus(tmp_path: Path) -> None:
    job = tmp_path / "kubepods/job"
    job.mkdir(parents=True)
    (job / "cpu.max").write_text("150000 100000\n")
    # 1.5 CPUs: two threads, each busy part of the time
    assert threads._cgroup_quota(tmp_path, "0::/kubepods/job\n") == 2
    (tmp_path / "kubepods/cpu.max").write_text("50000 100000\n")  # a parent's is less
    assert threads._cgroup_quota(tmp_path, "0::/kubepods/job\n") == 1
    (job / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods/cpu.max").unlink()
    assert threads._cgroup_quota(tmp_path, "0::/kubepods/job\n") is None
    v1 = tmp_path / "cpu,cpuacct/docker"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads._cgroup_quota(tmp_path, "4:cpu,cpuacct:/docker\n0::/\n") == 3
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads._cgroup_quota(tmp_path, "4:cpu,cpuacct:/docker\n0::/\n") is None


def test_idle_threads_sleep_unless_the_user_chose(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    threads.configure_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == threads.WAIT_POLICY
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "30000")
    threads.configure_openmp()
    assert "OMP_WAIT_POLICY" not in os.environ
    assert thread_policy().wait_policy == "GOMP_SPINCOUNT=30000"
