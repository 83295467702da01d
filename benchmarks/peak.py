"""The CPU's measured peak float32 rate, which caffec's efficiency figures are fractions of.

    python benchmarks/peak.py [--target-cpu native,x86-64-v3,...] [--rounds 5]

For each ``-march`` name, the probe of caffec.codegen.peak (chains of the generated GEMM's
FMA on that build's widest vectors) on one thread and on every CPU the process may use;
the best of ``--rounds`` rounds. Comparing ``native`` with ``x86-64-v3`` (AVX2) shows
whether the cores' FMA pipes are as wide as AVX-512's vectors.
"""

from __future__ import annotations

import argparse
import sys

from caffec.codegen.peak import measure_peak
from caffec.runtime.threads import available_cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-cpu", default="native",
                        help="-march names separated by commas (default: native)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cpus, limit = available_cpus()
    print(f"{cpus} CPUs available ({limit})")
    for cpu in args.target_cpu.split(","):
        peak = measure_peak(cpu, args.rounds)
        print(f"{cpu}: {peak.describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
