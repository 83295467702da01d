"""Choosing the layers that run in a given NetState (Caffe's ``Net::FilterNet``).

One Caffe net file usually describes several nets: ``include { phase: TRAIN }``
on the training data layer, ``include { phase: TEST }`` on the test data layer
and the accuracy layer, sometimes levels and stages for finer variants. Before
a net is built, Caffe keeps the layers whose rules the current
:class:`NetState` meets; :func:`filter_net` does the same on an upgraded net
and renumbers the source spans of the layers it keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

from caffec.errors import InternalError, UserError
from caffec.formats import caffe_pb2
from caffec.formats.source_map import Path, SourceMap

NetParameter = caffe_pb2.NetParameter
NetState = caffe_pb2.NetState
NetStateRule = caffe_pb2.NetStateRule


def state_meets_rule(state: NetState, rule: NetStateRule) -> bool:
    """Whether ``state`` satisfies every condition ``rule`` sets.

    A rule's unset fields do not constrain; the state must have *all* of the
    rule's ``stage`` values and *none* of its ``not_stage`` values.
    """
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def layer_included(
    layer: caffe_pb2.LayerParameter, state: NetState, spans: SourceMap, path: Path
) -> bool:
    """Whether ``layer`` (written at ``path``) runs in ``state``.

    No include rules: the layer runs unless an exclude rule is met. Include
    rules: it runs if any of them is met. Caffe refuses a layer with both.
    """
    if layer.include and layer.exclude:
        raise UserError(
            "this layer has both 'include' and 'exclude' rules",
            span=spans.get((*path, "exclude", 0)) or spans.get(path),
            layer=layer.name or None,
            hint="Caffe accepts one kind per layer: express the condition with 'include' "
            "rules only (use 'not_stage' or the other phase) or with 'exclude' rules only",
        )
    if layer.include:
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def filter_net(
    net: NetParameter, state: NetState, spans: SourceMap | None = None
) -> tuple[NetParameter, SourceMap]:
    """A copy of ``net`` holding only the layers that run in ``state``, and its moved spans.

    ``net`` must be in the current format (run :func:`caffec.formats.upgrade.upgrade_net`
    first). The result's ``state`` field is set to ``state``, so later stages
    know which phase they build.
    """
    spans = spans if spans is not None else SourceMap()
    if net.layers:
        raise InternalError(
            "filter_net was given an old-format net ('layers' entries)",
            hint="upgrade the net with upgrade_net() before filtering it",
        )
    out = NetParameter()
    for field, value in net.ListFields():
        if field.name == "layer":
            continue
        if field.is_repeated:
            getattr(out, field.name).extend(value)
        elif field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    new_index: dict[int, int] = {}
    for i, layer in enumerate(net.layer):
        if layer_included(layer, state, spans, ("layer", i)):
            new_index[i] = len(out.layer)
            out.layer.add().CopyFrom(layer)
    out.state.CopyFrom(state)

    def rename(path: Path) -> Path | None:
        if path[:1] != ("layer",) or len(path) < 2:
            return path
        k = new_index.get(int(path[1]))
        return None if k is None else ("layer", k, *path[2:])

    return out, spans.move(rename)


def make_state(
    net: NetParameter, phase: int, level: int = 0, stages: Iterable[str] = ()
) -> NetState:
    """The state Caffe builds a net in when asked for ``phase``, ``level`` and ``stages``.

    As in Caffe's ``Net(file, phase, level, stages)`` (the ``caffe`` tool and
    pycaffe): the net's own ``state`` is the base, the requested phase and
    level replace its phase and level, and the requested stages are added to
    its stages.
    """
    state = NetState()
    state.CopyFrom(net.state)
    state.phase = phase
    state.level = level
    state.stage.extend(stages)
    return state


def make_solver_state(
    net: NetParameter, phase: int, solver_state: NetState | None = None
) -> NetState:
    """The state a Caffe solver builds its train or test net in.

    The solver's precedence differs from :func:`make_state`: ``phase`` (TRAIN
    for the train net, TEST for test nets) is only the default, the net's own
    ``state`` overrides it, and the solver's ``train_state`` / ``test_state``
    (``solver_state``) overrides both; stages accumulate.
    """
    state = NetState(phase=phase)
    state.MergeFrom(net.state)
    if solver_state is not None:
        state.MergeFrom(solver_state)
    return state
