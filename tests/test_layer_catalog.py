"""Every layer through the corners Caffe allows, on both targets.

The cases of ``tests/catalog`` (a small net per layer setting) are joined, names
prefixed, into one net per phase, so that each check builds once for all of them. Per
case, in float64:

- the -O0, -O1 and -O2 builds agree on the outputs and on every gradient;
- a second backward after one forward gives the first one's gradients (Caffe allows it:
  backward must not destroy what it reads);
- a backward from each output alone works, and the gradients add up to the backward
  from all of them (a loss top always contributes its loss weight);
- a partial forward from the layer and a partial backward of the layer alone give what
  the whole passes gave (at -O2 this cuts fused kernels: ``Net`` rebuilds without fusion);
- the CUDA target's build, run on the emulated device, computes what the C target's does.

And every layer type caffec registers has a case, but for the layers the runtime feeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog import Case, all_cases
from google.protobuf import text_format
from gradcheck import input_layers

import caffec
from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import Options, build_kernel_graph, layer_graph_of
from caffec.compiler.registry import known_types
from caffec.compiler.targets.cuda import CudaTarget
from caffec.formats import caffe_pb2
from caffec.frontend.loader import parse_net
from caffec.runtime.compiled_net import CompiledNet

CASES = all_cases()
LEVELS = (0, 1, 2)

# Layers a one-layer net cannot show: the runtime fills their tops, or they call the user.
FED_BY_THE_RUNTIME = {"Input", "Data", "ImageData", "HDF5Data", "WindowData", "MemoryData",
                      "Python"}  # fmt: skip


def case_id(case: Case) -> str:
    return f"{case.type}-{case.id}" if case.id else case.type


IDS = [case_id(c) for c in CASES]
assert len(set(IDS)) == len(IDS), "two catalog cases share an id: give one an id"


def prefix(index: int) -> str:
    return f"c{index}_"


def joined_net(cases: list[tuple[int, Case]]) -> str:
    """One net of every case, each name prefixed by its case's index."""
    net = caffe_pb2.NetParameter(force_backward=True)
    for index, case in cases:
        part = text_format.Parse(input_layers(case.bottoms) + case.net, caffe_pb2.NetParameter())
        for layer in part.layer:
            layer.name = prefix(index) + layer.name
            layer.bottom[:] = [prefix(index) + b for b in layer.bottom]
            layer.top[:] = [prefix(index) + t for t in layer.top]
            for spec in layer.param:
                if spec.name:
                    spec.name = prefix(index) + spec.name
            net.layer.append(layer)
    return text_format.MessageToString(net)


def selected(request: pytest.FixtureRequest, phase: str) -> list[tuple[int, Case]]:
    """The cases of ``phase`` this session runs (all of them, or those -k picked)."""
    names = set()
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if (
            spec is not None
            and getattr(item, "module", None) is not None
            and item.module.__name__ == __name__
            and "case" in spec.params
        ):
            names.add(case_id(spec.params["case"]))
    return [(i, c) for i, c in enumerate(CASES) if c.phase == phase and case_id(c) in names]


class Joined:
    """The joined net of one phase: its prototxt, the values fed, the gradients asked for,
    and each build's results keyed by (case index, what)."""

    def __init__(self, folder: Path, phase: str, cases: list[tuple[int, Case]]) -> None:
        self.phase = phase
        self.cases = cases
        self.path = folder / f"joined_{phase.lower()}.prototxt"
        self.path.write_text(joined_net(cases))
        self.feed = {}
        for index, case in cases:
            inputs = case.inputs(np.random.default_rng(1000 + index))
            self.feed |= {prefix(index) + n: v for n, v in inputs.items()}
        self.params: dict[tuple[str, int], np.ndarray] = {}
        self.diffs: dict[str, np.ndarray] = {}
        self.results: dict[Any, dict[tuple[int, str], np.ndarray]] = {}

    def net(self, level: int) -> caffec.Net:
        net = caffec.Net(str(self.path), getattr(caffec, self.phase), dtype="float64", seed=1,
                         opt_level=level)  # fmt: skip
        self.give_params(net)
        return net

    def give_params(self, net: Any) -> None:
        """The same parameters in every build: learned ones random, the rest as filled."""
        rng = np.random.default_rng(7)
        for name, blobs in net.params.items():
            for k, blob in enumerate(blobs):
                if (name, k) not in self.params:
                    value = np.array(blob.data)
                    if blob.learned_diff:
                        value = rng.standard_normal(blob.shape)
                    self.params[name, k] = value
                blob.data[...] = self.params[name, k]

    def output_diffs(self, net: Any, only: str | None = None) -> dict[str, np.ndarray]:
        """Random gradients for the outputs (zero but for ``only`` when given)."""
        losses = dict(net.artifact.manifest.loss_tops)
        rng = np.random.default_rng(11)
        for name in net.artifact.manifest.output_diffs:
            if name not in losses and name not in self.diffs:
                self.diffs[name] = rng.standard_normal(net.blobs[name].shape)
        return {
            n: d if only in (None, n) else np.zeros_like(d)
            for n, d in self.diffs.items()
            if n in net.artifact.manifest.output_diffs
        }

    def gradients(
        self, net: Any, diffs: dict[str, np.ndarray], layer: Any = None
    ) -> dict[tuple[int, str], Any]:
        """One backward from ``diffs`` (of ``layer`` alone when given): each case's input and
        parameter gradients."""
        if not any(case.backward for _, case in self.cases):
            return {}  # no layer here has a backward pass: the net was built without one
        net.clear_param_diffs()
        net.backward(start=layer, end=layer, **diffs)
        found = {}
        for index, case in self.cases:
            if case.backward and layer in (None, prefix(index) + "x"):
                found |= self.case_gradients(net, index, case)
        return found

    @staticmethod
    def case_gradients(net: Any, index: int, case: Case) -> dict[tuple[int, str], Any]:
        found = {}
        for name in case.bottoms:
            if name not in case.no_grad:
                found[index, f"gradient of {name}"] = np.array(net.blobs[prefix(index) + name].diff)
        for layer, blobs in net.params.items():
            if layer.startswith(prefix(index)):
                for k, blob in enumerate(blobs):
                    if blob.learned_diff:
                        what = f"gradient of {layer[len(prefix(index)) :]} param {k}"
                        found[index, what] = np.array(blob.diff)
        return found

    def outputs(self, net: Any, **run: Any) -> dict[tuple[int, str], np.ndarray]:
        net._exec.counter[1] = 7  # the same random numbers (dropout masks) in every forward
        out = net.forward(**run)
        found = {}
        for index, _ in self.cases:
            for name, value in out.items():
                if name.startswith(prefix(index)):
                    found[index, f"output {name[len(prefix(index)) :]}"] = np.array(value)
        return found

    def run_level(self, level: int) -> None:
        """Outputs and gradients of the -O``level`` build, a repeated backward, a backward
        from each output, and the partial runs."""
        net = self.net(level)
        first = self.outputs(net, **self.feed)
        diffs = self.output_diffs(net)
        first |= self.gradients(net, diffs)
        self.results[level] = first
        self.results[level, "again"] = self.gradients(net, diffs)
        alone = {}
        none = self.gradients(net, self.output_diffs(net, only=""))
        for name in diffs:
            grads = self.gradients(net, self.output_diffs(net, only=name))
            for key, value in grads.items():
                alone[key] = alone.get(key, none[key]) + value - none[key]
        self.results[level, "alone"] = alone
        self.results[level, "outputs"] = {
            (i, n): n[len(prefix(i)) :] in case.no_grad
            or n in net.artifact.manifest.output_diffs
            or n in dict(net.artifact.manifest.loss_tops)
            for n in net.outputs
            for i, case in self.cases
            if n.startswith(prefix(i))
        }
        self.results[level, "partial"] = self.partial(net, diffs)

    def partial(self, net: Any, diffs: dict[str, np.ndarray]) -> dict[tuple[int, str], Any]:
        """Each case's layer run alone: forward from it to it, then backward of it only."""
        found = {}
        self.outputs(net, **self.feed)
        for index, _ in self.cases:
            layer = prefix(index) + "x"
            if layer not in net.layer_dict:
                continue
            found |= {k: v for k, v in self.outputs(net, start=layer, end=layer).items()
                      if k[0] == index}  # fmt: skip
            found |= self.gradients(net, diffs, layer)
        return found


@pytest.fixture(scope="module")
def joined(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per phase, the joined net with its results at every level (computed on first use)."""
    folder = tmp_path_factory.mktemp("catalog")
    nets = {}
    for phase in ("TEST", "TRAIN"):
        cases = selected(request, phase)
        if cases:
            nets[phase] = Joined(folder, phase, cases)
    return nets


def results_of(joined: dict, case: Case, key: Any) -> tuple[Joined, int]:
    built = joined[case.phase]
    if key not in built.results:
        built.run_level(key)
    return built, CASES.index(case)


def gradients(results: dict) -> dict:
    return {k: v for k, v in results.items() if k[1].startswith("gradient")}


def same(got: dict, expected: dict, index: int, what: str, rtol: float = 1e-9) -> None:
    keys = [k for k in expected if k[0] == index]
    for key in keys:
        assert key in got, f"{what}: no {key[1]}"
        scale = float(np.max(np.abs(expected[key]), initial=0.0))
        np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=1e-12 * max(1, scale),
                                   err_msg=f"{what}: {key[1]}")  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("level", LEVELS)
def test_levels_agree_and_backward_repeats(joined: dict, case: Case, level: int) -> None:
    built, index = results_of(joined, case, level)
    _, _ = results_of(joined, case, 0)
    assert any(k[0] == index for k in built.results[level]), "the case computed nothing"
    same(built.results[level], built.results[0], index, f"-O{level} against -O0")
    same(built.results[level, "again"], gradients(built.results[level]), index,
         "a second backward")  # fmt: skip


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.backward], ids=[case_id(c) for c in CASES if c.backward]
)
@pytest.mark.parametrize("level", LEVELS)
def test_backward_from_each_output(joined: dict, case: Case, level: int) -> None:
    built, index = results_of(joined, case, level)
    startable = built.results[level, "outputs"]
    assert all(ok for (i, _), ok in startable.items() if i == index), (
        f"outputs backward cannot start from: {[n for (i, n), ok in startable.items() if i == index and not ok]}"
    )
    same(built.results[level, "alone"], gradients(built.results[level]), index,
         "the backwards from each output, added")  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("level", LEVELS)
def test_partial_runs(joined: dict, case: Case, level: int) -> None:
    built, index = results_of(joined, case, level)
    same(built.results[level, "partial"], built.results[level], index, "the layer run alone")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_cuda_target_computes_what_the_c_target_does(
    joined: dict, case: Case, any_gpu: Any, tmp_path: Path
) -> None:
    built, index = results_of(joined, case, 2)
    key = ("cuda", type(any_gpu).__name__)
    if key not in built.results:
        built.results[key] = cuda_results(built, any_gpu.arch, tmp_path)
    same(built.results[key], built.results[2], index, "CUDA against C", rtol=1e-8)


def cuda_results(built: Joined, arch: str, folder: Path) -> dict[tuple[int, str], np.ndarray]:
    """The joined net built for the CUDA target at -O2, run on ``arch``'s device."""
    options = Options(phase=built.phase, backward=True, opt_level=2, dtype="float64",
                      target=CudaTarget(archs=(arch,)))  # fmt: skip
    net_text, spans = parse_net(built.path.read_text(), str(built.path))
    kgraph = build_kernel_graph(layer_graph_of(net_text, spans, options), options)
    net = CompiledNet(write_artifact(kgraph, folder / "cuda"), seed=1)
    built.give_params(net)
    found = built.outputs(net, **built.feed)
    return found | built.gradients(net, built.output_diffs(net))


def test_every_layer_type_has_a_case() -> None:
    covered = {c.type for c in CASES}
    missing = sorted(set(known_types()) - covered - FED_BY_THE_RUNTIME)
    assert not missing, f"layer types without a case in tests/catalog: {missing}"
