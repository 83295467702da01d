"""Reordering: MAX pooling before the ReLU that feeds it, where nobody sees the difference.

A ReLU with a slope of 0 or more is monotone, so it commutes with taking a
maximum: pooling the rectified map gives exactly the numbers that rectifying
the pooled map gives, and the gradients agree too (where a window is all
non-positive both routes give zero; elsewhere both pick the same first
maximum). Run the other way round, the ReLU works on the pooled map, a
quarter of the size or less, and backward keeps that and the pooling's mask
instead of the full-size rectified map (CaffeNet's and GoogLeNet's first
layers).

The blob between them (``conv1`` in ``conv1 -> relu1 -> pool1``) then holds
the convolution's output before rectification, which pycaffe's
``net.blobs`` would show. So the pass runs only for lean builds, where only
the outputs are readable; and only where the ReLU's top is read by the
pooling alone, its bottom by the ReLU alone, and neither carries a loss.
"""

from __future__ import annotations

from caffec.compiler.ir import LayerGraph, Op, Value
from caffec.compiler.passes.lower import loss_weights


def pool_before_relu(graph: LayerGraph) -> LayerGraph:
    """Swap each ReLU -> MAX Pooling pair that may be swapped (see above)."""
    pairs = [(relu, pool) for relu in graph.ops if (pool := _swappable(graph, relu)) is not None]
    if not pairs:
        return graph
    graph = graph.copy()
    by_name = {op.name: op for op in graph.ops}
    names = set(graph.values)
    for relu, pool in ((by_name[r.name], by_name[p.name]) for r, p in pairs):
        pooled = pool.tops[0]
        first = Value(pooled.name, pooled.blob, pooled.shape, pooled.dtype, pooled.span)
        version = pooled.name + "'"
        while version in names:
            version += "'"
        names.add(version)
        pooled.name = version  # the ReLU now writes the pooled blob in place
        pool.bottoms, pool.tops = [relu.bottoms[0]], [first]
        relu.bottoms, relu.tops = [first], [pooled]
        relu.index, pool.index = pool.index, relu.index
    ops = sorted(graph.ops, key=lambda op: op.index)
    return LayerGraph.from_ops(graph.name, ops, graph.phase, graph.force_backward)


def _swappable(graph: LayerGraph, relu: Op) -> Op | None:
    if relu.type != "ReLU" or relu.param.relu_param.negative_slope < 0:
        return None
    (x,), (y,) = relu.bottoms, relu.tops
    readers = graph.consumers(y)
    if len(readers) != 1 or graph.consumers(x) != [relu]:
        return None
    pool = readers[0]
    p = pool.param.pooling_param
    if pool.type != "Pooling" or p.PoolMethod.Name(p.pool) != "MAX" or len(pool.tops) != 1:
        return None
    if any(loss_weights(relu)) or any(loss_weights(pool)) or relu.param.propagate_down:
        return None
    if pool.param.propagate_down or graph.consumers(pool.tops[0]) == []:
        return None  # (an output keeps its layer order: its values are what the user reads)
    return pool
