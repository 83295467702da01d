"""BatchNorm under its running statistics, folded into the convolution before it.

The TEST build computes each channel's scale and shift once per forward and
applies them in the convolution's epilogue: one kernel for conv + BatchNorm +
Scale + ReLU, no square root per element, the numbers of the reference build,
and parameters that stay live (edit them, and the next forward uses them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nets import same_params
from reference import convolution

import caffec
from caffec.compiler.kernels import Loop
from caffec.compiler.pipeline import Options, build_kernel_graph, load_layer_graph

NET = """
name: "conv_bn"
input: "data"
input_shape { dim: 3 dim: 2 dim: 7 dim: 7 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { eps: 0.01 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


@pytest.fixture(scope="module")
def prototxt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("folding") / "conv_bn.prototxt"
    path.write_text(NET)
    return path


def _statistics(net: caffec.Net, rng: np.random.Generator) -> None:
    """Running sums as a trained net has them: mean and variance times the factor."""
    mean, variance, factor = net.params["bn1"]
    factor.data[...] = 3.0
    mean.data[...] = rng.normal(size=4) * 3.0
    variance.data[...] = rng.uniform(0.5, 2.0, size=4) * 3.0


def _expected(net: caffec.Net, x: np.ndarray) -> np.ndarray:
    w, b = (p.data.astype(np.float64) for p in net.params["conv1"])
    mean, variance, factor = (p.data.astype(np.float64) for p in net.params["bn1"])
    gamma, beta = (p.data.astype(np.float64) for p in net.params["scale1"])
    (y,) = convolution(x.astype(np.float64), w, b)
    per_channel = (1, -1, 1, 1)
    y = (y - (mean / factor).reshape(per_channel)) / np.sqrt(
        (variance / factor).reshape(per_channel) + 0.01
    )
    return np.maximum(y * gamma.reshape(per_channel) + beta.reshape(per_channel), 0)


def test_conv_batchnorm_scale_relu_is_one_kernel_without_a_square_root_per_element(
    prototxt: Path,
) -> None:
    options = Options(phase="TEST")
    kgraph = build_kernel_graph(load_layer_graph(prototxt, options), options)
    steps = {step.layer: step for step in kgraph.forward}
    assert all(steps[name].joined and not steps[name].instrs for name in ("bn1", "scale1"))
    assert steps["relu1"].joined and not steps["relu1"].instrs
    loops = [i for i in steps["conv1"].instrs if isinstance(i, Loop)]
    assert len(loops) == 1 and len(loops[0].body) == 1, "one fused kernel per image"
    square_roots = [p for p in kgraph.primitives() if p.prim == "map" and "sqrt" in str(p.attrs)]
    # the only square root is in the per-channel coefficients: a map over the 4 channels
    assert [p.attrs["size"] for p in square_roots] == [4]


def test_folded_build_equals_reference_and_reads_edited_parameters(prototxt: Path) -> None:
    rng = np.random.default_rng(5)
    folded = caffec.Net(str(prototxt), caffec.TEST, seed=2)
    reference = caffec.Net(str(prototxt), caffec.TEST, seed=2, opt_level=0)
    _statistics(folded, rng)
    same_params(folded, reference)
    x = rng.normal(size=(3, 2, 7, 7)).astype(np.float32)
    out = folded.forward(data=x)["conv1"].copy()
    np.testing.assert_allclose(out, reference.forward(data=x)["conv1"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, _expected(folded, x), rtol=1e-4, atol=1e-5)
    # pycaffe-style surgery after loading: the next forward folds the new statistics
    folded.params["bn1"][1].data[...] *= 4.0
    folded.params["bn1"][0].data[...] += 1.0
    edited = folded.forward(data=x)["conv1"]
    assert not np.allclose(edited, out)
    np.testing.assert_allclose(edited, _expected(folded, x), rtol=1e-4, atol=1e-5)
