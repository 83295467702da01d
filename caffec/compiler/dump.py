"""Printing a layer graph: plain text for people, JSON for tools, Graphviz dot for pictures."""

from __future__ import annotations

import json
from typing import Any

from caffec.compiler.ir import LayerGraph, Op, ParamBlob, Value
from caffec.compiler.passes.params import filler_dict
from caffec.errors import shape_text


def _shape(value: Value) -> str:
    return "?" if value.shape is None else shape_text(value.shape)


def _value_text(value: Value) -> str:
    return f"{value.name}[{_shape(value)}]"


def _params_text(params: list[ParamBlob]) -> str:
    return ", ".join(f"{p.role} {shape_text(p.shape)}" for p in params)


def _op_columns(op: Op) -> list[str]:
    flow = f"{' '.join(_value_text(v) for v in op.bottoms) or '()'} -> "
    flow += " ".join(_value_text(v) for v in op.tops) or "()"
    params = f"params: {_params_text(op.params)}" if op.params else ""
    return [op.name, op.type, flow, params, f"@ {op.span}" if op.span else ""]


def to_text(graph: LayerGraph) -> str:
    """One line per layer, in columns: name, type, bottoms -> tops, params, source."""
    rows = [_op_columns(op) for op in graph.ops]
    # Columns line up, but one very long cell (a Concat of many bottoms) may
    # not push every other row to the right.
    caps = (32, 24, 72, 48)
    widths = [min(cap, max((len(r[i]) for r in rows), default=0)) for i, cap in enumerate(caps)]
    lines = [f"net {graph.name or '(unnamed)'}  phase {graph.phase}  {len(graph.ops)} layers"]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    outputs = ", ".join(_value_text(v) for v in graph.outputs())
    lines.append(f"outputs: {outputs or '(none)'}")
    return "\n".join(lines) + "\n"


def to_json(graph: LayerGraph) -> str:
    def value(v: Value) -> dict[str, Any]:
        return {"name": v.name, "blob": v.blob, "shape": None if v.shape is None else list(v.shape)}

    ops = []
    for op in graph.ops:
        ops.append(
            {
                "name": op.name,
                "type": op.type,
                "bottoms": [value(v) for v in op.bottoms],
                "tops": [value(v) for v in op.tops],
                "params": [
                    {"role": p.role, "shape": list(p.shape), "filler": filler_dict(p.filler)}
                    for p in op.params
                ],
                "source": None
                if op.span is None
                else {"file": op.span.file, "line": op.span.line, "col": op.span.col},
            }
        )
    doc = {
        "name": graph.name,
        "phase": graph.phase,
        "ops": ops,
        "outputs": [v.name for v in graph.outputs()],
    }
    return json.dumps(doc, indent=2) + "\n"


def _dot_string(text: str) -> str:
    """A Graphviz double-quoted string holding ``text`` exactly."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def to_dot(graph: LayerGraph) -> str:
    ids: dict[int, str] = {}
    lines = [f"digraph {_dot_string(graph.name or 'net')} {{", "  rankdir=TB;"]
    for i, op in enumerate(graph.ops):
        ids[id(op)] = f"op{i}"
        label = f"{op.name}\n{op.type}"
        if op.params:
            label += f"\n{_params_text(op.params)}"
        lines.append(f"  op{i} [shape=box, label={_dot_string(label)}];")
    for i, v in enumerate(graph.values.values()):
        ids[id(v)] = f"v{i}"
        label = v.name + "\n" + _shape(v)
        lines.append(f"  v{i} [shape=ellipse, label={_dot_string(label)}];")
    for src, dst in graph.graph.edges:
        lines.append(f"  {ids[id(src)]} -> {ids[id(dst)]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


FORMATS = {"text": to_text, "json": to_json, "dot": to_dot}


def _operand_text(operand: Any) -> str:
    buffer = operand.buffer
    where = f"+{operand.offset}" if operand.offset else ""
    where += f"+n*{operand.step}" if operand.step else ""
    return f"#{buffer.index} {buffer.name}{where}"


def _kernel_text(kernel: Any) -> str:
    reads = ", ".join(_operand_text(o) for o in kernel.reads)
    writes = ", ".join(_operand_text(o) for o in kernel.writes)
    arrow = "+=" if kernel.accumulate else "="
    detail = ""
    if kernel.prim == "map":
        lets = [f"{name} = {expr}" for name, expr in kernel.attrs["lets"]]
        detail = "  " + "; ".join(lets + kernel.attrs["exprs"])
    elif kernel.prim == "gemm":
        a = kernel.attrs
        detail = f"  {a['M']}x{a['N']}x{a['K']}"
        detail += " A^T" if a["trans_a"] else ""
        detail += " B^T" if a["trans_b"] else ""
        detail += f" batch {a['batch']}" if a["batch"] > 1 else ""
    elif kernel.prim == "reduce":
        a = kernel.attrs
        detail = f"  {a['op']} over axes {a['axes_text']} of {a['dims_text']}"
    elif kernel.prim == "conv":
        a = kernel.attrs
        detail = f"  {a['mode']}, {a['KH']}x{a['KW']} taps, group {a['G']}"
    elif kernel.prim == "fused":
        return "    fused:\n" + "\n".join("  " + _kernel_text(k) for k in kernel.attrs["parts"])
    return f"    {kernel.prim}: {writes} {arrow} f({reads}){detail}"


def kernels_to_text(kgraph: Any) -> str:
    """The kernel graph, step by step: each kernel with the buffers it reads and writes."""
    kgraph.number_buffers()
    lines = [f"net {kgraph.name or '(unnamed)'}  phase {kgraph.phase}  {kgraph.dtype}  "
             f"{len(kgraph.kernels())} kernels  {len(kgraph.buffers)} buffers"]  # fmt: skip
    algorithms = {layer["name"]: layer["algorithm"] for layer in kgraph.layers
                  if "algorithm" in layer}  # fmt: skip
    for direction, steps in kgraph.steps().items():
        for step in steps:
            joined = "  (fused with the layer before)" if step.joined else ""
            how = f", {algorithms[step.layer]}" if step.layer in algorithms else ""
            lines.append(f"{direction} {step.layer} ({step.layer_type}{how}){joined}")
            for instr in step.instrs:
                if hasattr(instr, "body"):
                    threads = f" on {instr.threads} threads" if instr.threads > 1 else ""
                    threads += f", {instr.images} per launch" if instr.images > 1 else ""
                    threads += "".join(f", partial sums #{p.index} into #{t.index}"
                                       for p, t in instr.partial_sums)  # fmt: skip
                    lines.append(f"  for n in 0..{instr.count}{threads}:")
                    lines += ["  " + _kernel_text(k) for k in instr.body]
                else:
                    lines.append(_kernel_text(instr))
    lines += _views_text(kgraph)
    if kgraph.memory_plan is not None:
        lines += _plan_text(kgraph.memory_plan)
    return "\n".join(lines) + "\n"


def _views_text(kgraph: Any) -> list[str]:
    """The blobs ``net.blobs`` shows as views of part of another buffer (copies dropped)."""
    lines = []
    for name, blob in kgraph.blobs.items():
        for what, buffer, view in (("data", blob.data, blob.data_view),
                                   ("diff", blob.diff, blob.diff_view)):  # fmt: skip
            if view is not None:
                strides = ",".join(map(str, view.strides))
                lines.append(f"  {name} {what} = #{buffer.index} {buffer.name}+{view.offset} "
                             f"as {'x'.join(map(str, view.shape))} strides {strides}")  # fmt: skip
    return ["views:", *lines] if lines else []


def _plan_text(plan: Any) -> list[str]:
    """The arena: each buffer's byte range, the positions it is live over, pinned or not."""
    mib = 1 << 20
    lines = [
        f"arena {plan.arena_bytes / mib:.2f} MiB (naive {plan.naive_bytes / mib:.2f} MiB, "
        f"no sharing {plan.unshared_bytes / mib:.2f} MiB)",
        "  offset      bytes  live        buffer",
    ]
    for buffer, offset in sorted(plan.offsets.items(), key=lambda item: (item[1], item[0].index)):
        interval = plan.intervals.get(buffer)
        live = "pinned" if buffer in plan.pinned else (
            f"{interval[0]}..{interval[1]}" if interval else "unused"
        )  # fmt: skip
        size = buffer.footprint * plan.itemsize
        copies = f" ({buffer.copies} copies)" if buffer.copies > 1 else ""
        lines.append(f"  {offset:>10} {size:>10}  {live:<10}  #{buffer.index} {buffer.name}"
                     f"{copies}")  # fmt: skip
    return lines
