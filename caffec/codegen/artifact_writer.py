"""Writing a compiled artifact: the directory the runtime loads, and nothing else.

``manifest.json`` describes every buffer (shape, kind, where it lives), the
steps of each pass, and how pycaffe's names (blobs, layers, parameters) map to
buffer slots; ``kernels.c`` is the generated source and ``kernels.so`` the
library built from it. The directory is written under a temporary name and
renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from caffec.codegen.c import ABI_VERSION
from caffec.codegen.renderer import Rendered, Renderer, kernel_names, renderer_for
from caffec.compiler.kernels import BlobBinding, KernelGraph
from caffec.errors import InternalError, UserError

FORMAT_VERSION = 2  # 2: blobs may be views of part of a buffer


def manifest(
    kgraph: KernelGraph, rendered: Rendered, flags: list[str], renderer: Renderer
) -> dict[str, Any]:
    """What the runtime needs to run ``kgraph`` as ``renderer`` built it."""
    plan = kgraph.memory_plan
    if plan is None:
        raise InternalError("the kernel graph has no memory plan: run the plan_memory pass")
    offsets = {b.index: offset for b, offset in plan.offsets.items()}
    names = kernel_names(kgraph)

    def steps(direction: list) -> list[dict[str, Any]]:
        return [
            {
                "layer": s.layer,
                "type": s.layer_type,
                "kernels": [names[id(k)] for k in s.kernels()],
                "joined": s.joined,
            }
            for s in direction
        ]

    def slot(buffer: Any) -> int | None:
        return None if buffer is None else buffer.index

    def blob_entry(blob: BlobBinding) -> dict[str, Any]:
        """A blob's data and diff slots, and where either is a view of part of its slot."""
        entry: dict[str, Any] = {"data": slot(blob.data), "diff": slot(blob.diff)}
        for key, view in (("data_view", blob.data_view), ("diff_view", blob.diff_view)):
            if view is not None:
                entry[key] = {"offset": view.offset, "shape": list(view.shape),
                              "strides": list(view.strides)}  # fmt: skip
        return entry

    return {
        "format": "caffec-artifact",
        "format_version": FORMAT_VERSION,
        "abi": ABI_VERSION,
        "target": kgraph.target.name,
        "dtype": kgraph.dtype,
        "name": kgraph.name,
        "phase": kgraph.phase,
        "source": renderer.source_name,
        "source_sha256": hashlib.sha256(rendered.source.encode()).hexdigest(),
        "library": renderer.library_name,
        "compiler_flags": flags,
        "arena_bytes": plan.arena_bytes,
        "naive_bytes": plan.naive_bytes,  # what Caffe would allocate for the same blobs
        "memory_plan": plan.summary(),
        "buffers": [
            {"name": b.name, "shape": list(b.shape), "kind": b.kind, "offset": offsets.get(b.index)}
            for b in kgraph.buffers
        ],
        "layers": kgraph.layers,
        "forward": steps(kgraph.forward),
        "backward": steps(kgraph.backward),
        "update": steps(kgraph.update),
        "histories": [[index, slot(b)] for index, b in kgraph.histories],
        "solver": kgraph.solver,
        "blobs": {name: blob_entry(b) for name, b in kgraph.blobs.items()},
        "params": [
            {
                "layer": p.layer,
                "index": p.index,
                "data": slot(p.data),
                "grad": slot(p.grad),
                "lr_mult": p.lr_mult,
                "decay_mult": p.decay_mult,
                "filler": p.filler,
                "shared_with": list(p.shared_with) if p.shared_with else None,
            }
            for p in kgraph.params
        ],  # fmt: skip
        "inputs": {name: slot(b) for name, b in kgraph.inputs.items()},
        "outputs": kgraph.outputs,
        "output_diffs": {name: slot(b) for name, b in kgraph.output_diffs.items()},
        "seeds": [[slot(b), w] for b, w in kgraph.seeds],
        "loss_tops": [[name, w] for name, w in kgraph.loss_tops],
        "fills": [[slot(b), spec, refill] for b, spec, refill in kgraph.fills],
        "feeders": kgraph.feeders,
        "net_dir": kgraph.net_dir,
        **rendered.extra,
    }


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
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as err:
        raise UserError(f"cannot write the artifact {out}: {err.strerror}") from err
    try:
        (tmp / renderer.source_name).write_text(rendered.source, encoding="utf-8")
        shutil.copyfile(library, tmp / renderer.library_name)
        (tmp / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, old / "artifact")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
