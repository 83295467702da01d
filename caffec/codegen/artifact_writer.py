"""Writing a compiled artifact: the directory the runtime loads, and nothing else.

``manifest.json`` describes every buffer (shape, kind, where it lives), the
steps of each pass, and how pycaffe's names (blobs, layers, parameters) map to
buffer slots; ``kernels.c`` is the generated source and ``kernels.so`` the
library built from it. The directory is written under a temporary name and
renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from caffec.codegen.renderer import Rendered, Renderer, kernel_names, renderer_for
from caffec.compiler.kernels import BlobBinding, Buffer, KernelGraph, Step, View
from caffec.errors import InternalError
from caffec.formats.atomic import replacing_directory
from caffec.formats.manifest import (
    BlobEntry,
    BufferEntry,
    FeederEntry,
    FillEntry,
    FilterEntry,
    HostCallEntry,
    LabelCheckEntry,
    LayerEntry,
    Manifest,
    MemoryPlanEntry,
    ParamEntry,
    SolverEntry,
    StepEntry,
    TargetEntry,
    ViewEntry,
)


def manifest(
    kgraph: KernelGraph, rendered: Rendered, flags: list[str], renderer: Renderer
) -> Manifest:
    """What the runtime needs to run ``kgraph`` as ``renderer`` built it."""
    plan = kgraph.memory_plan
    if plan is None:
        raise InternalError("the kernel graph has no memory plan: run the plan_memory pass")
    offsets = {b.index: offset for b, offset in plan.offsets.items()}
    names = kernel_names(kgraph)
    kept = {id(b) for b in kgraph.buffers}

    def steps(direction: list[Step]) -> list[StepEntry]:
        return [StepEntry(s.layer, s.layer_type, [names[id(k)] for k in s.kernels()], s.joined)
                for s in direction]  # fmt: skip

    def view(v: View | None) -> ViewEntry | None:
        return None if v is None else ViewEntry(v.offset, list(v.shape), list(v.strides))

    def blob(b: BlobBinding) -> BlobEntry:
        return BlobEntry(b.data.index, _slot(b.diff), view(b.data_view), view(b.diff_view))

    return Manifest(
        target=TargetEntry(**kgraph.target.describe()),
        dtype=kgraph.dtype,
        precision=kgraph.precision,
        name=kgraph.name,
        phase=kgraph.phase,
        source=renderer.source_name,
        source_sha256=hashlib.sha256(rendered.source.encode()).hexdigest(),
        library=renderer.library_name,
        compiler_flags=flags,
        arena_bytes=plan.arena_bytes,
        naive_bytes=plan.naive_bytes,
        memory_plan=MemoryPlanEntry(**plan.summary()),
        buffers=[
            BufferEntry(b.name, list(b.shape), b.kind, offsets.get(b.index)) for b in kgraph.buffers
        ],  # fmt: skip
        layers=[layer_entry(layer, kept) for layer in kgraph.layers],
        forward=steps(kgraph.forward),
        backward=steps(kgraph.backward),
        update=steps(kgraph.update),
        histories=[(index, b.index) for index, b in kgraph.histories],
        solver=SolverEntry(**kgraph.solver) if kgraph.solver else None,
        blobs={name: blob(b) for name, b in kgraph.blobs.items()},
        params=[
            ParamEntry(
                p.layer,
                p.index,
                p.data.index,
                _slot(p.grad),
                p.lr_mult,
                p.decay_mult,
                p.filler,
                list(p.shared_with) if p.shared_with else None,
            )
            for p in kgraph.params
        ],  # fmt: skip
        inputs={name: b.index for name, b in kgraph.inputs.items()},
        outputs=list(kgraph.outputs),
        output_diffs={name: b.index for name, b in kgraph.output_diffs.items()},
        seeds=[(b.index, w) for b, w in kgraph.seeds],
        loss_tops=list(kgraph.loss_tops),
        fills=[FillEntry(b.index, spec, refill) for b, spec, refill in kgraph.fills],
        feeders=[FeederEntry(**feeder) for feeder in kgraph.feeders],
        host_calls=host_calls(kgraph),
        label_checks=[
            LabelCheckEntry(
                c["layer"],
                c["status"].index,
                c["labels"].index,
                c["classes"],
                c["ignore"],
                c["what"],
            )
            for c in kgraph.label_checks
        ],  # fmt: skip
        filters=[
            FilterEntry(
                c["layer"], c["count"].index, c["items"], c["tops"], list(map(list, c["shapes"]))
            )
            for c in kgraph.item_counts
        ],
        net_dir=kgraph.net_dir,
        cuda=rendered.cuda,
    )


def layer_entry(layer: dict[str, Any], kept: set[int]) -> LayerEntry:
    """A layer's manifest entry: its buffers as slots (None where pruning dropped one)."""
    fields = {k: v for k, v in layer.items() if not k.endswith("_buffers")}

    def slots(buffers: list[Buffer | None]) -> list[int | None]:
        return [b.index if b is not None and id(b) in kept else None for b in buffers]

    return LayerEntry(**fields, top_slots=slots(layer["top_buffers"]),
                      bottom_diff_slots=slots(layer["bottom_diff_buffers"]))  # fmt: skip


def host_calls(kgraph: KernelGraph) -> list[HostCallEntry]:
    """The steps the runtime runs itself (see :func:`caffec.compiler.primitives.host_call`),
    their operands split back into the roles the layer's rule gave them."""
    calls = []
    for direction, steps in kgraph.steps().items():
        for number, step in enumerate(steps):
            for kernel in step.kernels():
                if kernel.prim != "host":
                    continue
                a = kernel.attrs
                reads = [o.buffer.index for o in kernel.reads]
                writes = iter(o.buffer.index for o in kernel.writes)
                nb, nt = a["bottoms"], a["tops"]
                if direction == "forward":
                    roles = (reads[:nb], list(writes), [], [], [])
                else:
                    diffs = [next(writes) if wanted else None for wanted in a["propagate"]]
                    roles = (reads[2 * nt :], reads[:nt], reads[nt : 2 * nt], diffs,
                             list(a["accumulate"]))  # fmt: skip
                calls.append(HostCallEntry(step.layer, direction, number, a["module"],
                                           a["class_name"], a["param_str"], *roles))  # fmt: skip
    return calls


def _slot(buffer: Buffer | None) -> int | None:
    return None if buffer is None else buffer.index


def write_artifact(kgraph: KernelGraph, out_dir: str | Path, reference: bool | None = None) -> Path:
    """Generate, build and write ``kgraph`` as an artifact directory at ``out_dir``, for the
    target it was lowered for; ``reference``: build the C without vectorisation, as -O0
    builds are (None: as the graph's -O level says)."""
    kgraph.number_buffers()
    renderer = renderer_for(kgraph, kgraph.opt_level == 0 if reference is None else reference)
    rendered = renderer.render(kgraph)
    library, flags = renderer.build(rendered.source)
    doc = manifest(kgraph, rendered, flags, renderer)
    out = Path(out_dir)
    with replacing_directory(out) as tmp:
        (tmp / renderer.source_name).write_text(rendered.source, encoding="utf-8")
        shutil.copyfile(library, tmp / renderer.library_name)
        (tmp / "manifest.json").write_text(doc.to_json(), encoding="utf-8")
    return out
