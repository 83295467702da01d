"""The op registry: one entry per Caffe layer type.

A layer type is registered once, by decorating the class that knows its
rules (see ``caffec/compiler/layers/``). Nothing else in the compiler knows
what a particular layer does: passes look the entry up by type.

An entry's class provides (:class:`LayerRules` and the protocols after it)

* ``infer(layer, bottoms, ctx) -> list[Shape]``: the shapes of the tops from
  the shapes of the bottoms, as Caffe's ``Reshape`` computes them; it raises
  :class:`ShapeError` when the bottoms do not fit;
* ``params(layer, bottoms) -> list[ParamBlob]`` (where the layer owns blobs):
  their shapes and fillers, as Caffe's ``LayerSetUp`` allocates them;
* ``lower(op, ctx)`` (to compile the layer): emits the kernels of its forward
  pass through a :class:`caffec.compiler.lowering.LowerContext`;
* ``grad(op, ctx)`` (to train through it): emits the kernels that compute the
  gradients of its bottoms and parameters from the gradients of its tops;

and may say ``fed_by_runtime = True`` (a data layer: the runtime fills its
tops) or ``allow_force_backward(bottom)`` (which bottoms ``force_backward``
sends a gradient to, where Caffe's loss rule does not hold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from caffec.compiler.ir import Op, ParamBlob, Shape

if TYPE_CHECKING:  # the lowering state imports the registry; rules see it only when called
    from caffec.compiler.lowering import LowerContext

T = TypeVar("T")
LayerParameter = Any  # a caffe_pb2.LayerParameter (its class is built at run time)


class ShapeError(Exception):
    """A layer's bottoms do not fit its parameters; the pass adds layer and location."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass
class InferContext:
    """What shape rules may need beyond the bottoms: user-given shapes, file locations."""

    shape_overrides: dict[str, Shape] = field(default_factory=dict)
    base_dir: Path = Path(".")


class LayerRules(Protocol):
    """The rules every registered layer type has."""

    def infer(
        self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext
    ) -> list[Shape]: ...


@runtime_checkable
class OwnsParams(Protocol):
    """A layer with parameter blobs."""

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]: ...


@runtime_checkable
class Lowers(Protocol):
    """A layer caffec compiles."""

    def lower(self, op: Op, ctx: LowerContext) -> None: ...


@runtime_checkable
class Differentiates(Protocol):
    """A layer caffec trains through."""

    def grad(self, op: Op, ctx: LowerContext) -> None: ...


@dataclass(frozen=True)
class Arity:
    """How many bottoms (or tops) a layer takes: ``low`` to ``high`` (None: no limit)."""

    low: int
    high: int | None

    def accepts(self, n: int) -> bool:
        return n >= self.low and (self.high is None or n <= self.high)

    def __str__(self) -> str:
        if self.high == self.low:
            return f"exactly {self.low}"
        if self.high is None:
            return f"at least {self.low}"
        return f"{self.low} to {self.high}"


@dataclass(frozen=True)
class LayerSpec:
    """A registered layer type."""

    type: str
    rules: LayerRules
    bottoms: Arity
    tops: Arity
    in_place: bool
    loss: bool

    def infer(self, layer: LayerParameter, bottoms: list[Shape], ctx: InferContext) -> list[Shape]:
        return self.rules.infer(layer, bottoms, ctx)

    def params(self, layer: LayerParameter, bottoms: list[Shape]) -> list[ParamBlob]:
        return self.rules.params(layer, bottoms) if isinstance(self.rules, OwnsParams) else []

    def allows_force_backward(self, bottom: int) -> bool:
        """Whether ``force_backward`` sends a gradient to ``bottom`` (Caffe: not to labels)."""
        rule = getattr(self.rules, "allow_force_backward", None)
        if rule is not None:
            return rule(bottom)
        return not (self.loss and bottom == 1)

    @property
    def can_lower(self) -> bool:
        return isinstance(self.rules, Lowers)

    @property
    def has_grad(self) -> bool:
        return isinstance(self.rules, Differentiates)

    @property
    def fed_by_runtime(self) -> bool:
        """A data layer: the runtime fills its tops (from a source, or the user's arrays)."""
        return bool(getattr(self.rules, "fed_by_runtime", False))


_REGISTRY: dict[str, LayerSpec] = {}


def _arity(spec: int | tuple[int, int | None]) -> Arity:
    return Arity(spec, spec) if isinstance(spec, int) else Arity(*spec)


def register_layer(
    type_name: str,
    *,
    bottoms: int | tuple[int, int | None] = 1,
    tops: int | tuple[int, int | None] = 1,
    in_place: bool = False,
    loss: bool = False,
) -> Callable[[type[T]], type[T]]:
    """Class decorator: register ``cls`` as the rules of Caffe layer ``type_name``.

    ``in_place`` says the layer may write its top over its bottom; ``loss``
    says its first top has a default ``loss_weight`` of 1, as Caffe's loss
    layers do.
    """

    def register(cls: type[T]) -> type[T]:
        if type_name in _REGISTRY:
            raise ValueError(f"layer type {type_name!r} registered twice")
        _REGISTRY[type_name] = LayerSpec(
            type=type_name,
            rules=cls(),
            bottoms=_arity(bottoms),
            tops=_arity(tops),
            in_place=in_place,
            loss=loss,
        )
        return cls

    return register


def lookup(type_name: str) -> LayerSpec | None:
    """The registered rules of ``type_name``, or None."""
    _load_layers()
    return _REGISTRY.get(type_name)


def known_types() -> list[str]:
    """Every registered layer type, sorted."""
    _load_layers()
    return sorted(_REGISTRY)


def _load_layers() -> None:
    # The layer modules register themselves on import.
    import caffec.compiler.layers  # noqa: F401
