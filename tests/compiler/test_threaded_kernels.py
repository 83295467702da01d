"""No kernel runs on one thread over a large tensor (the fast-CPU-kernels issue's rule).

Each kernel of a net's C source either runs in a per-image loop across threads, or has
an OpenMP region of its own, or writes less than ``LARGE`` numbers. Checked on the
generated source of Caffe's reference nets at a small batch (their tensors are still
large), with two CPUs, as CI has; `caffec time --kernels` measures the same at run time.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import CORPUS
from test_fusion_equivalence import corpus_options

from caffec.codegen.c import CRenderer
from caffec.codegen.renderer import kernel_names
from caffec.compiler.kernels import Loop
from caffec.compiler.pipeline import build_kernel_graph, layer_graph_of
from caffec.compiler.targets.cpu import CpuTarget

LARGE = 1 << 18  # numbers written: 1 MB of float32, beyond a core's L2 share
NETS = [
    CORPUS / "bvlc/models/bvlc_googlenet/train_val.prototxt",
    CORPUS / "bvlc/models/bvlc_reference_caffenet/train_val.prototxt",
    CORPUS / "bvlc/examples/cifar10/cifar10_quick_train_test.prototxt",
]


@pytest.mark.parametrize("path", NETS, ids=lambda p: p.parent.name)
def test_no_kernel_runs_on_one_thread_over_a_large_tensor(path: Path, corpus: Path) -> None:
    net, spans, options = corpus_options(path)
    options = replace(options, shapes={k: (8, *v[1:]) for k, v in options.shapes.items()},
                      target=CpuTarget(threads=2))  # fmt: skip
    kgraph = build_kernel_graph(layer_graph_of(net, spans, options), options)
    kgraph.number_buffers()
    source = CRenderer(options.target).render(kgraph).source
    names = kernel_names(kgraph)
    on_threads = {id(k) for steps in kgraph.steps().values() for step in steps
                  for instr in step.instrs if isinstance(instr, Loop) and instr.threads > 1
                  for k in instr.body}  # fmt: skip
    # each kernel's text runs to the next one's (a fused kernel's parts close at column 0)
    parts = re.split(r"static void (k\d+_\w+)\(void\*\* buf, long n\) \{",
                     source.split("static void caffec_no_step")[0])  # fmt: skip
    bodies = dict(zip(parts[1::2], parts[2::2], strict=True))
    single = []
    for kernel in kgraph.kernels():
        name = names[id(kernel)]
        written = max(op.buffer.size for op in kernel.writes)
        threaded = id(kernel) in on_threads or "#pragma omp parallel" in bodies[name]
        if written >= LARGE and not threaded:
            single.append(f"{name} writes {written} numbers")
    assert not single, single
