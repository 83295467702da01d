"""An artifact's manifest: the writer's Manifest is what the reader gets back, and a manifest
that is not this caffec's (another format version, damaged, for a wider CPU) is refused
with what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph
from caffec.driver import cpu_target
from caffec.errors import UserError
from caffec.formats.manifest import FORMAT_VERSION, Manifest
from caffec.runtime import artifact_loader
from caffec.runtime.artifact_loader import load_artifact

LENET = Path(__file__).resolve().parents[2] / "examples/mnist/lenet_train_test.prototxt"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = Options(phase="TRAIN", shapes={"data": (4, 1, 28, 28)}, opt_level=0,
                      target=cpu_target())  # fmt: skip
    kgraph = build_kernel_graph(load_layer_graph(LENET, options), options)
    return write_artifact(kgraph, tmp_path_factory.mktemp("manifest") / "lenet.caffec")


def test_the_manifest_reads_back_typed(artifact: Path) -> None:
    manifest = Manifest.read(artifact / "manifest.json")
    assert manifest.format_version == FORMAT_VERSION and manifest.target.name == "c"
    assert manifest.forward[1].layer == "conv1" and manifest.forward[1].kernels
    conv1 = manifest.blobs["conv1"]
    assert manifest.buffers[conv1.data].shape == [4, 20, 24, 24] and conv1.data_view is None
    assert manifest.params[0].layer == "conv1" and manifest.params[0].filler["type"] == "xavier"
    assert all(isinstance(seed, tuple) for seed in manifest.seeds)
    assert Manifest.read(artifact / "manifest.json") == manifest
    assert json.loads(manifest.to_json()) == json.loads((artifact / "manifest.json").read_text())


def _edited(artifact: Path, tmp_path: Path, edit: object) -> Path:
    doc = json.loads((artifact / "manifest.json").read_text())
    edit(doc)  # type: ignore[operator]
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    return tmp_path / "manifest.json"


def test_another_format_version_is_refused(artifact: Path, tmp_path: Path) -> None:
    path = _edited(artifact, tmp_path, lambda doc: doc.update(format_version=2))
    with pytest.raises(UserError, match="another caffec version") as error:
        Manifest.read(path)
    assert "compile the net again" in error.value.hint


def test_a_damaged_manifest_is_refused(artifact: Path, tmp_path: Path) -> None:
    path = _edited(artifact, tmp_path, lambda doc: doc["buffers"][0].update(colour="red"))
    with pytest.raises(UserError, match="damaged"):
        Manifest.read(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        Manifest.read(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a caffec artifact manifest"):
        Manifest.read(path)


def test_code_for_wider_vectors_than_the_cpu_has_is_refused(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An artifact built with AVX-512 on one machine, loaded on one without: a clear error
    instead of an illegal instruction in the first kernel."""
    built = Manifest.read(artifact / "manifest.json").target
    if not built.vector_bytes or built.vector_bytes <= 16:
        pytest.skip("this machine's compiler uses no vectors wider than 16 bytes")
    monkeypatch.setattr(artifact_loader, "cpu_vector_bytes", lambda: 16)
    with pytest.raises(UserError, match=f"{built.vector_bytes}-byte vectors") as error:
        load_artifact(artifact)
    assert "--target-cpu" in error.value.hint
    monkeypatch.setattr(artifact_loader, "cpu_vector_bytes", lambda: None)  # nothing known
    assert load_artifact(artifact).library is not None
