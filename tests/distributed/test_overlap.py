"""Where backward may be cut for an overlapped gradient reduction (``ready_points``), checked
against what the kernel graph's steps write, and which backward passes are cut."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import CORPUS, REPO
from test_nccl import FakeComm, FakeNccl, Hub, solver

from caffec.compiler.kernels import KernelGraph, Loop, kernels_of
from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph
from caffec.compiler.targets.cuda import CudaTarget
from caffec.formats import caffe_pb2
from caffec.runtime.distributed import DataParallel, NcclCollective, ready_points

SOLVER = caffe_pb2.SolverParameter(type="SGD", base_lr=0.01, momentum=0.9)
CUDA = CudaTarget(archs=("80",), multiprocessors=108)
GOOGLENET = CORPUS / "bvlc/models/bvlc_googlenet/train_val.prototxt"
NETS = {
    "lenet": (REPO / "examples/mnist/lenet_train_test.prototxt", {"data": (16, 1, 28, 28)}),
    "siamese (shared weights)": (
        REPO / "examples/siamese/mnist_siamese_train_test.prototxt",
        {"pair_data": (8, 2, 28, 28)},
    ),
    "googlenet": (GOOGLENET, {"data": (2, 3, 224, 224)}),
}


def writers(kgraph: KernelGraph) -> dict[int, set[int]]:
    """Each parameter gradient's slot and the backward steps whose kernels write it (a fused
    kernel's parts, a loop's per-thread sums added into it)."""
    out: dict[int, set[int]] = {}
    for position, step in enumerate(kgraph.backward):
        for instr in step.instrs:
            written = [o.buffer for k in kernels_of(instr) for part in k.parts()
                       for o in part.writes]  # fmt: skip
            if isinstance(instr, Loop):
                written += [total for _, total in instr.partial_sums]
            for buffer in written:
                if buffer.kind == "param_grad":
                    out.setdefault(buffer.index, set()).add(position)
    return out


def as_manifest(kgraph: KernelGraph) -> Any:
    """What ready_points reads of a manifest, as the artifact writer makes it."""
    params = [SimpleNamespace(layer=p.layer, grad=None if p.grad is None else p.grad.index)
              for p in kgraph.params]  # fmt: skip
    return SimpleNamespace(backward=kgraph.backward, params=params)


@pytest.mark.parametrize("target", ["c", "cuda"])
@pytest.mark.parametrize("net", list(NETS))
def test_each_gradient_is_final_where_backward_is_cut(net: str, target: str) -> None:
    """After the last step that writes it (every step, for a weight two layers share), at a
    point no fused kernel spans; and backward has several such points to overlap at."""
    path, shapes = NETS[net]
    if not path.exists():
        pytest.skip(f"{path} is not in the corpus")
    options = Options(phase="TRAIN", shapes=shapes, backward=True, solver=SOLVER,
                      **({"target": CUDA} if target == "cuda" else {}))  # fmt: skip
    kgraph = build_kernel_graph(load_layer_graph(path, options), options)
    written = writers(kgraph)
    slots = sorted({p.grad.index for p in kgraph.params if p.grad is not None})
    points = ready_points(as_manifest(kgraph), slots)
    steps = kgraph.backward
    for slot in slots:
        assert points[slot] > max(written.get(slot, {-1})), kgraph.buffers[slot]
        assert points[slot] == len(steps) or not steps[points[slot]].joined
    inside = {p for p in points.values() if 0 < p < len(steps)}
    assert len(inside) >= 2, points
    if "shared" in net:  # conv1's weights are written by both branches' steps
        assert any(len(by) > 1 for by in written.values())


def test_a_gradient_backward_does_not_write_is_final_from_the_start() -> None:
    steps = [SimpleNamespace(layer=name, joined=False) for name in ("loss", "ip", "conv")]
    params = [SimpleNamespace(layer="ip", grad=7), SimpleNamespace(layer="frozen", grad=9),
              SimpleNamespace(layer="conv", grad=5)]  # fmt: skip
    manifest = SimpleNamespace(backward=steps, params=params)
    assert ready_points(manifest, [5, 7, 9]) == {5: 3, 7: 2, 9: 0}
    steps[2].joined = True  # a kernel fused across ip and conv: no cut between them
    assert ready_points(manifest, [5, 7, 9]) == {5: 3, 7: 3, 9: 0}


def test_only_the_last_of_iter_size_backward_passes_is_cut(tmp_path: Path) -> None:
    """The earlier passes only add to the gradients; each iteration counts anew."""
    s = solver(tmp_path, 4)
    parallel = DataParallel(s.net, NcclCollective(FakeComm(Hub(1), 0), 0, 1, FakeNccl), 64,
                            overlap=True, iter_size=3)  # fmt: skip
    assert s.net.backward_segments is parallel
    cuts = sorted(
        {p for p in parallel._bucket_points() if 0 < p < len(s.net.artifact.manifest.backward)}
    )
    assert cuts
    for _ in range(2):
        parallel.on_start()
        assert [parallel.cuts() for _ in range(3)] == [[], [], cuts]
        parallel.on_gradients_ready()
    quiet = DataParallel(s.net, NcclCollective(FakeComm(Hub(1), 0), 0, 1, FakeNccl), 64)
    assert [quiet.cuts() for _ in range(2)] == [[], []]
