"""Filter: the items of its data bottoms that the last bottom, the selector, marks nonzero.

How many items a Filter keeps is a property of each batch, and caffec compiles static
shapes: the tops are compiled for a count (Caffe's first Reshape keeps every item, and so
does a build without ``--shape`` for the tops), the kernels count the items kept into a
buffer the runtime reads once the layer's step has run, and where the count differs the
runtime compiles the net again for it (cached) and runs the batch there.

The kernels are safe for any selector: the kept items' positions are found by prefix
counts (``kept[n]``: the items kept among 0..n), so forward gathers rows and backward
gathers the top's gradient back into the kept rows (zeros elsewhere, as Caffe writes),
without a scatter and without reading outside a buffer when the count is not the
compiled one.
"""

from __future__ import annotations

from caffec.compiler.ir import Op, Shape
from caffec.compiler.layers.common import count
from caffec.compiler.layers.indexing import row_of
from caffec.compiler.lowering import LowerContext
from caffec.compiler.primitives import pmap, reduce
from caffec.compiler.registry import InferContext, LayerParameter, ShapeError, register_layer
from caffec.errors import UserError, shape_text

KEPT = "items kept up to each item"  # the state forward leaves for backward


@register_layer("Filter", bottoms=(2, None), tops=(1, None))
class Filter:
    """Tops 0..K-1 hold the items of data bottoms 0..K-1 whose selector (bottom K, one value
    per item) is nonzero, in order. No gradient goes to the selector."""

    counted_by_data = True  # ``--shape`` (and the runtime's rebuilds) may set the tops' count

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        *data, selector = bottoms
        if len(layer.top) != len(data):
            raise ShapeError(
                f"{len(bottoms)} bottoms (the data, then the selector) need {len(data)} tops, "
                f"not {len(layer.top)}",
                hint="give one top per data bottom",
            )
        if not selector or any(d != 1 for d in selector[1:]):
            raise ShapeError(
                f"the selector (bottom {len(data)}) must hold one value per item, (N) or "
                f"(N, 1, ...), got {shape_text(selector)}",
                hint="the selector is the last bottom; reshape it: reshape_param { shape "
                "{ dim: -1 } }",
            )
        items = selector[0]
        for i, shape in enumerate(data):
            if not shape or shape[0] != items:
                raise ShapeError(
                    f"bottom {i} {shape_text(shape)} must have the selector's {items} items "
                    "on its first axis",
                    hint="filter blobs of the selector's batch",
                )
        kept = _compiled_count(layer, data, ctx)
        return [(kept, *shape[1:]) for shape in data]

    def lower(self, op: Op, ctx: LowerContext) -> None:
        items, kept = op.bottoms[-1].shape[0], op.tops[0].shape[0]
        up_to = ctx.state(KEPT, (items,))
        pairs = ctx.workspace("kept pairs", (items, items))
        rows = ctx.workspace("rows kept", (kept,))
        before_row = ctx.workspace("items before each kept row", (kept, items))
        ctx.emit(
            pmap((items, items), [(pairs, "m <= n && s != 0 ? 1 : 0")],
                 {"s": (ctx.x(len(op.tops)), (1, items))}, coords={"n": 0, "m": 1}),
            reduce(pairs, up_to, (items, items), [1]),
            # kept row r is item n where n items have at most r kept up to them (a row past a
            # batch's kept items gives n = items, which the gather clamps to 0: the runtime
            # compiles the net again for that batch before anyone reads the row)
            pmap((kept, items), [(before_row, "c <= r ? 1 : 0")], {"c": (up_to, (1, items))},
                 coords={"r": 0}),
            reduce(before_row, rows, (kept, items), [1]),
        )  # fmt: skip
        for t, top in enumerate(op.tops):
            inner = count(top.shape, 1)
            inputs = {"l": (rows, (kept, 1)),
                      "x": (ctx.x(t), f"{row_of('l', items)} * {inner} + j")}  # fmt: skip
            ctx.emit(pmap((kept, inner), [(ctx.y(t), "x")], inputs, coords={"j": 1}))
        ctx.emit(pmap((1,), [(ctx.item_count(items), "c")], {"c": (up_to, str(items - 1))}))

    def grad(self, op: Op, ctx: LowerContext) -> None:
        selector = len(op.tops)
        if selector in ctx.bottoms_needed and not ctx.forces_backward:
            raise UserError(
                f"Filter cannot send a gradient to its selector (bottom {selector}), as in Caffe",
                hint="set propagate_down: false for the selector (the last bottom), or compute "
                "it from layers that need no gradient",
            )
        items, kept = op.bottoms[-1].shape[0], op.tops[0].shape[0]
        up_to = ctx.state(KEPT, (items,))
        for t, top in enumerate(op.tops):
            target = ctx.dx(t)
            if target is None:
                continue
            dx, accumulate = target
            inner = count(top.shape, 1)
            inputs = {"s": (ctx.x(selector), (items, 1)), "c": (up_to, (items, 1)),
                      "g": (ctx.dy(t), f"{row_of('c - 1', kept)} * {inner} + j")}  # fmt: skip
            ctx.emit(pmap((items, inner), [(dx, "s != 0 ? g : 0")], inputs, coords={"j": 1},
                          accumulate=accumulate))  # fmt: skip


def _compiled_count(layer: LayerParameter, data: list[Shape], ctx: InferContext) -> int:
    """The count the tops are compiled for: the one ``--shape`` (or the runtime) gives them,
    else every item, as Caffe's first Reshape."""
    items = data[0][0]
    given = {i: tuple(ctx.shape_overrides[t]) for i, t in enumerate(layer.top)
             if t in ctx.shape_overrides}  # fmt: skip
    if not given:
        return items
    counts = {shape[0] for shape in given.values()}
    for i, shape in given.items():
        expected = ("k", *data[i][1:])
        if len(counts) > 1 or tuple(shape[1:]) != tuple(data[i][1:]):
            raise ShapeError(
                f"--shape gives top '{layer.top[i]}' the shape {shape_text(shape)}; a Filter top "
                f"is ({', '.join(map(str, expected))}) for the k items kept, one k for all its "
                "tops",
                hint="change only the first axis",
            )
    kept = counts.pop()
    if not 1 <= kept <= items:
        raise ShapeError(
            f"--shape asks for {kept} kept items of a batch of {items}",
            hint=f"give a count from 1 to {items}",
        )
    return kept
