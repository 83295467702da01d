"""An artifact's ``manifest.json``: what the runtime needs to run the compiled code beside it.

Code generation writes a :class:`Manifest` (:mod:`caffec.codegen.artifact_writer`), the
runtime reads one (:mod:`caffec.runtime.artifact_loader`); both use these classes, so the
two sides cannot disagree on a field. Every buffer is a slot of the pointer table the
generated code takes (``buffers``, with its arena offset where the memory plan put it);
the steps of each pass name their kernels; pycaffe's names (blobs, layers, parameters)
map to slots. A manifest of another :data:`FORMAT_VERSION` or :data:`ABI_VERSION` is
refused with a message that says to compile again.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caffec.errors import UserError

FORMAT = "caffec-artifact"
FORMAT_VERSION = 9  # 3: typed entries, the target's description; 4: layers' bottoms, host calls;
# 5: Filter layers; 6: what a label check checks; 7: the GEMMs' precision; 8: CUDA streams;
# 9: CUDA launches over several images of a loop
ABI_VERSION = 4  # the C entry points: caffec_<pass>(void** buf, int begin, int end);
# 4: caffec_set_threads(int), the runtime's thread count
CUDA_STREAMS = 4  # the most streams a captured CUDA pass runs on: an inception module's four
# branches; more would add events for kernels that rarely fill the GPU side by side


@dataclass
class TargetEntry:
    """The machine the code was built for (:meth:`caffec.compiler.targets.Target.describe`)."""

    name: str  # "c" or "cuda"
    cpu: str | None = None  # C: the -march
    vector_bytes: int | None = None  # C: the widest vectors the compiler used
    threads: int | None = None  # C: the most threads a per-image loop runs on
    archs: list[str] | None = None  # CUDA: compute capabilities in the fat binary
    multiprocessors: int | None = None  # CUDA: what the launch geometry fills


@dataclass
class BufferEntry:
    name: str  # for people: never reaches generated code
    shape: list[int]
    kind: str  # caffec.compiler.kernels.KINDS
    offset: int | None  # bytes into the arena; None: an allocation of its own (persistent)


@dataclass
class LayerEntry:
    name: str
    type: str
    tops: list[str]
    bottoms: list[str]
    param: dict[str, Any]  # its LayerParameter as JSON, without blobs (for full snapshots)
    top_slots: list[int | None]  # the buffers this layer's tops are written to
    bottom_diff_slots: list[int | None]  # where its bottoms' gradients are (None: none)
    algorithm: str | None = None  # a convolution's, as ``caffec dump`` names it


@dataclass
class StepEntry:
    """One layer's kernels in one pass: the unit of partial runs and of timing."""

    layer: str
    type: str
    kernels: list[str]
    joined: bool = False  # fused with the step before: no partial run may begin here


@dataclass
class ViewEntry:
    """Where a blob lies inside a buffer (numbers, not bytes)."""

    offset: int
    shape: list[int]
    strides: list[int]


@dataclass
class BlobEntry:
    """pycaffe's ``net.blobs[name]``: the data and diff slots, each whole or a view."""

    data: int
    diff: int | None
    data_view: ViewEntry | None = None
    diff_view: ViewEntry | None = None


@dataclass
class ParamEntry:
    """A learnable blob: its layer, its slots, and how the solver and fillers treat it."""

    layer: str
    index: int
    data: int
    grad: int | None
    lr_mult: float
    decay_mult: float
    filler: dict[str, Any] | None  # a FillerParameter in Caffe's field names
    shared_with: list[Any] | None  # [layer, index] owning the data, if shared


@dataclass
class FillEntry:
    """A DummyData top the runtime fills (before the first pass, or before every one)."""

    slot: int
    filler: dict[str, Any]
    refill: bool


@dataclass
class FeederEntry:
    """A data layer whose source the runtime reads (caffec.runtime.feeder)."""

    layer: str
    type: str
    tops: list[str]
    param: dict[str, Any]  # its LayerParameter as JSON


@dataclass
class LabelCheckEntry:
    """A loss's or accuracy's labels, counted out of range by the generated code."""

    layer: str
    status: int  # the slot the count is written to, after forward
    labels: int  # the slot of the labels it checks
    classes: int
    ignore: float | None  # the layer's ignore_label
    what: str  # "label" (a loss's, an accuracy's) or "index" (Embed's, BatchReindex's)


@dataclass
class FilterEntry:
    """A layer whose tops' count of items the data decides (Filter): its forward writes the
    count, which the runtime compares with the compiled one once the layer's step has run."""

    layer: str
    count: int  # the slot the count of items kept is written to
    items: int  # the selector's: keeping every item is a build's default
    tops: list[str]
    shapes: list[list[int]]  # the tops' compiled shapes: the first axis is the count


@dataclass
class HostCallEntry:
    """A Python layer's forward or backward: the runtime runs it between compiled steps."""

    layer: str
    direction: str  # "forward" or "backward"
    step: int  # its step in that pass
    module: str
    class_name: str
    param_str: str
    bottoms: list[int]  # data slots
    tops: list[int]
    top_diffs: list[int]  # backward: what it reads
    bottom_diffs: list[int | None]  # backward: what it writes (None: propagate_down off)
    accumulate: list[bool]  # backward, per bottom diff: add the layer's result into it


@dataclass
class MemoryPlanEntry:
    shared: bool  # buffers whose lifetimes do not overlap share bytes (-O1 and up)
    keep_blobs: bool  # every blob stays readable (False: --outputs-only)
    unshared_bytes: int  # the arena without sharing
    in_place: int  # how many outputs write over an input
    pinned_bytes: int  # what lives for the whole run


@dataclass
class SolverEntry:
    type: str  # SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam
    histories_per_param: int


@dataclass
class Launch:
    function: str
    grid: list[int]
    block: list[int]


@dataclass
class CudaInstr:
    """Launch ``kernels`` for images 0 .. count - 1 (a per-image loop has count > 1), each
    launch covering ``images`` of them: n = 0, images, 2 images, ... (a function finds its
    image from its block index).

    In a captured pass it runs on stream ``stream`` (0: the main one) after the instructions
    at positions ``waits`` of the pass (its steps' instructions in order) have finished
    (:mod:`caffec.codegen.cuda_streams`)."""

    count: int
    kernels: list[str]
    images: int = 1
    stream: int = 0  # below CUDA_STREAMS
    waits: list[int] = field(default_factory=list)


@dataclass
class CudaLaunches:
    """How to launch a CUDA artifact: each kernel's functions, and each step's instructions
    per pass."""

    functions: dict[str, list[Launch]]
    steps: dict[str, list[list[CudaInstr]]]


@dataclass
class Manifest:
    target: TargetEntry
    dtype: str  # "float32" or "float64"
    precision: str  # the GEMMs' arithmetic: "fp32" (the dtype's), "tf32" or "bf16" (CUDA)
    name: str
    phase: str
    source: str  # the generated source's file name
    source_sha256: str
    library: str  # the built code's file name
    compiler_flags: list[str]
    arena_bytes: int
    naive_bytes: int  # what Caffe would allocate for the same blobs
    memory_plan: MemoryPlanEntry
    buffers: list[BufferEntry]
    layers: list[LayerEntry]
    forward: list[StepEntry]
    backward: list[StepEntry]
    update: list[StepEntry]
    histories: list[tuple[int, int]]  # (parameter index, slot of a solver history)
    solver: SolverEntry | None
    blobs: dict[str, BlobEntry]
    params: list[ParamEntry]
    inputs: dict[str, int]  # blobs the runtime feeds, by slot
    outputs: list[str]
    output_diffs: dict[str, int]  # where backward starts from, given an output's gradient
    seeds: list[tuple[int, float]]  # (slot, loss weight): the gradient backward starts from
    loss_tops: list[tuple[str, float]]  # (blob, loss weight) of each objective term
    fills: list[FillEntry]
    feeders: list[FeederEntry]
    host_calls: list[HostCallEntry]
    label_checks: list[LabelCheckEntry]
    filters: list[FilterEntry]
    net_dir: str  # relative data sources are looked for here too
    cuda: CudaLaunches | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    abi: int = ABI_VERSION

    def steps(self, direction: str) -> list[StepEntry]:
        """The steps of a pass: "forward", "backward" or "update"."""
        if direction not in ("forward", "backward", "update"):
            raise KeyError(direction)
        steps: list[StepEntry] = getattr(self, direction)
        return steps

    def blob_shape(self, name: str) -> tuple[int, ...]:
        """Blob ``name``'s shape, as its buffer (or its view of one) holds it."""
        blob = self.blobs[name]
        view = blob.data_view
        return tuple(view.shape if view is not None else self.buffers[blob.data].shape)

    def slot_of_kind(self, kind: str) -> int:
        """The slot of the one buffer of ``kind`` ("counter", "hyper")."""
        return next(i for i, b in enumerate(self.buffers) if b.kind == kind)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest at ``path``; a missing, foreign or older one is a clear UserError."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(
                f"{path.parent} is not a caffec artifact (no manifest.json)",
                hint="make one with: caffec compile NET.prototxt -o DIR",
            ) from None
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UserError(f"{path} is not a caffec artifact manifest")
        if doc.get("format_version") != FORMAT_VERSION or doc.get("abi") != ABI_VERSION:
            raise UserError(
                f"{path.parent} was made by another caffec version (format "
                f"{doc.get('format_version')}, abi {doc.get('abi')}); this one reads format "
                f"{FORMAT_VERSION}, abi {ABI_VERSION}",
                hint="compile the net again with this caffec",
            )
        try:
            return _typed(cls, doc)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{path} is damaged: {err!r}", hint="compile the net again") from None


def _typed(hint: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as the type ``hint`` describes: dataclasses, lists, dicts,
    tuples and optional values of them."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _typed(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        known = {f.name for f in dataclasses.fields(hint)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)} in {hint.__name__}")
        return hint(**{name: _typed(hints[name], item) for name, item in value.items()})
    if origin is list:
        return [_typed(args[0], item) for item in value]
    if origin is tuple:
        return tuple(_typed(a, item) for a, item in zip(args, value, strict=True))
    if origin is dict:
        return {key: _typed(args[1], item) for key, item in value.items()}
    return value
