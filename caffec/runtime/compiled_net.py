"""A compiled net with pycaffe's interface: blobs, params, forward, backward, weights.

:class:`CompiledNet` runs an artifact directory and needs only numpy (and
protobuf to read caffemodels); :class:`caffec.Net` adds compiling from a
prototxt and reshaping on top of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats.manifest import FeederEntry, Manifest, ViewEntry
from caffec.formats.snapshots import load_blobs, weights_by_name, write_weights
from caffec.runtime.artifact_loader import Artifact, load_artifact
from caffec.runtime.executor import Executor
from caffec.runtime.fillers import fill

TRAIN, TEST = 0, 1  # pycaffe's caffe.TRAIN and caffe.TEST
BufferRef = tuple[int, ViewEntry | None]  # a buffer slot, and the blob's view of it


class LegacyAxes:
    """Caffe's num/channels/height/width: axes 0-3 of ``shape``, 1 where the blob has fewer."""

    shape: tuple[int, ...]

    def _legacy(self, axis: int) -> int:
        return self.shape[axis] if axis < len(self.shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))


class Blob(LegacyAxes):
    """pycaffe's Blob: ``data`` and ``diff`` are numpy arrays of the net's own memory (on a
    GPU, host copies brought up to date when read and copied back by the next run)."""

    def __init__(self, buffers: Executor, data: BufferRef, diff: BufferRef | None) -> None:
        self._buffers = buffers
        self._data_ref = data
        self._diff_ref = diff
        self._zero_diff: np.ndarray | None = None
        self.pending_shape: tuple[int, ...] | None = None

    def reshape(self, *shape: int) -> None:
        """Ask for a new shape; it takes effect at ``net.reshape()`` (a cached rebuild)."""
        if not shape or any(int(d) <= 0 for d in shape):
            raise UserError(f"cannot reshape a blob to {shape}: dimensions must be positive")
        self.pending_shape = tuple(int(d) for d in shape)

    @property
    def data(self) -> np.ndarray:
        return self._buffers.host(*self._data_ref)

    @property
    def diff(self) -> np.ndarray:
        """The gradient; a blob nothing differentiates shows zeros."""
        if self._diff_ref is not None:
            return self._buffers.host(*self._diff_ref)
        if self._zero_diff is None:
            self._zero_diff = np.zeros(self.shape, dtype=self._buffers.dtype)
        return self._zero_diff

    @property
    def learned_diff(self) -> bool:
        """Whether the net computes this blob's gradient (else ``diff`` shows zeros)."""
        return self._diff_ref is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return shape_of(self._buffers.manifest, self._data_ref)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))


class Layer:
    """What pycaffe's ``net.layers[i]`` shows: the type and the parameter blobs."""

    def __init__(self, name: str, type_name: str, blobs: list[Blob]) -> None:
        self.name = name
        self.type = type_name
        self.blobs = blobs


class CompiledNet:
    """Runs one artifact; see :class:`caffec.Net` for building one from a prototxt."""

    def __init__(
        self,
        artifact: str | Path | Artifact,
        weights: str | Path | None = None,
        *,
        seed: int = 0,
        params: Mapping[tuple[str, int], np.ndarray] | None = None,
    ) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        m = self.artifact.manifest
        self.phase = TRAIN if m.phase == "TRAIN" else TEST
        self._rng = np.random.default_rng(seed)
        self._exec = make_executor(self.artifact, self._param_slots(params))
        self._exec.counter[0] = seed
        if params is None:
            self._fill_params()
        self._layer_index = {layer.name: i for i, layer in enumerate(m.layers)}
        # a lean build (--outputs-only) frees forward's values as backward uses them
        self._lean = not m.memory_plan.keep_blobs
        self._forwarded = False
        self.blobs: OrderedDict[str, Blob] = OrderedDict(
            (name, Blob(self._exec, (b.data, b.data_view),
                        None if b.diff is None else (b.diff, b.diff_view)))
            for name, b in m.blobs.items()
        )  # fmt: skip
        self.params: OrderedDict[str, list[Blob]] = OrderedDict()
        for p in m.params:
            grad = None if p.grad is None else (p.grad, None)
            self.params.setdefault(p.layer, []).append(Blob(self._exec, (p.data, None), grad))
        self.layers = [
            Layer(layer.name, layer.type, self.params.get(layer.name, [])) for layer in m.layers
        ]
        self._fill_data(initial=True)
        if weights is not None:
            self.copy_from(weights)

    # --- names, as pycaffe has them -------------------------------------------------------
    @property
    def inputs(self) -> list[str]:
        return list(self.artifact.manifest.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self.artifact.manifest.outputs)

    @property
    def layer_dict(self) -> OrderedDict[str, Layer]:
        return OrderedDict((layer.name, layer) for layer in self.layers)

    @property
    def _layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def reshape(self) -> None:
        raise UserError(
            "an artifact loaded on its own has fixed shapes",
            hint="compile it again with --shape, or use caffec.Net(prototxt), which rebuilds",
        )

    # --- parameters -------------------------------------------------------------------------
    def _param_slots(self, params: Mapping[tuple[str, int], Any] | None) -> dict[int, Any] | None:
        """Carry parameter buffers over from an earlier build of the same net (a reshape), or
        share them with another (a solver's test nets)."""
        if params is None:
            return None
        slots = {}
        for p in self.artifact.manifest.params:
            array = params.get((p.layer, p.index))
            if array is not None and p.shared_with is None:
                slots[p.data] = array
        return slots

    def _fill_params(self) -> None:
        """Initialise every parameter with its filler, as Caffe's LayerSetUp does."""
        for p in self.artifact.manifest.params:
            if p.shared_with is None and p.filler is not None:
                fill(p.filler, self._exec.host(p.data, overwrite=True), self._rng)

    def param_buffers(self) -> dict[tuple[str, int], Any]:
        """Every parameter's buffer by (layer, index): what a rebuild hands on, and what a
        solver's test nets share (numpy arrays, or on a GPU the device buffers)."""
        return {(p.layer, p.index): self._exec.persistent(p.data)
                for p in self.artifact.manifest.params}  # fmt: skip

    def clear_param_diffs(self) -> None:
        """Zero every parameter gradient (they accumulate across backward passes)."""
        for p in self.artifact.manifest.params:
            if p.grad is not None:
                self._exec.zero(p.grad)

    def copy_from(self, path: str | Path) -> None:
        """Load trained weights by layer name, with Caffe's rules (CopyTrainedLayersFrom):
        layers the net does not have are ignored, the others must fit."""
        for name, blobs in weights_by_name(path).items():
            if name in self.params and blobs:
                load_blobs(blobs, [b.data for b in self.params[name]], f"layer '{name}' in {path}",
                           "the weights were trained for a net whose layer differs (num_output, "
                           "kernel, input size)")  # fmt: skip

    def save(self, path: str | Path) -> None:
        """Write the weights as a .caffemodel (or Caffe's HDF5 form, for a .h5 path)."""
        write_weights(path, self.artifact.manifest.name,
                      [(layer.name, layer.type, [b.data for b in layer.blobs])
                       for layer in self.layers])  # fmt: skip

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed a MemoryData layer (pycaffe's API): each forward takes the next batch."""
        layer = next((layer for layer in self.artifact.manifest.layers
                      if layer.type == "MemoryData"), None)  # fmt: skip
        if layer is None:
            raise UserError("set_input_arrays needs a MemoryData layer; this net has none")
        top, label_top = layer.tops
        batch = self.blobs[top].data.shape[0]
        data, labels = np.asarray(data), np.asarray(labels).reshape(-1)
        if data.shape[1:] != self.blobs[top].data.shape[1:] or len(data) != len(labels):
            raise UserError(
                f"set_input_arrays: data {shape_text(data.shape)} and labels "
                f"{shape_text(labels.shape)} do not fit the layer's "
                f"{shape_text(self.blobs[top].data.shape)} batches with one label each"
            )
        if len(data) % batch:
            raise UserError(
                f"set_input_arrays: {len(data)} items is not a multiple of the batch size {batch}"
            )
        self._memory = (top, label_top, data, labels, 0)

    def _feed_memory(self) -> None:
        if getattr(self, "_memory", None) is None:
            return
        top, label_top, data, labels, position = self._memory
        batch = self.blobs[top].data.shape[0]
        self._set_inputs({top: data[position : position + batch],
                          label_top: labels[position : position + batch]})  # fmt: skip
        self._memory = (top, label_top, data, labels, (position + batch) % len(data))

    # --- running ------------------------------------------------------------------------------
    def _fill_data(self, initial: bool = False) -> None:
        for entry in self.artifact.manifest.fills:
            if initial or entry.refill:
                fill(entry.filler, self._exec.host(entry.slot, overwrite=True), self._rng)

    def _set_inputs(self, arrays: Mapping[str, Any], what: str = "input") -> None:
        for name, array in arrays.items():
            if name not in self.blobs:
                raise UserError(
                    f"the net has no blob named '{name}'",
                    hint=f"{what}s: {', '.join(self.inputs) or 'none'}",
                )
            if what == "input":
                slot = self.artifact.manifest.inputs.get(name)
                ref = (slot, None) if slot is not None else self.blobs[name]._data_ref
            else:
                slot = self.artifact.manifest.output_diffs.get(name)
                if slot is None:
                    raise UserError(
                        f"'{name}' is not an output whose gradient backward starts from",
                        hint=f"outputs: {', '.join(self.artifact.manifest.output_diffs)}",
                    )
                ref = (slot, None)
            value = checked_array(array, shape_of(self.artifact.manifest, ref), f"{what} '{name}'")
            self._exec.host(*ref, overwrite=ref[1] is None)[...] = value

    def _step_range(self, direction: str, start: str | None, end: str | None) -> tuple[int, int]:
        begin, stop = self._steps_between(direction, start, end)
        split = self._split_kernel(direction, begin, stop)
        if split is None:
            return begin, stop
        self._cut_fused_kernel(direction, *split)
        return self._steps_between(direction, start, end)

    def _cut_fused_kernel(self, direction: str, before: str, after: str) -> None:
        """A partial run would cut a fused kernel between layers ``before`` and ``after``: an
        artifact cannot help that (``caffec.Net`` rebuilds itself instead)."""
        raise UserError(
            f"layers '{before}' and '{after}' run as one fused kernel in this build, "
            f"so a partial {direction} cannot stop or start between them",
            hint="start or end at another layer, or build without fusion "
            "(caffec.Net(..., opt_level=1), caffec compile -O1)",
        )

    def _steps_between(self, direction: str, start: str | None, end: str | None) -> tuple[int, int]:
        """The range of ``direction``'s steps from layer ``start`` to layer ``end``."""
        steps = self.artifact.manifest.steps(direction)
        layer_of = [self._layer_index[s.layer] for s in steps]
        first = self._layer_position(start) if start is not None else None
        last = self._layer_position(end) if end is not None else None
        if direction == "forward":
            begin = 0 if first is None else layer_of.index(first)
            stop = len(steps) if last is None else layer_of.index(last) + 1
        else:  # backward steps run from the last layer down
            begin = 0 if first is None else sum(1 for i in layer_of if i > first)
            stop = len(steps) if last is None else sum(1 for i in layer_of if i >= last)
        return begin, stop

    def _split_kernel(self, direction: str, begin: int, stop: int) -> tuple[str, str] | None:
        """The two layers a run of steps [begin, stop) would cut a fused kernel between."""
        steps = self.artifact.manifest.steps(direction)
        for cut in (begin, stop):
            if 0 < cut < len(steps) and steps[cut].joined:
                return steps[cut - 1].layer, steps[cut].layer
        return None

    def _layer_position(self, name: str) -> int:
        if name not in self._layer_index:
            raise UserError(f"the net has no layer named '{name}'")
        return self._layer_index[name]

    def forward(
        self,
        blobs: Iterable[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Run forward (from layer ``start`` to ``end``) and return the outputs (and ``blobs``)."""
        self._check_whole_pass("forward", start, end)
        begin, stop = self._step_range("forward", start, end)
        if start is None:
            self._feed_memory()
            self._fill_data()
            for feeder in self._feeders(kwargs):
                self._set_inputs(feeder.next())
        self._set_inputs(kwargs)
        self._exec.run("forward", begin, stop)
        self._forwarded = True
        if self.phase == TRAIN:
            self._exec.counter[1] += 1  # new dropout masks next time
        return {name: self._blob(name).data for name in list(self.outputs) + list(blobs or [])}

    def backward(
        self,
        diffs: Iterable[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Run backward and return the inputs' gradients (and ``diffs``).

        Loss tops start from their ``loss_weight``; keyword arguments set the
        gradient of output blobs instead. Parameter gradients accumulate, as
        in Caffe (see :meth:`clear_param_diffs`).
        """
        m = self.artifact.manifest
        if not m.backward and not m.seeds:
            raise UserError(
                "this net was built without a backward pass",
                hint="build it in the TRAIN phase, or set force_backward: true in the prototxt",
            )
        self._check_whole_pass("backward", start, end)
        begin, stop = self._step_range("backward", start, end)
        if self._lean and not self._forwarded:
            raise UserError(
                "this net was built with --outputs-only: its backward pass reuses the memory of "
                "the values it has read, so each backward needs a forward before it",
                hint="run forward() first, or build without --outputs-only",
            )
        for slot, weight in m.seeds:
            self._exec.host(slot, overwrite=True)[...] = weight
        self._set_inputs(kwargs, "diff")
        self._exec.run("backward", begin, stop)
        self._forwarded = not self._lean
        return {name: self._blob(name).diff for name in list(self.inputs) + list(diffs or [])}

    def _check_whole_pass(self, direction: str, start: str | None, end: str | None) -> None:
        if self._lean and (start is not None or end is not None):
            raise UserError(
                f"this net was built with --outputs-only, which runs only whole passes: "
                f"{direction}(start=..., end=...) needs the values of the layers it skips",
                hint="build without --outputs-only for partial runs",
            )

    def _feeder(self, spec: FeederEntry) -> Any:
        """The reader of one data layer, opened on first use (with its prefetch thread)."""
        if getattr(self, "_open_feeders", None) is None:
            self._open_feeders: dict[str, Any] = {}
        if spec.layer not in self._open_feeders:
            from caffec.runtime.feeder import make_feeder

            m = self.artifact.manifest
            shapes = {t: self.blobs[t].data.shape for t in spec.tops}
            self._open_feeders[spec.layer] = make_feeder(
                spec, shapes, self._exec.dtype, m.phase, m.net_dir, int(self._exec.counter[0])
            )
        return self._open_feeders[spec.layer]

    def _feeders(self, given: Mapping[str, Any] = {}) -> list[Any]:  # noqa: B006 - read only
        """The readers of the data layers whose tops the caller did not give."""
        specs = self.artifact.manifest.feeders
        return [self._feeder(s) for s in specs if not all(t in given for t in s.tops)]

    def close(self) -> None:
        """Stop the data readers' threads (also done when the net is collected)."""
        for feeder in (getattr(self, "_open_feeders", None) or {}).values():
            feeder.close()
        self._open_feeders = None

    def __del__(self) -> None:
        self.close()

    def forward_outputs(self) -> dict[str, np.ndarray]:
        """The outputs as the last forward pass left them."""
        return {name: self.blobs[name].data for name in self.outputs}

    def skip_iterations(self, count: int) -> None:
        """Stand where ``count`` forward passes would leave the data and the random numbers."""
        self._exec.counter[1] = count
        for _ in range(count):
            self._fill_data()
        for feeder in self._feeders():
            for _ in range(count):
                feeder.next()

    def _blob(self, name: str) -> Blob:
        if name not in self.blobs:
            raise UserError(
                f"the net has no blob named '{name}'",
                hint=f"blobs: {', '.join(self.blobs)}",
            )
        return self.blobs[name]


def make_executor(artifact: Artifact, params: Mapping[int, Any] | None) -> Executor:
    """The executor for the artifact's target: the C library here, or the CUDA functions on
    the GPU chosen by ``caffec.set_device`` (``-gpu N``)."""
    if artifact.manifest.target.name != "cuda":
        return Executor(artifact, params)
    from caffec.runtime import cuda_device, gpu
    from caffec.runtime.device_executor import DeviceExecutor

    return DeviceExecutor(artifact, cuda_device.open_device(gpu.current_device()), params)


def shape_of(manifest: Manifest, ref: BufferRef) -> tuple[int, ...]:
    """The shape of a buffer, or of the blob view of it."""
    slot, view = ref
    return tuple(view.shape if view is not None else manifest.buffers[slot].shape)


def checked_array(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A user's array for a net buffer of ``shape``, refusing a wrong shape or a non-number
    dtype (before the buffer is touched)."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise UserError(f"{what} has dtype {array.dtype}; give numbers (float32)")
    if array.shape != shape and not (array.size == 1 == int(np.prod(shape))):
        raise UserError(
            f"{what} has shape {shape_text(array.shape)}, the net expects {shape_text(shape)}",
            hint="reshape the array, or reshape the net's input (blob.reshape + net.reshape)",
        )
    return array.reshape(shape)
