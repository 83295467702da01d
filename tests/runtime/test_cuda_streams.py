"""Independent instructions on CUDA streams inside a captured pass (``codegen/cuda_streams``).

The assignment is checked by brute force: every pair of instructions whose bytes
conflict (one writes what the other reads or writes, found here by a sweep over
every run of bytes, not by the module's own test) must be ordered by
happens-before (each stream's order and the waits, transitively). Then branching
nets run on the emulated GPU, whose replays take a random order the streams and
waits allow, against the C target.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_emulator import EmulatedDevice
from nets import PYLOSS, same_params, train_step

import caffec
from caffec.codegen.artifact_writer import write_artifact
from caffec.codegen.cuda_streams import (
    Access,
    Placement,
    Span,
    assign_streams,
    instr_accesses,
    pass_placements,
)
from caffec.compiler.kernels import Instr, KernelGraph, kernels_of
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of, load_layer_graph
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.formats import caffe_pb2
from caffec.formats.manifest import CUDA_STREAMS
from caffec.frontend.loader import parse_net
from caffec.runtime import gpu
from caffec.runtime.compiled_net import CompiledNet

REPO = Path(__file__).resolve().parents[2]
SOLVER = caffe_pb2.SolverParameter(type="SGD", base_lr=0.01, momentum=0.9, weight_decay=5e-4)
CUDA = CudaTarget(archs=("90",))
GOOGLENET = "bvlc/models/bvlc_googlenet/train_val.prototxt"

# an inception module in small: three branches into a Concat (written through), in-place
# ReLUs and Dropout
BRANCHES = """
name: "branches"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "a1" type: "Convolution" bottom: "data" top: "a1"
        convolution_param { num_output: 4 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "a1_relu" type: "ReLU" bottom: "a1" top: "a1" }
layer { name: "a2" type: "Convolution" bottom: "a1" top: "a2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "b1" type: "Convolution" bottom: "data" top: "b1"
        convolution_param { num_output: 3 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "b1_relu" type: "ReLU" bottom: "b1" top: "b1" }
layer { name: "b2" type: "Convolution" bottom: "b1" top: "b2"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c1" type: "Pooling" bottom: "data" top: "c1"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 2 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "cat" type: "Concat" bottom: "a2" bottom: "b2" bottom: "c2" top: "cat" }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip" type: "InnerProduct" bottom: "cat" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

# two branches into a Python loss (a host step, between launches)
PYTHON_BRANCHES = """
name: "python_branches"
layer { type: "Input" name: "input" top: "x" top: "y"
        input_param { shape { dim: 4 dim: 3 dim: 2 } shape { dim: 4 dim: 3 dim: 2 } } }
layer { type: "InnerProduct" name: "ipx" top: "ipx" bottom: "x"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { type: "ReLU" name: "relux" top: "ipx" bottom: "ipx" }
layer { type: "InnerProduct" name: "ipy" top: "ipy" bottom: "y"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { type: "Python" name: "loss" top: "loss" bottom: "ipx" bottom: "ipy"
        python_param { module: "user_layers" layer: "EuclideanLossLayer" } loss_weight: 1 }
layer { type: "Sigmoid" name: "after" top: "after" bottom: "ipy" }
"""


def _kgraph(net: str, keep_blobs: bool = True) -> KernelGraph:
    """``net`` (prototxt text) built for the CUDA target, for training."""
    options = Options(phase="TRAIN", backward=True, solver=SOLVER, target=CUDA,
                      keep_blobs=keep_blobs)  # fmt: skip
    parsed, spans = parse_net(net)
    return build_kernel_graph(layer_graph_of(parsed, spans, options), options)


def _instrs(kgraph: KernelGraph, direction: str) -> list[tuple[str, Instr]]:
    """A pass's instructions in order, each with its step's layer."""
    return [(step.layer, instr) for step in kgraph.steps()[direction] for instr in step.instrs]


# --- the brute-force checker ------------------------------------------------------------------


def conflicts(accesses: list[Access]) -> set[tuple[int, int]]:
    """Every pair (i, j), i < j, where one writes a byte the other reads or writes: a sweep
    over every run of every span, per allocation; a host instruction conflicts with all."""
    runs: dict[object, list[tuple[int, int, int, bool]]] = {}
    for position, access in enumerate(accesses):
        for spans, writes in ((access.reads, False), (access.writes, True)):
            for s in spans:
                for k in range(s.count):
                    start = s.start + k * s.period
                    runs.setdefault(s.memory, []).append((start, start + s.length, position,
                                                          writes))  # fmt: skip
    pairs = set()
    for items in runs.values():
        items.sort()
        active: list[tuple[int, int, int, bool]] = []
        for start, end, position, writes in items:
            active = [a for a in active if a[1] > start]
            for _, _, other, other_writes in active:
                if other != position and (writes or other_writes):
                    pairs.add((min(position, other), max(position, other)))
            active.append((start, end, position, writes))
    hosts = [i for i, a in enumerate(accesses) if a.host]
    pairs |= {(min(h, i), max(h, i)) for h in hosts for i in range(len(accesses)) if i != h}
    return pairs


def ancestors(placements: list[Placement]) -> list[int]:
    """For each instruction, the bit set of those that happen before it: the earlier ones on
    its stream and those it waits for, and theirs."""
    before: list[int] = []
    last: dict[int, int] = {}
    for position, placement in enumerate(placements):
        bits = 0
        for earlier in (last.get(placement.stream), *placement.waits):
            if earlier is not None:
                assert earlier < position, "a wait for a later instruction"
                bits |= before[earlier] | 1 << earlier
        before.append(bits)
        last[placement.stream] = position
    return before


def unordered(accesses: list[Access], placements: list[Placement]) -> list[tuple[int, int]]:
    """The conflicting pairs that might run at once."""
    before = ancestors(placements)
    return sorted((i, j) for i, j in conflicts(accesses) if not before[j] >> i & 1)


def buffers(instr: Instr) -> set[int]:
    """The buffers an instruction names, by identity."""
    return {id(o.buffer) for k in kernels_of(instr) for p in k.parts()
            for o in (*p.reads, *p.writes)}  # fmt: skip


def _check(kgraph: KernelGraph) -> dict[str, tuple[list[Access], list[Placement]]]:
    """Each pass's accesses and placements, checked: every span inside its allocation,
    every conflict ordered, no stream past the most, no wait the instruction's own stream
    already implies."""
    checked = {}
    sizes = {b.index: b.footprint * kgraph.memory_plan.itemsize for b in kgraph.buffers}
    for direction in kgraph.steps():
        instrs = [instr for _, instr in _instrs(kgraph, direction)]
        accesses = instr_accesses(kgraph, instrs)
        for access in accesses:
            for span in (*access.reads, *access.writes):
                size = kgraph.memory_plan.arena_bytes if span.memory is None else sizes[span.memory]
                assert 0 <= span.start and span.end <= size
        placements = pass_placements(kgraph, direction)
        assert unordered(accesses, placements) == []
        before = ancestors(placements)
        last: dict[int, int] = {}
        for position, placement in enumerate(placements):
            assert 0 <= placement.stream < CUDA_STREAMS
            previous = last.get(placement.stream)
            for waited in placement.waits:
                assert placements[waited].stream != placement.stream
                assert previous is None or not before[previous] >> waited & 1
            last[placement.stream] = position
        checked[direction] = accesses, placements
    return checked


# --- the assignment ---------------------------------------------------------------------------


def test_the_checker_finds_a_missing_wait() -> None:
    """The checker is not vacuous: the branching net's placements without their waits (or
    with one branch's wait taken away) leave conflicts unordered."""
    kgraph = _kgraph(BRANCHES)
    accesses, placements = _check(kgraph)["forward"]
    assert any(p.waits for p in placements)
    no_waits = [Placement(p.stream, ()) for p in placements]
    assert unordered(accesses, no_waits)
    for position, placement in enumerate(placements):
        if placement.waits:
            broken = list(placements)
            broken[position] = Placement(placement.stream, placement.waits[1:])
            assert unordered(accesses, broken), position
    one_stream = [Placement(0, ()) for _ in placements]  # program order: always valid
    assert unordered(accesses, one_stream) == []


def test_branches_run_at_once_and_conflicts_stay_ordered() -> None:
    kgraph = _kgraph(BRANCHES)
    checked = _check(kgraph)
    accesses, placements = checked["forward"]
    stream = {layer: p.stream for (layer, _), p in
              zip(_instrs(kgraph, "forward"), placements, strict=True)}  # fmt: skip
    # the three branches' last layers, each written into the Concat's output, may run at once
    assert len({stream["a2"], stream["b2"], stream["c2"]}) == 3
    assert len(set(p.stream for p in checked["backward"][1])) > 1


@pytest.mark.parametrize("keep_blobs", [True, False])
def test_bytes_reused_across_branches_are_ordered(keep_blobs: bool) -> None:
    """Two branches' instructions that share no buffer may still conflict: the memory plan
    gave one branch's workspaces (and, in the lean build, values) bytes another branch's
    buffers had. Such pairs exist, and are ordered (``_check``)."""
    kgraph = _kgraph(BRANCHES, keep_blobs=keep_blobs)
    through_bytes = 0
    for direction, (accesses, _) in _check(kgraph).items():
        instrs = _instrs(kgraph, direction)
        for i, j in conflicts(accesses):
            (layer_i, a), (layer_j, b) = instrs[i], instrs[j]
            branches = {layer_i[0], layer_j[0]}
            if len(branches) == 2 and branches <= {"a", "b", "c"} and not buffers(a) & buffers(b):
                through_bytes += 1
    assert through_bytes > 0


def _file_kgraph(path: Path, data: tuple[int, ...]) -> KernelGraph:
    """The net at ``path`` built for the CUDA target, for training on batches of ``data``."""
    options = Options(phase="TRAIN", shapes={"data": data}, backward=True, solver=SOLVER,
                      target=CUDA)  # fmt: skip
    return build_kernel_graph(load_layer_graph(path, options), options)


def test_lenet_keeps_every_conflict_ordered() -> None:
    _check(_file_kgraph(REPO / "examples/mnist/lenet_train_test.prototxt", (16, 1, 28, 28)))


def test_googlenet_keeps_every_conflict_ordered(corpus: Path) -> None:
    _check(_file_kgraph(corpus / GOOGLENET, (4, 3, 224, 224)))


def test_an_inception_modules_branches_run_at_once(corpus: Path) -> None:
    """GoogLeNet: in forward each module's four branches end on four streams; in both passes
    every two branches of a module have instructions that may run at once."""
    kgraph = _file_kgraph(corpus / GOOGLENET, (4, 3, 224, 224))

    def branch(layer: str) -> tuple[str, str] | None:
        module, _, rest = layer.partition("/")
        found = [key for key in ("1x1", "3x3", "5x5", "pool") if key in rest]
        return (module, found[0]) if module.startswith("inception") and found else None

    for direction in ("forward", "backward"):
        placements = pass_placements(kgraph, direction)
        before = ancestors(placements)
        members: dict[str, dict[str, list[int]]] = {}
        for position, (layer, _) in enumerate(_instrs(kgraph, direction)):
            if (found := branch(layer)) is not None:
                members.setdefault(found[0], {}).setdefault(found[1], []).append(position)
        assert len(members) == 9
        for module, branches in members.items():
            assert len(branches) == 4, module
            if direction == "forward":
                last = {placements[positions[-1]].stream for positions in branches.values()}
                assert len(last) == 4, module
            for a in branches.values():
                for b in branches.values():
                    if a is not b:
                        assert any(not before[max(i, j)] >> min(i, j) & 1
                                   for i in a for j in b), module  # fmt: skip


def test_spans_meet_where_their_bytes_do() -> None:
    """Span.meets against the sets of bytes, on random runs (some periodic, some touching)."""
    rng = np.random.default_rng(0)

    def random_span() -> Span:
        count = int(rng.integers(1, 5))
        return Span(int(rng.integers(0, 2)), int(rng.integers(0, 40)), int(rng.integers(1, 9)),
                    int(rng.integers(1, 12)) if count > 1 else 0, count)  # fmt: skip

    def bytes_of(s: Span) -> set[tuple[object, int]]:
        return {(s.memory, s.start + k * s.period + b) for k in range(s.count)
                for b in range(s.length)}  # fmt: skip

    for _ in range(2000):
        a, b = random_span(), random_span()
        assert a.meets(b) == bool(bytes_of(a) & bytes_of(b)) == b.meets(a), (a, b)


def test_a_host_step_joins_every_stream() -> None:
    """Everything before a host instruction happens before it, and it before everything
    after, whatever the memory says."""
    write = (Span(None, 0, 64),)
    apart = [Access((), (Span(None, 64 * i, 64),)) for i in range(1, 7)]
    accesses = [*apart[:3], Access((), write, host=True), *apart[3:]]
    placements = assign_streams(accesses)
    assert len({p.stream for p in placements[:3]}) == 3  # nothing in common: at once
    before = ancestors(placements)
    assert all(before[3] >> i & 1 for i in range(3))
    assert all(before[j] >> 3 & 1 for j in range(4, 7))
    assert unordered(accesses, placements) == []


# --- on the emulated device -------------------------------------------------------------------


def _feed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"data": rng.standard_normal((2, 3, 8, 8)), "label": np.array([1.0, 4.0])}


def _nets(tmp_path: Path, arch: str) -> tuple[CompiledNet, CompiledNet]:
    """The branching net built for the C target and for a GPU of ``arch``, same weights."""
    nets = []
    for target in (CpuTarget(), CudaTarget(archs=(arch,))):
        options = Options(phase="TRAIN", backward=True, solver=SOLVER, target=target)
        parsed, spans = parse_net(BRANCHES)
        kgraph = build_kernel_graph(layer_graph_of(parsed, spans, options), options)
        nets.append(CompiledNet(write_artifact(kgraph, tmp_path / target.name), seed=3))
    same_params(nets[0], nets[1])
    return nets[0], nets[1]


def _step(net: CompiledNet) -> dict[str, np.ndarray]:
    """One training step's outputs, gradients and weights."""
    outputs = train_step(net, _feed(), lr=0.05)
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            outputs[f"{name} {i} diff"] = blob.diff.copy()
            outputs[f"{name} {i}"] = blob.data.copy()
    return outputs


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.allclose(b[k], v, rtol=1e-4, atol=1e-6) for k, v in a.items())


def test_branches_on_streams_compute_what_the_c_target_does(tmp_path: Path, any_gpu) -> None:
    """Four training steps; on the emulated device each replays its passes in the random
    order of another seed, on a GPU the streams run as they will."""
    c, cuda = _nets(tmp_path, any_gpu.arch)
    emulated = isinstance(any_gpu, EmulatedDevice)
    for seed in range(4):
        if emulated:
            any_gpu.shuffle = np.random.default_rng(seed)
        expected, got = _step(c), _step(cuda)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    if emulated:
        assert any_gpu.captures == 3 and any_gpu.replays == 12
        assert len(any_gpu.stream_launches) > 1  # side streams ran


def test_random_orders_expose_a_missing_wait(tmp_path: Path, emulated_gpu: EmulatedDevice) -> None:
    """The emulator's random orders are not vacuous: with every wait taken out of the
    manifest (instructions spread over the streams), some order computes wrong numbers."""
    c, cuda = _nets(tmp_path, emulated_gpu.arch)
    for steps in cuda.artifact.manifest.cuda.steps.values():  # type: ignore[union-attr]
        for position, instr in enumerate(i for step in steps for i in step):
            instr.stream, instr.waits = position % 4, []
    wrong = 0
    for seed in range(4):
        emulated_gpu.shuffle = np.random.default_rng(seed)
        wrong += not _close(_step(c), _step(cuda))
    assert wrong > 0


def test_a_python_layer_between_branches_still_runs(
    tmp_path: Path, emulated_gpu: EmulatedDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python layer's steps join every stream in the assignment, and the net (run in
    segments around its calls) gives the C target's values."""
    (tmp_path / "user_layers.py").write_text(PYLOSS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_layers", raising=False)
    (tmp_path / "net.prototxt").write_text(PYTHON_BRANCHES)
    path = str(tmp_path / "net.prototxt")
    options = Options(phase="TRAIN", backward=True, target=CUDA)
    kgraph = build_kernel_graph(load_layer_graph(path, options), options)
    hosts = 0
    for accesses, placements in _check(kgraph).values():
        before = ancestors(placements)
        for h in (i for i, a in enumerate(accesses) if a.host):
            hosts += 1
            assert all(before[h] >> i & 1 for i in range(h))
            assert all(before[j] >> h & 1 for j in range(h + 1, len(accesses)))
    assert hosts == 2  # its forward and backward

    emulated_gpu.shuffle = np.random.default_rng(0)
    on_gpu = caffec.Net(path, caffec.TRAIN, seed=2)
    gpu.set_mode_cpu()
    on_cpu = caffec.Net(path, caffec.TRAIN, seed=2)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((2, 4, 3, 2))
    for net in (on_cpu, on_gpu):
        net.forward(x=x, y=y)
        net.backward()
    for blob in ("loss", "after"):
        np.testing.assert_allclose(on_gpu.blobs[blob].data, on_cpu.blobs[blob].data, rtol=1e-5)
    for blob in ("ipx", "ipy"):
        np.testing.assert_allclose(on_gpu.blobs[blob].diff, on_cpu.blobs[blob].diff, rtol=1e-4,
                                   atol=1e-7)  # fmt: skip
