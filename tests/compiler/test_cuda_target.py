"""The CUDA target without a GPU: every corpus net lowers for it and its CUDA source builds,
with a launch for every kernel; with a GPU (marked ``gpu``), every corpus net runs there as
the C target does. (What the CUDA kernels compute without a GPU: test_cuda_emulated.py.)

Each BVLC net is lowered for the CUDA target as the equivalence tests run it (TRAIN with a
backward pass and an SGD update where it has a loss, else TEST; batch 2), rendered as CUDA
C and built by nvcc into a fat binary, two at a time. Forward, backward and the update are
all in it.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS
from test_corpus import pyloss_on_path  # noqa: F401 (a fixture)
from test_fusion_equivalence import BVLC, check_equivalent, corpus_options

from caffec.codegen.cuda import CudaRenderer
from caffec.codegen.renderer import kernel_names
from caffec.codegen.toolchain import build_cuda, cuda_flags
from caffec.compiler.pipeline import build_kernel_graph, layer_graph_of
from caffec.compiler.targets.cuda import CudaTarget
from caffec.errors import UserError
from caffec.formats.manifest import CudaLaunches

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def _lowered(path: Path) -> Any:
    """The net's kernel graph, or why it has none (the reason a test skips)."""
    try:
        net, spans, options = corpus_options(path)
        options = replace(options, target=CudaTarget())
        kgraph = build_kernel_graph(layer_graph_of(net, spans, options), options)
    except pytest.skip.Exception as skip:
        return str(skip)
    except UserError as err:
        if "cannot compile" not in err.message:
            raise
        return err.message
    kgraph.number_buffers()
    return kgraph


@pytest.fixture(scope="module")
def builds(pyloss_module: None) -> dict[Path, Any]:
    """Per corpus net: (kernel graph, CUDA source, launches, fat binary), or a skip reason."""
    lowered = {path: _lowered(path) for path in BVLC}
    renderer = CudaRenderer(CudaTarget())
    rendered = {p: (k, *_rendered(renderer, k)) for p, k in lowered.items()
                if not isinstance(k, str)}  # fmt: skip
    with ThreadPoolExecutor(2) as pool:  # nvcc is single-threaded: two builds at once
        binaries = pool.map(lambda item: build_cuda(item[1], cuda_flags()), rendered.values())
        built = {p: (*r, b) for (p, r), b in zip(rendered.items(), binaries, strict=True)}
    return {path: built.get(path, reason) for path, reason in lowered.items()}


@pytest.fixture(scope="module")
def pyloss_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Python loss layer one corpus net names, importable while the nets are lowered."""
    from nets import PYLOSS

    folder = tmp_path_factory.mktemp("pyloss")
    (folder / "pyloss.py").write_text(PYLOSS)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield


def _rendered(renderer: CudaRenderer, kgraph: Any) -> tuple[str, CudaLaunches | None]:
    rendered = renderer.render(kgraph)
    return rendered.source, rendered.cuda


@pytest.mark.parametrize("path", BVLC, ids=lambda p: str(p.relative_to(CORPUS)))
def test_cuda_source_builds_with_a_launch_for_every_kernel(path: Path, builds: dict) -> None:
    built = builds[path]
    if isinstance(built, str):
        pytest.skip(built)
    kgraph, source, launches, binary = built
    assert binary.stat().st_size > 0
    # every kernel of every pass has its functions in the source, launched in order
    names = kernel_names(kgraph)
    assert set(launches.functions) == set(names.values())
    for functions in launches.functions.values():
        for launch in functions:
            assert f'extern "C" __global__ void {launch.function}(' in source
            assert all(d >= 1 for d in launch.grid + launch.block)
    for direction, steps in kgraph.steps().items():
        assert len(launches.steps[direction]) == len(steps)


def test_cuda_source_builds_in_float64(corpus: Path) -> None:
    """The GPU corpus test runs in float64: LeNet's training net (a softmax loss, whose
    count takes fmax of integers, convolutions, pooling, the solver) builds in it too."""
    net, spans, options = corpus_options(corpus / "bvlc/examples/mnist/lenet_train_test.prototxt")
    options = replace(options, dtype="float64", opt_level=2, target=CudaTarget())
    kgraph = build_kernel_graph(layer_graph_of(net, spans, options), options)
    kgraph.number_buffers()
    source = CudaRenderer(CudaTarget()).render(kgraph).source
    assert "typedef double real;" in source
    assert build_cuda(source, cuda_flags()).stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.usefixtures("pyloss_on_path")
@pytest.mark.parametrize("path", BVLC, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_net_on_the_gpu_equals_the_c_target(path: Path, tmp_path: Path, real_gpu) -> None:
    """Every layer of the corpus (CaffeNet and GoogLeNet included) forward, backward and
    updated on the GPU, against the C target's reference build, within 1e-4 relative, in
    float64."""
    net, spans, options = corpus_options(path)
    # in float64, as the C target's own corpus test: in float32 the two targets' orders of
    # summation can make a max pooling in a deep net pick another input of a near-tie;
    # float32 on the GPU is checked on every primitive (test_cuda_emulated.py, its gpu case)
    # and by LeNet's training (tests/test_training.py)
    options = replace(options, dtype="float64")
    try:
        check_equivalent(lambda o: layer_graph_of(net, spans, o), options, tmp_path,
                         cuda_arch=real_gpu.arch, rtol=1e-4)  # fmt: skip
    except UserError as err:
        if "cannot compile" not in err.message:
            raise
        pytest.skip(err.message)
