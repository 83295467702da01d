"""-O2 (fusion, in-place writes, recomputation, shared memory) computes what -O0 computes.

Every net of BVLC Caffe's examples and models in the corpus is built twice, as the
reference (-O0) and fully optimised (-O2), with the same parameters and inputs:
nets with a loss run forward, backward and an SGD update (TRAIN), the others
forward (TEST). Outputs, every blob's data and diff, parameter gradients and
updated weights must agree within 1e-5 relative: fusion changes where sums are
taken (the C compiler may reassociate, threads sum weight gradients in parts),
never what is summed. The kernel counts are checked too.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS
from test_corpus import DATA_SHAPES, NETS, TEST_STAGES, pyloss_on_path  # noqa: F401

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    layer_graph_of,
    load_layer_graph,
)
from caffec.compiler.targets.cuda import CudaTarget
from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.frontend.loader import read_net
from caffec.runtime.compiled_net import CompiledNet

BVLC = [p for p in NETS if p.is_relative_to(CORPUS / "bvlc")]
LENET = Path(__file__).resolve().parents[2] / "examples/mnist/lenet_train_test.prototxt"
SOLVER = caffe_pb2.SolverParameter(type="SGD", base_lr=0.01, momentum=0.9, weight_decay=5e-4)
BATCH = 2


def _small(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {name: (BATCH, *shape[1:]) for name, shape in shapes.items()}


def _compare(a: np.ndarray, b: np.ndarray, what: str, rtol: float = 1e-5) -> None:
    # absolute error relative to the array's largest value, but at least 1e-8: a gradient
    # that cancels to rounding noise (1e-9, either sign) differs by as much as it is large
    scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-3)
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=what)


def check_equivalent(
    graph_of: object, options: Options, out: Path, cuda_arch: str | None = None, rtol: float = 1e-5
) -> tuple[int, int]:
    """Build -O0 and -O2 from ``graph_of(options)``, run both, compare; the kernel counts.
    With ``cuda_arch`` the -O2 build is the CUDA target's, run on the GPU in use."""
    kgraphs = []
    for level in (0, 2):
        opts = replace(options, opt_level=level)
        if cuda_arch and level == 2:
            opts = replace(opts, target=CudaTarget(archs=(cuda_arch,)))
        kgraphs.append(build_kernel_graph(graph_of(opts), opts))  # type: ignore[operator]
    with ThreadPoolExecutor(2) as pool:  # the two compiles at once, on two cores
        paths = list(pool.map(write_artifact, kgraphs, [out / "O0", out / "O2"]))
    nets = [CompiledNet(path, seed=7) for path in paths]
    counts = [len(k.kernels()) for k in kgraphs]
    reference, optimised = nets
    rng = np.random.default_rng(0)
    for name, blobs in reference.params.items():  # scaled by fan-in: no overflow in deep nets
        for a, b in zip(blobs, optimised.params[name], strict=True):
            fan_in = max(1, int(np.prod(a.data.shape[1:])))
            a.data[...] = b.data[...] = rng.standard_normal(a.data.shape) / np.sqrt(fan_in)
    feed = {}
    for name in reference.artifact.manifest.inputs:  # every fed blob, data layers' too
        shape = reference.blobs[name].data.shape
        label = "label" in name or name == "sim"
        feed[name] = rng.integers(0, 2, shape) if label else rng.standard_normal(shape)
    training = options.backward and bool(reference.artifact.manifest.loss_tops)
    for iteration in range(2 if training else 1):
        if iteration:
            # the second step from the same weights (with the momentum of the first): a
            # reassociated sum's last bit would grow through a deep net, flipping ReLUs
            for name, blobs in reference.params.items():
                for a, b in zip(blobs, optimised.params[name], strict=True):
                    b.data[...] = a.data
        results = []
        for net in nets:
            outputs = {k: v.copy() for k, v in net.forward(**feed).items()}
            blobs = options.keep_blobs  # every blob, views of shared memory included
            if blobs:
                outputs |= {f"blob {n}": b.data.copy() for n, b in net.blobs.items()}
            if training:
                net.clear_param_diffs()
                net.backward()
                if blobs:
                    outputs |= {f"blob {n} diff": b.diff.copy() for n, b in net.blobs.items()
                                if b.diff is not None}  # fmt: skip
                grads = {f"{n} {i} diff": b.diff.copy() for n, bs in net.params.items()
                         for i, b in enumerate(bs)}  # fmt: skip
                net._exec.of_kind("hyper")[0] = 0.01
                net._exec.run("update", 0, len(net.artifact.manifest.update))
                weights = {f"{n} {i}": b.data.copy() for n, bs in net.params.items()
                           for i, b in enumerate(bs)}  # fmt: skip
                outputs |= grads | weights
            results.append(outputs)
        assert results[0].keys() == results[1].keys()
        for key, value in results[0].items():
            assert np.isfinite(value).all(), key
            _compare(value, results[1][key], f"{key} (iteration {iteration})", rtol)
    return counts[0], counts[1]


def corpus_options(path: Path) -> tuple[Any, Any, Options]:
    """A corpus net, read, and the options it is checked with: TRAIN with a backward pass
    and SGD where it has a loss, else TEST; its data shapes at batch ``BATCH``. Skips the
    test where the shapes cannot be known."""
    net, spans = read_net(path)
    has_loss = any("Loss" in layer.type for layer in net.layer)
    phase = "TRAIN" if has_loss else "TEST"
    stages = TEST_STAGES.get(path.name, ()) if phase == "TEST" else ()
    data_tops = {t for layer in net.layer if not layer.bottom for t in layer.top}
    shapes = {k: v for k, v in DATA_SHAPES.get(path.parent.name, {}).items() if k in data_tops}
    options = Options(phase=phase, stages=stages, shapes=shapes, base_dir=path.parent,
                      backward=has_loss, solver=SOLVER if has_loss else None)  # fmt: skip
    try:  # the data shapes (from the sources where the corpus has them), at a small batch
        probe = layer_graph_of(net, spans, options)
    except UserError as err:
        pytest.skip(err.message)
    given = {v.blob: v.shape for op in probe.ops if not op.bottoms for v in op.tops}
    return (
        net,
        spans,
        replace(options, shapes=_small({k: v for k, v in given.items() if len(v) > 1})),
    )


@pytest.mark.usefixtures("pyloss_on_path")
@pytest.mark.parametrize("path", BVLC, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_net_optimised_equals_reference(path: Path, tmp_path: Path) -> None:
    net, spans, options = corpus_options(path)
    # in float64: in float32 two orders of summation (FMA or not, blocked or not) differ
    # enough that a max pooling's near-tie in a deep net (AlexNet, GoogLeNet) can pick
    # another input, which moves gradients; float32 is checked on LeNet and CaffeNet below
    options = replace(options, dtype="float64")
    try:
        reference, optimised = check_equivalent(
            lambda o: layer_graph_of(net, spans, o), options, tmp_path
        )
    except UserError as err:
        if "cannot compile" not in err.message:
            raise
        pytest.skip(err.message)
    assert optimised < reference


def test_lenet_training_optimised_equals_reference_with_half_the_kernels(tmp_path: Path) -> None:
    options = Options(phase="TRAIN", shapes={"data": (16, 1, 28, 28)}, backward=True,
                      solver=SOLVER)  # fmt: skip
    reference, optimised = check_equivalent(lambda o: load_layer_graph(LENET, o), options, tmp_path)
    assert 2 * optimised <= reference


def test_googlenet_training_has_half_the_kernels(corpus: Path) -> None:
    path = corpus / "bvlc/models/bvlc_googlenet/train_val.prototxt"
    options = Options(phase="TRAIN", shapes={"data": (BATCH, 3, 224, 224)}, backward=True,
                      solver=SOLVER)  # fmt: skip
    graph = load_layer_graph(path, options)
    counts = [
        len(build_kernel_graph(graph, replace(options, opt_level=level)).kernels())
        for level in (0, 2)
    ]
    assert 2 * counts[1] <= counts[0]


def test_lean_caffenet_training_equals_reference(corpus: Path, tmp_path: Path) -> None:
    """--outputs-only adds pooling before ReLU, copies written through and lean liveness."""
    path = corpus / "bvlc/models/bvlc_reference_caffenet/train_val.prototxt"
    options = Options(phase="TRAIN", shapes={"data": (BATCH, 3, 227, 227)}, backward=True,
                      solver=SOLVER, keep_blobs=False)  # fmt: skip
    reference, optimised = check_equivalent(lambda o: load_layer_graph(path, o), options, tmp_path)
    assert 2 * optimised <= reference
