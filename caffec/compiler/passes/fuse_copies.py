"""Fusion's copies: a Concat's, Slice's, Flatten's, Reshape's or Split's copy dropped, read
through by the one map that reads its destination (step 1 of :mod:`.fuse`) or written
through by the kernels that make its source, the value then living inside the other side,
shown to the user as a view (step 4)."""

from __future__ import annotations

import math
from collections.abc import Callable

from caffec.compiler.kernels import Buffer, Kernel, KernelGraph, Operand, View, kernels_of
from caffec.compiler.passes.fusion_scope import Scope, elementwise_only, is_at, is_map
from caffec.compiler.primitives import contiguous_strides, coordinate


def _drop_copies(scope: Scope, rewrite: Callable[[int, Kernel], bool]) -> bool:
    """Drop each copy kernel for which ``rewrite(position, copy)`` made it unneeded; whether
    any was."""
    entries = scope.entries
    position = 0
    dropped = False
    while position < len(entries):
        copy = entries[position].instr
        if isinstance(copy, Kernel) and copy.prim == "copy" and rewrite(position, copy):
            del entries[position]
            dropped = True
        else:
            position += 1
    return dropped


def read_through_copies(scope: Scope) -> None:
    def rewrite(position: int, copy: Kernel) -> bool:
        target = _reader_through(scope, position)
        if target is None:
            return False
        _read_through(copy, scope.entries[target].instr)
        scope.entries[target].origins |= scope.entries[position].origins
        return True

    _drop_copies(scope, rewrite)


def _reader_through(scope: Scope, position: int) -> int | None:
    """The position of the one map that may read through the copy at ``position``."""
    entries = scope.entries
    copy = entries[position].instr
    assert isinstance(copy, Kernel)
    a = copy.attrs
    destination, source = copy.writes[0], copy.reads[0]
    if copy.accumulate or not is_at(destination, destination.buffer):
        return None
    if destination.buffer in scope.pinned:
        return None
    if destination.buffer.size != a["size"] or a["dst_strides"] != contiguous_strides(a["shape"]):
        return None
    readers, writers = scope.users(destination.buffer)
    if writers != [copy] or len(readers) != 1 or source.step:
        return None
    reader = readers[0]
    for later in range(position + 1, len(entries)):
        instr = entries[later].instr
        if instr is reader:
            if not is_map(reader, random_ok=True) or not elementwise_only(
                reader, destination.buffer
            ):
                return None
            if any(o.buffer is source.buffer for o in reader.writes):
                return None
            return later
        if any(
            o.buffer is source.buffer for k in kernels_of(entries[later].instr) for o in k.writes
        ):
            return None  # the source changes before the reader would read it
    return None


def _strided_index(shape: list[int], strides: list[int]) -> str:
    """Where element i of a contiguous array of ``shape`` lies in one laid out by
    ``strides``."""
    terms = [
        f"{coordinate(tuple(shape), axis)} * {stride}"
        for axis, stride in enumerate(strides)
        if shape[axis] > 1 and stride
    ]
    return " + ".join(terms) or "0"


def _read_through(copy: Kernel, reader: Kernel) -> None:
    """Make ``reader`` load the copy's source where the copy would have put it."""
    index = _strided_index(copy.attrs["shape"], copy.attrs["src_strides"])
    destination = copy.writes[0].buffer
    for number, (name, slot, _) in enumerate(reader.attrs["loads"]):
        if reader.reads[slot].buffer is destination:
            reader.reads[slot] = copy.reads[0]
            reader.attrs["loads"][number] = (name, slot, index)


# --- 2. map chains -------------------------------------------------------------------------


def write_into_copies(scope: Scope) -> None:
    def rewrite(position: int, copy: Kernel) -> bool:
        a, (source,), (destination,) = copy.attrs, copy.reads, copy.writes
        if copy.accumulate:
            return False
        if _moved(scope, copy, source, destination, a["dst_strides"]):
            return True
        if _written_after(scope, position, source.buffer):
            return False  # the destination would change with the source
        return _moved(scope, copy, destination, source, a["src_strides"])

    while _drop_copies(scope, rewrite):
        pass  # a dropped copy can free another (a Slice's top, once the Split after it went)


def _moved(scope: Scope, copy: Kernel, gone: Operand, kept: Operand, layout: list[int]) -> bool:
    """Retarget every access of one side of the copy, ``gone``, to its place in the other,
    ``kept``, laid out there by ``layout``: the source into the destination (a Concat's
    bottom), or the destination onto the source (a Flatten's, Split's or Slice's top). The
    value must be whole on its side, no one else may write where it lands, and every access
    must be movable (see above). A blob the user reads becomes a view there."""
    a = copy.attrs
    value = gone.buffer
    shape = a["shape"]
    if not is_at(gone, value) or value.size != a["size"] or kept.step:
        return False
    if value.kind not in ("value", "grad") or value in scope.fixed:
        return False
    if (a["src_strides"] if gone is copy.reads[0] else a["dst_strides"]) != contiguous_strides(
        shape
    ):
        return False
    flat = layout == contiguous_strides(shape)
    if not flat and (len(shape) != 2 or layout[1] != 1):
        return False
    view = None
    if value in scope.pinned:
        view = _view(value, kept, shape, layout)
        if view is None or (not flat and not _viewed_whole(scope.kgraph, value)):
            return False
    readers, writers = scope.users(value)
    _, kept_writers = scope.users(kept.buffer)
    if gone is copy.reads[0]:  # beside the other copies into the destination, or what
        if any(k.accumulate or (k.prim != "copy" and id(k) not in scope.moved)  # writes there
               for k in kept_writers):  # fmt: skip
            return False
    elif writers != [copy]:
        return False
    accesses = [(k, o) for k in {*readers, *writers} - {copy}
                for o in (*k.reads, *k.writes) if o.buffer is value]  # fmt: skip
    if any(k.prim == "host" for k, _ in accesses):
        return False  # a Python layer sees whole buffers: its blobs are plain arrays
    if not flat:
        row = shape[1]
        for kernel, o in accesses:
            sliced = o.offset == 0 and o.step == row
            whole = is_at(o, value) and kernel.prim == "map"
            if whole and o in kernel.writes:
                return False  # a map writes element i: it cannot scatter
            if whole and any(ix != "i" for _, sl, ix in kernel.attrs["loads"]
                             if kernel.reads[sl] is o):  # fmt: skip
                return False
            if not (sliced or whole):
                return False
    for kernel, o in accesses:
        _retarget(kernel, o, kept, shape, layout, flat)
        scope.moved.add(id(kernel))
    if view is not None:
        _bind_view(scope.kgraph, value, kept.buffer, view)
    return True


def _written_after(scope: Scope, position: int, buffer: Buffer) -> bool:
    """Whether a kernel after entry ``position`` (in this pass or a later one) writes
    ``buffer``."""
    later = [e.instr for e in scope.entries[position + 1 :]]
    passes = list(scope.kgraph.steps())
    for direction in passes[passes.index(scope.direction) + 1 :]:
        later += [i for step in scope.kgraph.steps()[direction] for i in step.instrs]
    return any(o.buffer is buffer for i in later for k in kernels_of(i) for p in k.parts()
               for o in p.writes)  # fmt: skip


def _view(value: Buffer, kept: Operand, shape: list[int], layout: list[int]) -> View | None:
    """Where ``value`` lies in ``kept``'s buffer, as a view of its own shape: contiguous
    from the offset, or (a 2-D copy) the rows of its leading axes ``layout[0]`` apart."""
    if layout == contiguous_strides(shape):
        return View(kept.offset, value.shape, tuple(contiguous_strides(value.shape)))
    rows = shape[0]
    split = next((k for k in range(len(value.shape) + 1) if math.prod(value.shape[:k]) == rows),
                 None)  # fmt: skip
    if split is None:
        return None
    leading = [layout[0] * math.prod(value.shape[j + 1 : split]) for j in range(split)]
    return View(kept.offset, value.shape, (*leading, *contiguous_strides(value.shape[split:])))


def _viewed_whole(kgraph: KernelGraph, buffer: Buffer) -> bool:
    """Whether every blob that is a view into ``buffer`` is all of it, as it is laid out."""
    whole = View(0, buffer.shape, tuple(contiguous_strides(buffer.shape)))
    views = [b.data_view for b in kgraph.blobs.values() if b.data is buffer]
    views += [b.diff_view for b in kgraph.blobs.values() if b.diff is buffer]
    return all(v is None or v == whole for v in views)


def _bind_view(kgraph: KernelGraph, value: Buffer, base: Buffer, view: View) -> None:
    """Show the blobs bound to ``value`` where it now lives (a view already into ``value``
    moves along with it: by an offset, or as all of it)."""
    for blob in kgraph.blobs.values():
        if blob.data is value:
            blob.data, blob.data_view = base, _composed(blob.data_view, view)
        if blob.diff is value:
            blob.diff, blob.diff_view = base, _composed(blob.diff_view, view)


def _composed(inner: View | None, outer: View) -> View:
    """``inner`` (a view into a value, or None: all of it) once the value is ``outer``."""
    if (
        inner is None
        or inner.strides == tuple(contiguous_strides(inner.shape))
        and (inner.shape == outer.shape and inner.offset == 0)
    ):
        return outer
    return View(inner.offset + outer.offset, inner.shape, inner.strides)  # a flat move


def _retarget(
    kernel: Kernel, old: Operand, kept: Operand, shape: list[int], layout: list[int], flat: bool
) -> None:
    """Replace operand ``old`` of ``kernel`` by its place in ``kept``."""
    if flat:  # the same layout, from the kept operand's offset
        new = Operand(kept.buffer, kept.offset + old.offset, old.step)
    elif old.step:  # image n's slice: its row there
        new = Operand(kept.buffer, kept.offset, layout[0])
    else:  # a whole-value map operand read element for element: gather from the rows
        new = Operand(kept.buffer, kept.offset)
        index = _strided_index(shape, layout)
        for number, (name, slot, _) in enumerate(kernel.attrs["loads"]):
            if kernel.reads[slot] is old:
                kernel.attrs["loads"][number] = (name, slot, index)
    for operands in (kernel.reads, kernel.writes):
        for number, o in enumerate(operands):
            if o is old:
                operands[number] = new


# --- 5. groups -----------------------------------------------------------------------------
