"""The peak probe (caffec.codegen.peak): built for the build's instruction set, run on every
CPU the process may use, kept once measured. No timed assertions: rates only have to be
consistent with each other."""

from __future__ import annotations

import platform

import pytest

from caffec.codegen.peak import ISA_NAMES, Peak, measure_peak
from caffec.codegen.toolchain import vector_bytes
from caffec.runtime.threads import available_cpus


def test_the_probe_runs_the_builds_widest_vectors_on_every_cpu() -> None:
    peak = measure_peak()
    width = vector_bytes("native")
    assert peak.lanes == max(width // 4, 1)
    assert peak.isa == {64: "AVX-512", 32: "AVX"}.get(width, peak.isa)
    assert peak.isa in ISA_NAMES.values()
    assert peak.threads == available_cpus()[0]
    assert peak.per_core > 0
    # more threads add at most their own rate (a fifth more for a noisy round alone)
    assert 0 < peak.total <= 1.2 * peak.per_core * peak.threads
    assert measure_peak() is peak  # measured once per process


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64-v3 is an x86 CPU")
def test_narrower_vectors_are_built_for_a_narrower_cpu() -> None:
    assert measure_peak("x86-64-v3", rounds=1).lanes == 8


def test_the_peak_of_fewer_threads_scales_one_cores() -> None:
    peak = Peak(per_core=100.0, total=180.0, threads=2, isa="AVX", lanes=8)
    assert peak.at(1) == 100.0
    assert peak.at(2) == peak.at(8) == 180.0
    assert "180 GFLOP/s" in peak.describe() and "100 on one" in peak.describe()
