"""A compiled net with pycaffe's interface: blobs, params, forward, backward, weights.

:class:`CompiledNet` runs an artifact directory and needs only numpy (and
protobuf to read caffemodels); :class:`caffec.Net` adds compiling from a
prototxt and reshaping on top of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.manifest import FeederEntry
from caffec.formats.snapshots import load_blobs, weights_by_name, write_weights
from caffec.runtime.artifact_loader import Artifact, load_artifact
from caffec.runtime.blobs import Blob, Layer, shape_of
from caffec.runtime.executor import Executor
from caffec.runtime.fillers import fill
from caffec.runtime.glog import caffe_log
from caffec.runtime.python_layers import PythonLayers
from caffec.runtime.random_seed import LayerRandom
from caffec.runtime.rebuilds import TEST, TRAIN, Rebuilds


class CompiledNet(Rebuilds):
    """Runs one artifact; see :class:`caffec.Net` for building one from a prototxt."""

    # runs a whole backward pass in segments: ``cuts()`` says where as the pass begins,
    # ``reached(step)`` hears where each ends (a DataParallel that overlaps its reduction);
    # kept across rebuilds
    backward_segments: Any = None

    def __init__(
        self,
        artifact: str | Path | Artifact,
        weights: str | Path | None = None,
        *,
        seed: int = 0,
        params: Mapping[tuple[str, int], np.ndarray] | None = None,
        python_layers: dict[str, Any] | None = None,
        strict_weights: bool = False,
    ) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        m = self.artifact.manifest
        self.phase = TRAIN if m.phase == "TRAIN" else TEST
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._layer_index = {layer.name: i for i, layer in enumerate(m.layers)}
        step_of = {step.layer: i for i, step in enumerate(m.forward)}
        self._label_checks = [(check, step_of[check.layer]) for check in m.label_checks]
        self._filters = sorted(((entry, step_of[entry.layer]) for entry in m.filters),
                               key=lambda watched: watched[1])  # fmt: skip
        # a lean build (--outputs-only) frees forward's values as backward uses them
        self._lean = not m.memory_plan.keep_blobs
        self._forwarded = False
        # called after each step of forward and backward, when set (Caffe's debug_info)
        self.step_hook: Callable[[str, int], None] | None = None
        self._bind(params)
        if params is None:
            self._fill_params()
        self._python = PythonLayers(m.host_calls, lambda slot: self._exec.host(slot),
                                    self.params, self.phase, python_layers)  # fmt: skip
        self._show_python_layers()
        self._fill_passes = 0  # forward passes whose DummyData refills were drawn
        self._fill_data(initial=True)
        if weights is not None:
            self.copy_from(weights, strict=strict_weights)

    def _open_build(self, artifact: str | Path, params: Mapping[tuple[str, int], Any]) -> None:
        """Run another build of this net from now on, with these parameters' memory."""
        CompiledNet.__init__(self, artifact, None, seed=self._seed, params=params,
                             python_layers=self._python.instances)  # fmt: skip

    def _bind(self, params: Mapping[tuple[str, int], Any] | None) -> None:
        """Make the executor, with ``params`` as the parameters' memory where given, and the
        blobs, params and layers that show its buffers."""
        m = self.artifact.manifest
        self._exec = make_executor(self.artifact, self._param_slots(params))
        self._exec.counter[0] = self._seed
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
            Layer(layer, self.params.get(layer.name, []), m.blob_shape) for layer in m.layers
        ]
        # inputs an in-place layer rewrites: their blob is another buffer than the input's
        self._rewritten_inputs = [
            (slot, self.blobs[name])
            for name in self.inputs
            if self.blobs[name]._data_ref != (slot := m.inputs[name], None)
        ]

    def _show_python_layers(self) -> None:
        """``net.layers[i]`` of a Python layer is the user's object, as in pycaffe (where
        code calls its own methods on it, e.g. a data layer's)."""
        for i, name in enumerate(self._layer_names):
            instance = self._python.instances.get(name)
            if instance is not None:
                if not hasattr(instance, "type"):
                    instance.type = "Python"
                self.layers[i] = instance
                shown = getattr(instance, "shown_top", None)
                for j, top in enumerate(self.artifact.manifest.layers[i].tops if shown else []):
                    self.blobs[top].shown = partial(shown, j)

    # --- names, as pycaffe has them -------------------------------------------------------
    @property
    def inputs(self) -> list[str]:
        """The blobs the caller feeds, as Caffe lists them: the tops of Input layers (and of
        the legacy ``input`` fields), not those of data layers, which read their own."""
        m = self.artifact.manifest
        return [top for layer in m.layers if layer.type == "Input" for top in layer.tops]

    @property
    def outputs(self) -> list[str]:
        return list(self.artifact.manifest.outputs)

    @property
    def layer_dict(self) -> OrderedDict[str, Layer]:
        return OrderedDict(zip(self._layer_names, self.layers, strict=True))

    @property
    def _layer_names(self) -> list[str]:
        return [layer.name for layer in self.artifact.manifest.layers]

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        """Each layer's top blobs, by layer name."""
        layers = self.artifact.manifest.layers
        return OrderedDict((layer.name, list(layer.tops)) for layer in layers)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        """Each layer's bottom blobs, by layer name."""
        layers = self.artifact.manifest.layers
        return OrderedDict((layer.name, list(layer.bottoms)) for layer in layers)

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        """Each blob's weight in the loss: a loss layer's ``loss_weight`` for its tops, else 0."""
        weights = dict(self.artifact.manifest.loss_tops)
        return OrderedDict((name, weights.get(name, 0.0)) for name in self.blobs)

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

    def share_with(self, other: CompiledNet) -> None:
        """Use ``other``'s parameters, layer by layer name, instead of this net's own (pycaffe's
        ``share_with``, Caffe's ShareTrainedLayersWith): a change to one net's weights is the
        other's. Layers ``other`` lacks keep their own; blob values are carried over."""
        if type(other._exec) is not type(self._exec):
            raise UserError("share_with needs both nets on the same device (CPU or GPU)")
        mine = self.param_buffers()
        for key, array in other.param_buffers().items():
            if key in mine:
                own, theirs = self.params[key[0]][key[1]], other.params[key[0]][key[1]]
                if own.shape != theirs.shape:
                    raise UserError(
                        f"share_with: layer '{key[0]}' parameter {key[1]} has shape "
                        f"{shape_text(own.shape)} here and {shape_text(theirs.shape)} in the "
                        "other net",
                        hint="share between nets built from the same layers",
                    )
                mine[key] = array
        values = {name: b.data.copy() for name, b in self.blobs.items()}
        counter = self._exec.counter.copy()
        self._bind(mine)
        self._show_python_layers()
        self._exec.counter[...] = counter
        for name, value in values.items():
            self.blobs[name].data[...] = value

    def clear_param_diffs(self) -> None:
        """Zero every parameter gradient (they accumulate across backward passes)."""
        for p in self.artifact.manifest.params:
            if p.grad is not None:
                self._exec.zero(p.grad)

    def copy_from(self, path: str | Path, strict: bool = False) -> None:
        """Load trained weights by layer name, with Caffe's rules (CopyTrainedLayersFrom):
        layers the net does not have are ignored (logged as Caffe logs them), the others
        must fit. Layers with parameters the file has no weights for keep their fillers'
        values, with a warning (an error when ``strict``)."""
        self.load_weights([path], strict=strict)

    def load_weights(
        self, paths: Iterable[str | Path], strict: bool = False, hdf5: bool | None = None
    ) -> None:
        """``copy_from`` each file in turn (``caffe train -weights a,b``); the warning names
        the layers none of them had."""
        paths = list(paths)
        loaded: set[str] = set()
        for path in paths:
            loaded |= self._copy_from(path, hdf5)
        owners = dict.fromkeys(p.layer for p in self.artifact.manifest.params
                               if p.shared_with is None)  # fmt: skip
        missing = [name for name in owners if name not in loaded]
        if not missing:
            return
        files = ", ".join(map(str, paths))
        keeps = (
            "which keeps its filler's values"
            if len(missing) == 1
            else ("which keep their fillers' values")
        )
        message = (f"{files} has no weights for layer{'s' if len(missing) > 1 else ''} "
                   f"{', '.join(missing)}, {keeps}")  # fmt: skip
        hint = "check the layer names against the net the weights were trained for"
        if strict:
            raise UserError(message, hint=hint)
        caffe_log(f"{message} ({hint})", level="W")

    def _copy_from(self, path: str | Path, hdf5: bool | None) -> set[str]:
        """Load one file's weights; the layers that got some."""
        loaded = set()
        for name, blobs in weights_by_name(path, hdf5).items():
            if name not in self._layer_index:
                caffe_log(f"Ignoring source layer {name}")
            elif name in self.params and blobs:
                load_blobs(blobs, [b.data for b in self.params[name]], f"layer '{name}' in {path}",
                           "the weights were trained for a net whose layer differs (num_output, "
                           "kernel, input size)")  # fmt: skip
                loaded.add(name)
        return loaded

    def save(self, path: str | Path) -> None:
        """Write the weights as a .caffemodel (or Caffe's HDF5 form, for a .h5 path)."""
        self._save(path, None)

    def save_hdf5(self, path: str | Path) -> None:
        """Write the weights in Caffe's HDF5 form, whatever the file's name."""
        self._save(path, True)

    def load_hdf5(self, path: str | Path) -> None:
        """Load weights in Caffe's HDF5 form, whatever the file's name (as ``copy_from``)."""
        self.load_weights([path], hdf5=True)

    def _save(self, path: str | Path, hdf5: bool | None) -> None:
        m = self.artifact.manifest
        described = {layer.name: json_format.ParseDict(layer.param, caffe_pb2.LayerParameter())
                     for layer in m.layers}  # fmt: skip
        write_weights(path, m.name, [(layer.name, layer.type,
                                      [b.data for b in self.params.get(layer.name, [])])
                                     for layer in m.layers], hdf5, described)  # fmt: skip

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
        """DummyData's fills: every one when the net is made (from the net's generator), then
        the refilled ones before each forward, pass k's from a generator of its own keyed by
        (seed, fill, k), so that a resume draws pass k without drawing the passes before."""
        for number, entry in enumerate(self.artifact.manifest.fills):
            if initial:
                rng = self._rng
            elif entry.refill:
                rng = LayerRandom(self._seed, f"fill {number}").batch(self._fill_passes)
            else:
                continue
            fill(entry.filler, self._exec.host(entry.slot, overwrite=True), rng)
        if not initial:
            self._fill_passes += 1

    def _set_inputs(self, arrays: Mapping[str, Any], what: str = "input") -> None:
        for name, array in arrays.items():
            if name not in self.blobs:
                raise UserError(
                    f"the net has no blob named '{name}'",
                    hint=f"{what}s: {', '.join(self.artifact.manifest.inputs) or 'none'}",
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
        if any(b.pending_shape for b in self.blobs.values()):
            self.reshape()  # Caffe reshapes every layer on forward
        begin, stop = self._step_range("forward", start, end)
        if start is None:
            self._inputs_from_blobs()
            self._feed_memory()
            self._fill_data()
            for feeder in self._feeders(kwargs):
                self._set_inputs(feeder.next())
        self._set_inputs(kwargs)
        self._run_forward(begin, stop)
        self._check_labels(begin, stop)
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
        m = self.artifact.manifest  # a partial run may have rebuilt the net
        if self._lean and not self._forwarded:
            raise UserError(
                "this net was built with --outputs-only: its backward pass reuses the memory of "
                "the values it has read, so each backward needs a forward before it",
                hint="run forward() first, or build without --outputs-only",
            )
        for slot, weight in m.seeds:
            self._exec.host(slot, overwrite=True)[...] = weight
        self._set_inputs(kwargs, "diff")
        self._run("backward", begin, stop)
        self._forwarded = not self._lean
        return {name: self._blob(name).diff for name in list(self.inputs) + list(diffs or [])}

    def _run(self, direction: str, begin: int, stop: int) -> None:
        """Run steps [begin, stop) of a pass; a whole backward pass in the segments that
        ``backward_segments`` asks for, telling it where each ends."""
        listener = self.backward_segments
        whole = (begin, stop) == (0, len(self.artifact.manifest.backward))
        cuts = listener.cuts() if listener is not None and direction == "backward" and whole else []
        position = begin
        for cut in cuts:
            self._run_hooked(direction, position, cut)
            listener.reached(cut)
            position = cut
        self._run_hooked(direction, position, stop)

    def _run_hooked(self, direction: str, begin: int, stop: int) -> None:
        """Run steps [begin, stop) of a pass; with a ``step_hook`` (Caffe's debug_info), one
        step at a time, the hook called after each."""
        if self.step_hook is None:
            self._run_steps(direction, begin, stop)
            return
        for step in range(begin, stop):
            self._run_steps(direction, step, step + 1)
            self.step_hook(direction, step)

    def _run_steps(self, direction: str, begin: int, stop: int) -> None:
        """Run steps [begin, stop) of a pass: the compiled code, and the Python layers' calls
        between its segments."""
        position = begin
        for step in self._python.steps(direction):
            if begin <= step < stop:
                self._exec.run(direction, position, step)
                self._python.run(direction, step)
                position = step + 1
        self._exec.run(direction, position, stop)

    def _check_labels(self, begin: int, stop: int) -> None:
        """Refuse a batch whose labels a loss or accuracy cannot use: the generated code
        counted them (a NaN loss, or an accuracy that counts them correct, otherwise)."""
        for check, step in self._label_checks:
            if not begin <= step < stop or self._exec.host(check.status)[0] == 0:
                continue
            labels = self._exec.host(check.labels).reshape(-1)
            ok = (labels == check.ignore) | (
                (labels >= 0) & (labels < check.classes) & (labels == np.floor(labels))
            )
            bad = np.flatnonzero(~ok)
            origin = self._label_origin(check.labels, labels, int(bad[0]))
            more = f" ({len(bad)} such {check.what}s in the batch)" if len(bad) > 1 else ""
            if check.what == "index":
                raise UserError(
                    f"index {labels[bad[0]]:.10g} of item {bad[0]} of the batch{origin} is not "
                    f"a whole number in [0, {check.classes}){more}",
                    layer=check.layer,
                    hint=f"the layer picks from {check.classes} rows (Embed's input_dim, the "
                    "batch of BatchReindex's data): fix the indices in the data",
                )
            raise UserError(
                f"label {labels[bad[0]]:.10g} of item {bad[0]} of the batch{origin} is not a "
                f"class index in [0, {check.classes}){more}",
                layer=check.layer,
                hint=f"the layer scores {check.classes} classes (num_output of the layer "
                "before it): fix the labels in the data, or set ignore_label for a value "
                "to skip",
            )

    def _label_origin(self, slot: int, labels: np.ndarray, index: int) -> str:
        """Where a data layer read label ``index`` of the labels in ``slot`` (its record key,
        its list file's line), as " (record '5' of db)"; "" where no data layer's last batch
        gave these labels (the caller passed them, or a layer changed them)."""
        inputs = self.artifact.manifest.inputs
        for feeder in (getattr(self, "_open_feeders", None) or {}).values():
            batch = feeder.last
            for top in feeder.tops if batch is not None and batch.origins else []:
                given = np.asarray(batch[top], dtype=labels.dtype).reshape(-1)
                if slot in (inputs.get(top), self.blobs[top]._data_ref[0]) and np.array_equal(
                    given, labels, equal_nan=True
                ):
                    return f" ({batch.origins[index * len(batch.origins) // len(labels)]})"
        return ""

    def _inputs_from_blobs(self) -> None:
        """An input that an in-place layer rewrites has its own buffer, and its blob shows the
        rewritten values: what the blob holds (written by the caller, or left by the last
        pass, as in Caffe, where both are one memory) is the next pass's input."""
        for slot, blob in self._rewritten_inputs:
            self._exec.host(slot, overwrite=True)[...] = blob.data

    def forward_all(self, blobs: Iterable[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """pycaffe's ``forward_all``: forward over inputs of any length, batch by batch (the
        last batch padded), and the outputs (and ``blobs``) of every item."""
        return self._over_batches(kwargs, blobs, None, backward=False)[0]

    def forward_backward_all(
        self, blobs: Iterable[str] | None = None, diffs: Iterable[str] | None = None, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """pycaffe's ``forward_backward_all``: forward with the inputs, backward with the
        output diffs among ``kwargs``, batch by batch; the outputs and the inputs' diffs (and
        ``blobs``, ``diffs``) of every item."""
        return self._over_batches(kwargs, blobs, diffs, backward=True)

    def _over_batches(
        self,
        kwargs: Mapping[str, Any],
        blobs: Iterable[str] | None,
        diffs: Iterable[str] | None,
        backward: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        given = {name: np.asarray(value) for name, value in kwargs.items()}
        counts = {len(value) for value in given.values()}
        if len(counts) > 1:
            raise UserError("forward_all: the arrays given have different numbers of items")
        first_input = next(iter([*given, *self.inputs]), None)
        batch = self.blobs[first_input].shape[0] if first_input else 1
        total = counts.pop() if counts else batch
        outputs: dict[str, list[np.ndarray]] = {}
        gradients: dict[str, list[np.ndarray]] = {}
        kept: set[str] | None = None  # the outputs that hold a Filter's items in every batch
        for first in range(0, total, batch):
            chunk = {name: padded(value[first : first + batch], batch)
                     for name, value in given.items()}  # fmt: skip
            forward_in = {n: v for n, v in chunk.items() if n not in self.outputs}
            for name, value in self.forward(blobs, **forward_in).items():
                outputs.setdefault(name, []).append(value.copy())
            kept = self._kept_items() if kept is None else kept & self._kept_items()
            if backward:
                backward_in = {n: v for n, v in chunk.items() if n in self.outputs}
                for name, value in self.backward(diffs, **backward_in).items():
                    gradients.setdefault(name, []).append(value.copy())
        return joined(outputs, batch, total, kept or set()), joined(gradients, batch, total)

    def _kept_items(self) -> set[str]:
        """The blobs whose first axis holds the items a Filter kept: its tops, and the blobs
        made from them with that first axis."""
        m = self.artifact.manifest
        counts = {top: entry.shapes[0][0] for entry in m.filters for top in entry.tops}
        for layer in m.layers:
            made_from = {counts[name] for name in layer.bottoms if name in counts}
            for top in layer.tops:
                shape = m.blob_shape(top) if top in m.blobs else ()
                if top not in counts and shape[:1] and shape[0] in made_from:
                    counts[top] = shape[0]
        return set(counts)

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
            skip = getattr(self, "_skip_batches", {}).pop(spec.layer, 0)
            self._open_feeders[spec.layer] = make_feeder(
                spec, shapes, self._exec.dtype, m.phase, m.net_dir, int(self._exec.counter[0]),
                skip=skip,
            )  # fmt: skip
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
        """Stand where ``count`` forward passes from the start would leave the data and the
        random numbers (resuming training): the data layers' readers open again ``count``
        batches on, by a seek where the source allows it (:meth:`Source.skip`), and
        DummyData's refills go on from pass ``count``."""
        self._exec.counter[1] = count
        self._fill_passes = count
        self.close()
        self._skip_batches = {spec.layer: count for spec in self.artifact.manifest.feeders}

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


def padded(items: np.ndarray, count: int) -> np.ndarray:
    """``items`` with zero items added up to ``count`` (a last, short batch)."""
    if len(items) >= count:
        return items
    return np.concatenate([items, np.zeros((count - len(items), *items.shape[1:]), items.dtype)])


def joined(
    batches: dict[str, list[np.ndarray]], batch: int, total: int, kept: Collection[str] = ()
) -> dict[str, Any]:
    """Per-batch arrays as one per blob: items joined and the padding dropped, or, for a blob
    without one item per input (a loss), one value per batch; for a blob of the items a
    Filter kept (``kept``), every batch's items one after another."""
    return {name: np.concatenate(values) if name in kept
            else np.concatenate(values)[:total] if values[0].shape[:1] == (batch,)
            else np.stack(values) for name, values in batches.items()}  # fmt: skip


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
