"""The command line: output of each subcommand; exit status 2, no traceback, on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from caffec.cli import main

LENET = REPO / "examples/mnist/lenet_train_test.prototxt"

V1_NET = """name: "tiny"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_dump_text_shows_shapes_params_and_source_lines(capsys, corpus: Path) -> None:
    net = corpus / "bvlc/models/bvlc_googlenet/deploy.prototxt"
    status, out, _ = run(capsys, "dump", str(net))
    assert status == 0
    assert "inception_5b/output[10x1024x7x7]" in out
    assert "params: weight 64x3x7x7, bias 64" in out
    assert f"@ {net}:8:1" in out


def test_dump_dot_and_json(capsys, tmp_path: Path) -> None:
    status, out, _ = run(
        capsys, "dump", str(LENET), "--phase", "TEST", "--shape", "data=100,1,28,28",
        "--format", "dot",
    )  # fmt: skip
    assert status == 0 and out.startswith('digraph "LeNet" {')
    assert '[shape=box, label="conv1\\nConvolution' in out

    old = tmp_path / "old.prototxt"
    old.write_text(V1_NET)
    status, out, _ = run(capsys, "dump", str(old), "--after", "shape_inference", "--format", "json")
    doc = json.loads(out)
    assert [op["type"] for op in doc["ops"]] == ["Input", "Convolution", "ReLU", "Pooling"]
    assert doc["ops"][3]["tops"][0]["shape"] == [2, 4, 3, 3]
    assert doc["ops"][1]["params"] == []  # stopped before the params pass
    assert doc["ops"][2]["tops"][0] == {"name": "conv'", "blob": "conv", "shape": [2, 4, 6, 6]}


def test_dump_after_build_has_no_shapes(capsys) -> None:
    status, out, _ = run(capsys, "dump", str(LENET), "--after", "build")
    assert status == 0 and "conv1[?]" in out


def test_upgrade_writes_the_current_format(capsys, tmp_path: Path) -> None:
    old = tmp_path / "old.prototxt"
    old.write_text(V1_NET)
    status, out, _ = run(capsys, "upgrade", str(old))
    assert status == 0
    assert "layers" not in out and 'type: "Convolution"' in out and "lr_mult: 2" in out
    assert 'type: "Input"' in out
    (tmp_path / "new.prototxt").write_text(out)
    status, again, _ = run(capsys, "upgrade", str(tmp_path / "new.prototxt"))
    assert again == out


def test_upgrade_of_a_solver(capsys, tmp_path: Path) -> None:
    old = tmp_path / "solver.prototxt"
    old.write_text('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    status, _, _ = run(capsys, "upgrade", str(old), "-o", str(tmp_path / "new.prototxt"))
    assert status == 0
    assert 'type: "Nesterov"' in (tmp_path / "new.prototxt").read_text()


def test_inspect_caffemodel(capsys, corpus: Path) -> None:
    status, out, _ = run(capsys, "inspect", str(corpus / "weights/lenet_iter_10000.caffemodel"))
    assert status == 0
    assert "conv1" in out and "20x1x5x5" in out and "ip1" in out


@pytest.mark.parametrize(
    ("text", "argv", "expected"),
    [
        ("layer {\n  name: 'x'\n  type: 'ReLU'\n", [], "bad.prototxt:3:15: error:"),
        ('layer { name: "x" typ: "ReLU" }\n', [], "bad.prototxt:1:19: error:"),
        ('layer { name: "c" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2 } } }\n'
         'layer { name: "x" type: "Pooling" bottom: "d" top: "p" }\n', [],
         "bad.prototxt:2:1: error: layer 'x': Pooling: "),
        ('layer { name: "c" type: "Input" top: "d" }\n', ["--shape", "e=1,2"],
         "--shape names 'e'"),
        ('layer { name: "p" type: "Pooling" pooling_param { pool: MAXIMUM } }\n', [],
         "bad.prototxt:1:57: error:"),
        ('layer { name: "p" type: "Convolution" convolution_param { num_output: "ten" } }\n',
         [], "bad.prototxt:1:71: error:"),
        ('layer { name: "r" type: "ReLU" bottom: "nothing" top: "r" }\n', [],
         "bad.prototxt:1:32: error: layer 'r': bottom 'nothing' is not produced"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_a_located_message(
    capsys, tmp_path: Path, text: str, argv: list, expected: str
) -> None:
    bad = tmp_path / "bad.prototxt"
    bad.write_text(text)
    status, _, err = run(capsys, "dump", str(bad), *argv)
    assert status == 2
    assert expected.replace("bad.prototxt", str(bad)) in err
    assert "Traceback" not in err


def test_corrupt_caffemodel(capsys, tmp_path: Path, corpus: Path) -> None:
    whole = (corpus / "weights/lenet_iter_10000.caffemodel").read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(whole[: len(whole) // 2])
    status, _, err = run(capsys, "inspect", str(cut))
    assert status == 2 and "truncated" in err and "Traceback" not in err


def test_missing_file(capsys, tmp_path: Path) -> None:
    status, _, err = run(capsys, "dump", str(tmp_path / "nope.prototxt"))
    assert status == 2 and "nope.prototxt" in err and "Traceback" not in err
    status, _, err = run(capsys, "inspect", str(tmp_path / "nope.caffemodel"))
    assert status == 2 and "nope.caffemodel" in err


def test_the_installed_command_reports_argument_errors_with_status_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "caffec", "dump", str(LENET), "--shape", "data=1,x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "is not NAME=N,C,H,W" in proc.stderr and "Traceback" not in proc.stderr


def test_compile_and_run(capsys, tmp_path: Path, corpus: Path) -> None:
    import numpy as np

    weights = corpus / "weights/lenet_iter_10000.caffemodel"
    net = REPO / "examples/mnist/lenet.prototxt"
    out = tmp_path / "lenet.caffec"
    status, text, _ = run(capsys, "compile", str(net), "-o", str(out), "--weights", str(weights))
    assert status == 0 and "forward only" in text
    assert {p.name for p in out.iterdir()} == {
        "manifest.json", "kernels.c", "kernels.so", "weights.caffemodel"
    }  # fmt: skip
    x = np.random.default_rng(0).random((64, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    status, _, _ = run(
        capsys, "run", str(out), "--input", f"data={tmp_path / 'x.npy'}",
        "--output", str(tmp_path / "prob.npy"),
    )  # fmt: skip
    assert status == 0
    prob = np.load(tmp_path / "prob.npy")
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-5)
    status, text, _ = run(capsys, "run", str(out), "--input", f"data={tmp_path / 'x.npy'}")
    assert status == 0 and text.startswith("prob: shape 64x10")

    status, text, _ = run(
        capsys, "compile", str(REPO / "examples/mnist/lenet_train_test.prototxt"), "--train",
        "-o", str(tmp_path / "train.caffec"), "--shape", "data=64,1,28,28",
    )  # fmt: skip
    assert status == 0 and "forward and backward" in text


def test_run_errors(capsys, tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "lenet.caffec"
    assert (
        run(capsys, "compile", str(REPO / "examples/mnist/lenet.prototxt"), "-o", str(out))[0] == 0
    )
    np.save(tmp_path / "small.npy", np.zeros((2, 1, 28, 28), np.float32))
    status, _, err = run(capsys, "run", str(out), "--input", f"data={tmp_path / 'small.npy'}")
    assert status == 2 and "has shape 2x1x28x28, the net expects 64x1x28x28" in err
    status, _, err = run(capsys, "run", str(tmp_path), "--input", "x.npy")
    assert status == 2 and "not a caffec artifact" in err
    status, _, err = run(capsys, "run", str(out), "--weights", str(tmp_path / "none.caffemodel"))
    assert status == 2 and "none.caffemodel" in err and "Traceback" not in err


def test_dump_after_kernel_passes(capsys) -> None:
    train = str(REPO / "examples/mnist/lenet_train_test.prototxt")
    status, out, _ = run(capsys, "dump", train, "--phase", "TRAIN", "--shape", "data=64,1,28,28",
                         "--after", "lower")  # fmt: skip
    assert status == 0 and "backward" not in out
    assert "forward conv1 (Convolution, im2col_gemm)" in out
    assert "gemm: #" in out and "for n in 0..64:" in out
    status, out, _ = run(capsys, "dump", train, "--phase", "TRAIN", "--shape", "data=64,1,28,28",
                         "--after", "autodiff")  # fmt: skip
    conv1 = out.split("backward conv1 (Convolution, im2col_gemm)")[1]
    assert "im2col" in conv1 and "col2im" not in conv1  # the data needs no gradient
    status, _, err = run(capsys, "dump", train, "--after", "lower", "--format", "json")
    assert status == 2 and "as text only" in err


def test_time_reports_caffes_table(capsys) -> None:
    import re

    status = main(["time", "-model", str(REPO / "examples/mnist/lenet_train_test.prototxt"),
                   "--shape", "data=64,1,28,28", "-iterations", "3", "--kernels"])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().err
    messages = [line.split("] ", 1)[1] for line in out.splitlines()]
    layers = re.findall(r"^\s*(\S+)\tforward: ([\d.e-]+) ms\.$", "\n".join(messages), re.M)
    assert [name for name, _ in layers] == ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1",
                                            "relu1", "ip2", "loss"]  # fmt: skip
    backward = re.findall(r"^\s*\S+\tbackward: ([\d.e-]+) ms\.$", "\n".join(messages), re.M)
    totals = {k: float(v) for k, v in re.findall(r"^Average (Forward|Backward) pass: ([\d.e-]+) ms\.$",
                                                  "\n".join(messages), re.M)}  # fmt: skip
    assert sum(float(t) for _, t in layers) == pytest.approx(totals["Forward"], rel=0.1)
    assert sum(float(t) for t in backward) == pytest.approx(totals["Backward"], rel=0.1)
    assert re.search(r"^Average Forward-Backward: [\d.e-]+ ms\.$", "\n".join(messages), re.M)
    assert "*** Benchmark ends ***" in messages
    assert any(re.match(r"\s*k\d+_convolution_fused\tforward of conv1: [\d.e-]+ ms\.", m)
               for m in messages)  # fmt: skip
    # after Caffe's report: LeNet's FLOPs (forward 293.5 M; backward no data gradient into
    # the data: tests/compiler/test_flops.py) and the rates they give over the times above
    text = "\n".join(messages)
    assert ("FLOPs (convolutions and inner products, 2 per multiply-add): forward 0.2935 G, "
            "backward 0.5501 G") in messages  # fmt: skip
    rate = re.search(r"^Forward pass rate: ([\d.e+]+) GFLOP/s, ([\d.]+)% of the peak", text, re.M)
    assert rate and float(rate[1]) == pytest.approx(0.293504 / totals["Forward"] * 1e3, rel=1e-3)
    assert re.search(r"^Peak: \d+ GFLOP/s float32 on \d+ threads", text, re.M)


def test_compile_report_and_optimisation_levels(capsys, tmp_path: Path) -> None:
    import json
    import re

    train = str(REPO / "examples/mnist/lenet_train_test.prototxt")
    common = ["--train", "--shape", "data=64,1,28,28"]
    assert main(["compile", train, *common, "-o", str(tmp_path / "o2"), "--report"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"arena ([\d.]+) MiB \(naive, as Caffe allocates: ([\d.]+) MiB, ratio ([\d.]+)\)"
                      r" · parameters and solver state [\d.]+ MiB · peak RSS of a forward\+backward: "
                      r"[\d.]+ MiB", out)  # fmt: skip
    assert match, out
    assert main(["compile", train, *common, "-o", str(tmp_path / "o0"), "-O", "0"]) == 0
    assert main(["compile", train, *common, "-o", str(tmp_path / "small"), "--outputs-only"]) == 0
    arena = {n: json.loads((tmp_path / n / "manifest.json").read_text())["arena_bytes"]
             for n in ("o0", "o2", "small")}  # fmt: skip
    assert arena["small"] < arena["o2"] < arena["o0"]


def test_dump_after_plan_memory_shows_the_arena(capsys) -> None:
    train = str(REPO / "examples/mnist/lenet_train_test.prototxt")
    status, out, _ = run(capsys, "dump", train, "--phase", "TRAIN", "--shape", "data=64,1,28,28",
                         "--after", "plan_memory")  # fmt: skip
    assert status == 0 and "arena " in out and "naive " in out
    assert " pinned " in out and "conv2 columns" in out


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_compile_for_cuda(capsys, tmp_path: Path, corpus: Path) -> None:
    net = str(REPO / "examples/mnist/lenet.prototxt")
    out = tmp_path / "lenet_cuda.caffec"
    status, text, _ = run(capsys, "compile", net, "-o", str(out), "--target", "cuda")
    assert status == 0 and "forward only" in text
    assert {p.name for p in out.iterdir()} == {"manifest.json", "kernels.cu", "kernels.fatbin"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["name"] == "cuda" and manifest["cuda"]["steps"]["forward"]
    # what cannot run it says so: a run without -gpu, --weights (checked by a run on the CPU)
    status, _, err = run(capsys, "run", str(out))
    assert status == 2 and "CUDA target" in err and "-gpu 0" in err
    weights = str(corpus / "weights/lenet_iter_10000.caffemodel")
    status, _, err = run(capsys, "compile", net, "--target", "cuda", "--weights", weights)
    assert status == 2 and "--weights" in err
    status, _, err = run(capsys, "compile", net, "--target", "cuda", "--cuda-arch", "sm90")
    assert status == 2 and "compute capability" in err


def test_compile_keeps_the_old_artifact_when_the_weights_do_not_fit(capsys, tmp_path: Path) -> None:
    """The weights are checked before anything is replaced; weights in Caffe's HDF5 form are
    embedded as HDF5 and used by ``caffec run``."""
    import numpy as np

    from caffec.formats.snapshots import write_weights

    net = str(REPO / "examples/mnist/lenet.prototxt")
    out = tmp_path / "lenet.caffec"
    assert run(capsys, "compile", net, "-o", str(out))[0] == 0
    before = (out / "manifest.json").read_bytes()
    bad = tmp_path / "bad.caffemodel"
    write_weights(bad, "LeNet", [("conv1", "Convolution", [np.zeros((3, 3), np.float32)])])
    status, _, err = run(capsys, "compile", net, "-o", str(out), "--weights", str(bad))
    assert status == 2 and "layer 'conv1'" in err and "Traceback" not in err
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.caffemodel", "lenet.caffec"]

    good = tmp_path / "good.caffemodel.h5"
    shapes = {"conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)],
              "ip1": [(500, 800), (500,)], "ip2": [(10, 500), (10,)]}  # fmt: skip
    write_weights(good, "LeNet", [(name, "", [np.full(s, 0.01, np.float32) for s in blobs])
                                  for name, blobs in shapes.items()])  # fmt: skip
    assert run(capsys, "compile", net, "-o", str(out), "--weights", str(good))[0] == 0
    assert (out / "weights.caffemodel.h5").exists()
    np.save(tmp_path / "x.npy", np.ones((64, 1, 28, 28), np.float32))
    status, text, _ = run(capsys, "run", str(out), "--input", f"data={tmp_path / 'x.npy'}")
    assert status == 0 and "min 0.1  max 0.1 " in text  # equal weights: equal scores


def test_upgrade_keeps_the_fields_of_caffe_forks(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Fork fields (Pooling's ceil_mode, SSD's messages) survive `caffec upgrade` of a net
    with the old input fields, and an unknown field still fails with its "did you mean"."""
    net = tmp_path / "net.prototxt"
    net.write_text(
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
        "pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }\n"
        'layer { name: "pb" type: "PriorBox" bottom: "p" bottom: "data" top: "pb" '
        "prior_box_param { min_size: 3 aspect_ratio: 2 flip: true variance: 0.1 } }\n"
    )
    out = tmp_path / "up.prototxt"
    assert main(["upgrade", str(net), "-o", str(out)]) == 0
    text = out.read_text()
    assert "ceil_mode: false" in text and "prior_box_param" in text and "aspect_ratio: 2" in text
    net.write_text(net.read_text().replace("ceil_mode", "ceil_mod"))
    capsys.readouterr()
    assert main(["upgrade", str(net), "-o", str(out)]) == 2
    assert "did you mean 'ceil_mode'" in capsys.readouterr().err
