"""The memory-planning pass: buffers that share arena bytes are never live at once.

Every check here recomputes liveness and the pinning rule on its own, from the
kernel graph, rather than trusting the intervals the plan reports.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nets import same_params, train_step
from test_corpus import DATA_SHAPES, NETS, compile_net, pyloss_on_path  # noqa: F401

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.kernels import (
    BlobBinding,
    Buffer,
    Kernel,
    KernelGraph,
    Loop,
    Step,
    whole,
)
from caffec.compiler.passes.plan_memory import ALIGN, ARENA_KINDS, MemoryPlan, plan_memory
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    load_layer_graph,
)
from caffec.errors import InternalError, UserError
from caffec.frontend.loader import read_net
from caffec.runtime.compiled_net import CompiledNet

BVLC_NETS = [p for p in NETS if p.is_relative_to(CORPUS / "bvlc")]
LENET = Path(__file__).resolve().parents[2] / "examples/mnist/lenet_train_test.prototxt"


# --- an independent check of a plan --------------------------------------------------------


def expected_liveness(
    kgraph: KernelGraph, repeat: bool = True
) -> tuple[dict[Buffer, tuple[int, int]], set[Buffer]]:
    """[first, last] instruction position of every touched arena buffer (a loop is one
    position; with ``repeat``, a buffer used by several passes lives to the end of the last
    of them), and the buffers first touched by a read or an accumulating write."""
    spans: dict[Buffer, tuple[int, int]] = {}
    carried: set[Buffer] = set()
    last_pass: dict[Buffer, int] = {}
    first_pass: dict[Buffer, int] = {}
    ends = []
    position = 0
    for pass_, steps in enumerate((kgraph.forward, kgraph.backward, kgraph.update)):
        for instr in [i for s in steps for i in s.instrs]:
            position += 1
            # a loop with partial sums zeroes them (a write) before its body adds into them
            zeroed = [(p, False) for p, _ in instr.partial_sums] if isinstance(instr, Loop) else []
            for kernel in instr.body if isinstance(instr, Loop) else [instr]:
                accesses = zeroed + [(o.buffer, True) for o in kernel.reads]
                zeroed = []
                accesses += [(o.buffer, kernel.accumulate) for o in kernel.writes]
                for buffer, reads in accesses:
                    if buffer.kind not in ARENA_KINDS:
                        continue
                    if buffer not in spans:
                        spans[buffer] = (position, position)
                        first_pass[buffer] = pass_
                        if reads:
                            carried.add(buffer)
                    spans[buffer] = (spans[buffer][0], position)
                    last_pass[buffer] = pass_
        ends.append(position)
    for buffer, pass_ in last_pass.items():
        if repeat and pass_ != first_pass[buffer]:
            spans[buffer] = (spans[buffer][0], ends[pass_])
    return spans, carried


def expected_pinned(kgraph: KernelGraph, keep_blobs: bool) -> set[Buffer]:
    """What the runtime or the user touches outside the kernels."""
    pinned = {b for b in kgraph.buffers if b.kind in ("input", "seed")}
    pinned |= {b for b, _, _ in kgraph.fills} | {b for b, _ in kgraph.seeds}
    pinned |= set(kgraph.inputs.values()) | set(kgraph.output_diffs.values())
    for name, blob in kgraph.blobs.items():
        if keep_blobs or name in kgraph.outputs:
            pinned.add(blob.data)
        if blob.diff is not None and (keep_blobs or name in kgraph.inputs):
            pinned.add(blob.diff)
    return pinned


def in_place_chains(
    kgraph: KernelGraph, spans: dict[Buffer, tuple[int, int]], pinned: set[Buffer]
) -> tuple[set[frozenset[Buffer]], dict[Buffer, int]]:
    """The (input, output) pairs of maps that may share bytes: the input is read element for
    element and dies there, unpinned; the output is new there and not written by the runtime;
    and which chain of such pairs each buffer belongs to."""
    runtime = {b for b in kgraph.buffers if b.kind in ("input", "seed")}
    runtime |= {b for b, _, _ in kgraph.fills} | {b for b, _ in kgraph.seeds}
    runtime |= set(kgraph.inputs.values()) | set(kgraph.output_diffs.values())
    instrs = [i for steps in (kgraph.forward, kgraph.backward, kgraph.update)
              for s in steps for i in s.instrs]  # fmt: skip
    pairs: set[frozenset[Buffer]] = set()
    for position, instr in enumerate(instrs, start=1):
        if not isinstance(instr, Kernel):
            continue
        parts = instr.attrs["parts"] if instr.prim == "fused" else [instr]
        for n, k in enumerate(parts):
            if k.prim != "map" or k.accumulate or "loads" not in k.attrs:
                continue
            later = {o.buffer for p in parts[n + 1 :] for o in p.reads + p.writes}
            earlier = {o.buffer for p in parts[:n] for o in p.reads + p.writes}
            index = {slot: ix for _, slot, ix in k.attrs["loads"]}
            for a in {o.buffer for o in k.reads} - later:
                plain = all(index.get(slot) == "i" and not o.offset and not o.step
                            for slot, o in enumerate(k.reads) if o.buffer is a)  # fmt: skip
                if not plain or a in pinned or spans.get(a, (0, 0))[1] != position:
                    continue
                for o in k.writes:
                    b = o.buffer
                    if (not o.offset and not o.step and a.size == b.size == k.attrs["size"]
                            and b not in runtime and b not in earlier
                            and spans.get(b, (0, 0))[0] == position):  # fmt: skip
                        pairs.add(frozenset((a, b)))
    chain = {b: i for i, b in enumerate(kgraph.buffers)}

    def root(b: Buffer) -> int:
        while chain[b] != kgraph.buffers.index(b):
            b = kgraph.buffers[chain[b]]
        return chain[b]

    for pair in pairs:
        a, b = sorted(pair, key=lambda x: x.index)
        chain[kgraph.buffers[root(b)]] = root(a)
    return pairs, {b: root(b) for b in kgraph.buffers}


def part_order(kgraph: KernelGraph) -> dict[tuple[Buffer, int], tuple[int, int]]:
    """(buffer, position) -> the first and last part of the fused kernel there touching it."""
    order: dict[tuple[Buffer, int], tuple[int, int]] = {}
    instrs = [i for steps in (kgraph.forward, kgraph.backward, kgraph.update)
              for s in steps for i in s.instrs]  # fmt: skip
    for position, instr in enumerate(instrs, start=1):
        if isinstance(instr, Kernel) and instr.prim == "fused":
            for n, part in enumerate(instr.attrs["parts"]):
                for o in part.reads + part.writes:
                    first, _ = order.get((o.buffer, position), (n, n))
                    order[o.buffer, position] = (first, n)
    return order


def check_plan(kgraph: KernelGraph, plan: MemoryPlan, keep_blobs: bool = True) -> None:
    spans, carried = expected_liveness(kgraph, repeat=keep_blobs)
    pinned = expected_pinned(kgraph, keep_blobs) | carried
    pairs, chain = in_place_chains(kgraph, spans, pinned)
    parts = part_order(kgraph)
    arena = [b for b in kgraph.buffers if b.kind in ARENA_KINDS]
    assert set(plan.offsets) == set(arena), "every arena buffer, and nothing persistent"
    assert plan.pinned == pinned
    ranges = []
    for b in arena:
        start = plan.offsets[b]
        end = start + b.footprint * plan.itemsize
        assert start % ALIGN == 0 and end <= plan.arena_bytes, b
        ranges.append((start, end, b))
    ranges.sort(key=lambda r: (r[0], r[1]))
    for i, (_, end, a) in enumerate(ranges):
        for other_start, _, b in ranges[i + 1 :]:
            if other_start >= end:
                break
            same_chain = chain[a] == chain[b]
            assert same_chain or (a not in pinned and b not in pinned), f"{a} with {b}, pinned"
            sa, sb = spans.get(a), spans.get(b)
            disjoint = sa is None or sb is None or sa[1] < sb[0] or sb[1] < sa[0]
            if not disjoint and same_chain and frozenset((a, b)) not in pairs:
                # a chain's ends meet in one fused kernel: one done before the other starts
                first, second = (a, b) if sa[1] == sb[0] else (b, a)
                position = spans[first][1]
                assert position == spans[second][0], (a, sa, b, sb)
                assert parts[first, position][1] < parts[second, position][0], (a, b)
                continue
            assert disjoint or (same_chain and frozenset((a, b)) in pairs), (a, sa, b, sb)
    assert plan.arena_bytes <= plan.unshared_bytes


# --- every net of the corpus ---------------------------------------------------------------


@pytest.mark.usefixtures("pyloss_on_path")
@pytest.mark.parametrize("path", BVLC_NETS, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_plans_never_share_live_bytes(path: Path) -> None:
    net, spans = read_net(path)
    graph = compile_net(net, spans, "TRAIN", DATA_SHAPES.get(path.parent.name, {}), path.parent)
    try:
        kgraph = build_kernel_graph(graph, Options(phase="TRAIN", backward=True))
    except UserError as err:
        if "cannot compile" not in err.message:
            raise
        pytest.skip(err.message)
    plan = kgraph.memory_plan
    check_plan(kgraph, plan)
    loose = plan_memory(kgraph, keep_blobs=False, blob_of=plan.blob_of)
    check_plan(kgraph, loose, keep_blobs=False)
    assert loose.arena_bytes <= plan.arena_bytes
    reference = plan_memory(kgraph, share=False, blob_of=plan.blob_of)
    assert reference.arena_bytes == plan.unshared_bytes
    # the naive size is Caffe's, whatever caffec's passes drop (for the same algorithms: an
    # implicit GEMM has no columns to count)
    unoptimized = build_kernel_graph(
        graph,
        Options(
            phase="TRAIN", backward=True, skip=frozenset({"recompute", "fuse", "parallel_loops"})
        ),
    )
    assert plan.naive_bytes == unoptimized.memory_plan.naive_bytes > 0


# --- random kernel graphs ------------------------------------------------------------------


@st.composite
def kernel_graphs(draw: st.DrawFn) -> KernelGraph:
    """A DAG-shaped forward pass over random buffers, a backward pass, an update step, and
    random bindings (blobs, inputs, outputs, seeds, DummyData fills)."""
    buffers: list[Buffer] = []
    sizes = st.sampled_from([1, 16, 16, 64, 200])  # alike sizes: maps may write in place

    def new(kind: str) -> Buffer:
        buffers.append(Buffer(f"b{len(buffers)}", (draw(sizes),), kind))
        return buffers[-1]

    def instr(readable: list[Buffer], writable: list[Buffer], fresh: list[str]) -> Kernel | Loop:
        kernels = []
        for _ in range(draw(st.integers(1, 2))):
            reads = draw(st.lists(st.sampled_from(readable), min_size=1, max_size=3))
            writes = [new(draw(st.sampled_from(fresh))) for _ in range(draw(st.integers(0, 2)))]
            if not writes or draw(st.integers(0, 3)) == 0:  # write an existing buffer again
                writes.append(draw(st.sampled_from(writable)))
            accumulate = draw(st.integers(0, 5)) == 0
            size = writes[0].size
            loads = [(f"v{s}", s, "i" if r.size == size and draw(st.booleans()) else "0")
                     for s, r in enumerate(reads)]  # fmt: skip
            kernels.append(Kernel("map", [whole(b) for b in reads], [whole(b) for b in writes],
                                  {"size": size, "loads": loads}, accumulate))  # fmt: skip
            readable.extend(w for w in writes if w not in readable)
            writable.extend(w for w in writes if w not in writable)
        if len(kernels) > 1 or draw(st.booleans()):
            return Loop(draw(st.integers(1, 4)), kernels)
        return kernels[0]

    inputs = [new("input") for _ in range(draw(st.integers(1, 3)))]
    params = [new("param") for _ in range(draw(st.integers(0, 3)))]
    readable, writable = inputs + params, list(inputs)

    def step(name: str, readable: list[Buffer], writable: list[Buffer], fresh: list[str]) -> Step:
        count = draw(st.integers(1, 3))
        return Step(name, "Test", [instr(readable, writable, fresh) for _ in range(count)])

    fresh = ["value", "value", "workspace"]
    forward = [step(f"f{i}", readable, writable, fresh) for i in range(draw(st.integers(1, 6)))]
    values = [b for b in readable if b.kind == "value"]
    seeds = [new("seed") for _ in range(draw(st.integers(0, 2)))]
    backward = []
    if draw(st.booleans()):
        grads = seeds + [new("grad")]
        back_readable = readable + grads
        fresh = ["grad", "grad", "workspace"]
        backward = [
            step(f"b{i}", back_readable, grads, fresh) for i in range(draw(st.integers(1, 4)))
        ]
    update = []
    if params and draw(st.booleans()):
        history = new("history")
        update = [Step("solver", "SGD", [instr(params + [history], params + [history],
                                               ["workspace"])])]  # fmt: skip
    grads = [b for b in buffers if b.kind in ("grad", "seed")]
    bound = draw(st.lists(st.sampled_from(values), unique=True)) if values else []
    named = {f"in{i}": b for i, b in enumerate(inputs)} | {
        f"blob{i}": v for i, v in enumerate(bound)
    }
    blobs = {n: BlobBinding(n, v, draw(st.sampled_from([None, *grads]))) for n, v in named.items()}
    outputs = sorted(draw(st.lists(st.sampled_from(sorted(blobs)), unique=True))) if blobs else []
    fills = [(b, {}, True) for b in draw(st.lists(st.sampled_from(values), unique=True))] if (
        values and draw(st.booleans())
    ) else []  # fmt: skip
    kgraph = KernelGraph(
        name="random", phase="TRAIN", dtype=draw(st.sampled_from(["float32", "float64"])),
        buffers=buffers, forward=forward, backward=backward, blobs=blobs, params=[],
        inputs={f"in{i}": b for i, b in enumerate(inputs)}, outputs=outputs,
        seeds=[(s, 1.0) for s in seeds], loss_tops=[], fills=fills,
        output_diffs={n: s for n, s in zip(outputs, seeds, strict=False)}, update=update,
    )  # fmt: skip
    kgraph.number_buffers()
    return kgraph


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel_graphs(), st.booleans())
def test_random_graphs_never_share_live_or_pinned_bytes(
    kgraph: KernelGraph, keep_blobs: bool
) -> None:
    plan = plan_memory(kgraph, keep_blobs=keep_blobs)
    check_plan(kgraph, plan, keep_blobs)
    again = plan_memory(kgraph, keep_blobs=keep_blobs)
    assert again.offsets == plan.offsets and again.arena_bytes == plan.arena_bytes
    # no layout can be smaller than the most bytes live at one position (an in-place output
    # and its input count once where they meet)
    spans, _ = expected_liveness(kgraph, repeat=keep_blobs)
    live: dict[int, int] = {}
    for b, (first, last) in spans.items():
        first += b in plan.in_place
        for position in range(first, last + 1):
            live[position] = live.get(position, 0) + b.size * plan.itemsize
    assert plan.arena_bytes >= max(live.values(), default=0)
    reference = plan_memory(kgraph, share=False)
    arena = [b for b in kgraph.buffers if b.kind in ARENA_KINDS]
    assert [reference.offsets[b] for b in arena] == sorted(reference.offsets.values())
    assert reference.arena_bytes == plan.unshared_bytes


def chain_graph(index: str) -> tuple[KernelGraph, list[Buffer]]:
    """x -> a -> b -> c -> y by maps that read their input at ``index``."""
    x, a, b, c, y = (Buffer(n, (16,), "input" if n == "x" else "value") for n in "xabcy")
    steps = [
        Step(n, "Test", [Kernel("map", [whole(i)], [whole(o)],
                                {"size": 16, "loads": [("v", 0, index)]})])
        for n, (i, o) in zip("abcy", [(x, a), (a, b), (b, c), (c, y)], strict=True)
    ]  # fmt: skip
    kgraph = KernelGraph(
        name="chain", phase="TEST", dtype="float32", buffers=[x, a, b, c, y], forward=steps,
        backward=[], blobs={"x": BlobBinding("x", x, None), "y": BlobBinding("y", y, None)},
        params=[], inputs={"x": x}, outputs=["y"], seeds=[], loss_tops=[], fills=[],
    )  # fmt: skip
    kgraph.number_buffers()
    return kgraph, [x, a, b, c, y]


def test_a_chain_reuses_bytes_and_pins_what_the_user_sees() -> None:
    """Read through a gather, a and c can share; x (input) and y (output blob) cannot."""
    kgraph, (x, a, b, c, y) = chain_graph("15 - i")
    plan = plan_memory(kgraph)
    assert plan.pinned == {x, y} and not plan.in_place
    assert plan.offsets[a] == plan.offsets[c] != plan.offsets[b]
    assert plan.arena_bytes == 4 * ALIGN and plan.unshared_bytes == 5 * ALIGN
    assert plan.naive_bytes == 2 * 16 * 4 + 3 * 16 * 4  # unbound buffers count as themselves
    check_plan(kgraph, plan)


def test_elementwise_maps_write_in_place_but_never_over_an_input() -> None:
    """Read element for element, a, b, c and y are one storage; x, fed by the runtime, is not."""
    kgraph, (x, a, b, c, y) = chain_graph("i")
    plan = plan_memory(kgraph)
    assert plan.in_place == {b: a, c: b, y: c}
    assert plan.offsets[a] == plan.offsets[b] == plan.offsets[c] == plan.offsets[y]
    assert plan.offsets[x] != plan.offsets[a] and plan.arena_bytes == 2 * ALIGN
    check_plan(kgraph, plan)
    assert not plan_memory(kgraph, share=False).in_place


# --- the pipeline and the artifact ---------------------------------------------------------


def lenet_options(**kw: object) -> Options:
    from caffec.formats import caffe_pb2

    solver = caffe_pb2.SolverParameter(
        type="SGD", base_lr=0.01, momentum=0.9, weight_decay=5e-4, clip_gradients=10.0
    )
    return Options(phase="TRAIN", shapes={"data": (64, 1, 28, 28)}, solver=solver, **kw)


def plan_offsets(kgraph: KernelGraph) -> tuple[dict[int, int], int]:
    """The arena offsets of the graph's plan by buffer slot, and the arena's size."""
    kgraph.number_buffers()
    plan = kgraph.memory_plan
    return {b.index: offset for b, offset in plan.offsets.items()}, plan.arena_bytes


def test_the_pass_can_be_turned_off_and_reports_sizes(tmp_path: Path) -> None:
    from caffec.codegen.artifact_writer import write_artifact

    graph = load_layer_graph(LENET, lenet_options())
    planned = build_kernel_graph(graph, lenet_options())
    reference = build_kernel_graph(graph, lenet_options(opt_level=0))
    offsets, arena = plan_offsets(planned)
    ref_offsets, ref_arena = plan_offsets(reference)
    assert arena == planned.memory_plan.arena_bytes < ref_arena
    assert ref_arena == reference.memory_plan.unshared_bytes >= planned.memory_plan.unshared_bytes
    slots = [b.index for b in reference.buffers if b.kind in ARENA_KINDS]
    assert sorted(ref_offsets) == slots
    assert sorted(offsets) == [b.index for b in planned.buffers if b.kind in ARENA_KINDS]
    assert [ref_offsets[s] for s in slots] == sorted(ref_offsets.values())  # one after another
    naive = planned.memory_plan.naive_bytes
    blobs = {  # LeNet's blobs (data and diff each) and its layers' own buffers, in floats
        "data": 64 * 784, "label": 64, "conv1": 64 * 20 * 576, "pool1": 64 * 20 * 144,
        "conv2": 64 * 50 * 64, "pool2": 64 * 800, "ip1": 64 * 500, "ip2": 64 * 10, "loss": 1,
    }  # fmt: skip
    own = {  # im2col columns (forward and backward; conv2's weight gradient runs direct, without
        # them), pooling masks, softmax, clipping, the loss's label check (a flag per label)
        "columns": 2 * 25 * 576 + 500 * 64, "column gradients": 500 * 64,
        "argmax": 64 * 20 * 144 + 64 * 800, "softmax": 64 * 10 + 4 * 64 + 1, "norm": 1,
        "label check": 64,
    }  # fmt: skip
    diffs = sum(blobs.values()) - blobs["data"] - blobs["label"]  # nothing writes those two
    assert naive == 4 * (sum(blobs.values()) + diffs + sum(own.values()))
    # the plan is final: a graph the pass never saw has none, and no artifact is made of it
    early = build_kernel_graph(graph, lenet_options(), after="solver")
    assert early.memory_plan is None
    with pytest.raises(InternalError, match="no memory plan"):
        write_artifact(early, tmp_path / "early")


def _compiled(kgraph: KernelGraph, out: Path, poison: bool = False) -> CompiledNet:
    """Write and load ``kgraph``; with ``poison``, every arena byte the runtime has not filled
    is NaN first, so a kernel that reads what nobody wrote shows. Built as reference builds
    are (gcc -O1): these tests are about the memory plan, and it compiles in half the time."""
    net = CompiledNet(write_artifact(kgraph, out, reference=True), seed=3)
    if poison:
        fills = [(f.slot, net._exec.host(f.slot).copy()) for f in net.artifact.manifest.fills]
        net._exec.arena.view(np.uint8)[...] = 0xFF
        for slot, saved in fills:
            net._exec.host(slot)[...] = saved
    return net


@pytest.mark.parametrize("keep_blobs", [True, False])
def test_lenet_trains_identically_with_and_without_planning(
    tmp_path: Path, keep_blobs: bool
) -> None:
    graph = load_layer_graph(LENET, lenet_options())
    reference = _compiled(build_kernel_graph(graph, lenet_options(opt_level=0)),
                          tmp_path / "reference")  # fmt: skip
    # bit for bit: without the threads' partial sums of weight gradients and the direct
    # weight gradient (both sum in another order)
    kgraph = build_kernel_graph(graph, lenet_options(keep_blobs=keep_blobs, skip=frozenset({"parallel_loops"}),
                                                     choose_algorithms=False))  # fmt: skip
    planned = _compiled(kgraph, tmp_path / "planned", poison=True)
    m = planned.artifact.manifest
    assert m.arena_bytes < reference.artifact.manifest.arena_bytes
    assert m.naive_bytes == reference.artifact.manifest.naive_bytes
    assert m.memory_plan.shared and m.memory_plan.keep_blobs == keep_blobs
    same_params(reference, planned)
    rng = np.random.default_rng(0)
    for iteration in range(3):
        feed = {"data": rng.random((64, 1, 28, 28)), "label": rng.integers(0, 10, 64)}
        twice = 1 + (iteration == 1 and keep_blobs)  # a second backward reads forward's states
        results = [train_step(net, feed, 0.01, twice) for net in (reference, planned)]
        assert results[0].keys() == results[1].keys() == {"loss"}
        np.testing.assert_array_equal(results[0]["loss"], results[1]["loss"], f"iter {iteration}")
        for name, blobs in reference.params.items():
            for a, b in zip(blobs, planned.params[name], strict=True):
                np.testing.assert_array_equal(a.data, b.data, name)
                np.testing.assert_array_equal(a.diff, b.diff, name)
        if not keep_blobs:  # the lean build freed forward's values as backward went
            with pytest.raises(UserError, match="each backward needs a forward"):
                planned.backward()
            with pytest.raises(UserError, match="only whole passes"):
                planned.forward(start="conv1")
        else:
            for name, blob in reference.blobs.items():
                np.testing.assert_array_equal(blob.data, planned.blobs[name].data, name)
                np.testing.assert_array_equal(blob.diff, planned.blobs[name].diff, name)


def test_googlenet_forward_is_identical_with_and_without_planning(
    corpus: Path, tmp_path: Path
) -> None:
    deploy = corpus / "bvlc/models/bvlc_googlenet/deploy.prototxt"
    # bit for bit: the algorithms of -O0 (the direct kernels sum in another order)
    options = Options(phase="TEST", shapes={"data": (2, 3, 224, 224)}, choose_algorithms=False)
    graph = load_layer_graph(deploy, options)
    reference = _compiled(build_kernel_graph(graph, replace(options, opt_level=0)),
                          tmp_path / "reference")  # fmt: skip
    nets = [
        _compiled(build_kernel_graph(graph, options), tmp_path / "planned", poison=True),
        _compiled(build_kernel_graph(graph, replace(options, keep_blobs=False)),
                  tmp_path / "outputs-only", poison=True),
    ]  # fmt: skip
    sizes = [n.artifact.manifest.arena_bytes for n in [reference, *nets]]
    assert sizes[0] > sizes[1] > sizes[2]
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224))
    expected = reference.forward(data=x)["prob"].copy()
    assert np.isfinite(expected).all()
    for net in nets:
        same_params(reference, net)
        np.testing.assert_array_equal(net.forward(data=x)["prob"], expected)
    for name, blob in reference.blobs.items():  # keep_blobs: pycaffe's view is unchanged
        np.testing.assert_array_equal(nets[0].blobs[name].data, blob.data, name)
